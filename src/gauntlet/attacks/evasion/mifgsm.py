"""Momentum Iterative FGSM (Dong et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, Options
from gauntlet.attacks.base import OPTIONAL_POSITIVE, STEPS, Attack, Context
from gauntlet.attacks.evasion._iterative import projected_gradient
from gauntlet.attacks.losses import LOSSES
from gauntlet.attacks.registry import register


@register
class MIFGSM(Attack):
    """MI-FGSM: accumulate ``g ← μ·g + ∇/‖∇‖₁`` and step along the accumulated direction; the
    momentum stabilises the update and makes the examples transfer better to other models.

    Args:
        decay: momentum factor μ (1.0 in the paper).
        norm, eps, steps, step_size (default ``ε / steps``), loss, early_stop, targeted,
        batch_size: as for ``pgd``.
    """

    name = "mifgsm"
    description = "Momentum iterative FGSM, transfers well (Dong et al. 2018)"
    reference = (
        'Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018, '
        "https://arxiv.org/abs/1710.06081"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "step_size": OPTIONAL_POSITIVE,
        "decay": [Interval(float, 0, None)],
        "loss": [Options(LOSSES)],
        "early_stop": [Boolean()],
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        loss: str = "ce",
        early_stop: bool = False,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.decay = decay
        self.loss = loss
        self.early_stop = early_stop
        self.targeted = targeted
        self.batch_size = batch_size
        self._validate()

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        step = self.step_size if self.step_size is not None else eps / self.steps
        return projected_gradient(
            ctx, x, y, eps=eps, norm=self.norm, steps=self.steps, step_size=step,
            random_start=False, loss=self.loss, momentum=float(self.decay), early_stop=self.early_stop,
        )
