"""The coordinate-wise trimmed mean: the beta largest and beta smallest values dropped."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.federated._base import Aggregation, Aggregator
from gauntlet.defenses.registry import register


@register
class TrimmedMean(Aggregator):
    """Yin et al.'s coordinate-wise trimmed mean: per coordinate, the ``beta`` largest and
    ``beta`` smallest client values are dropped and the rest averaged (needs n > 2·beta).

    ``beta`` counts clients, as in the paper (Flower's ``FedTrimmedAvg`` takes a fraction
    instead: its ``beta=0.2`` of 10 clients is ``beta=2`` here).

    Args:
        beta: how many values are cut at each end of every coordinate.
    """

    name = "trimmed_mean"
    description = "coordinate-wise trimmed mean: drop the beta largest and smallest values per coordinate"
    reference = (
        "Yin et al., 'Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates', ICML 2018, "
        "https://arxiv.org/abs/1803.01498"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"beta": [Interval(int, 0, None)]}

    def __init__(self, *, beta: int = 1) -> None:
        self.beta = beta
        self._validate()

    def min_clients(self) -> int:
        return 2 * self.beta + 1

    def _bound(self) -> str:
        return f"a trimmed mean with beta={self.beta} (n > 2·beta)"

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        n = u.shape[0]
        s = u.sort(dim=0).values
        return Aggregation(s[self.beta : n - self.beta].mean(dim=0), torch.ones(n, dtype=torch.bool, device=u.device))
