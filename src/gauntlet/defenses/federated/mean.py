"""FedAvg's aggregate: the mean of the client updates weighted by their examples."""

from __future__ import annotations

import torch
from torch import Tensor

from gauntlet.defenses.federated._base import Aggregation, Aggregator
from gauntlet.defenses.registry import register


@register
class Mean(Aggregator):
    """The example-weighted mean (McMahan et al.'s FedAvg): no robustness; one client can move it
    anywhere (breakdown point 0)."""

    name = "mean"
    description = "FedAvg: the example-weighted mean of the client updates (not robust)"
    reference = (
        "McMahan et al., 'Communication-Efficient Learning of Deep Networks from Decentralized Data', "
        "AISTATS 2017, https://arxiv.org/abs/1602.05629"
    )

    def __init__(self) -> None:
        self._validate()

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        return Aggregation(w @ u, torch.ones(u.shape[0], dtype=torch.bool, device=u.device), w)
