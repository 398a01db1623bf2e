"""Fast Gradient Sign Method (Goodfellow et al. 2015) and its L2/L1 analogues."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from gauntlet._validation import Constraint, Options
from gauntlet.attacks.base import Attack, Context
from gauntlet.attacks.evasion._iterative import projected_gradient
from gauntlet.attacks.losses import LOSSES
from gauntlet.attacks.registry import register


@register
class FGSM(Attack):
    """One step of size ε along the loss gradient's sign (L∞), or its unit-norm direction (L2/L1):
    ``x_adv = clip(x + ε · sign(∇ₓ L(x, y)))``.

    Args:
        norm: ``"linf"`` (FGSM proper), ``"l2"`` (fast gradient method) or ``"l1"``.
        eps: budget, one value or a list.
        loss: ``"ce"``, ``"margin"`` or ``"dlr"``.
        targeted: step *down* the loss towards ``target``.
        batch_size: split the input into batches of this size.
    """

    name = "fgsm"
    description = "Fast gradient sign method, one step (Goodfellow et al. 2015)"
    reference = (
        'Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015, '
        "https://arxiv.org/abs/1412.6572"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"loss": [Options(LOSSES)]}

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        loss: str = "ce",
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.loss = loss
        self.targeted = targeted
        self.batch_size = batch_size
        self._validate()

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        return projected_gradient(
            ctx, x, y, eps=eps, norm=self.norm, steps=1, step_size=eps, random_start=False, loss=self.loss
        )
