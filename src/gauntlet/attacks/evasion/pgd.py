"""Projected Gradient Descent (Madry et al. 2018) in L∞, L2 and L1, with random restarts."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, Options
from gauntlet.attacks.base import OPTIONAL_POSITIVE, STEPS, Attack, Context
from gauntlet.attacks.evasion._iterative import projected_gradient
from gauntlet.attacks.losses import LOSSES
from gauntlet.attacks.registry import register


def default_step_size(eps: float, steps: int, norm: str) -> float:
    """Madry et al.'s rule ``2.5 ε / steps`` (reaches the boundary from the centre with slack)."""
    return 2.5 * eps / steps


@register
class PGD(Attack):
    """PGD: ``steps`` steps of steepest ascent on the loss, projected onto the ε-ball and bounds.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (L1 uses sparse steepest ascent).
        eps: budget, one value or a list (one result per ε).
        steps: iterations per restart.
        step_size: step length in the norm; default ``2.5 ε / steps``.
        restarts: random restarts; later restarts run only on points not yet fooled.
        random_start: start uniformly inside the ball (Madry et al.); ``False`` starts at x.
        loss: ``"ce"`` (cross-entropy), ``"margin"`` (C&W) or ``"dlr"``.
        early_stop: evaluation mode: stop spending steps on points already adversarial.
        targeted: aim at ``target`` (see ``Attack.run``).
        batch_size: split the input into batches of this size.
    """

    name = "pgd"
    description = "Projected gradient descent, L∞/L2/L1, random restarts (Madry et al. 2018)"
    reference = (
        'Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018, '
        "https://arxiv.org/abs/1706.06083"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "step_size": OPTIONAL_POSITIVE,
        "restarts": [Interval(int, 1, None)],
        "random_start": [Boolean()],
        "loss": [Options(LOSSES)],
        "early_stop": [Boolean()],
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        early_stop: bool = False,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.random_start = random_start
        self.loss = loss
        self.early_stop = early_stop
        self.targeted = targeted
        self.batch_size = batch_size
        self._validate()

    def _step_size(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else default_step_size(eps, self.steps, self.norm)

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        best = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        full_target = ctx.target
        for _ in range(self.restarts):
            ctx.target = full_target[todo] if full_target is not None else None
            adv = projected_gradient(
                ctx,
                x[todo],
                y[todo],
                eps=eps,
                norm=self.norm,
                steps=self.steps,
                step_size=self._step_size(eps),
                random_start=self.random_start,
                loss=self.loss,
                early_stop=self.early_stop,
            )
            best[todo] = adv
            if self.restarts == 1:
                break
            with torch.no_grad():
                fooled = ctx.is_adversarial(ctx.model.scores(adv), y[todo])
            todo = todo[~fooled]
            if todo.numel() == 0:
                break
        ctx.target = full_target
        return best
