"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import EPS, POSITIVE, STEPS, TrainContext, Trainer, perturb


@register
class PGDAdversarialTraining(Trainer):
    """Adversarial training on PGD examples: ``min_θ E max_{‖δ‖≤ε} CE(f(x + δ), y)`` (Madry et al. 2018).

    Each batch is replaced by the result of ``steps`` projected steepest-ascent steps of size
    ``step_size`` on the cross-entropy from a uniform random start in the ε-ball (the paper's
    MNIST setting, the defaults: L∞ ε = 0.3, 40 steps of 0.01; CIFAR-10: ε = 8/255, 7 steps of
    2/255).  The inner attack runs with the module in train mode, as in the reference code; the
    gradient of the inner loop is taken with respect to the input only.

    Args:
        eps: radius of the threat model.
        steps: PGD iterations per batch.
        step_size: step length in the norm's steepest-ascent direction.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly in the ball (``True`` in the paper) or at the clean input.
        **common: the :class:`Trainer` hyperparameters.
    """

    name: ClassVar[str] = "pgd_at"
    description: ClassVar[str] = "adversarial training on PGD examples (Madry et al. 2018)"
    reference: ClassVar[str] = (
        'Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018, '
        "https://arxiv.org/abs/1706.06083"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": EPS,
        "steps": STEPS,
        "step_size": POSITIVE,
        "norm": [Options(("linf", "l2"))],
        "random_start": [Boolean()],
    }

    def __init__(
        self,
        *,
        eps: float = 0.3,
        steps: int = 40,
        step_size: float = 0.01,
        norm: str = "linf",
        random_start: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.norm = norm
        self.random_start = random_start
        self._validate()

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        x_adv = perturb(
            module, xb, yb,
            eps=float(self.eps), steps=self.steps, step_size=float(self.step_size), norm=self.norm,
            random_start=self.random_start, generator=ctx.generator, bounds=ctx.bounds,
        )
        logits = module(x_adv)
        ctx.logits = logits
        return F.cross_entropy(logits, yb)
