"""Krum: the one client update closest to its n − f − 2 nearest neighbours."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint
from gauntlet.defenses.federated._base import BYZANTINE, Aggregation, Aggregator, krum_scores
from gauntlet.defenses.registry import register


@register
class Krum(Aggregator):
    """Blanchard et al.'s Krum: each update is scored by the sum of squared distances to its
    n − f − 2 nearest other updates and the lowest-scoring one is the aggregate.

    Tolerates ``f`` Byzantine clients when n > 2f + 2.  Only one client is accepted per round
    (the others are reported as rejected), so it converges slowly on non-IID data.

    Args:
        f: the number of Byzantine clients it is built to tolerate.
    """

    name = "krum"
    description = "Krum: the client update with the smallest summed distance to its n-f-2 nearest others"
    reference = (
        "Blanchard et al., 'Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent', NeurIPS 2017, "
        "https://papers.nips.cc/paper/6617"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"f": BYZANTINE}

    def __init__(self, *, f: int = 1) -> None:
        self.f = f
        self._validate()

    def min_clients(self) -> int:
        return 2 * self.f + 3

    def _bound(self) -> str:
        return f"Krum with f={self.f} (n > 2f + 2)"

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        scores = krum_scores(u, self.f)
        best = int(scores.argmin())
        keep = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
        keep[best] = True
        return Aggregation(u[best].clone(), keep, keep.to(u.dtype), {"scores": scores.tolist(), "selected": [best]})
