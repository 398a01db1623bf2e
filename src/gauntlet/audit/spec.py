"""The audit spec: what to audit (model, data), against what (threats, attacks), and the gate.

:func:`load_spec` reads a YAML file (or takes a dict), validates it with pydantic and the attack
registry, and returns an :class:`AuditSpec`.  Every error is a one-line
:class:`~gauntlet.errors.ConfigError` that starts with its place in the file, e.g.
``threats[1].eps[0]: must be > 0, got -0.1 (spec.yaml, line 7)``.

The shape users write::

    model: {path: model.pt, name: digits-cnn, version: "3"}
    data: {name: digits, n: 500, seed: 0}          # or {path: test.npz}
    threats:
      - {norm: linf, eps: [0.05, 0.1, 0.2]}
    attacks: [fgsm, {name: pgd, steps: 20}]        # or {preset: standard}
    thresholds:
      - {attack: pgd, norm: linf, eps: 0.1, min_robust_accuracy: 0.5}

Optional defense blocks (see ``docs/audit.md``)::

    model: {path: model.pt, defense: {name: bit_depth_reduction, bits: 1}}   # adaptive + naive runs
    certify: [{name: ibp, eps: [0.01, 0.03]}, {name: randomized_smoothing, sigma: 0.25, n: 1000}]
    detect: [{name: feature_squeezing_detector, fpr: 0.05, calibration: 200, attacks: [pgd]}]
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gauntlet.audit.records import NAIVE_SUFFIX, is_naive, naive_label
from gauntlet.errors import ConfigError, GauntletError

__all__ = [
    "PRESETS",
    "AttackChoice",
    "AttackItem",
    "AuditSpec",
    "CertifyChoice",
    "CertifySpec",
    "DataSpec",
    "DefenseChoice",
    "DefenseSpec",
    "DetectChoice",
    "DetectSpec",
    "ModelSpec",
    "ThreatSpec",
    "ThresholdSpec",
    "check_threshold",
    "load_spec",
    "resolve_attacks",
    "resolve_certify",
    "resolve_defense",
    "resolve_detect",
    "spec_hash",
]

NORM_NAMES = ("linf", "l2", "l1")
Norm = Literal["linf", "l2", "l1"]

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


# ------------------------------------------------------------------------------------------------
# field types
def _positive(v: float) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"must be a finite number > 0, got {v!r}")
    return float(v)


def _probability(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"must be in [0, 1] (a fraction, e.g. 0.5 for 50%), got {v!r}")
    return float(v)


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _as_str(v: Any) -> Any:
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _open_unit(v: float) -> float:
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise ValueError(f"must be a number in (0, 1), e.g. 0.05 for a 5% false-positive rate, got {v!r}")
    return float(v)


def _non_negative(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a finite number >= 0, got {v!r}")
    return float(v)


def _str_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


def _inline_params(v: Any, keys: tuple[str, ...]) -> Any:
    """``"name"`` → ``{name: ...}``; a mapping's keys other than ``keys`` and ``params`` become
    parameters (inline ``{name: pgd, steps: 20}`` or nested ``{name: pgd, params: {steps: 20}}``)."""
    if isinstance(v, str):
        return {"name": v}
    if not isinstance(v, Mapping):
        return v
    v = dict(v)
    out: dict[str, Any] = {k: v.pop(k) for k in keys if k in v}
    params = v.pop("params", {})
    if not isinstance(params, Mapping):
        return {**out, "params": params}  # pydantic reports the type error
    out["params"] = {**dict(params), **v}
    return out


Number = Annotated[float, Field(strict=True)]
PositiveFloat = Annotated[float, Field(strict=True), AfterValidator(_positive)]
Fraction = Annotated[float, Field(strict=True), AfterValidator(_probability)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True, min_length=1)]
Version = Annotated[str, BeforeValidator(_as_str), Field(strict=True, min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DefenseSpec(_Strict):
    """``model.defense``: a preprocessing defense in front of the model.

    The audited model is the defense's *adaptive* wrap (BPDA + EOT, Athalye et al. 2018); every
    attack also runs against the *naive* wrap, as units labelled ``"<label> (naive)"``.
    ``eot_samples`` (randomized defenses only) is the number of EOT draws per gradient.
    """

    name: Text
    eot_samples: Annotated[int, Field(strict=True, ge=1)] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return _inline_params(v, ("name", "eot_samples"))


class ModelSpec(_Strict):
    """The model file and how to load it (see :func:`gauntlet.models.load`)."""

    path: Text
    name: Text | None = None
    version: Version | None = None
    arch: Text | None = None
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    trust: Bool = False
    bounds: tuple[Number, Number] = (0.0, 1.0)
    num_classes: Annotated[int, Field(strict=True, ge=2)] | None = None
    mean: Number | list[Number] | None = None
    std: Number | list[Number] | None = None
    input_shape: list[Annotated[int, Field(strict=True, ge=1)]] | None = None
    defense: DefenseSpec | None = None

    @field_validator("bounds")
    @classmethod
    def _bounds_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"must be [low, high] with low < high, got {list(v)!r}")
        return (float(v[0]), float(v[1]))

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).stem


class DataSpec(_Strict):
    """A builtin dataset ``name`` or a ``path``; a reproducible random subset of ``n`` samples."""

    name: Text | None = None
    path: Text | None = None
    split: Text = "test"
    n: Annotated[int, Field(strict=True, ge=1)] | None = None
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.name is None) == (self.path is None):
            raise ValueError(
                "give exactly one of name (a builtin such as 'digits') or path (a file or folder), got "
                + ("both" if self.name is not None else "neither")
            )
        return self


class ThreatSpec(_Strict):
    """An adversary: a norm, the budgets ε to evaluate, untargeted or targeted."""

    norm: Norm
    eps: Annotated[list[PositiveFloat], BeforeValidator(_as_list), Field(min_length=1)]
    targeted: Bool = False


class AttackItem(_Strict):
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
    def _name_or_preset(self) -> "AttackItem":
        if (self.name is None) == (self.preset is None):
            raise ValueError("give an attack name (e.g. 'pgd' or {name: pgd, steps: 20}) or {preset: quick|standard|thorough}")
        return self


def _attacks_list(v: Any) -> Any:
    return [v] if isinstance(v, (Mapping, str)) else v


class ThresholdSpec(_Strict):
    """Gate: robust accuracy of ``attack`` (a label or ``worst_case``) at (norm, ε) must be ≥ the minimum."""

    attack: Text
    norm: Norm
    eps: PositiveFloat
    min_robust_accuracy: Fraction

    def describe(self) -> str:
        return f"{self.attack}:{self.norm}:{self.eps:g}={self.min_robust_accuracy:g}"


class CertifySpec(_Strict):
    """One ``certify`` item: a certification defense (``randomized_smoothing``, ``ibp``) and its
    parameters, run on the undefended model over the audited samples; ``radii`` are the points of
    the certified-accuracy-vs-radius curve (default: the method's own, see
    :meth:`~gauntlet.defenses.certify.Certification.default_radii`)."""

    name: Text
    radii: Annotated[
        list[Annotated[float, Field(strict=True), AfterValidator(_non_negative)]],
        BeforeValidator(_as_list),
        Field(min_length=1),
    ] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return _inline_params(v, ("name", "radii"))


class DetectSpec(_Strict):
    """One ``detect`` item: a detector fitted and calibrated on the first ``calibration`` audited
    samples (at false-positive rate ``fpr``) and evaluated on the rest against ``attacks`` (labels
    from ``attacks``), plain and — with ``adaptive`` — detector-aware (Carlini & Wagner 2017)."""

    name: Text
    fpr: Annotated[float, Field(strict=True), AfterValidator(_open_unit)] = 0.05
    calibration: Annotated[int, Field(strict=True, ge=2)] | None = None
    attacks: Annotated[list[Text], BeforeValidator(_str_list), Field(min_length=1)] | None = None
    adaptive: Bool = True
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return _inline_params(v, ("name", "fpr", "calibration", "attacks", "adaptive"))


class AuditSpec(_Strict):
    """A validated audit spec (build it with :func:`load_spec`)."""

    model: ModelSpec
    data: DataSpec
    threats: Annotated[list[ThreatSpec], Field(min_length=1)]
    attacks: Annotated[list[AttackItem], BeforeValidator(_attacks_list), Field(min_length=1)] = Field(
        default_factory=lambda: [AttackItem(preset="standard")]
    )
    thresholds: list[ThresholdSpec] = Field(default_factory=list)
    certify: Annotated[list[CertifySpec], BeforeValidator(_attacks_list)] = Field(default_factory=list)
    detect: Annotated[list[DetectSpec], BeforeValidator(_attacks_list)] = Field(default_factory=list)
    batch_size: Annotated[int, Field(strict=True, ge=1)] = 250
    seed: Annotated[int, Field(strict=True, ge=0)] = 0

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the spec are resolved against (the spec file's folder)."""
        return self._base_dir

    @property
    def source(self) -> str | None:
        """The spec file the spec was read from, if any."""
        return self._source

    def model_path(self) -> Path:
        return _resolve(self.model.path, self._base_dir)

    def data_source(self) -> str | Path:
        """The dataset name, or its path resolved against :attr:`base_dir`."""
        return self.data.name if self.data.name is not None else _resolve(self.data.path or "", self._base_dir)

    def with_base_dir(self, base_dir: str | os.PathLike[str], source: str | None = None) -> "AuditSpec":
        self._base_dir = Path(base_dir)
        self._source = source
        return self


