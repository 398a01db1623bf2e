"""Update scaling / model replacement: the malicious update boosted so it survives averaging."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, IsNone
from gauntlet.attacks.poisoning.federated._base import FederatedAttack
from gauntlet.attacks.registry import register


@register
class Scaling(FederatedAttack):
    """Bagdasaryan et al.'s model replacement.  Each malicious client sends ``factor ×`` the update
    it trained; with ``factor = n_clients / n_malicious`` (the default) FedAvg's mean lands on the
    attacker's model, so a backdoor the malicious clients trained (the federation's ``backdoor``)
    replaces the global model in one round.  ``flip=True`` negates the boosted update, the
    untargeted variant that drives FedAvg's accuracy down.

    Args:
        factor: the boost (``None``: n_clients / n_malicious, the paper's γ = n/η with η = 1).
        flip: send the boosted update negated (untargeted).
    """

    name = "scaling"
    description = "update scaling / model replacement: the malicious clients' update boosted by n/m (optionally flipped)"
    reference = (
        "Bagdasaryan et al., 'How To Backdoor Federated Learning', AISTATS 2020, https://arxiv.org/abs/1807.00459"
    )
    needs_own = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "factor": [Interval(float, 0, None, closed="neither"), IsNone()],
        "flip": [Boolean()],
    }

    def __init__(self, *, factor: float | None = None, flip: bool = False) -> None:
        self.factor = factor
        self.flip = flip
        self._validate()

    def _craft(self, honest: Tensor, own: Tensor | None, m: int, n: int, gen: torch.Generator) -> Tensor:
        assert own is not None
        factor = n / m if self.factor is None else float(self.factor)
        return (-factor if self.flip else factor) * own.clone()
