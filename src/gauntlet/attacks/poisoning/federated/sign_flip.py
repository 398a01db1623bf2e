"""Sign flipping: each malicious client sends its own update negated (and optionally scaled)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.attacks.poisoning.federated._base import FederatedAttack
from gauntlet.attacks.registry import register


@register
class SignFlip(FederatedAttack):
    """Each malicious client trains honestly and sends ``−scale ×`` its update: gradient ascent
    on the federation's loss.  Args: ``scale``, the factor on the flipped update."""

    name = "sign_flip"
    description = "malicious clients send their honest update negated and scaled"
    reference = (
        "Damaskinos et al., 'Asynchronous Byzantine Machine Learning (the case of SGD)', ICML 2018 "
        "(sign flipping); Li et al., 'RSA: Byzantine-Robust Stochastic Aggregation Methods', AAAI 2019"
    )
    needs_own = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"scale": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale
        self._validate()

    def _craft(self, honest: Tensor, own: Tensor | None, m: int, n: int, gen: torch.Generator) -> Tensor:
        assert own is not None
        return -float(self.scale) * own.clone()
