"""Multi-Krum: the mean of the m client updates with the lowest Krum scores."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.defenses.federated._base import BYZANTINE, Aggregation, Aggregator, krum_scores, weighted_mean
from gauntlet.defenses.registry import register


@register
class MultiKrum(Aggregator):
    """Multi-Krum (Blanchard et al. 2017, §5): Krum's scores computed once, the ``m`` lowest-scoring
    updates averaged with their example weights (Flower's ``MultiKrum``).

    Args:
        f: the number of Byzantine clients it is built to tolerate (n > 2f + 2).
        m: how many updates to average (``None``: n − f).
    """

    name = "multi_krum"
    description = "Multi-Krum: the example-weighted mean of the m updates with the lowest Krum scores"
    reference = (
        "Blanchard et al., 'Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent', NeurIPS 2017, "
        "https://papers.nips.cc/paper/6617"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"f": BYZANTINE, "m": [Interval(int, 1, None), IsNone()]}

    def __init__(self, *, f: int = 1, m: int | None = None) -> None:
        self.f = f
        self.m = m
        self._validate()

    def min_clients(self) -> int:
        return max(2 * self.f + 3, self.m or 1)

    def _bound(self) -> str:
        return f"Multi-Krum with f={self.f}" + (f", m={self.m}" if self.m else "") + " (n > 2f + 2 and n >= m)"

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        n = u.shape[0]
        m = self.m if self.m is not None else n - self.f
        scores = krum_scores(u, self.f)
        best = scores.argsort()[:m]
        keep = torch.zeros(n, dtype=torch.bool, device=u.device)
        keep[best] = True
        update, ww = weighted_mean(u, w, keep)
        return Aggregation(update, keep, ww, {"scores": scores.tolist(), "selected": sorted(int(i) for i in best)})
