"""Evasion: attacks × threats (the spec's ``threats`` and ``attacks``), the audit's first study.

Units are one attack × one threat (a norm and its ε list) × one batch of samples; a unit keeps per
sample whether it was fooled at each ε and the perturbation's norm, never the adversarial inputs.
With ``model.defense`` every attack × threat also gets *naive* units (label ``"<label> (naive)"``)
that attack the naive view of the defense.  The report sections are ``results`` (per attack, norm,
ε), ``worst_case`` (per sample over the attacks), ``cost``, ``gallery`` and, with a defense,
``defense`` (adaptive vs naive); the hygiene flags come from :mod:`gauntlet.audit.flags`.

Definitions (per sample ``i`` of the audited data, per attack, norm and ε):

* **robust** — the model classifies ``x[i]`` correctly *and* the attack did not succeed on it;
  ``robust_accuracy`` is the share of robust samples among all samples.
* **success_rate** — the share of *correctly classified* samples the attack fooled (clean
  mistakes are not counted as attack successes); ``null`` when no sample is classified correctly.
* **median_perturbation** — the median size (in the threat's norm) of the perturbations that
  fooled a correctly classified sample; ``null`` when the attack fooled none.
* **worst case** — per sample, robust only if *no* attack succeeded at that (norm, ε).  Runs
  against the naive view of a defense are not part of it.
* **cost** — queries, gradient evaluations and seconds of a unit are summed per attack; in the
  per-ε result rows a unit's cost is shared equally among the ε values it ran.
* **defense gap** — with ``model.defense``, per attack and (norm, ε): the naive view's robust
  accuracy minus the adaptive (BPDA + EOT) view's.  A positive gap is robustness that only came
  from masked gradients.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BeforeValidator, Field, model_validator
from torch import Tensor

from gauntlet.audit.html import (
    as_image,
    bar,
    ci_pct,
    data_url,
    e,
    eps_text,
    fmt_value,
    is_num,
    num,
    pct,
    plot_png,
    png,
    scroll,
    to_uint8,
)
from gauntlet.audit.report import COUNT, NON_NEGATIVE, NUM_OR_NULL, SHARE, STRING, array_of
from gauntlet.audit.spec import AuditSpec, Bool, Fraction, PositiveFloat, Strict, Text, as_list, param_message
from gauntlet.audit.stats import wilson
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import AuditEnv, Metric, Study, StudyOutput, Threshold, work_key, work_seed
from gauntlet.audit.verdict import ci_text, norm_name, scale_text
from gauntlet.errors import ConfigError, DataError, GauntletError

__all__ = [
    "CROSS_CHECK_LABEL",
    "NAIVE_SUFFIX",
    "NO_GRADIENTS_LABEL",
    "PRESETS",
    "AttackChoice",
    "AttackItem",
    "EvasionStudy",
    "ThreatSpec",
    "ThresholdSpec",
    "Unit",
    "UnitRecord",
    "aggregate",
    "defense_rows",
    "is_cross_check",
    "is_naive",
    "make_plan",
    "naive_label",
    "parse_threshold",
    "resolve_attacks",
    "run_unit",
    "unit_key",
    "unit_seed",
]

GALLERY_SIZE = 6

NORM_NAMES = ("linf", "l2", "l1")
Norm = Literal["linf", "l2", "l1"]

#: What each preset runs for an adversary that sees only scores or only labels (``adversary.knowledge``).
BLACK_BOX_PRESETS: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {
    "scores": {
        "quick": [("square", {"max_queries": 1000})],
        "standard": [("square", {}), ("nes", {})],
        "thorough": [("square", {"restarts": 2}), ("nes", {}), ("zoo", {})],
    },
    "labels": {
        "quick": [("hopskipjump", {"max_queries": 1000})],
        "standard": [("hopskipjump", {})],
        "thorough": [("hopskipjump", {}), ("boundary", {})],
    },
}
#: the capabilities each adversary knowledge allows an attack to use
KNOWLEDGE = {"white": {"gradients", "scores", "labels"}, "scores": {"scores", "labels"}, "labels": {"labels"}}

#: Attack presets: registry name and parameters, in the order they run.
PRESETS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "quick": [("fgsm", {}), ("pgd", {"steps": 20, "early_stop": True})],
    "standard": [("autoattack", {})],
    "thorough": [
        ("pgd", {"steps": 100, "restarts": 5, "early_stop": True}),
        ("apgd_ce", {}),
        ("apgd_dlr", {}),
        ("autoattack", {"version": "plus"}),
    ],
}
_RESERVED_PARAMS = {"norm": "the threat's norm", "eps": "the threat's ε list", "targeted": "the threat's targeted flag"}



#: Suffix of the label of an attack run against the *naive* view of a preprocessing defense
#: (``model.defense`` in the spec): ``"pgd"`` runs on the adaptive (BPDA + EOT) wrap, ``"pgd (naive)"``
#: on the naive one.  Such rows are reported but never enter the worst case or the regression gate.
NAIVE_SUFFIX = " (naive)"


def is_naive(label: str) -> bool:
    """Whether ``label`` names a run against the naive view of the spec's defense."""
    return isinstance(label, str) and label.endswith(NAIVE_SUFFIX)


def naive_label(label: str) -> str:
    """The label of ``label``'s run against the naive view: ``"pgd"`` → ``"pgd (naive)"``."""
    return f"{label}{NAIVE_SUFFIX}"


#: The score-based cross-check the study adds at every threat where only gradient attacks run (the
#: ``quick`` preset, ``[fgsm, pgd]``, ...): Square with a small budget on (up to) the first
#: ``CROSS_CHECK_POINTS`` correctly classified samples, at one ε per threat (``headline_eps`` when
#: it is on the threat, else the threat's largest ε below half the input range).  Its rows are
#: labelled ``CROSS_CHECK_LABEL``; they enter the worst case (what Square breaks is broken) and the
#: ``black_box_beats_white_box`` check, but never count as regressions.
CROSS_CHECK_LABEL = "square (cross-check)"
CROSS_CHECK_QUERIES = 300
CROSS_CHECK_POINTS = 100
#: Suffix of the label of an attack run against the *undefended* model (``model.defense`` left
#: out): the reference the defended numbers are read against.  Such rows live only in the report's
#: ``defense.undefended`` section: never in ``results``, the worst case or the gate.
UNDEFENDED_SUFFIX = " (undefended)"
#: Without a gradient path through the model, the gradient attacks' units are replaced by Square
#: at the same threats (``NO_GRADIENTS_QUERIES``; AutoAttack's 5000 when an ensemble was replaced).
NO_GRADIENTS_LABEL = "square (no gradients)"
NO_GRADIENTS_QUERIES = 1000
_STUDY_LABELS = (NAIVE_SUFFIX, " (cross-check)", " (no gradients)", UNDEFENDED_SUFFIX)
GRADIENT_PROBE_SAMPLES = 16  # inputs whose gradient is probed once, before any unit runs


def is_undefended(label: str) -> bool:
    """Whether ``label`` names a run against the undefended model of ``model.defense``."""
    return isinstance(label, str) and label.endswith(UNDEFENDED_SUFFIX)


def is_cross_check(label: str) -> bool:
    """Whether ``label`` names the study's own score-based cross-check rows."""
    return label == CROSS_CHECK_LABEL


def _score_based(name: str) -> bool:
    """A registered attack that needs no gradients (Square), or an ensemble that runs one."""
    from gauntlet.attacks import get_attack_class

    return "gradients" not in get_attack_class(name).requires or name in _ENSEMBLES


def _needs_gradients(name: str) -> bool:
    from gauntlet.attacks import get_attack_class

    return "gradients" in get_attack_class(name).requires


@dataclass
class UnitRecord:
    """The result of one unit: one attack, one threat (norm, several ε), samples ``start:stop``.

    ``success[i][j]`` / ``norms[i][j]``: whether sample ``start + j`` was fooled at ``eps[i]`` and
    the size of its perturbation in ``norm``.
    """

    attack: str  # label, e.g. "pgd" or "autoattack"
    attack_name: str  # registry name
    params: dict[str, Any]
    norm: str
    eps: tuple[float, ...]
    start: int
    stop: int
    success: list[list[bool]]  # [eps][sample in start:stop]
    norms: list[list[float]]  # [eps][sample]
    queries: int
    grad_evals: int
    seconds: float
    #: [eps][sample] queries each sample used, for attacks that count them (black-box attacks)
    queries_per_sample: list[list[int]] | None = None



# ------------------------------------------------------------------------------------------------
# the spec block
class ThreatSpec(Strict):
    """An adversary: a norm, the budgets ε to evaluate, untargeted or targeted."""

    norm: Norm
    eps: Annotated[list[PositiveFloat], BeforeValidator(as_list), Field(min_length=1)]
    targeted: Bool = False


class AttackItem(Strict):
    """One entry of ``attacks``: a registry ``name`` with parameters, or a ``preset``."""

    name: Text | None = None
    preset: Literal["quick", "standard", "thorough"] | None = None
    label: Text | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if not isinstance(v, Mapping):
            return v
        v = dict(v)
        if "preset" in v:
            return v  # extra keys are reported as unknown fields
        out: dict[str, Any] = {k: v.pop(k) for k in ("name", "label") if k in v}
        params = v.pop("params", {})
        if not isinstance(params, Mapping):
            return {**out, "params": params}  # pydantic reports the type error
        out["params"] = {**dict(params), **v}
        return out

    @model_validator(mode="after")
    def _name_or_preset(self) -> AttackItem:
        if (self.name is None) == (self.preset is None):
            raise ValueError("give an attack name (e.g. 'pgd' or {name: pgd, steps: 20}) or {preset: quick|standard|thorough}")
        return self


def _attacks_list(v: Any) -> Any:
    return [v] if isinstance(v, (Mapping, str)) else v


class ThresholdSpec(Threshold):
    """Gate: robust accuracy of ``attack`` (a label or ``worst_case``) at (norm, ε) must be ≥ the minimum."""

    metric_name = "robust_accuracy"
    label_fields: ClassVar[dict[str, str]] = {"attack": "attack", "norm": "norm", "eps": "eps"}
    bound_field = "min_robust_accuracy"

    attack: Text
    norm: Norm
    eps: PositiveFloat
    min_robust_accuracy: Fraction

    def what(self) -> str:
        return f"{self.attack} {self.norm} ε={self.eps:g}"




class AdversarySpec(Strict):
    """``adversary:`` what the attacker knows and may spend; it picks what a preset runs.

    ``knowledge``: ``white`` (gradients: the presets as listed), ``scores`` (only the model's scores:
    Square and NES-PGD, + ZOO in ``thorough``) or ``labels`` (only the top label: HopSkipJump, +
    Boundary in ``thorough``); an attack listed by name must be one the knowledge allows.
    ``max_queries``: the per-sample query budget of every black-box attack that does not set its own.
    ``goal``: ``targeted`` makes every threat that does not say otherwise targeted.
    """

    knowledge: Literal["white", "scores", "labels"] = "white"
    max_queries: Annotated[int, Field(strict=True, ge=1)] | None = None
    goal: Literal["untargeted", "targeted"] | None = None


class HeadlineEps(Strict):
    """``headline_eps: {norm: l2, eps: 0.5}``."""

    norm: Norm
    eps: PositiveFloat


