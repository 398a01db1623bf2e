"""Inner-product manipulation (IPM): a small negative multiple of the honest mean."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.attacks.poisoning.federated._base import FederatedAttack
from gauntlet.attacks.registry import register


@register
class IPM(FederatedAttack):
    """Xie, Koyejo & Gupta's inner-product manipulation: every malicious client sends −ε·μ, the
    honest mean reversed and shrunk, so the aggregate's inner product with the true descent
    direction turns negative.  Small ε (0.1–0.5) hides among honest updates and defeats the
    median and Krum; large ε defeats the mean.

    Args:
        eps: the multiple of the reversed honest mean.
    """

    name = "ipm"
    description = "inner-product manipulation: minus eps times the mean honest update"
    reference = (
        "Xie, Koyejo, Gupta, 'Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product Manipulation', "
        "UAI 2020, https://arxiv.org/abs/1903.03936"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"eps": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, *, eps: float = 0.5) -> None:
        self.eps = eps
        self._validate()

    def _craft(self, honest: Tensor, own: Tensor | None, m: int, n: int, gen: torch.Generator) -> Tensor:
        return (-float(self.eps) * honest.mean(dim=0)).expand(m, -1).clone()
