"""Spec → plan: the list of units (attack × threat × batch of samples) an audit runs.

A unit is the smallest piece of work that is saved on its own: one attack, one threat (a norm
and its ε list), samples ``start:stop``.  Its ``key`` is a stable hash of what it computes, and
its ``seed`` derives from the spec's seed and the key, so a unit gives the same result whenever
and wherever it is run — which is what makes a resumed audit equal an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from gauntlet.audit.spec import AttackChoice, AuditSpec, resolve_attacks, spec_hash

__all__ = ["Unit", "make_plan", "unit_seed"]


@dataclass(frozen=True)
class Unit:
    """One attack on one threat over samples ``start:stop``."""

    key: str
    attack_label: str
    attack_name: str
    params: dict[str, Any] = field(hash=False, compare=False)
    norm: str = "linf"
    eps: tuple[float, ...] = ()
    targeted: bool = False
    start: int = 0
    stop: int = 0
    seed: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    def create_attack(self) -> Any:
        """Build the attack from the registry for this unit's threat."""
        from gauntlet.attacks import create, get_attack_class

        kwargs: dict[str, Any] = {"norm": self.norm, "eps": list(self.eps), **self.params}
        if "targeted" in get_attack_class(self.attack_name)._param_names():
            kwargs["targeted"] = self.targeted
        return create(self.attack_name, **kwargs)

    def describe(self) -> str:
        return f"{self.attack_label} {self.norm} [{self.start}:{self.stop}]"


def unit_key(spec_digest: str, label: str, norm: str, eps: tuple[float, ...], targeted: bool, start: int, stop: int) -> str:
    blob = json.dumps([spec_digest, label, norm, list(eps), targeted, start, stop], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def unit_seed(spec_seed: int, key: str) -> int:
    """The attack seed of a unit: a deterministic function of the spec's seed and the unit key."""
    return int(hashlib.sha256(f"{spec_seed}/{key}".encode()).hexdigest()[:8], 16) % (2**31 - 1)


def make_plan(spec: AuditSpec, n: int, attacks: list[AttackChoice] | None = None) -> list[Unit]:
    """All units for ``n`` samples, in run order: threat, then attack, then batch."""
    attacks = resolve_attacks(spec) if attacks is None else attacks
    digest = spec_hash(spec)
    units: list[Unit] = []
    for t, threat in enumerate(spec.threats):
        eps = tuple(float(e) for e in threat.eps)
        for a in attacks:
            if t not in a.threats:
                continue
            for start in range(0, n, spec.batch_size):
                stop = min(n, start + spec.batch_size)
                key = unit_key(digest, a.label, threat.norm, eps, threat.targeted, start, stop)
                units.append(
                    Unit(
                        key=key,
                        attack_label=a.label,
                        attack_name=a.name,
                        params=dict(a.params),
                        norm=threat.norm,
                        eps=eps,
                        targeted=threat.targeted,
                        start=start,
                        stop=stop,
                        seed=unit_seed(spec.seed, key),
                    )
                )
    return units
