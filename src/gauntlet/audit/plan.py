"""Spec → plan: the list of units (attack × threat × batch of samples) an audit runs.

A unit is the smallest piece of work that is saved on its own: one attack, one threat (a norm
and its ε list), samples ``start:stop``.  Its ``key`` is a stable hash of what it computes, and
its ``seed`` derives from the spec's seed and the key, so a unit gives the same result whenever
and wherever it is run — which is what makes a resumed audit equal an uninterrupted one.

With ``model.defense`` every attack × threat also gets *naive* units (label ``"<label> (naive)"``)
that attack the naive view of the defense.  ``certify`` items are split into
:class:`CertifyChunk` s of ``batch_size`` samples and every ``detect`` item is one
:class:`DetectTask`; both are saved on their own, keyed like units.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from gauntlet.audit.records import naive_label
from gauntlet.audit.spec import (
    AttackChoice,
    AuditSpec,
    CertifyChoice,
    DetectChoice,
    resolve_attacks,
    resolve_certify,
    resolve_detect,
    spec_hash,
)

__all__ = [
    "CertifyChunk",
    "DetectTask",
    "Unit",
    "extra_key",
    "make_certify_plan",
    "make_detect_plan",
    "make_plan",
    "unit_key",
    "unit_seed",
]


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
    naive: bool = False  # attacks the naive view of model.defense (label "<label> (naive)")

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
    """All units for ``n`` samples, in run order: threat, then attack, then view (the adaptive
    view of ``model.defense`` or the plain model first, then the naive view), then batch."""
    attacks = resolve_attacks(spec) if attacks is None else attacks
    digest = spec_hash(spec)
    views = (False, True) if spec.model.defense is not None else (False,)
    units: list[Unit] = []
    for t, threat in enumerate(spec.threats):
        eps = tuple(float(e) for e in threat.eps)
        for a in attacks:
            if t not in a.threats:
                continue
            for naive in views:
                label = naive_label(a.label) if naive else a.label
                for start in range(0, n, spec.batch_size):
                    stop = min(n, start + spec.batch_size)
                    key = unit_key(digest, label, threat.norm, eps, threat.targeted, start, stop)
                    units.append(
                        Unit(
                            key=key,
                            attack_label=label,
                            attack_name=a.name,
                            params=dict(a.params),
                            norm=threat.norm,
                            eps=eps,
                            targeted=threat.targeted,
                            start=start,
                            stop=stop,
                            seed=unit_seed(spec.seed, key),
                            naive=naive,
                        )
                    )
    return units


def extra_key(spec_digest: str, kind: str, index: int, start: int, stop: int) -> str:
    """Stable key of a certification chunk or a detection task (like :func:`unit_key`)."""
    blob = json.dumps([spec_digest, kind, index, start, stop], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CertifyChunk:
    """``certify[index]`` on samples ``start:stop``; saved on its own so a long run resumes mid-way."""

    key: str
    choice: CertifyChoice = field(hash=False, compare=False)
    start: int = 0
    stop: int = 0
    seed: int = 0

    def describe(self) -> str:
        return f"certify {self.choice.name} [{self.start}:{self.stop}]"


@dataclass(frozen=True)
class DetectTask:
    """``detect[index]``: fit and calibrate on samples ``0:calibration``, evaluate on ``calibration:n``."""

    key: str
    choice: DetectChoice = field(hash=False, compare=False)
    calibration: int = 0
    n: int = 0
    seed: int = 0

    def describe(self) -> str:
        return f"detect {self.choice.name}"


def make_certify_plan(spec: AuditSpec, n: int, choices: list[CertifyChoice] | None = None) -> list[CertifyChunk]:
    """The certification chunks for ``n`` samples: item by item, ``batch_size`` samples each."""
    choices = resolve_certify(spec) if choices is None else choices
    if not choices:
        return []
    digest = spec_hash(spec)
    out = []
    for c in choices:
        for start in range(0, n, spec.batch_size):
            stop = min(n, start + spec.batch_size)
            key = extra_key(digest, "certify", c.index, start, stop)
            out.append(CertifyChunk(key, c, start, stop, unit_seed(spec.seed, key)))
    return out


def make_detect_plan(spec: AuditSpec, n: int, choices: list[DetectChoice] | None = None) -> list[DetectTask]:
    """One task per ``detect`` item for ``n`` samples."""
    choices = resolve_detect(spec) if choices is None else choices
    if not choices:
        return []
    digest = spec_hash(spec)
    out = []
    for c in choices:
        cal = c.calibration_for(n)
        key = extra_key(digest, "detect", c.index, cal, n)
        out.append(DetectTask(key, c, cal, n, unit_seed(spec.seed, key)))
    return out