class EvasionBlock(Strict):
    """The evasion study's spec keys."""

    threats: Annotated[list[ThreatSpec], Field(min_length=1)] | None = None
    attacks: Annotated[list[AttackItem], BeforeValidator(_attacks_list), Field(min_length=1)] = Field(
        default_factory=lambda: [AttackItem(preset="standard")]
    )
    #: the ε the verdict and the cards lead with: a number (the first threat that evaluates it) or
    #: {norm: l2, eps: 0.5}; default: the ε of the first evasion gate rule, else see EvasionStudy.headline
    headline_eps: PositiveFloat | HeadlineEps | None = None
    adversary: AdversarySpec | None = None


# ------------------------------------------------------------------------------------------------
# resolved attacks
@dataclass(frozen=True)
class AttackChoice:
    """One attack to run: its label (unique in the spec), registry name, parameters, and the
    threats (indices into ``spec.threats``) it runs against."""

    label: str
    name: str
    params: dict[str, Any]
    index: int  # position in spec.attacks
    preset: str | None
    threats: tuple[int, ...]

    @property
    def place(self) -> str:
        return f"attacks[{self.index}]" + (f" (preset {self.preset!r}: {self.name})" if self.preset else "")


def accepts_targeted(cls: type) -> bool:
    return "targeted" in cls._param_names()  # type: ignore[attr-defined]


def resolve_attacks(spec: AuditSpec) -> list[AttackChoice]:
    """Expand presets and check every attack against the registry and every threat it runs on.

    Raises :class:`ConfigError` naming ``attacks[i]`` for unknown names, unknown or invalid
    parameters, norms or targeting the attack does not support, and duplicate labels.
    """
    from gauntlet.attacks import create, get_attack_class

    if spec.threats is None:
        raise ConfigError("spec: missing required field 'threats'; attacks run against threats such as [{norm: linf, eps: [0.1]}]")
    out: list[AttackChoice] = []
    labels: dict[str, str] = {}
    adversary = getattr(spec, "adversary", None)
    knowledge = adversary.knowledge if adversary is not None else "white"
    for i, item in enumerate(spec.attacks):
        if item.preset:
            entries = BLACK_BOX_PRESETS[knowledge][item.preset] if knowledge != "white" else PRESETS[item.preset]
        else:
            entries = [(item.name or "", dict(item.params))]
        for name, params in entries:
            place = f"attacks[{i}]"
            try:
                cls = get_attack_class(name, kind="evasion")
            except GauntletError as err:
                hint = f"; for the preset write {{preset: {name}}}" if name in PRESETS else ""
                raise ConfigError(f"{place}: {err}{hint}") from None
            beyond = set(cls.requires) - KNOWLEDGE[knowledge]
            if beyond:
                allowed = sorted({n for p in BLACK_BOX_PRESETS[knowledge].values() for n, _ in p}) if knowledge != "white" else []
                raise ConfigError(
                    f"{place}: {name} needs {', '.join(sorted(beyond))} but adversary.knowledge is {knowledge!r}; "
                    f"use an attack that sees only {'scores' if knowledge == 'scores' else 'labels'}, e.g. "
                    + ", ".join(allowed)
                )
            if adversary is not None and adversary.max_queries is not None and "max_queries" in cls._param_names():
                params = {**params, "max_queries": adversary.max_queries} if "max_queries" not in (item.params or {}) else params
            accepted = cls._param_names()
            for key in params:
                if key in _RESERVED_PARAMS:
                    raise ConfigError(f"{place}.{key}: {name} takes {_RESERVED_PARAMS[key]}; remove {key!r} here and set it in threats")
                if key not in accepted:
                    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    allowed = [a for a in accepted if a not in _RESERVED_PARAMS]
                    raise ConfigError(f"{place}.{key}: {name} has no parameter {key!r}; {hint}it takes {', '.join(allowed)}")
            threats = []
            for t, threat in enumerate(spec.threats):
                if threat.norm not in cls.norms:
                    if item.preset:
                        continue
                    raise ConfigError(
                        f"{place}: {name} does not support norm {threat.norm!r} of threats[{t}]; it supports "
                        f"{', '.join(cls.norms)}"
                    )
                if threat.targeted and not accepts_targeted(cls):
                    if item.preset:
                        continue
                    raise ConfigError(f"{place}: {name} has no targeted mode but threats[{t}] is targeted")
                try:
                    create(name, **_attack_kwargs(cls, threat.norm, threat.eps, threat.targeted, params))
                except GauntletError as err:
                    raise ConfigError(param_message(name, place, str(err))) from None
                threats.append(t)
            label = item.label if (item.label and not item.preset) else name
            if is_naive(label):
                raise ConfigError(
                    f"{place}.label: labels ending in {NAIVE_SUFFIX.strip()!r} are reserved for the runs against "
                    "the naive view of model.defense; choose another label"
                )
            if label.endswith(_STUDY_LABELS[1:]):
                raise ConfigError(
                    f"{place}.label: labels ending in '(cross-check)', '(no gradients)' or '(undefended)' are reserved "
                    "for the audit's own runs; choose another label"
                )
            if not threats:
                if item.preset:
                    continue
                raise ConfigError(f"{place}: {name} applies to none of the threats")  # pragma: no cover
            if label in labels:
                raise ConfigError(
                    f"{place}: attack label {label!r} is already used by {labels[label]}; give one of them "
                    f"a distinct label, e.g. {{name: {name}, label: {name}_2, ...}}"
                )
            labels[label] = place
            out.append(AttackChoice(label, name, dict(params), i, item.preset, tuple(threats)))
        if item.preset and not any(a.index == i for a in out):
            norms = sorted({t.norm for t in spec.threats})
            raise ConfigError(f"attacks[{i}]: preset {item.preset!r} has no attack for the threats' norms ({', '.join(norms)})")
    # every threat needs at least one attack
    for t, threat in enumerate(spec.threats):
        if not any(t in a.threats for a in out):
            raise ConfigError(f"threats[{t}]: no attack in attacks supports norm {threat.norm!r}" + (" targeted" if threat.targeted else ""))
    return out


def _headline_request(spec: AuditSpec) -> tuple[str, float] | None:
    """``headline_eps`` as ``(norm, ε)``, checked against the threats' budgets."""
    h = getattr(spec, "headline_eps", None)
    if h is None:
        return None
    threats = list(spec.threats or [])
    norm = getattr(h, "norm", None)
    eps = float(getattr(h, "eps", h))
    for threat in threats:
        if norm is not None and threat.norm != norm:
            continue
        if any(math.isclose(eps, float(b), rel_tol=1e-9, abs_tol=1e-12) for b in threat.eps):
            return threat.norm, eps
    budgets = "; ".join(
        f"{t.norm}: {', '.join(f'{b:g}' for b in t.eps)}" for t in threats if norm is None or t.norm == norm
    ) or f"no threat has norm {norm!r}"
    what = f"{norm} ε={eps:g}" if norm is not None else f"ε={eps:g}"
    raise ConfigError(f"headline_eps: {what} is not evaluated by any threat; choose one of the budgets ({budgets})")


def _attack_kwargs(cls: type, norm: str, eps: Any, targeted: bool, params: Mapping[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"norm": norm, "eps": list(eps), **params}
    if accepts_targeted(cls):
        kw["targeted"] = targeted
    return kw


# ------------------------------------------------------------------------------------------------
# semantic checks
def _check_threats(spec: AuditSpec) -> None:
    seen: dict[tuple[str, float], str] = {}
    for t, threat in enumerate(spec.threats):
        for k, eps in enumerate(threat.eps):
            key = (threat.norm, round(eps, 12))
            if key in seen:
                raise ConfigError(
                    f"threats[{t}].eps[{k}]: {threat.norm} ε={eps:g} already appears at {seen[key]}; "
                    "each (norm, ε) may appear once"
                )
            seen[key] = f"threats[{t}].eps[{k}]"


# ------------------------------------------------------------------------------------------------
# the plan
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
    undefended: bool = False  # attacks the model without model.defense (label "<label> (undefended)")

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

    @property
    def cost(self) -> float:
        """A rough relative cost (samples × gradient steps), for running the cheapest units first."""
        return float(self.size * _attack_cost(self.attack_name, self.params))


#: attacks that count as an AutoAttack-grade ensemble for the evaluation-strength line
_ENSEMBLES = frozenset({"autoattack"})

#: relative cost per sample of attacks whose work is not ``steps × restarts``
_FIXED_COST = {"fgsm": 1.0, "deepfool": 50.0, "autoattack": 5000.0, "square": 5000.0, "fab": 1000.0, "cw_l2": 10000.0}


def _attack_cost(name: str, params: Mapping[str, Any]) -> float:
    queries = params.get("max_queries")
    if name == "square" and isinstance(queries, int) and not isinstance(queries, bool):
        return float(queries)
    if name in _FIXED_COST:
        return _FIXED_COST[name] * (2.0 if params.get("version") == "plus" else 1.0)
    steps = params.get("steps", 100)
    restarts = params.get("restarts", 1)
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (steps, restarts))
    return float(steps) * float(restarts) if ok else 100.0


def unit_key(spec_digest: str, label: str, norm: str, eps: tuple[float, ...], targeted: bool, start: int, stop: int) -> str:
    return work_key(spec_digest, label, norm, list(eps), targeted, start, stop)


#: the attack seed of a unit: a deterministic function of the spec's seed and the unit key
unit_seed = work_seed


def make_plan(spec: AuditSpec, n: int, attacks: list[AttackChoice] | None = None) -> list[Unit]:
    """All units of ``spec`` for ``n`` samples (see :meth:`EvasionStudy.plan`)."""
    from gauntlet.audit.spec import spec_hash

    study = EvasionStudy.resolve(spec, {}) if attacks is None else EvasionStudy(spec, attacks)
    return study.units_for(n, spec_hash(spec))


# ------------------------------------------------------------------------------------------------
# one unit
def _reseed(model: Any, seed: int) -> None:
    """Restart a randomized wrapper's noise stream (a no-op for other models)."""
    reseed = getattr(model, "reseed", None)
    if callable(reseed):
        reseed(seed)


def run_unit(model: Any, x: Tensor, y: Tensor, unit: Unit, clean_pred: Tensor | None = None) -> UnitRecord:
    attack = unit.create_attack()
    _reseed(model, unit.seed)
    sl = slice(unit.start, unit.stop)
    res = attack.run(model, x[sl], y[sl], seed=unit.seed, clean_pred=None if clean_pred is None else clean_pred[sl])
    success = res.success.reshape(len(unit.eps), -1)
    norms = res.norms.reshape(len(unit.eps), -1)
    per = res.info.get("queries_per_sample") if isinstance(res.info, Mapping) else None
    qps = None
    if per is not None:
        q = torch.as_tensor(per).reshape(-1)
        if q.numel() == success.shape[1] and success.shape[0] > 1:
            q = q.repeat(success.shape[0])  # a minimal-norm search, run once for every ε: its whole cost each
        if q.numel() == success.numel():
            qps = [[int(v) for v in row] for row in q.reshape(len(unit.eps), -1).tolist()]
    return UnitRecord(
        attack=unit.attack_label,
        attack_name=unit.attack_name,
        params=json.loads(json.dumps(unit.params, default=str)),
        norm=unit.norm,
        eps=tuple(unit.eps),
        start=unit.start,
        stop=unit.stop,
        success=[[bool(b) for b in row] for row in success.tolist()],
        norms=[[float(v) for v in row] for row in norms.float().tolist()],
        queries=int(res.queries),
        grad_evals=int(res.grad_evals),
        seconds=float(res.seconds),
        queries_per_sample=qps,
    )



