"""Bulyan: a Krum-based selection of n − 2f updates, then a trimmed mean around their median."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Options
from gauntlet.defenses.federated._base import BYZANTINE, Aggregation, Aggregator, krum_scores
from gauntlet.defenses.federated.median import coordinate_median
from gauntlet.defenses.registry import register


@register
class Bulyan(Aggregator):
    """El Mhamdi et al.'s Bulyan.  θ = n − 2f updates are selected with Krum, then per coordinate
    the β = θ − 2f selected values closest to their median are averaged.  Needs n ≥ 4f + 3.

    ``selection="iterative"`` is the paper's: Krum is applied θ times, each time removing the
    update it picked.  ``"multi_krum"`` is Flower's ``Bulyan``: the θ lowest Krum scores of one
    pass.

    Args:
        f: the number of Byzantine clients it is built to tolerate.
        selection: ``"iterative"`` (the paper) or ``"multi_krum"`` (Flower's).
    """

    name = "bulyan"
    description = "Bulyan: Krum-selected n-2f updates, then the mean of the values closest to their median per coordinate"
    reference = (
        "El Mhamdi, Guerraoui, Rouault, 'The Hidden Vulnerability of Distributed Learning in Byzantium', ICML 2018, "
        "https://arxiv.org/abs/1802.07927"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "f": BYZANTINE,
        "selection": [Options(("iterative", "multi_krum"))],
    }

    def __init__(self, *, f: int = 1, selection: str = "iterative") -> None:
        self.f = f
        self.selection = selection
        self._validate()

    def min_clients(self) -> int:
        return 4 * self.f + 3

    def _bound(self) -> str:
        return f"Bulyan with f={self.f} (n >= 4f + 3)"

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        n = u.shape[0]
        theta = n - 2 * self.f
        beta = theta - 2 * self.f
        if self.selection == "multi_krum":
            chosen = [int(i) for i in krum_scores(u, self.f).argsort()[:theta]]
        else:
            left = list(range(n))
            chosen = []
            while len(chosen) < theta:
                pick = left[int(krum_scores(u[left], self.f).argmin())]
                chosen.append(pick)
                left.remove(pick)
        sel = u[chosen]
        med = coordinate_median(sel)
        idx = (sel - med).abs().topk(beta, dim=0, largest=False).indices
        update = sel.gather(0, idx).mean(dim=0)
        keep = torch.zeros(n, dtype=torch.bool, device=u.device)
        keep[chosen] = True
        return Aggregation(update, keep, info={"selected": sorted(chosen)})
