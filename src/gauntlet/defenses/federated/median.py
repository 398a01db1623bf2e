"""The coordinate-wise median of the client updates."""

from __future__ import annotations

import torch
from torch import Tensor

from gauntlet.defenses.federated._base import Aggregation, Aggregator
from gauntlet.defenses.registry import register


def coordinate_median(u: Tensor) -> Tensor:
    """The per-coordinate median over rows, the mean of the two middle values for even n (NumPy's
    convention, and Flower's ``FedMedian``), not torch's lower median."""
    s = u.sort(dim=0).values
    n = u.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@register
class Median(Aggregator):
    """Yin et al.'s coordinate-wise median: each coordinate of the aggregate is the median of the
    clients' values there (breakdown point 1/2 per coordinate).  Every client contributes to
    some coordinate, so none is reported as rejected."""

    name = "median"
    description = "coordinate-wise median of the client updates"
    reference = (
        "Yin et al., 'Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates', ICML 2018, "
        "https://arxiv.org/abs/1803.01498"
    )

    def __init__(self) -> None:
        self._validate()

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        return Aggregation(coordinate_median(u), torch.ones(u.shape[0], dtype=torch.bool, device=u.device))