def _gallery(study: EvasionStudy, env: AuditEnv, records: list[UnitRecord], clean: list[bool]) -> list[dict[str, Any]]:
    """A few clean / adversarial pairs for image data, recomputed deterministically.

    The store keeps no adversarial inputs, so the examples are made again at the end of every
    run (same samples, same seed): the smallest ε of the first threat at which some attack fooled
    enough samples, and the attack that fooled the most there.
    """
    x, y = env.x, env.y
    if x.dim() != 4 or x.shape[1] not in (1, 3, 4) or not records:
        return []
    threat = study.threats[0]
    eps_sorted = sorted(threat.eps)
    best: tuple[float, str, list[int]] | None = None
    for eps in eps_sorted:
        per_attack: dict[str, set[int]] = {}
        for r in records:
            if r.norm != threat.norm or eps not in r.eps:
                continue
            row = r.success[r.eps.index(eps)]
            hits = per_attack.setdefault(r.attack, set())
            hits.update(r.start + j for j, s in enumerate(row) if s and clean[r.start + j])
        if not per_attack:
            continue
        label, hits = max(per_attack.items(), key=lambda kv: len(kv[1]))
        if hits:
            best = (eps, label, sorted(hits))
            if len(hits) >= GALLERY_SIZE:
                break
    if best is None:
        return []
    eps, label, fooled = best
    # a spec attack, or one the study added (a Square cross-check or stand-in): from its record
    choice = next((a for a in study.attacks if a.label == label), None)
    rec = next(r for r in records if r.attack == label)
    cand = fooled[: 2 * GALLERY_SIZE]
    unit = Unit(
        key="gallery",
        attack_label=label,
        attack_name=choice.name if choice is not None else rec.attack_name,
        params=dict(choice.params if choice is not None else rec.params),
        norm=threat.norm,
        eps=(eps,),
        targeted=threat.targeted,
        start=0,
        stop=len(cand),
        seed=unit_seed(study.seed, "gallery"),
    )
    idx = torch.tensor(cand, dtype=torch.long, device=x.device)
    xs, ys = x[idx], y[idx]
    res = unit.create_attack().run(env.model, xs, ys, seed=unit.seed)
    adv = res.x_adv.reshape(xs.shape)
    succ = res.success.reshape(-1)
    with torch.no_grad():
        p_clean = env.model.predict(xs, count=False)
        p_adv = env.model.predict(adv, count=False)
    out = []
    for j, i in enumerate(cand):
        if not bool(succ[j]):
            continue
        out.append(
            {
                "index": int(i),
                "label": int(ys[j]),
                "pred_clean": int(p_clean[j]),
                "pred_adv": int(p_adv[j]),
                "attack": label,
                "norm": threat.norm,
                "eps": float(eps),
                "x": _rounded(xs[j]),
                "x_adv": _rounded(adv[j]),
            }
        )
        if len(out) == GALLERY_SIZE:
            break
    return out


def _rounded(t: Tensor) -> Any:
    return torch.round(t.detach().float().cpu(), decimals=5).tolist()



# ------------------------------------------------------------------------------------------
# aggregation
@dataclass
class _Cell:
    """Per-sample outcomes of one attack at one (norm, ε), merged over units."""

    success: list[bool | None]
    norms: list[float | None]
    spent: list[int | None] = field(default_factory=list)  # per-sample queries, where the attack counts them
    queries: int = 0
    grad_evals: int = 0
    seconds: float = 0.0


@dataclass
class Aggregate:
    """Results per (attack, norm, ε), worst case per (norm, ε) and cost per attack."""

    results: list[dict[str, Any]] = field(default_factory=list)
    worst_case: list[dict[str, Any]] = field(default_factory=list)
    cost: list[dict[str, Any]] = field(default_factory=list)
    #: per sample, robust (True), fooled or misclassified (False), not covered (None): keyed
    #: (attack or "worst_case", norm, ε) like the metrics
    robust: dict[tuple[str, str, float], list[bool | None]] = field(default_factory=dict)


def _check_unit(u: UnitRecord, k: int, n: int) -> None:
    where = f"unit {k} ({u.attack}, {u.norm}, samples {u.start}:{u.stop})"
    if not (0 <= u.start < u.stop <= n):
        raise DataError(f"{where}: samples must lie in 0:{n} with start < stop; the unit does not match the data")
    if len(u.success) != len(u.eps) or len(u.norms) != len(u.eps):
        raise DataError(f"{where}: success and norms need one row per ε ({len(u.eps)}), got {len(u.success)} and {len(u.norms)}")
    m = u.stop - u.start
    for row_s, row_n in zip(u.success, u.norms):
        if len(row_s) != m or len(row_n) != m:
            raise DataError(f"{where}: each success/norms row needs {m} values, got {len(row_s)} and {len(row_n)}")


