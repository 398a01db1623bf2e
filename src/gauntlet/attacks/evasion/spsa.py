"""SPSA (Uesato, O'Donoghue, van den Oord & Kohli, ICML 2018): Adam on SPSA gradient estimates.

A score-based L∞ attack: at every iteration each point still standing estimates the gradient of
its loss (by default the logit margin, the paper's) with simultaneous perturbation stochastic
approximation — ``samples`` queries at ``x ± δv`` along Rademacher directions ``v ∈ {−1, +1}^d``,
``ĝ = 1/(2δP) Σ (L(x+δv) − L(x−δv)) v`` — feeds it to Adam, projects onto the ε-ball and the
input bounds, and checks the new point with one query.  Points stop as soon as they are
adversarial and never use more than ``max_queries``.  The loop is shared with ``nes``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Options
from gauntlet.attacks.base import POSITIVE
from gauntlet.attacks.evasion.nes import MAX_QUERIES, EstimatedGradientAttack
from gauntlet.attacks.registry import register
from gauntlet.models.estimated_gradients import MAX_BATCH, SAMPLES, SIGMA

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@register
class SPSA(EstimatedGradientAttack):
    """SPSA: Adam ascent on SPSA gradient estimates, from scores only, L∞.

    Args:
        norm: ``"linf"`` (the only norm).
        eps: budget, one value or a list (each ε is attacked separately, with its own budget).
        max_queries: queries per sample and per ε, everything included (the check of the input,
            the estimates, the check after each step); never exceeded.
        samples: queries per gradient estimate (``samples / 2`` antithetic Rademacher pairs);
            CleverHans' reference implementation uses 128.
        sigma: the perturbation size δ in input units; the paper's 0.01.
        learning_rate: Adam's step size; the paper's 0.01 (β₁ = 0.9, β₂ = 0.999).
        loss: ``"margin"`` (logit margin, the paper's) or ``"ce"``.
        targeted: aim at ``target`` (see ``Attack.run``).
        batch_size: split the input into batches of this size.
        max_batch_size: the most queries sent to the model in one call.
    """

    name = "spsa"
    description = "SPSA: Adam on simultaneous-perturbation gradient estimates, score-based, L∞ (Uesato et al. 2018)"
    reference = (
        "Uesato, O'Donoghue, van den Oord & Kohli, \"Adversarial Risk and the Dangers of Evaluating Against "
        'Weak Attacks", ICML 2018, https://arxiv.org/abs/1802.05666'
    )
    norms = ("linf",)
    method = "spsa"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_queries": MAX_QUERIES,
        "samples": SAMPLES,
        "sigma": SIGMA,
        "learning_rate": POSITIVE,
        "loss": [Options(("margin", "ce"))],
        "max_batch_size": MAX_BATCH,
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        max_queries: int = 10_000,
        samples: int = 128,
        sigma: float = 0.01,
        learning_rate: float = 0.01,
        loss: str = "margin",
        targeted: bool = False,
        batch_size: int | None = None,
        max_batch_size: int = 4096,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.max_queries = max_queries
        self.samples = samples
        self.sigma = sigma
        self.learning_rate = learning_rate
        self.loss = loss
        self.targeted = targeted
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self._validate()

    def _init_state(self, x: Tensor) -> dict[str, Any]:
        return {"m": torch.zeros_like(x), "v": torch.zeros_like(x)}

    def _step(
        self, g: Tensor, xa: Tensor, xc: Tensor, eps: float, state: dict[str, Any], idx: Tensor, it: int
    ) -> Tensor:
        m = _BETA1 * state["m"][idx] + (1 - _BETA1) * g
        v = _BETA2 * state["v"][idx] + (1 - _BETA2) * g * g
        state["m"][idx], state["v"][idx] = m, v
        k = it + 1  # every point still standing has taken the same number of steps
        m_hat = m / (1 - _BETA1**k)
        v_hat = v / (1 - _BETA2**k)
        return xa + self.learning_rate * m_hat / (v_hat.sqrt() + _ADAM_EPS)
