"""A little is enough (ALIE): a small, consistent per-coordinate shift that robust rules select."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.attacks.poisoning.federated._base import FederatedAttack
from gauntlet.attacks.registry import register


def alie_z(n: int, m: int) -> float:
    """Baruch et al.'s z_max: with s = ⌊n/2 + 1⌋ − m clients needed beside the attackers for a
    majority, z = Φ⁻¹((n − s)/n), the largest shift the majority still finds "typical"."""
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n
    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


@register
class ALIE(FederatedAttack):
    """Baruch, Baruch & Goldberg's "a little is enough": every malicious client sends
    μ − z·σ, the per-coordinate mean of the benign updates minus z standard deviations.  The
    shift stays inside the spread of honest values, so the median, trimmed mean and Krum keep
    picking it, and it pushes every coordinate the same way, round after round.

    Args:
        z: the shift in standard deviations (``None``: the paper's z_max from n and m).
    """

    name = "alie"
    description = "a little is enough: mean minus z standard deviations per coordinate, inside the honest spread"
    reference = (
        "Baruch, Baruch, Goldberg, 'A Little Is Enough: Circumventing Defenses For Distributed Learning', "
        "NeurIPS 2019, https://arxiv.org/abs/1902.06156"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"z": [Interval(float, 0, None), IsNone()]}

    def __init__(self, *, z: float | None = None) -> None:
        self.z = z
        self._validate()

    def _craft(self, honest: Tensor, own: Tensor | None, m: int, n: int, gen: torch.Generator) -> Tensor:
        z = alie_z(n, m) if self.z is None else float(self.z)
        mu = honest.mean(dim=0)
        sigma = honest.std(dim=0, unbiased=True) if honest.shape[0] > 1 else torch.zeros_like(mu)
        return (mu - z * sigma).expand(m, -1).clone()