def _split_int(total: int, parts: int) -> list[int]:
    q, r = divmod(int(total), parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _summarise(success: list[bool | None], norms: list[float | None], clean_correct: Sequence[bool]) -> dict[str, Any]:
    covered = [i for i, s in enumerate(success) if s is not None]
    correct = [i for i in covered if clean_correct[i]]
    fooled = [i for i in correct if success[i]]
    robust = len(correct) - len(fooled)
    fooled_norms = [float(norms[i]) for i in fooled if norms[i] is not None and math.isfinite(float(norms[i]))]  # type: ignore[arg-type]
    return {
        "robust_accuracy": robust / len(covered) if covered else None,
        "success_rate": len(fooled) / len(correct) if correct else None,
        "median_perturbation": _median(fooled_norms),
        "robust_count": robust,
        "n": len(covered),
        # Wilson 95% interval of the robust accuracy (the samples are a draw of the data distribution)
        "robust_accuracy_ci": list(wilson(robust, len(covered))) if covered else None,
    }


def _queries_summary(success: list[bool | None], spent: list[int | None], clean_correct: Sequence[bool]) -> dict[str, Any]:
    """For attacks that count queries per sample: the median queries per success and the success
    rate (of the correctly classified samples) reached within each query budget, as a curve."""
    correct = [i for i, s in enumerate(success) if s is not None and clean_correct[i]]
    hits = sorted(q for i in correct if success[i] and (q := spent[i]) is not None)
    curve: list[list[float]] = []
    if correct and hits:
        marks = sorted({hits[min(len(hits) - 1, round(k * (len(hits) - 1) / 24))] for k in range(25)})
        curve = [[float(q), sum(1 for h in hits if h <= q) / len(correct)] for q in marks]
    return {
        "median_queries_per_success": _median([float(h) for h in hits]),
        "success_vs_queries": curve,
    }


def _robust(success: list[bool | None], clean_correct: Sequence[bool]) -> list[bool | None]:
    return [None if s is None else bool(clean_correct[i]) and not s for i, s in enumerate(success)]


def aggregate(units: Sequence[UnitRecord], clean_correct: Sequence[bool]) -> Aggregate:
    """Aggregate finished units into result rows, worst-case rows and per-attack cost.

    A sample covered by several units of the same (attack, norm, ε) counts as fooled if any of
    them fooled it. Rows are ordered by first appearance of the attack and the norm, then by ε.
    The worst case leaves out runs against a defense's naive view (labels ending in
    ``" (naive)"``): it describes the audited, adaptively attacked model.
    """
    n = len(clean_correct)
    cells: dict[tuple[str, str, float], _Cell] = {}
    costs: dict[str, dict[str, Any]] = {}
    attack_order: dict[str, int] = {}
    norm_order: dict[str, int] = {}
    for k, u in enumerate(units):
        _check_unit(u, k, n)
        attack_order.setdefault(u.attack, len(attack_order))
        norm_order.setdefault(u.norm, len(norm_order))
        c = costs.setdefault(
            u.attack,
            {"attack": u.attack, "attack_name": u.attack_name, "units": 0, "samples": 0,
             "queries": 0, "grad_evals": 0, "seconds": 0.0},
        )
        c["units"] += 1
        c["samples"] += u.stop - u.start
        c["queries"] += int(u.queries)
        c["grad_evals"] += int(u.grad_evals)
        c["seconds"] += float(u.seconds)
        q_split = _split_int(u.queries, len(u.eps))
        g_split = _split_int(u.grad_evals, len(u.eps))
        for e_i, eps in enumerate(u.eps):
            key = (u.attack, u.norm, float(eps))
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _Cell([None] * n, [None] * n)
            cell.queries += q_split[e_i]
            cell.grad_evals += g_split[e_i]
            cell.seconds += float(u.seconds) / len(u.eps)
            for j in range(u.stop - u.start):
                i = u.start + j
                s = bool(u.success[e_i][j])
                v = float(u.norms[e_i][j])
                if u.queries_per_sample is not None:
                    if not cell.spent:
                        cell.spent = [None] * n
                    cell.spent[i] = int(u.queries_per_sample[e_i][j])
                prev = cell.success[i]
                if prev is None or (s and not prev):
                    cell.success[i], cell.norms[i] = s, v
                elif s and prev and cell.norms[i] is not None:
                    cell.norms[i] = min(v, cell.norms[i])  # type: ignore[type-var]

    out = Aggregate()
    for (attack, norm, eps) in sorted(cells, key=lambda t: (attack_order[t[0]], norm_order[t[1]], t[2])):
        cell = cells[(attack, norm, eps)]
        row = {"attack": attack, "norm": norm, "eps": eps}
        row.update(_summarise(cell.success, cell.norms, clean_correct))
        row.update({"queries": cell.queries, "grad_evals": cell.grad_evals, "seconds": cell.seconds})
        if cell.spent:
            row.update(_queries_summary(cell.success, cell.spent, clean_correct))
        out.results.append(row)
        out.robust[(attack, norm, eps)] = _robust(cell.success, clean_correct)

    threats = sorted({(nm, e) for (a, nm, e) in cells if not is_naive(a)}, key=lambda t: (norm_order[t[0]], t[1]))
    for norm, eps in threats:
        attacks = [
            a for a in sorted(attack_order, key=attack_order.get)  # type: ignore[arg-type]
            if (a, norm, eps) in cells and not is_naive(a)
        ]
        success: list[bool | None] = [None] * n
        norms: list[float | None] = [None] * n
        for a in attacks:
            cell = cells[(a, norm, eps)]
            for i in range(n):
                hit = cell.success[i]
                if hit is None:
                    continue
                if success[i] is None:
                    success[i], norms[i] = hit, cell.norms[i]
                elif hit and not success[i]:
                    success[i], norms[i] = True, cell.norms[i]
                elif hit and success[i] and cell.norms[i] is not None and norms[i] is not None:
                    norms[i] = min(norms[i], cell.norms[i])  # type: ignore[type-var]
        row = {"norm": norm, "eps": eps}
        row.update(_summarise(success, norms, clean_correct))
        row["attacks"] = attacks
        # which attack broke each point: credited to the first attack, in run order, that fooled it
        # (as AutoAttack reports its ensemble: robust accuracy after each attack in turn)
        broken = dict.fromkeys(attacks, 0)
        for i in range(n):
            if success[i] and clean_correct[i]:
                first = next(a for a in attacks if cells[(a, norm, eps)].success[i])
                broken[first] += 1
        row["broken_by"] = [{"attack": a, "count": c} for a, c in broken.items()]
        out.worst_case.append(row)
        out.robust[("worst_case", norm, eps)] = _robust(success, clean_correct)

    for attack in sorted(costs, key=lambda a: attack_order[a]):
        c = costs[attack]
        c["queries_per_sample"] = c["queries"] / c["samples"] if c["samples"] else None
        out.cost.append(c)
    return out



def defense_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Adaptive vs naive robust accuracy per attack and (norm, ε), from the result rows.

    One row per adaptive result that has a naive counterpart (``"<label> (naive)"``); ``gap`` is
    naive minus adaptive robust accuracy (``None`` when either is unknown).
    """
    naive = {(r["attack"][: -len(NAIVE_SUFFIX)], r["norm"], float(r["eps"])): r for r in results if is_naive(r["attack"])}
    rows = []
    for r in results:
        if is_naive(r["attack"]):
            continue
        other = naive.get((r["attack"], r["norm"], float(r["eps"])))
        if other is None:
            continue
        a, b = r.get("robust_accuracy"), other.get("robust_accuracy")
        rows.append({
            "attack": r["attack"],
            "norm": r["norm"],
            "eps": float(r["eps"]),
            "adaptive_robust_accuracy": a,
            "naive_robust_accuracy": b,
            "gap": (b - a) if (a is not None and b is not None) else None,
        })
    return rows



def undefended_section(records: Sequence[Mapping[str, Any]], n: int) -> dict[str, Any]:
    """The undefended model's clean accuracy and worst case per (norm, ε), from its own records
    (each carries that model's clean outcomes on its batch), and the cost of those runs."""
    clean: list[bool | None] = [None] * n
    for r in records:
        for j, c in enumerate(r.get("clean_correct") or []):
            clean[int(r["start"]) + j] = bool(c)
    known = [bool(c) for c in clean if c is not None]
    agg = aggregate([record_of(r) for r in records], [bool(c) for c in clean])
    count = sum(known)
    return {
        "clean_accuracy": count / len(known) if known else None,
        "clean_accuracy_ci": list(wilson(count, len(known))) if known else None,
        "worst_case": [
            {k: w[k] for k in ("norm", "eps", "robust_accuracy", "robust_accuracy_ci", "robust_count", "n", "attacks")}
            for w in agg.worst_case
        ],
        "cost": agg.cost,
    }


def versus_rows(defended: Sequence[Mapping[str, Any]], undefended: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (norm, ε): the defended model's worst case (adaptive attacks) beside the undefended one's,
    and the gain (defended − undefended; what the defense buys against an adaptive attacker)."""
    ref = {(w["norm"], float(w["eps"])): w for w in undefended}
    rows = []
    for w in defended:
        u = ref.get((w["norm"], float(w["eps"])))
        if u is None:
            continue
        a, b = w.get("robust_accuracy"), u.get("robust_accuracy")
        rows.append({
            "norm": w["norm"], "eps": float(w["eps"]),
            "defended_robust_accuracy": a, "defended_robust_accuracy_ci": w.get("robust_accuracy_ci"),
            "undefended_robust_accuracy": b, "undefended_robust_accuracy_ci": u.get("robust_accuracy_ci"),
            "gain": (a - b) if (a is not None and b is not None) else None,
        })
    return rows


# ------------------------------------------------------------------------------------------------
# report schema
_ROW_COMMON = {
    "robust_accuracy": SHARE,
    "success_rate": SHARE,
    "median_perturbation": {"type": ["number", "null"], "minimum": 0},
    "robust_count": COUNT,
    "n": COUNT,
    "robust_accuracy_ci": {"type": ["array", "null"], "minItems": 2, "maxItems": 2, "items": SHARE},
}
_DEFENSE = {
    "type": "object",
    "required": ["name", "params", "randomized", "eot_samples", "rows"],
    "properties": {
        "name": STRING,
        "params": {"type": "object"},
        "randomized": {"type": "boolean"},
        "eot_samples": {"type": "integer", "minimum": 1},
        "undefended": {
            "type": "object",
            "required": ["clean_accuracy", "worst_case"],
            "properties": {
                "clean_accuracy": SHARE,
                "worst_case": array_of(["norm", "eps", "robust_accuracy"], {"norm": STRING, "eps": NON_NEGATIVE, **_ROW_COMMON}),
            },
        },
        "versus": array_of(
            ["norm", "eps", "defended_robust_accuracy", "undefended_robust_accuracy", "gain"],
            {"norm": STRING, "eps": NON_NEGATIVE, "defended_robust_accuracy": SHARE, "undefended_robust_accuracy": SHARE,
             "gain": {"type": ["number", "null"], "minimum": -1, "maximum": 1}},
        ),
        "rows": array_of(
            ["attack", "norm", "eps", "adaptive_robust_accuracy", "naive_robust_accuracy", "gap"],
            {"attack": STRING, "norm": STRING, "eps": NON_NEGATIVE, "adaptive_robust_accuracy": SHARE,
             "naive_robust_accuracy": SHARE, "gap": {"type": ["number", "null"], "minimum": -1, "maximum": 1}},
        ),
    },
}
_SECTIONS = {
    "results": array_of(
        ["attack", "norm", "eps", "robust_accuracy", "success_rate", "median_perturbation", "queries", "grad_evals", "seconds"],
        {"attack": STRING, "norm": STRING, "eps": NON_NEGATIVE, **_ROW_COMMON, "queries": COUNT, "grad_evals": COUNT,
         "seconds": NON_NEGATIVE, "median_queries_per_success": NUM_OR_NULL,
         "success_vs_queries": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}}},
    ),
    "worst_case": array_of(
        ["norm", "eps", "robust_accuracy"],
        {"norm": STRING, "eps": NON_NEGATIVE, **_ROW_COMMON, "attacks": {"type": "array", "items": STRING},
         "broken_by": array_of(["attack", "count"], {"attack": STRING, "count": COUNT})},
    ),
    "cost": array_of(
        ["attack", "queries", "grad_evals", "seconds"],
        {"attack": STRING, "units": COUNT, "samples": COUNT, "queries": COUNT, "grad_evals": COUNT,
         "seconds": NON_NEGATIVE, "queries_per_sample": NUM_OR_NULL},
    ),
    "gallery": array_of(["x", "x_adv"], {"x": {"type": "array"}, "x_adv": {"type": "array"}}),
    "evaluation_strength": {
        "type": "object",
        "required": ["attacks", "ensemble"],
        "properties": {"attacks": {"type": "array"}, "ensemble": {"type": "boolean"}, "adversary": {"type": "object"}},
    },
}


# ------------------------------------------------------------------------------------------------
# report.html
def _plots(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One PNG (data URL) per norm: robust accuracy vs ε per attack and the worst case."""
    results = [r for r in report.get("results", []) if is_num(r.get("eps")) and is_num(r.get("robust_accuracy"))]
    worst = [r for r in report.get("worst_case", []) if is_num(r.get("eps")) and is_num(r.get("robust_accuracy"))]
    norms = list(dict.fromkeys([r["norm"] for r in results] + [r["norm"] for r in worst]))
    if not norms:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clean: Any = report.get("clean_accuracy")
    n = (report.get("data") or {}).get("n")
    clean_ci = list(wilson(round(clean * n), n)) if is_num(clean) and isinstance(n, int) and n > 0 else None
    rules = [r for r in (report.get("gate") or {}).get("rules") or [] if r.get("study") == "evasion"]
    out = []
    for norm in norms:
        fig = Figure(figsize=(5.4, 3.5), dpi=160)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        attacks = list(dict.fromkeys(r["attack"] for r in results if r["norm"] == norm))
        base = [a for a in attacks if not is_naive(str(a))]
        colour = {a: f"C{i % 10}" for i, a in enumerate(base)}
        for i, attack in enumerate(attacks):
            rows = sorted((r for r in results if r["norm"] == norm and r["attack"] == attack), key=lambda r: r["eps"])
            xs = [r["eps"] for r in rows]
            ys = [100 * r["robust_accuracy"] for r in rows]
            if is_num(clean):
                xs, ys = [0.0, *xs], [100 * clean, *ys]
            if is_naive(str(attack)):  # the naive view of a defense: dotted, in its attack's colour
                c = colour.get(str(attack)[: -len(NAIVE_SUFFIX)], f"C{(len(base) + i) % 10}")
                ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.4, linestyle=":", color=c, label=str(attack))
                continue
            ax.plot(xs, ys, marker="o", markersize=4.5, linewidth=1.8, color=colour[attack], label=str(attack))
            _band(ax, rows, clean_ci, colour[attack], 0.10)
        rows = sorted((r for r in worst if r["norm"] == norm), key=lambda r: r["eps"])
        if rows:
            xs = [r["eps"] for r in rows]
            ys = [100 * r["robust_accuracy"] for r in rows]
            if is_num(clean):
                xs, ys = [0.0, *xs], [100 * clean, *ys]
            ax.plot(xs, ys, color="black", linestyle="--", linewidth=2.6, marker="s", markersize=5, label="worst case", zorder=5)
            _band(ax, rows, clean_ci, "black", 0.12, label="95% CI (Wilson)")
        marks = [r for r in rules if str((r.get("labels") or {}).get("norm")) == norm and is_num((r.get("labels") or {}).get("eps"))]
        if marks:  # the gate's thresholds, drawn where they apply
            ax.plot(
                [float(r["labels"]["eps"]) for r in marks], [100 * float(r["required"]) for r in marks],
                linestyle="none", marker="v", markersize=9, color="#c62828", label="required (gate)", zorder=6,
            )
        scale = scale_text(report)
        title = f"Robust accuracy vs ε — {norm}"
        xlabel = f"ε ({norm}; {scale})" if scale else f"ε ({norm})"
        out.append((str(norm), plot_png(fig, ax, xlabel, "robust accuracy (%)", title)))
    return out


def _band(ax: Any, rows: Sequence[Mapping[str, Any]], clean_ci: Any, colour: str, alpha: float, label: str | None = None) -> None:
    """The Wilson 95% band of a robust-accuracy curve (from the clean accuracy's at ε = 0)."""
    pts = [(float(r["eps"]), r.get("robust_accuracy_ci")) for r in rows]
    if clean_ci is not None:
        pts = [(0.0, clean_ci), *pts]
    band = [(x, ci) for x, ci in pts if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_num(v) for v in ci)]
    if len(band) >= 2:
        ax.fill_between(
            [x for x, _ in band], [100 * ci[0] for _, ci in band], [100 * ci[1] for _, ci in band],
            color=colour, alpha=alpha, linewidth=0, label=label,
        )


def _plots_section(report: Mapping[str, Any]) -> str:
    plots = _plots(report)
    if not plots:
        return "<section id='curves'><h2>Robust accuracy vs ε</h2><p class='note'>No results to plot.</p></section>"
    figs = "".join(
        f"<figure><img class='plot' data-norm='{e(norm)}' alt='robust accuracy versus epsilon, {e(norm)}' src='{url}'>"
        f"<figcaption>{e(norm)}: one line per attack; the dashed black line is the per-sample worst case over all "
        "attacks, shaded with its Wilson 95% interval (each attack's band is lighter). ε = 0 is clean accuracy. "
        "Red triangles (if any) are the gate's required minimums. Dotted lines (if any) attack the naive view of "
        "the defense and are not part of the worst case.</figcaption></figure>"
        for norm, url in plots
    )
    return f"<section id='curves'><h2>Robust accuracy vs ε</h2><div class='plots'>{figs}</div></section>"


def _matrix(report: Mapping[str, Any]) -> str:
    """Attacks × ε, per norm, as RobustBench shows it: robust accuracy (Wilson 95% interval) per
    attack, the strongest attack per ε starred, the worst case, and which attack broke each point
    (credited to the first attack, in run order, that fooled it)."""
    results = [r for r in report.get("results") or [] if is_num(r.get("eps")) and not is_naive(str(r.get("attack")))]
    worst = [r for r in report.get("worst_case") or [] if is_num(r.get("eps"))]
    norms = list(dict.fromkeys([str(r["norm"]) for r in worst] + [str(r["norm"]) for r in results]))
    headline = report.get("verdict", {}).get("headline") if isinstance(report.get("verdict"), Mapping) else None
    tables = []
    for norm in norms:
        eps = sorted({float(r["eps"]) for r in results + worst if str(r["norm"]) == norm})
        attacks = list(dict.fromkeys(str(r["attack"]) for r in results if str(r["norm"]) == norm))

        def cell(rows: Sequence[Mapping[str, Any]], x: float, norm: str = norm) -> Mapping[str, Any] | None:
            return next((r for r in rows if str(r["norm"]) == norm and math.isclose(float(r["eps"]), x, rel_tol=1e-9)), None)

        head = "".join(
            f"<th class='num{' headline' if _is_headline(headline, norm, x) else ''}'>ε={x:g}"
            + (" ◆" if _is_headline(headline, norm, x) else "") + "</th>"
            for x in eps
        )
        best: dict[float, int] = {}
        for x in eps:
            counts = [r["robust_count"] for r in results if str(r["norm"]) == norm and math.isclose(float(r["eps"]), x, rel_tol=1e-9)
                      and r.get("robust_count") is not None and _full_row(r)]
            if counts:
                best[x] = min(counts)
        body = []
        for a in attacks:
            mine = [r for r in results if str(r["attack"]) == a]
            tds = []
            for x in eps:
                r = cell(mine, x)
                if r is None:
                    tds.append("<td class='num'>—</td>")
                    continue
                star = " best" if len(attacks) > 1 and _full_row(r) and r.get("robust_count") == best.get(x) else ""
                tds.append(f"<td class='num{star}'>{pct(r.get('robust_accuracy'))}{ci_pct(r.get('robust_accuracy_ci'))}</td>")
            body.append(f"<tr><td>{e(a)}</td>{''.join(tds)}</tr>")
        tds = []
        broke = []
        for x in eps:
            w = cell(worst, x)
            tds.append(f"<td class='num'>{pct(w.get('robust_accuracy')) if w else '—'}{ci_pct(w.get('robust_accuracy_ci')) if w else ''}</td>")
            parts = [f"{e(b.get('attack'))} {num(b.get('count'))}" for b in (w or {}).get("broken_by") or [] if b.get("count")]
            broke.append(f"<td class='num'>{' · '.join(parts) or '—'}</td>")
        body.append(f"<tr class='total'><td>worst case</td>{''.join(tds)}</tr>")
        if any(w.get("broken_by") for w in worst if str(w["norm"]) == norm):
            body.append(f"<tr class='broke'><td>points broken, by the first attack to break them</td>{''.join(broke)}</tr>")
        tables.append(
            f"<h3>{e(norm_name(norm))}</h3>"
            + scroll(f"<table class='matrix' data-norm='{e(norm)}'><tr><th>attack</th>{head}</tr>{''.join(body)}</table>")
        )
    if not tables:
        return ""
    scale = scale_text(report)
    note = (
        "<p class='note'>Robust accuracy per attack and ε (Wilson 95% interval in brackets); ★ the strongest attack at "
        "that ε, ◆ the headline ε of the verdict" + (f"; ε is on the scale of the model's {e(scale)}" if scale else "")
        + f". A '{e(CROSS_CHECK_LABEL)}' row covers only a subsample (its share is of those points), so it is never "
        "starred, but what it breaks counts in the worst case.</p>"
    )
    return f"<div id='matrix'>{''.join(tables)}{note}</div>"


def _full_row(r: Mapping[str, Any]) -> bool:
    """A result row over every audited sample: not a naive-view run, not the subsampled cross-check."""
    return not is_naive(str(r["attack"])) and not is_cross_check(str(r["attack"]))


def _is_headline(headline: Any, norm: str, x: float) -> bool:
    return (
        isinstance(headline, Mapping) and headline.get("norm") == norm and is_num(headline.get("eps"))
        and math.isclose(float(headline["eps"]), x, rel_tol=1e-9)
    )


def _queries_section(report: Mapping[str, Any]) -> str:
    """Black-box attacks: success rate vs queries per sample (one line per attack and ε) and the
    median queries per success."""
    rows = [r for r in report.get("results") or [] if r.get("success_vs_queries")]
    if not rows:
        return ""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.4, 3.5), dpi=160)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(rows[:10]):
        pts = [(0.0, 0.0), *((float(q), float(v)) for q, v in r["success_vs_queries"])]
        ax.step([q for q, _ in pts], [100 * v for _, v in pts], where="post", linewidth=1.6, color=f"C{i % 10}",
                label=f"{r['attack']} {r['norm']} ε={float(r['eps']):g}")
    ax.set_xscale("symlog", linthresh=10)
    url = plot_png(fig, ax, "queries per sample", "success rate (%)", "Success vs queries")
    body = "".join(
        f"<tr><td>{e(r.get('attack'))}</td><td>{e(r.get('norm'))}</td><td class='num'>{eps_text(r.get('eps'))}</td>"
        f"<td class='num'>{pct(r.get('success_rate'))}</td><td class='num'>{num(r.get('median_queries_per_success'), '{:.0f}')}</td></tr>"
        for r in rows
    )
    head = (
        "<tr><th>attack</th><th>norm</th><th class='num'>ε</th><th class='num'>success rate</th>"
        "<th class='num'>median queries per success</th></tr>"
    )
    table = f"<table class='queries'>{head}{body}</table>"
    return (
        "<section id='queries'><h2>Queries</h2><div class='plots'><figure><img class='plot' alt='success rate versus "
        f"queries' src='{url}'><figcaption>Share of the correctly classified samples fooled within a number of queries "
        "per sample (everything counted: the clean check and the search).</figcaption></figure></div>"
        f"{scroll(table)}</section>"
    )


