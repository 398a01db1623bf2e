"""Basic Iterative Method (Kurakin et al. 2017): iterated FGSM from the clean input."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Options
from gauntlet.attacks.base import OPTIONAL_POSITIVE, STEPS, Attack, Context
from gauntlet.attacks.evasion._iterative import projected_gradient
from gauntlet.attacks.losses import LOSSES
from gauntlet.attacks.registry import register


@register
class BIM(Attack):
    """BIM / I-FGSM: ``steps`` sign-gradient steps of ``step_size`` (default ``ε / steps``) from x,
    each clipped to the ε-ball and the bounds; no random start.

    Args:
        norm, eps, steps, step_size, loss, early_stop, targeted, batch_size: as for ``pgd``.
    """

    name = "bim"
    description = "Basic iterative method / I-FGSM, no random start (Kurakin et al. 2017)"
    reference = (
        'Kurakin et al., "Adversarial Examples in the Physical World", ICLR 2017 workshop, '
        "https://arxiv.org/abs/1607.02533"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "step_size": OPTIONAL_POSITIVE,
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
        loss: str = "ce",
        early_stop: bool = False,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
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
            random_start=False, loss=self.loss, early_stop=self.early_stop,
        )