def _resolve(p: str, base: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


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


def _place(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "spec"


def _accepts_targeted(cls: type) -> bool:
    return "targeted" in cls._param_names()  # type: ignore[attr-defined]


def resolve_attacks(spec: AuditSpec) -> list[AttackChoice]:
    """Expand presets and check every attack against the registry and every threat it runs on.

    Raises :class:`ConfigError` naming ``attacks[i]`` for unknown names, unknown or invalid
    parameters, norms or targeting the attack does not support, and duplicate labels.
    """
    from gauntlet.attacks import create, get_attack_class

    out: list[AttackChoice] = []
    labels: dict[str, str] = {}
    for i, item in enumerate(spec.attacks):
        entries = PRESETS[item.preset] if item.preset else [(item.name or "", dict(item.params))]
        for name, params in entries:
            place = f"attacks[{i}]"
            try:
                cls = get_attack_class(name)
            except GauntletError as err:
                hint = f"; for the preset write {{preset: {name}}}" if name in PRESETS else ""
                raise ConfigError(f"{place}: {err}{hint}") from None
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
                if threat.targeted and not _accepts_targeted(cls):
                    if item.preset:
                        continue
                    raise ConfigError(f"{place}: {name} has no targeted mode but threats[{t}] is targeted")
                try:
                    create(name, **_attack_kwargs(cls, threat.norm, threat.eps, threat.targeted, params))
                except GauntletError as err:
                    raise ConfigError(_param_message(name, place, str(err))) from None
                threats.append(t)
            label = item.label if (item.label and not item.preset) else name
            if is_naive(label):
                raise ConfigError(
                    f"{place}.label: labels ending in {NAIVE_SUFFIX.strip()!r} are reserved for the runs against "
                    "the naive view of model.defense; choose another label"
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


def _attack_kwargs(cls: type, norm: str, eps: Any, targeted: bool, params: Mapping[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"norm": norm, "eps": list(eps), **params}
    if _accepts_targeted(cls):
        kw["targeted"] = targeted
    return kw


def _param_message(name: str, place: str, msg: str) -> str:
    """``pgd: parameter 'steps' must be ...`` → ``attacks[1].steps: must be ...``."""
    prefix = f"{name}: parameter '"
    if msg.startswith(prefix):
        key, sep, tail = msg[len(prefix):].partition("' ")
        if sep:
            return f"{place}.{key}: {tail}"
    return f"{place}: {msg}"


# ------------------------------------------------------------------------------------------------
# semantic checks
def _check_threats(spec: AuditSpec) -> None:
    seen: dict[tuple[str, float], str] = {}
    for t, threat in enumerate(spec.threats):
        for e, eps in enumerate(threat.eps):
            key = (threat.norm, round(eps, 12))
            if key in seen:
                raise ConfigError(
                    f"threats[{t}].eps[{e}]: {threat.norm} ε={eps:g} already appears at {seen[key]}; "
                    "each (norm, ε) may appear once"
                )
            seen[key] = f"threats[{t}].eps[{e}]"


def check_threshold(spec: AuditSpec, th: ThresholdSpec, place: str, attacks: list[AttackChoice] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``th`` names an attack and a (norm, ε) the spec evaluates."""
    attacks = resolve_attacks(spec) if attacks is None else attacks
    by_label = {a.label: a.threats for a in attacks}
    if spec.model.defense is not None:  # the naive-view runs may be gated too, when named explicitly
        by_label.update({naive_label(a.label): a.threats for a in attacks})
    labels = list(by_label)
    if th.attack != "worst_case" and th.attack not in labels:
        close = difflib.get_close_matches(th.attack, labels + ["worst_case"], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        naive = "; runs against a naive view exist only when model.defense is set" if is_naive(th.attack) else ""
        raise ConfigError(
            f"{place}.attack: no attack labelled {th.attack!r} in attacks; {hint}use one of "
            + ", ".join(repr(x) for x in labels + ["worst_case"])
            + naive
        )
    threat_ids = range(len(spec.threats)) if th.attack == "worst_case" else by_label[th.attack]
    budgets = [eps for t in threat_ids if spec.threats[t].norm == th.norm for eps in spec.threats[t].eps]
    if not budgets:
        who = "no threat" if th.attack == "worst_case" else f"{th.attack} runs on no threat"
        raise ConfigError(f"{place}.norm: {who} with norm {th.norm!r}")
    if not any(math.isclose(th.eps, b, rel_tol=1e-9, abs_tol=1e-12) for b in budgets):
        raise ConfigError(
            f"{place}.eps: {th.norm} ε={th.eps:g} is not evaluated; the {th.norm} budgets are "
            + ", ".join(f"{b:g}" for b in budgets)
        )


# ------------------------------------------------------------------------------------------------
# defenses: model.defense, certify, detect
@dataclass(frozen=True)
class DefenseChoice:
    """``model.defense`` resolved: registry name, parameters and the EOT draws asked for."""

    name: str
    params: dict[str, Any]
    eot_samples: int | None
    randomized: bool

    def create(self) -> Any:
        from gauntlet.defenses.registry import create

        return create(self.name, **self.params)


@dataclass(frozen=True)
class CertifyChoice:
    """One ``certify`` item resolved."""

    index: int
    name: str
    params: dict[str, Any]
    radii: tuple[float, ...] | None
    norm: str

    @property
    def place(self) -> str:
        return f"certify[{self.index}]"

    def create(self) -> Any:
        from gauntlet.defenses.registry import create

        return create(self.name, **self.params)


@dataclass(frozen=True)
class DetectAttack:
    """One attack a detector is evaluated against: ``key`` names its rows in the report."""

    key: str
    label: str
    attack_name: str
    params: dict[str, Any]
    norm: str
    eps: tuple[float, ...]

    def create(self) -> Any:
        from gauntlet.attacks import create, get_attack_class

        kwargs: dict[str, Any] = {"norm": self.norm, "eps": list(self.eps), **self.params}
        if _accepts_targeted(get_attack_class(self.attack_name)):
            kwargs["targeted"] = False
        return create(self.attack_name, **kwargs)


@dataclass(frozen=True)
class DetectChoice:
    """One ``detect`` item resolved: the detector, its calibration and the attacks it faces."""

    index: int
    name: str
    params: dict[str, Any]
    fpr: float
    calibration: int | None
    adaptive: bool
    attacks: tuple[DetectAttack, ...]

    @property
    def place(self) -> str:
        return f"detect[{self.index}]"

    def create(self) -> Any:
        from gauntlet.defenses.registry import create

        return create(self.name, **self.params)

    def calibration_for(self, n: int) -> int:
        """Samples used to fit and calibrate the detector when ``n`` are audited (default: half)."""
        return self.calibration if self.calibration is not None else n // 2


_KIND_WORDS = {
    "preprocessing": "a preprocessing defense",
    "certification": "a certification method",
    "detector": "a detector",
}


def _defense_class(name: str, kind: str, place: str, what: str) -> type:
    from gauntlet.defenses.registry import get_defense_class, list_defenses

    allowed = ", ".join(list_defenses(kind))
    try:
        cls = get_defense_class(name)
    except GauntletError as err:
        raise ConfigError(f"{place}.name: {err}; {what} takes {_KIND_WORDS[kind]}: {allowed}") from None
    if cls.kind != kind:
        raise ConfigError(
            f"{place}.name: {name!r} is a {cls.kind} defense, but {what} takes {_KIND_WORDS[kind]}: {allowed}"
        )
    return cls


def _check_defense_params(cls: type, params: Mapping[str, Any], place: str) -> Any:
    """Build the defense from ``params`` (its constructor validates them); place-named errors."""
    accepted = cls._param_names()  # type: ignore[attr-defined]
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no parameters"
            raise ConfigError(f"{place}.{key}: {cls.name} has no parameter {key!r}; {hint}{takes}")  # type: ignore[attr-defined]
    try:
        return cls(**params)
    except GauntletError as err:
        raise ConfigError(_param_message(cls.name, place, str(err).splitlines()[0])) from None  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{place}: invalid parameters for {cls.name} ({exc})") from None  # type: ignore[attr-defined]


def resolve_defense(spec: AuditSpec) -> DefenseChoice | None:
    """Check ``model.defense`` against the registry (a preprocessing defense, valid parameters,
    ``eot_samples`` only for randomized transforms); ``None`` when the spec has none."""
    d = spec.model.defense
    if d is None:
        return None
    place = "model.defense"
    cls = _defense_class(d.name, "preprocessing", place, place)
    _check_defense_params(cls, d.params, place)
    randomized = bool(getattr(cls, "randomized", False))
    if d.eot_samples is not None and d.eot_samples > 1 and not randomized:
        raise ConfigError(
            f"{place}.eot_samples: {d.name} is deterministic, so EOT has nothing to average; "
            "leave eot_samples unset (it only applies to randomized defenses)"
        )
    return DefenseChoice(d.name, dict(d.params), d.eot_samples, randomized)


def resolve_certify(spec: AuditSpec) -> list[CertifyChoice]:
    """Check every ``certify`` item (a certification method, valid parameters)."""
    out = []
    for i, item in enumerate(spec.certify):
        place = f"certify[{i}]"
        cls = _defense_class(item.name, "certification", place, "certify")
        _check_defense_params(cls, item.params, place)
        radii = tuple(sorted(set(item.radii))) if item.radii is not None else None
        out.append(CertifyChoice(i, item.name, dict(item.params), radii, str(getattr(cls, "norm", ""))))
    return out


def resolve_detect(spec: AuditSpec, attacks: list[AttackChoice] | None = None) -> list[DetectChoice]:
    """Check every ``detect`` item: a detector with valid parameters, a calibration size below
    ``data.n``, and attack labels that name spec attacks with an untargeted threat.

    An item without ``attacks`` uses every attack listed by name (not through a preset), or
    ``pgd`` with its defaults when there is none.  Each attack runs on the union of the ε of its
    untargeted threats, per norm.
    """
    if not spec.detect:
        return []
    attacks = resolve_attacks(spec) if attacks is None else attacks
    untargeted = [t for t, th in enumerate(spec.threats) if not th.targeted]
    out = []
    for i, item in enumerate(spec.detect):
        place = f"detect[{i}]"
        cls = _defense_class(item.name, "detector", place, "detect")
        _check_defense_params(cls, item.params, place)
        if not untargeted:
            raise ConfigError(f"{place}: detectors are evaluated with untargeted attacks, but every threat is targeted; add an untargeted threat")
        if spec.data.n is not None and item.calibration is not None and item.calibration >= spec.data.n:
            raise ConfigError(
                f"{place}.calibration: must be < data.n ({spec.data.n}) so that samples remain to evaluate the "
                f"detector on, got {item.calibration}"
            )
        chosen: list[tuple[str, str, dict[str, Any], tuple[int, ...]]] = []
        if item.attacks is None:
            chosen = [(a.label, a.name, a.params, a.threats) for a in attacks if a.preset is None and set(a.threats) & set(untargeted)]
            if not chosen:
                from gauntlet.attacks import get_attack_class

                norms = get_attack_class("pgd").norms
                chosen = [("pgd", "pgd", {}, tuple(t for t in untargeted if spec.threats[t].norm in norms))]
        else:
            by_label = {a.label: a for a in attacks}
            for j, lab in enumerate(item.attacks):
                a = by_label.get(lab)
                if a is None:
                    close = difflib.get_close_matches(lab, list(by_label), n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise ConfigError(
                        f"{place}.attacks[{j}]: no attack labelled {lab!r} in attacks; {hint}use one of "
                        + ", ".join(repr(x) for x in by_label)
                    )
                if not set(a.threats) & set(untargeted):
                    raise ConfigError(
                        f"{place}.attacks[{j}]: {lab} runs only on targeted threats; detectors are evaluated with untargeted attacks"
                    )
                if any(lab == c[0] for c in chosen):
                    raise ConfigError(f"{place}.attacks[{j}]: {lab!r} is listed twice")
                chosen.append((a.label, a.name, a.params, a.threats))
        runs: list[DetectAttack] = []
        for label, name, params, threats in chosen:
            per_norm: dict[str, list[float]] = {}
            for t in threats:
                if t in untargeted:
                    per_norm.setdefault(spec.threats[t].norm, []).extend(spec.threats[t].eps)
            for norm, eps in per_norm.items():
                key = label if len(per_norm) == 1 else f"{label} {norm}"
                runs.append(DetectAttack(key, label, name, dict(params), norm, tuple(sorted(eps))))
        if not runs:
            raise ConfigError(f"{place}: no untargeted threat for the detection attacks")  # pragma: no cover
        out.append(DetectChoice(i, item.name, dict(item.params), float(item.fpr), item.calibration, item.adaptive, tuple(runs)))
    return out


# ------------------------------------------------------------------------------------------------
# loading
def load_spec(source: str | os.PathLike[str] | Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None) -> AuditSpec:
    """Read and validate an audit spec from a YAML file or a dict.

    Relative ``model.path`` / ``data.path`` are resolved against the spec file's folder (for a
    dict: ``base_dir``, default the working folder).  Raises :class:`ConfigError` whose message
    starts with the place in the spec (``threats[1].eps[0]: ...``).
    """
    import yaml

    lines: dict[tuple[Any, ...], int] = {}
    label: str | None = None
    if isinstance(source, Mapping):
        data: Any = dict(source)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = path.name
        if not path.exists():
            raise ConfigError(f"spec file {str(path)!r} does not exist; check the path")
        if path.is_dir():
            raise ConfigError(f"{str(path)!r} is a folder; pass the spec YAML file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read spec file {str(path)!r}: {exc}") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{label}:{where}: invalid YAML ({problem}); fix the syntax") from None
        if node is not None:
            _line_map(node, (), lines, label)
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    else:
        raise ConfigError(f"load_spec: expected a YAML file path or a dict, got {type(source).__name__}")

    def where(loc: tuple[Any, ...]) -> str:
        for k in range(len(loc), -1, -1):
            if loc[:k] in lines:
                return f" ({label}, line {lines[loc[:k]]})"
        return ""

    if data is None:
        raise ConfigError(f"{label or 'spec'}: the spec is empty; it needs model, data and threats")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{label or 'spec'}: the spec must be a mapping with keys model, data, threats, attacks, thresholds; "
            f"got a {type(data).__name__}"
        )
    try:
        spec = AuditSpec.model_validate(data)
    except ValidationError as exc:
        loc, msg = _first_error(exc)
        raise ConfigError(f"{msg}{where(loc)}") from None
    spec.with_base_dir(base, label)
    try:
        _check_threats(spec)
        attacks = resolve_attacks(spec)
        resolve_defense(spec)
        for i, th in enumerate(spec.thresholds):
            check_threshold(spec, th, f"thresholds[{i}]", attacks)
        resolve_certify(spec)
        resolve_detect(spec, attacks)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(f"{msg}{where(_loc_of(msg))}") from None
    return spec


def _loc_of(msg: str) -> tuple[Any, ...]:
    """Parse ``threats[1].eps[0]: ...`` back into a location tuple (for line numbers)."""
    head = msg.split(":", 1)[0].split(" ", 1)[0]
    loc: list[Any] = []
    for part in head.split("."):
        name, *idx = part.split("[")
        if name:
            loc.append(name)
        for i in idx:
            try:
                loc.append(int(i.rstrip("]")))
            except ValueError:
                return tuple(loc)
    return tuple(loc)


_COMPARISONS = (
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)
_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict", "tuple", "str-enum"}


def _first_error(exc: ValidationError) -> tuple[tuple[Any, ...], str]:
    errors = exc.errors(include_url=False)
    # prefer the error of the most specific union member (a value error over a type error on "none")
    err = errors[0]
    loc = tuple(
        p for p in err["loc"] if isinstance(p, int) or (p not in _TYPE_TAGS and "[" not in str(p) and "-" not in str(p))
    )
    typ, msg, value = err["type"], err["msg"], err.get("input")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if typ == "extra_forbidden":
        field = str(loc[-1]) if loc else "?"
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(field, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return loc, f"{_place(loc)}: unknown field; {hint}allowed: {', '.join(allowed)}{more}"
    if typ == "missing":
        parent = _place(loc[:-1]) if len(loc) > 1 else "spec"
        return loc, f"{parent}: missing required field {str(loc[-1])!r}{more}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return loc, f"{_place(loc)}: {msg}{more}"
    if typ == "too_short":
        return loc, f"{_place(loc)}: must not be empty{more}"
    if typ in ("model_type", "model_attributes_type", "dict_type") and loc[:1] == ("attacks",):
        msg = "must be an attack name or a mapping such as {name: pgd, steps: 20} or {preset: quick}"
    elif msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be "):]
        for words, sym in _COMPARISONS:
            msg = msg.replace(words, sym)
    else:
        msg = msg[:1].lower() + msg[1:]
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) <= 60 else f"a {type(value).__name__}"
    return loc, f"{_place(loc)}: {msg}, got {shown}{more}"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    keys = [p for p in loc if isinstance(p, str)]
    cls: type[BaseModel] = {
        (): AuditSpec,
        ("model",): ModelSpec,
        ("data",): DataSpec,
        ("threats",): ThreatSpec,
        ("thresholds",): ThresholdSpec,
        ("attacks",): AttackItem,
        ("model", "defense"): DefenseSpec,
        ("certify",): CertifySpec,
        ("detect",): DetectSpec,
    }.get(tuple(keys), AuditSpec)
    return list(cls.model_fields)


def _line_map(node: Any, path: tuple[Any, ...], out: dict[tuple[Any, ...], int], label: str | None) -> None:
    import yaml

    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"{_place(path + (key,))}: duplicate key {key!r} ({label}, line {key_node.start_mark.line + 1}); "
                    "remove one of them"
                )
            seen.add(key)
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out, label)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out, label)


# ------------------------------------------------------------------------------------------------
# identity
def spec_hash(spec: AuditSpec) -> str:
    """Hash of everything in the spec that changes unit results (not paths, names or thresholds).

    Model and data identity are hashed separately (file and array contents).  ``model.defense``,
    ``certify`` and ``detect`` enter the hash only when present, so the hash of a spec without
    them is the one earlier versions computed (their unfinished audits still resume).
    """
    exclude = {"path", "name", "version", "trust"} | ({"defense"} if spec.model.defense is None else set())
    m = spec.model.model_dump(mode="json", exclude=exclude)
    payload: dict[str, Any] = {
        "model": m,
        "threats": [t.model_dump(mode="json") for t in spec.threats],
        "attacks": [
            {"label": a.label, "name": a.name, "params": a.params, "threats": list(a.threats)} for a in resolve_attacks(spec)
        ],
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "schema": 1,
    }
    if spec.certify:
        payload["certify"] = [c.model_dump(mode="json") for c in spec.certify]
    if spec.detect:
        payload["detect"] = [d.model_dump(mode="json") for d in spec.detect]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