def _ci(row: Mapping[str, Any]) -> str:
    ci = row.get("robust_accuracy_ci")
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_num(v) for v in ci)):
        return ""
    return f" <span class='sub'>({100 * ci[0]:.0f}–{100 * ci[1]:.0f})</span>"


def _results(report: Mapping[str, Any]) -> str:
    results = report.get("results") or []
    worst = report.get("worst_case") or []
    norms = list(dict.fromkeys([str(r.get("norm")) for r in results] + [str(r.get("norm")) for r in worst]))
    head = (
        "<tr><th>attack</th><th class='num'>ε</th><th class='num'>robust accuracy</th><th class='num'>success rate</th>"
        "<th class='num'>median perturbation</th><th class='num'>queries</th><th class='num'>grad evals</th><th class='num'>seconds</th></tr>"
    )
    rows = []
    for norm in norms:
        rows.append(f"<tr class='group'><td colspan='8'>norm {e(norm)}</td></tr>")
        for r in (r for r in results if str(r.get("norm")) == norm):
            rows.append(
                f"<tr class='result'><td>{e(r.get('attack'))}</td><td class='num'>{eps_text(r.get('eps'))}</td>"
                f"<td class='num'>{bar(r.get('robust_accuracy'))}{_ci(r)}</td><td class='num'>{pct(r.get('success_rate'))}</td>"
                f"<td class='num'>{num(r.get('median_perturbation'))}</td><td class='num'>{num(r.get('queries'))}</td>"
                f"<td class='num'>{num(r.get('grad_evals'))}</td><td class='num'>{num(r.get('seconds'), '{:.2f}')}</td></tr>"
            )
        for r in (r for r in worst if str(r.get("norm")) == norm):
            rows.append(
                f"<tr class='worst'><td>worst case</td><td class='num'>{eps_text(r.get('eps'))}</td>"
                f"<td class='num'>{bar(r.get('robust_accuracy'))}{_ci(r)}</td><td class='num'>{pct(r.get('success_rate'))}</td>"
                f"<td class='num'>{num(r.get('median_perturbation'))}</td><td class='num'>—</td><td class='num'>—</td><td class='num'>—</td></tr>"
            )
    note = (
        "<p class='note'>Robust accuracy: share of samples classified correctly and not fooled (its Wilson 95% interval in brackets). Success rate: share of the "
        "correctly classified samples the attack fooled. Median perturbation: over the successful attacks, in the threat's "
        "norm. Worst case: a sample counts as robust only if no attack fooled it. A unit's cost is shared equally among "
        "the ε values it ran.</p>"
    )
    table = f"<table class='results'>{head}{''.join(rows)}</table>"
    return (
        f"<section id='results'><h2>Results</h2>{_strength_html(report)}{_matrix(report)}"
        f"<h3>Every attack and ε</h3>{scroll(table)}{note}</section>"
    )


def _strength_html(report: Mapping[str, Any]) -> str:
    s = report.get("evaluation_strength")
    if not isinstance(s, Mapping):
        return ""
    ran = ", ".join(e(a.get("label")) for a in s.get("attacks") or [] if isinstance(a, Mapping))
    adv = s.get("adversary")
    if isinstance(adv, Mapping):
        budget = f", at most {num(adv.get('max_queries'))} queries per sample" if adv.get("max_queries") else ""
        return (
            f"<p class='sub' id='strength'>Adversary: sees only the model's <b>{e(adv.get('knowledge'))}</b>{budget}. "
            f"Evaluation strength: {ran} — robust accuracy against this adversary, an upper bound for a stronger one.</p>"
        )
    if s.get("ensemble"):
        return f"<p class='sub' id='strength'>Evaluation strength: {ran} — includes an AutoAttack-grade ensemble.</p>"
    return (
        f"<p class='sub' id='strength'>Evaluation strength: {ran} — <b>no AutoAttack-grade ensemble ran: these robust "
        "accuracies are upper bounds</b>.</p>"
    )


def _gallery_html(report: Mapping[str, Any]) -> str:
    gallery = report.get("gallery") or []
    bounds = (report.get("model") or {}).get("bounds")
    items = []
    for g in gallery:
        x, xa = as_image(g.get("x")), as_image(g.get("x_adv"))
        if x is None or xa is None or x.shape != xa.shape:
            continue
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(is_num(b) for b in bounds) and bounds[0] < bounds[1]:
            lo, hi = float(bounds[0]), float(bounds[1])
        else:
            lo, hi = float(min(x.min(), xa.min())), float(max(x.max(), xa.max()))
            hi = hi if hi > lo else lo + 1.0
        d = np.abs(xa - x)
        dmax = float(d.max())
        amp = d / dmax if dmax > 0 else d
        imgs = [
            ("clean", to_uint8(x, lo, hi)),
            ("adversarial", to_uint8(xa, lo, hi)),
            (f"|δ| ×{(hi - lo) / dmax:.3g}" if dmax > 0 else "|δ| = 0", to_uint8(amp, 0.0, 1.0)),
        ]
        cells = "".join(
            f"<div><img class='gal' alt='{e(lbl)}' src='{data_url(png(im))}'>{e(lbl)}</div>" for lbl, im in imgs
        )
        cap = (
            f"#{e(g.get('index'))} · label <b>{e(g.get('label'))}</b> · clean → {e(g.get('pred_clean'))}, "
            f"adversarial → <b>{e(g.get('pred_adv'))}</b><br><span class='sub'>{e(g.get('attack'))}, "
            f"ε={eps_text(g.get('eps'))}{', ' + e(g.get('norm')) if g.get('norm') else ''}</span>"
        )
        items.append(f"<div class='ex'><div class='imgs'>{cells}</div><div class='cap'>{cap}</div></div>")
    if not items:
        return ""
    return (
        "<section id='gallery'><h2>Adversarial examples</h2><div class='gallery'>" + "".join(items) + "</div>"
        "<p class='note'>Right: the perturbation |x_adv − x| stretched to the full range so that it is visible.</p></section>"
    )


def _signed_pp(v: Any) -> str:
    return f"{100 * v:+.1f} pp" if is_num(v) else "—"


def _defense(report: Mapping[str, Any]) -> str:
    d = report.get("defense")
    if not isinstance(d, Mapping):
        return ""
    from gauntlet.audit.flags import MASKING_GAP

    params = ", ".join(f"{e(k)}={e(fmt_value(v))}" for k, v in (d.get("params") or {}).items())
    view = (
        f"randomized: adaptive attacks average {e(d.get('eot_samples'))} draws per gradient (EOT)"
        if d.get("randomized")
        else "deterministic: adaptive attacks backpropagate through a differentiable stand-in (BPDA)"
    )
    ci = {
        (str(r.get("attack")), str(r.get("norm")), float(r["eps"])): r.get("robust_accuracy_ci")
        for r in report.get("results") or [] if is_num(r.get("eps"))
    }
    rows = []
    for r in d.get("rows") or []:
        gap = r.get("gap")
        cls = " class='masking'" if is_num(gap) and gap >= MASKING_GAP - 1e-12 else ""
        at = (str(r.get("attack")), str(r.get("norm")), float(r["eps"]) if is_num(r.get("eps")) else 0.0)
        rows.append(
            f"<tr{cls}><td>{e(r.get('attack'))}</td><td>{e(r.get('norm'))}</td><td class='num'>{eps_text(r.get('eps'))}</td>"
            f"<td class='num'>{bar(r.get('adaptive_robust_accuracy'))}{ci_pct(ci.get(at))}</td>"
            f"<td class='num'>{pct(r.get('naive_robust_accuracy'))}{ci_pct(ci.get((naive_label(at[0]), at[1], at[2])))}</td>"
            f"<td class='num'>{_signed_pp(gap)}</td></tr>"
        )
    head = (
        "<tr><th>attack</th><th>norm</th><th class='num'>ε</th><th class='num'>adaptive (BPDA + EOT)</th>"
        "<th class='num'>naive</th><th class='num'>gap (naive − adaptive)</th></tr>"
    )
    table = scroll(f"<table class='defense'>{head}{''.join(rows)}</table>") if rows else "<p class='note'>No attack results.</p>"
    note = (
        "<p class='note'>The audited model is the defense's adaptive wrap; every attack also ran against the naive "
        "wrap (autograd through the transform as implemented, one random draw). A positive gap is robustness "
        f"that was only masking; rows with a gap of {100 * MASKING_GAP:g} pp or more are highlighted. Naive runs "
        "are not part of the worst case and are gated only by thresholds that name them.</p>"
    )
    return (
        f"<section id='defense'><h2>Defense — {e(d.get('name'))}</h2>"
        f"<div class='sub'>{params or 'default parameters'} · {view}</div>{_versus(d, report)}{table}{note}</section>"
    )


def _versus(d: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """Defended (adaptive worst case) beside undefended, clean and per ε."""
    ref = d.get("undefended")
    rows = d.get("versus") or []
    if not isinstance(ref, Mapping) or not rows:
        return ""
    body = []
    for r in rows:
        gain = r.get("gain")
        cls = " class='masking'" if is_num(gain) and gain <= 0 else ""
        body.append(
            f"<tr{cls}><td>worst case · {e(r.get('norm'))}</td><td class='num'>{eps_text(r.get('eps'))}</td>"
            f"<td class='num'>{pct(r.get('undefended_robust_accuracy'))}{ci_pct(r.get('undefended_robust_accuracy_ci'))}</td>"
            f"<td class='num'>{pct(r.get('defended_robust_accuracy'))}{ci_pct(r.get('defended_robust_accuracy_ci'))}</td>"
            f"<td class='num'>{_signed_pp(gain)}</td></tr>"
        )
    head = (
        "<tr><th>metric</th><th class='num'>ε</th><th class='num'>undefended model</th>"
        "<th class='num'>defended (adaptive attacks)</th><th class='num'>gain</th></tr>"
    )
    acc: Any = report.get("clean_accuracy")
    n: Any = (report.get("data") or {}).get("n")
    ci = list(wilson(round(acc * n), n)) if is_num(acc) and isinstance(n, int) and n > 0 else None
    base: Any = ref.get("clean_accuracy")
    clean = (
        f"<tr><td>clean accuracy</td><td class='num'>—</td><td class='num'>{pct(base)}{ci_pct(ref.get('clean_accuracy_ci'))}</td>"
        f"<td class='num'>{pct(acc)}{ci_pct(ci)}</td><td class='num'>{_signed_pp(acc - base if is_num(acc) and is_num(base) else None)}</td></tr>"
    )
    note = (
        "<p class='note'>The same attacks, with the same budgets, against the model without the defense: a defense "
        "earns its place only where the defended worst case under adaptive attacks is above the undefended one "
        "(rows where it is not are highlighted).</p>"
    )
    return scroll(f"<table class='versus'>{head}{clean}{''.join(body)}</table>") + note


def _cost(report: Mapping[str, Any]) -> str:
    cost = report.get("cost") or []
    if not cost:
        return ""
    rows = "".join(
        f"<tr class='cost'><td>{e(c.get('attack'))}</td><td class='num'>{num(c.get('units'))}</td>"
        f"<td class='num'>{num(c.get('queries'))}</td><td class='num'>{num(c.get('grad_evals'))}</td>"
        f"<td class='num'>{num(c.get('queries_per_sample'), '{:.1f}')}</td><td class='num'>{num(c.get('seconds'), '{:.2f}')}</td></tr>"
        for c in cost
    )
    head = (
        "<tr><th>attack</th><th class='num'>units</th><th class='num'>queries</th><th class='num'>grad evals</th>"
        "<th class='num'>queries / sample</th><th class='num'>seconds</th></tr>"
    )
    table = f"<table class='cost'>{head}{rows}</table>"
    return f"<section id='cost'><h2>Cost</h2>{scroll(table)}</section>"



# ------------------------------------------------------------------------------------------------
# gate
def parse_threshold(text: str) -> ThresholdSpec | None:
    """``"pgd:linf:0.1=0.5"`` (or ``=50%``) → a :class:`ThresholdSpec` (``None`` when the text is not
    in this syntax); the attack may be a naive-view label such as ``"pgd (naive)"``."""
    m = re.fullmatch(
        r"\s*([A-Za-z0-9_\-.]+(?: \(naive\))?)\s*:\s*(\w+)\s*:\s*([^=\s]+)\s*=\s*([^\s%]+)\s*(%?)\s*", text or ""
    )
    if not m:
        return None
    attack, norm, eps_s, min_s, percent = m.groups()
    try:
        eps, minimum = float(eps_s), float(min_s)
    except ValueError:
        raise ConfigError(f"--fail-under {text!r}: ε and the minimum must be numbers") from None
    return ThresholdSpec.from_text(  # type: ignore[no-any-return]
        text, attack=attack, norm=norm, eps=eps, min_robust_accuracy=minimum / (100.0 if percent else 1.0)
    )


# ------------------------------------------------------------------------------------------------
# the study
@register_study
class EvasionStudy(Study):
    """Evasion attacks × threats: robust accuracy per attack and ε, the per-sample worst case,
    cost, a gallery, hygiene flags and (with ``model.defense``) adaptive vs naive rows."""

    name = "evasion"
    title = "evasion attacks × threats: robust accuracy per attack and ε, worst case, hygiene flags"
    Block = EvasionBlock
    Threshold = ThresholdSpec
    sections: ClassVar[dict[str, dict[str, Any]]] = {**_SECTIONS, "defense": _DEFENSE}
    required_sections = ("results", "worst_case", "cost", "gallery")
    in_every_v1_report = True
    blocking_flags: ClassVar[frozenset[str]] = frozenset({
        "zero_gradients", "nondeterministic_outputs", "probabilities_not_logits", "black_box_beats_white_box",
        "no_full_break_at_large_eps", "randomized_without_eot", "no_gradient_path",
    })
    item_type_hints: ClassVar[dict[str, str]] = {"attacks": "must be an attack name or a mapping such as {name: pgd, steps: 20} or {preset: quick}"}

    def __init__(self, spec: AuditSpec, attacks: list[AttackChoice]) -> None:
        self.threats = list(spec.threats or [])
        self.attacks = attacks
        self.defended = spec.model.defense is not None
        self.batch_size = spec.batch_size
        self.seed = spec.seed
        self.headline_request = _headline_request(spec)
        adversary = getattr(spec, "adversary", None)
        self.knowledge = adversary.knowledge if adversary is not None else "white"
        self.max_queries = adversary.max_queries if adversary is not None else None
        #: why no gradient flows through the audited model (``None``: it does, or no attack needs
        #: one); set by :meth:`check`
        self.no_gradients: str | None = None

    @classmethod
    def present(cls, spec: AuditSpec) -> bool:
        return getattr(spec, "threats", None) is not None or bool({"attacks", "headline_eps"} & spec.model_fields_set)

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> EvasionStudy:
        attacks = resolve_attacks(spec)
        _check_threats(spec)
        adversary = getattr(spec, "adversary", None)
        if adversary is not None and adversary.goal is not None:
            want = adversary.goal == "targeted"
            for t, threat in enumerate(spec.threats or []):
                if threat.targeted != want:
                    raise ConfigError(
                        f"threats[{t}]: adversary.goal is {adversary.goal!r} but this threat is "
                        f"{'targeted' if threat.targeted else 'untargeted'}; set targeted: {str(want).lower()} on it"
                    )
        return cls(spec, attacks)

    def headline(self, report: Mapping[str, Any]) -> dict[str, Any] | None:
        """The verdict's clause: at the headline ε, the strongest attack's (or the worst case's) drop
        from clean accuracy, with its 95% interval.

        The headline ε is the one the user names (``headline_eps``), else the one the first evasion
        gate rule names (and then the rule's own metric is reported), else — on the first threat's
        norm — the largest ε at which the worst case leaves any sample standing (the smallest ε when
        none does): never an ε where everything is 0% by construction.
        """
        worst = [r for r in report.get("worst_case") or [] if is_num(r.get("eps"))]
        if not worst:
            return None
        rules = [r for r in (report.get("gate") or {}).get("rules") or [] if r.get("study") == self.name]
        attack = "worst_case"
        if self.headline_request is not None:
            norm, eps = self.headline_request
            source = "spec"
        elif rules:
            labels = rules[0]["labels"]
            norm, eps, attack = str(labels["norm"]), float(labels["eps"]), str(labels["attack"])
            source = "gate"
        else:
            norm = str(worst[0]["norm"])
            rows = sorted((r for r in worst if r["norm"] == norm), key=lambda r: float(r["eps"]))
            standing = [r for r in rows if (r.get("robust_count") or 0) > 0]
            eps = float((standing[-1] if standing else rows[0])["eps"])
            source = "default"
        w = next((r for r in worst if r["norm"] == norm and math.isclose(float(r["eps"]), eps, rel_tol=1e-9)), None)
        if w is None:
            return None
        results = [
            r for r in report.get("results") or []
            if r.get("norm") == norm and is_num(r.get("eps")) and math.isclose(float(r["eps"]), eps, rel_tol=1e-9)
        ]
        # the cross-check runs on a subsample: its counts are not comparable with the full rows'
        strongest = min(
            (r for r in results if _full_row(r) and r.get("robust_count") is not None),
            key=lambda r: int(r["robust_count"]), default=None,
        )
        if attack == "worst_case":
            row = w
            if strongest is not None and strongest.get("robust_count") == w.get("robust_count"):
                who = str(strongest["attack"])
            else:
                n_att = len(w.get("attacks") or [])
                who = f"the worst case over {n_att} attacks" + (
                    f" (strongest single attack: {strongest['attack']}, {_pct1(strongest.get('robust_accuracy'))})"
                    if strongest is not None else ""
                )
        else:
            row = next((r for r in results if r["attack"] == attack), w)
            who = attack
        scale = scale_text(report)
        ci = ci_text(row.get("robust_accuracy_ci"))
        text = (
            f"at {norm_name(norm)} ε={eps:g}{f' ({scale})' if scale else ''}, {who} takes accuracy from "
            f"{_pct1(report.get('clean_accuracy'))} to {_pct1(row.get('robust_accuracy'))}" + (f" ({ci})" if ci else "")
        )
        return {
            "study": self.name,
            "text": text,
            "metric": {"name": "robust_accuracy", "labels": {"attack": attack, "norm": norm, "eps": eps}},
            "norm": norm,
            "eps": eps,
            "source": source,
            "attack": attack,
            "strongest_attack": strongest["attack"] if strongest is not None else None,
            "clean_accuracy": report.get("clean_accuracy"),
            "robust_accuracy": row.get("robust_accuracy"),
            "robust_accuracy_ci": row.get("robust_accuracy_ci"),
        }

    @classmethod
    def hygiene_checks(cls) -> dict[str, str]:
        from gauntlet.audit.flags import CHECKS

        return CHECKS

    def hash_payload(self) -> dict[str, Any]:
        return {
            "threats": [t.model_dump(mode="json") for t in self.threats],
            "attacks": [{"label": a.label, "name": a.name, "params": a.params, "threats": list(a.threats)} for a in self.attacks],
        }

    def _budgets(self) -> dict[str, list[int]]:
        return {a.label: list(a.threats) for a in self.attacks}

    def check_threshold(self, th: Any, place: str) -> None:
        by_label = {a.label: a.threats for a in self.attacks}
        if self.defended:  # the naive-view runs may be gated too, when named explicitly
            by_label.update({naive_label(a.label): a.threats for a in self.attacks})
        labels = list(by_label)
        if th.attack != "worst_case" and th.attack not in labels:
            close = difflib.get_close_matches(th.attack, [*labels, "worst_case"], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            naive = "; runs against a naive view exist only when model.defense is set" if is_naive(th.attack) else ""
            raise ConfigError(
                f"{place}.attack: no attack labelled {th.attack!r} in attacks; {hint}use one of "
                + ", ".join(repr(x) for x in [*labels, "worst_case"])
                + naive
            )
        threat_ids = range(len(self.threats)) if th.attack == "worst_case" else by_label[th.attack]
        budgets = [eps for t in threat_ids if self.threats[t].norm == th.norm for eps in self.threats[t].eps]
        if not budgets:
            who = "no threat" if th.attack == "worst_case" else f"{th.attack} runs on no threat"
            raise ConfigError(f"{place}.norm: {who} with norm {th.norm!r}")
        if not any(math.isclose(th.eps, b, rel_tol=1e-9, abs_tol=1e-12) for b in budgets):
            raise ConfigError(
                f"{place}.eps: {th.norm} ε={th.eps:g} is not evaluated; the {th.norm} budgets are "
                + ", ".join(f"{b:g}" for b in budgets)
            )

    @classmethod
    def parse_threshold(cls, text: str) -> ThresholdSpec | None:
        return parse_threshold(text)

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        """Every attack can run on the model.  When some attack needs gradients, one small batch's
        input gradient is probed once: without a gradient path (no ``gradients`` capability, a cut
        graph, gradients exactly zero) the gradient attacks are replaced by Square (see
        :meth:`plan` and the ``no_gradient_path`` flag) instead of failing in the first unit."""
        from gauntlet.attacks import get_attack_class
        from gauntlet.audit.flags import gradient_path
        from gauntlet.errors import CapabilityError

        self.no_gradients = None
        if env.model.has("scores") and any(_needs_gradients(a.name) for a in self.attacks):
            k = min(int(env.x.shape[0]), GRADIENT_PROBE_SAMPLES)
            self.no_gradients = gradient_path(env.model, env.x[:k], env.y[:k])
        for a in self.attacks:
            missing = get_attack_class(a.name).requires - env.model.capabilities
            if self.no_gradients is not None:
                missing -= {"gradients"}  # replaced by Square in the plan
            if missing:
                use = (
                    "a decision-based attack such as 'hopskipjump' or 'boundary' (or adversary: {knowledge: labels})"
                    if "scores" in missing else "a score- or decision-based attack such as 'square'"
                )
                raise CapabilityError(
                    f"{a.place}: {a.name} needs {', '.join(sorted(missing))} but the model offers only "
                    f"{', '.join(sorted(env.model.capabilities))}; use {use}"
                )

    def units_for(self, n: int, spec_digest: str) -> list[Unit]:
        """All units for ``n`` samples, in report order: threat, then attack, then view (the
        adaptive view of ``model.defense`` or the plain model first, then the naive view), then batch."""
        views = (False, True) if self.defended else (False,)
        units: list[Unit] = []
        for t, threat in enumerate(self.threats):
            eps = tuple(float(v) for v in threat.eps)
            for a in self.attacks:
                if t not in a.threats:
                    continue
                for naive in views:
                    label = naive_label(a.label) if naive else a.label
                    for start in range(0, n, self.batch_size):
                        stop = min(n, start + self.batch_size)
                        key = unit_key(spec_digest, label, threat.norm, eps, threat.targeted, start, stop)
                        units.append(
                            Unit(
                                key=key, attack_label=label, attack_name=a.name, params=dict(a.params),
                                norm=threat.norm, eps=eps, targeted=threat.targeted, start=start, stop=stop,
                                seed=unit_seed(self.seed, key), naive=naive,
                            )
                        )
        return units

    def plan(self, env: AuditEnv, spec_digest: str) -> list[Unit]:
        """The spec's units (:meth:`units_for`), then a Square cross-check at every threat that only
        gradient attacks evaluate; without a gradient path, Square stand-ins instead of the gradient
        attacks' units."""
        n = int(env.x.shape[0])
        units = self.units_for(n, spec_digest)
        if self.no_gradients is not None:
            kept = [u for u in units if not _needs_gradients(u.attack_name)]
            _, stand_ins, _ = self._stand_ins()
            for t, queries in stand_ins:
                kept += self._batches(spec_digest, NO_GRADIENTS_LABEL, {"max_queries": queries}, self.threats[t], 0, n)
            return kept
        return units + self._cross_checks(env, spec_digest) + self._undefended(n, spec_digest)

    def _undefended(self, n: int, spec_digest: str) -> list[Unit]:
        """With ``model.defense``: every attack × threat once more against the undefended model, so
        the report reads the defended numbers against what the defense is meant to improve."""
        if not self.defended:
            return []
        units: list[Unit] = []
        for t, threat in enumerate(self.threats):
            eps = tuple(float(v) for v in threat.eps)
            for a in self.attacks:
                if t not in a.threats:
                    continue
                label = a.label + UNDEFENDED_SUFFIX
                for start in range(0, n, self.batch_size):
                    stop = min(n, start + self.batch_size)
                    key = work_key(spec_digest, "undefended", label, threat.norm, list(eps), threat.targeted, start, stop)
                    units.append(Unit(
                        key=key, attack_label=label, attack_name=a.name, params=dict(a.params), norm=threat.norm,
                        eps=eps, targeted=threat.targeted, start=start, stop=stop, seed=work_seed(self.seed, key),
                        undefended=True,
                    ))
        return units

    def _batches(
        self, spec_digest: str, label: str, params: dict[str, Any], threat: ThreatSpec, start: int, stop: int,
        eps: tuple[float, ...] | None = None, cross_check: bool = False,
    ) -> list[Unit]:
        """Square units over samples ``start:stop`` in batches, keyed by what they compute."""
        eps = eps if eps is not None else tuple(float(v) for v in threat.eps)
        out = []
        for a in range(start, stop, self.batch_size):
            b = min(stop, a + self.batch_size)
            if cross_check:
                key = work_key(spec_digest, "cross-check", label, threat.norm, list(eps), threat.targeted, a, b, params)
            else:
                key = unit_key(spec_digest, label, threat.norm, eps, threat.targeted, a, b)
            out.append(Unit(
                key=key, attack_label=label, attack_name="square", params=dict(params), norm=threat.norm, eps=eps,
                targeted=threat.targeted, start=a, stop=b, seed=work_seed(self.seed, key),
            ))
        return out

    def _stand_ins(self) -> tuple[list[str], list[tuple[int, int]], list[str]]:
        """Without a gradient path: the replaced attack labels, the threats that get Square instead
        (index, query budget) and the threats no score-based attack can evaluate (L1)."""
        from gauntlet.attacks import get_attack_class

        replaced = [a.label for a in self.attacks if _needs_gradients(a.name)]
        stand_ins: list[tuple[int, int]] = []
        skipped: list[str] = []
        for t, threat in enumerate(self.threats):
            gone = [a for a in self.attacks if t in a.threats and _needs_gradients(a.name)]
            if not gone or any(t in a.threats and not _needs_gradients(a.name) for a in self.attacks):
                continue  # nothing replaced here, or a score-based spec attack still evaluates it
            if threat.norm not in get_attack_class("square").norms:
                skipped.append(f"threats[{t}] ({threat.norm})")
                continue
            ensembles = [int(a.params.get("square_queries", 5000)) for a in gone if a.name in _ENSEMBLES]
            stand_ins.append((t, max([NO_GRADIENTS_QUERIES, *ensembles])))
        return replaced, stand_ins, skipped

    def _cross_checks(self, env: AuditEnv, spec_digest: str) -> list[Unit]:
        """Square (``CROSS_CHECK_QUERIES`` queries) at one ε of every untargeted L∞/L2 threat that
        only gradient attacks evaluate, on the samples up to the ``CROSS_CHECK_POINTS``-th correctly
        classified one."""
        from gauntlet.attacks import get_attack_class

        if not env.model.has("scores"):
            return []
        n = int(env.x.shape[0])
        pred = env.clean_pred
        correct = (pred == env.y).nonzero().flatten().tolist() if pred is not None else list(range(n))
        if not correct:
            return []
        stop = int(correct[min(CROSS_CHECK_POINTS, len(correct)) - 1]) + 1
        units: list[Unit] = []
        for t, threat in enumerate(self.threats):
            mine = [a for a in self.attacks if t in a.threats]
            if threat.targeted or threat.norm not in get_attack_class("square").norms or not mine:
                continue
            if any(_score_based(a.name) for a in mine):
                continue  # Square (or AutoAttack, which ends with it) already runs here
            eps = (self._cross_check_eps(threat, env),)
            units += self._batches(
                spec_digest, CROSS_CHECK_LABEL, {"max_queries": CROSS_CHECK_QUERIES}, threat, 0, stop, eps, cross_check=True
            )
        return units

    def _cross_check_eps(self, threat: ThreatSpec, env: AuditEnv) -> float:
        """``headline_eps`` when this threat evaluates it, else the threat's largest ε below half
        the input range (the large-ε probe's budget), else its smallest."""
        from gauntlet.audit.flags import large_eps

        request = getattr(self, "headline_request", None)
        if request is not None and request[0] == threat.norm:
            for b in threat.eps:
                if math.isclose(float(b), float(request[1]), rel_tol=1e-9, abs_tol=1e-12):
                    return float(b)
        limit = large_eps(threat.norm, tuple(env.model.bounds), int(env.x[0].numel()))
        below = [float(b) for b in threat.eps if float(b) < limit * (1 - 1e-9)]
        return max(below) if below else float(min(threat.eps))

    def run(self, env: AuditEnv, unit: Unit) -> dict[str, Any]:
        if unit.undefended:  # the model without the defense: its own clean predictions
            sl = slice(unit.start, unit.stop)
            with torch.no_grad():
                pred = torch.zeros_like(env.y)
                pred[sl] = env.base_model.predict(env.x[sl]).to(env.y.device)
            rec = run_unit(env.base_model, env.x, env.y, unit, pred)
            clean = (pred[sl] == env.y[sl]).tolist()
            return {**asdict(rec), "eps": list(rec.eps), "targeted": bool(unit.targeted), "clean_correct": clean}
        model = env.naive_model if unit.naive else env.model
        rec = run_unit(model, env.x, env.y, unit, env.clean_pred)
        return {**asdict(rec), "eps": list(rec.eps), "targeted": bool(unit.targeted)}

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        undefended = [r for r in records if is_undefended(str(r["attack"]))]
        units = [record_of(r) for r in records if not is_undefended(str(r["attack"]))]
        clean = [bool(c) for c in clean_correct]
        out = StudyOutput(sections=sections_of(units, clean))
        strength = out.sections["evaluation_strength"] = self.strength(units)
        if not strength["ensemble"] and self.knowledge == "white":  # (no ensemble exists for a black-box adversary)
            out.flags.append(self._no_ensemble_flag(strength))
        if env is not None:
            from gauntlet.audit.flags import compute_flags, no_gradient_path_flag

            _reseed(env.model, self.seed)
            flags = compute_flags(env.model, env.x, env.y, units, clean, seed=self.seed, gradients=self.no_gradients is None)
            if self.no_gradients is not None:
                replaced, stand_ins, skipped = self._stand_ins()
                ran = [
                    {"label": NO_GRADIENTS_LABEL, "queries": q, "threat": f"{self.threats[t].norm} ε="
                     + ", ".join(f"{float(v):g}" for v in self.threats[t].eps)}
                    for t, q in stand_ins
                ]
                flags.insert(0, no_gradient_path_flag(self.no_gradients, replaced, ran, skipped))
            out.flags = flags + out.flags
            _reseed(env.model, self.seed)
            shown = [u for u in units if not is_naive(u.attack) and not is_cross_check(u.attack)]
            out.sections["gallery"] = _gallery(self, env, shown, clean)
        if self.defended and env is not None and env.defense_info is not None:
            d = env.defense_info
            out.sections["defense"] = {
                "name": d.get("name"),
                "params": d.get("params") or {},
                "randomized": bool(d.get("randomized", False)),
                "eot_samples": int(d.get("eot_samples") or 1),
                "rows": defense_rows(out.sections["results"]),
            }
            if undefended:
                ref = undefended_section(undefended, len(clean))
                out.sections["defense"]["undefended"] = ref
                out.sections["defense"]["versus"] = versus_rows(out.sections["worst_case"], ref["worst_case"])
                out.sections["cost"] = out.sections["cost"] + ref.pop("cost")
        return out

    @classmethod
    def outcomes(cls, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> dict[tuple[str, Any], list[bool | None]]:
        audited = [record_of(r) for r in records if not is_undefended(str(r["attack"]))]
        agg = aggregate(audited, [bool(c) for c in clean_correct])
        return {
            ("robust_accuracy", (("attack", a), ("eps", e), ("norm", nm))): v for (a, nm, e), v in agg.robust.items()
        }

    def strength(self, units: Sequence[UnitRecord] = ()) -> dict[str, Any]:
        """Which attacks ran — the spec's (less those replaced for want of a gradient path), then the
        study's own Square runs found in ``units`` (cross-check, stand-ins) — and whether an
        AutoAttack-grade (parameter-free, worst-case) ensemble was among them."""
        ran = [a for a in self.attacks if self.no_gradients is None or not _needs_gradients(a.name)]
        attacks = [{"label": a.label, "name": a.name} for a in ran]
        seen = {a.label for a in ran}
        for u in units:
            if u.attack not in seen and not is_naive(u.attack):
                seen.add(u.attack)
                attacks.append({"label": u.attack, "name": u.attack_name})
        out: dict[str, Any] = {"attacks": attacks, "ensemble": any(a["name"] in _ENSEMBLES for a in attacks)}
        if self.knowledge != "white":  # a black-box adversary: what it may query, and how often
            out["adversary"] = {"knowledge": self.knowledge, "max_queries": self.max_queries}
        return out

    def _no_ensemble_flag(self, strength: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from gauntlet.audit.flags import CHECKS

        labels = [a["label"] for a in (strength or self.strength())["attacks"]]
        ran = ", ".join(labels)
        return {
            "id": "no_ensemble",
            "severity": "warning",
            "title": CHECKS["no_ensemble"],
            "explanation": (
                f"Only {ran} ran. Single attacks with fixed settings under-estimate the attacker: the robust accuracy "
                "they leave is an upper bound on the model's, often far above it on defended or masked models. For a "
                "number to ship on, add the AutoAttack ensemble ({preset: standard} or 'autoattack'), whose "
                "parameter-free attacks run on every point still standing."
            ),
            "evidence": {"attacks": labels},
        }

    def manifest(self, units: Sequence[Any]) -> dict[str, Any]:
        return {
            "units": len(units),
            "attacks": [{"label": a.label, "name": a.name, "params": a.params, "preset": a.preset} for a in self.attacks],
            "naive_units": sum(1 for u in units if u.naive),
        }

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for r in report.get("results") or []:
            attack = str(r["attack"])
            out.append(_metric(attack, r, regression=not (is_naive(attack) or is_cross_check(attack))))
        for r in report.get("worst_case") or []:
            out.append(_metric("worst_case", r, headline=True))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        if not cls.in_report(report):
            return ""
        return "".join([
            _plots_section(report), _results(report), _queries_section(report), _defense(report), _gallery_html(report),
            _cost(report),
        ])

    @classmethod
    def cards(cls, report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        cards = []
        by_norm: dict[str, list[Mapping[str, Any]]] = {}
        for r in report.get("worst_case") or []:
            by_norm.setdefault(str(r.get("norm")), []).append(r)
        verdict = report.get("verdict")
        headline = verdict.get("headline") if isinstance(verdict, Mapping) else None
        for norm, rows in by_norm.items():
            rows = sorted(rows, key=lambda r: float(r["eps"]) if is_num(r.get("eps")) else 0.0)
            # the headline ε where the verdict names one on this norm, else the largest
            lead = next((r for r in rows if is_num(r.get("eps")) and _is_headline(headline, norm, float(r["eps"]))), rows[-1])
            others = [r for r in rows if r is not lead][-3:]
            detail = ", ".join(f"ε={eps_text(r.get('eps'))}: {pct(r.get('robust_accuracy'))}" for r in others)
            value = pct(lead.get("robust_accuracy")) + ci_pct(lead.get("robust_accuracy_ci"))
            cards.append((f"Worst case · {e(norm_name(norm))} ε={eps_text(lead.get('eps'))}", value, detail))
        return cards

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        rows = list(report.get("results") or [])
        worst = list(report.get("worst_case") or [])
        if not rows and not worst:
            return []
        width = max([len(str(r["attack"])) for r in rows] + [len("worst_case")])
        lines = [f"{'attack':<{width}}  norm  {'ε':>7}  robust  success  median δ  queries  seconds"]
        for r in rows + [{**w, "attack": "worst_case"} for w in worst]:
            med = r.get("median_perturbation")
            med_s = f"{med:8.4g}" if med is not None else "       -"
            sec = r.get("seconds")
            lines.append(
                f"{r['attack']:<{width}}  {r['norm']:<4}  {float(r['eps']):>7g}  {_pct6(r.get('robust_accuracy'))}  "
                f"{_pct6(r.get('success_rate'))}   {med_s}  {r.get('queries', ''):>7}  "
                + (f"{sec:7.2f}" if isinstance(sec, (int, float)) else "")
            )
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        by_norm: dict[str, list[str]] = {}
        for r in report.get("worst_case") or []:
            by_norm.setdefault(str(r.get("norm")), []).append(f"ε={float(r['eps']):g} {_pct1(r.get('robust_accuracy'))}")
        return [f"worst case {norm} " + ", ".join(cells) for norm, cells in by_norm.items()]


def _pct1(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _pct6(v: float | None) -> str:
    return "     -" if v is None else f"{100 * v:5.1f}%"


def _metric(attack: str, row: Mapping[str, Any], regression: bool = True, headline: bool = False) -> Metric:
    eps = float(row["eps"])
    return Metric(
        study="evasion",
        name="robust_accuracy",
        labels={"attack": attack, "norm": str(row["norm"]), "eps": eps},
        value=row.get("robust_accuracy"),
        count=row.get("robust_count"),
        n=row.get("n"),
        what=f"{attack} {row['norm']} ε={eps:g}",
        title="robust accuracy",
        regression=regression,
        headline=headline,
    )


def record_of(r: Mapping[str, Any] | UnitRecord) -> UnitRecord:
    """A stored evasion record (a dict) as a :class:`UnitRecord`."""
    if isinstance(r, UnitRecord):
        return r
    return UnitRecord(
        attack=str(r["attack"]),
        attack_name=str(r["attack_name"]),
        params=dict(r["params"]),
        norm=str(r["norm"]),
        eps=tuple(float(v) for v in r["eps"]),
        start=int(r["start"]),
        stop=int(r["stop"]),
        success=[[bool(b) for b in row] for row in r["success"]],
        norms=[[float(v) for v in row] for row in r["norms"]],
        queries=int(r["queries"]),
        grad_evals=int(r["grad_evals"]),
        seconds=float(r["seconds"]),
        queries_per_sample=(
            [[int(v) for v in row] for row in r["queries_per_sample"]] if r.get("queries_per_sample") is not None else None
        ),
    )


def sections_of(units: Sequence[UnitRecord | Mapping[str, Any]], clean_correct: Sequence[bool]) -> dict[str, Any]:
    """``results``, ``worst_case``, ``cost`` and an empty ``gallery`` from evasion records."""
    agg = aggregate([record_of(u) for u in units], [bool(c) for c in clean_correct])
    return {"results": agg.results, "worst_case": agg.worst_case, "cost": agg.cost, "gallery": []}
