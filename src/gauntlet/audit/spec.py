"""The audit spec: what to audit (model, data), the study blocks, and the gate.

:func:`load_spec` reads a YAML file (or takes a dict), validates it with pydantic, resolves every
study block present (see :mod:`gauntlet.audit.studies`) and returns an :class:`AuditSpec`.  Every
error is a one-line :class:`~gauntlet.errors.ConfigError` that starts with its place in the file,
e.g. ``threats[1].eps[0]: must be > 0, got -0.1 (spec.yaml, line 7)``.

The core keys are ``model``, ``data``, ``thresholds``, ``batch_size`` and ``seed``; every other
top-level key belongs to a registered study (``threats``/``attacks``: evasion, ``certify``,
``detect``), whose pydantic ``Block`` is merged into the spec model here (:func:`spec_model`).
``thresholds`` items are the studies' gate rules, told apart by their keys.

The shape users write::

    model: {path: model.pt, name: digits-cnn, version: "3"}
    data: {name: digits, n: 200, seed: 0}          # or {path: test.npz}
    threats:
      - {norm: linf, eps: [0.05, 0.1, 0.2]}
    attacks: [fgsm, {name: pgd, steps: 20}]        # or {preset: standard}
    thresholds:
      - {attack: pgd, norm: linf, eps: 0.1, min_robust_accuracy: 0.5}
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from gauntlet.errors import ConfigError, GauntletError

__all__ = [
    "CORE_KEYS",
    "AcceptedFlag",
    "AuditSpec",
    "DataSpec",
    "DefenseChoice",
    "DefenseSpec",
    "ModelSpec",
    "RegistryChoice",
    "RegistryItem",
    "Strict",
    "load_spec",
    "resolve_defense",
    "resolve_studies",
    "spec_hash",
    "spec_model",
]

#: the keys of the spec that belong to no study
CORE_KEYS = ("model", "data", "thresholds", "accept_flags", "batch_size", "seed")


# ------------------------------------------------------------------------------------------------
# field types
def positive(v: float) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"must be a finite number > 0, got {v!r}")
    return float(v)


def probability(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"must be in [0, 1] (a fraction, e.g. 0.5 for 50%), got {v!r}")
    return float(v)


def as_list(v: Any) -> Any:
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _as_str(v: Any) -> Any:
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def open_unit(v: float) -> float:
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise ValueError(f"must be a number in (0, 1), e.g. 0.05 for a 5% false-positive rate, got {v!r}")
    return float(v)


def non_negative(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a finite number >= 0, got {v!r}")
    return float(v)


def str_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


def inline_params(v: Any, keys: tuple[str, ...]) -> Any:
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
PositiveFloat = Annotated[float, Field(strict=True), AfterValidator(positive)]
Fraction = Annotated[float, Field(strict=True), AfterValidator(probability)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True, min_length=1)]
Version = Annotated[str, BeforeValidator(_as_str), Field(strict=True, min_length=1)]


class Strict(BaseModel):
    """Base of every spec block: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistryItem(Strict):
    """A registry ``name`` with its parameters, written inline (``{name: ibp, eps: 0.1}``) or under
    ``params``; a subclass's own fields are listed in ``own_keys`` so they are not parameters."""

    own_keys: ClassVar[tuple[str, ...]] = ()

    name: Text
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return inline_params(v, ("name", *cls.own_keys))


class LabelledItem(RegistryItem):
    """A registry item that the report names by ``label`` (default: its registry name), so one
    attack can appear twice with other parameters (``{name: lira, reference_models: 2, label: lira2}``)."""

    own_keys = ("label",)

    label: Text | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


def unique_labels(items: Sequence[LabelledItem]) -> None:
    """Raise ``ValueError`` (a place-named spec error) when two items share a label."""
    labels = [a.display for a in items]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"two attacks are labelled {dup[0]!r}; give one of them a label:")


class DefenseSpec(RegistryItem):
    """``model.defense``: a preprocessing defense in front of the model.

    The audited model is the defense's *adaptive* wrap (BPDA + EOT, Athalye et al. 2018); every
    attack also runs against the *naive* wrap, as units labelled ``"<label> (naive)"``.
    ``eot_samples`` (randomized defenses only) is the number of EOT draws per gradient.
    """

    own_keys = ("eot_samples",)

    eot_samples: Annotated[int, Field(strict=True, ge=1)] | None = None


class ModelSpec(Strict):
    """The model: a file and how to load it (see :func:`gauntlet.models.load`), or a ``url`` of a
    model served over HTTP (:class:`gauntlet.models.RemoteModel`, attacked as a black box)."""

    path: Text | None = None
    url: Text | None = None
    #: a remote model's answers: scores (``logits`` or ``probabilities`` when known) or ``labels`` only
    output: typing.Literal["scores", "logits", "probabilities", "labels"] = "scores"
    #: further RemoteModel options (max_batch_size, max_requests_per_second, api_key_env, timeouts, ...)
    remote: dict[str, Any] = Field(default_factory=dict)
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

    @model_validator(mode="after")
    def _path_or_url(self) -> ModelSpec:
        if (self.path is None) == (self.url is None):
            raise ValueError(
                "give exactly one of path (a model file) or url (a model served over HTTP, see docs/remote.md), got "
                + ("both" if self.path is not None else "neither")
            )
        if self.url is not None:
            missing = [k for k in ("num_classes", "input_shape") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a url model needs {' and '.join(missing)} (the server's answers cannot be probed for free)")
            local = [k for k in ("arch", "mean", "std") if getattr(self, k) is not None] + (["trust"] if self.trust else [])
            if self.arch_kwargs:
                local.append("arch_kwargs")
            if local:
                raise ValueError(f"{', '.join(local)} only apply to a model file; a url model is used as the server answers")
        elif self.remote or self.output != "scores":  # (the defaults are fine: a dumped spec carries them)
            raise ValueError("output and remote only apply to a url model; a model file's outputs are read from it")
        return self

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.url)
            return f"{parts.hostname or 'remote'}{parts.path.rstrip('/')}" or "remote"
        return Path(self.path or "model").stem


class DataSpec(Strict):
    """A builtin dataset ``name`` or a ``path``; a reproducible random subset of ``n`` samples."""

    name: Text | None = None
    path: Text | None = None
    split: Text = "test"
    n: Annotated[int, Field(strict=True, ge=1)] | None = None
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.name is None) == (self.path is None):
            raise ValueError(
                "give exactly one of name (a builtin such as 'digits') or path (a file or folder), got "
                + ("both" if self.name is not None else "neither")
            )
        return self


class AcceptedFlag(Strict):
    """``accept_flags`` item: a hygiene flag the team has looked at and accepts, with the reason
    (shown in the report); an accepted flag no longer fails a gated audit."""

    flag: Text
    reason: Text


class AuditSpec(Strict):
    """A validated audit spec (build it with :func:`load_spec`).

    This class holds the core keys; :func:`spec_model` derives the model that also has every
    registered study's keys (``spec.threats``, ``spec.certify``, ...), and
    ``AuditSpec.model_validate`` validates with it.
    """

    model: ModelSpec
    data: DataSpec
    thresholds: list[Any] = Field(default_factory=list)
    accept_flags: list[AcceptedFlag] = Field(default_factory=list)
    batch_size: Annotated[int, Field(strict=True, ge=1)] = 250
    seed: Annotated[int, Field(strict=True, ge=0)] = 0

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str | None = PrivateAttr(default=None)
    _studies: list[Any] | None = PrivateAttr(default=None)

    if TYPE_CHECKING:  # the studies' keys (spec.threats, spec.certify, ...) exist on the derived model

        def __getattr__(self, name: str) -> Any: ...

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Validate a whole spec (with every registered study's keys) from a mapping."""
        if cls is AuditSpec:
            return spec_model().model_validate(obj, *args, **kwargs)
        return super().model_validate(obj, *args, **kwargs)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the spec are resolved against (the spec file's folder)."""
        return self._base_dir

    @property
    def source(self) -> str | None:
        """The spec file the spec was read from, if any."""
        return self._source

    def resolve_path(self, p: str) -> Path:
        """A path written in the spec (``~`` expanded), resolved against :attr:`base_dir` when relative."""
        return _resolve(p, self._base_dir)

    def model_path(self) -> Path | None:
        """The model file resolved against :attr:`base_dir`; ``None`` for a ``url`` model."""
        return None if self.model.path is None else self.resolve_path(self.model.path)

    def data_source(self) -> str | Path:
        """The dataset name, or its path resolved against :attr:`base_dir`."""
        return self.data.name if self.data.name is not None else self.resolve_path(self.data.path or "")

    def with_base_dir(self, base_dir: str | os.PathLike[str], source: str | None = None) -> AuditSpec:
        self._base_dir = Path(base_dir)
        self._source = source
        return self

    @property
    def studies(self) -> list[Any]:
        """The resolved studies of the blocks this spec has, in run order (resolved once)."""
        if self._studies is None:
            self._studies = resolve_studies(self)
        return self._studies

    def study(self, name: str) -> Any | None:
        """The resolved study ``name``, or ``None`` when the spec has no such block."""
        return next((s for s in self.studies if s.name == name), None)


def _resolve(p: str, base: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


# ------------------------------------------------------------------------------------------------
# the spec model: core keys + every registered study's keys
_SPEC_MODEL: type[AuditSpec] | None = None


def invalidate_spec_model() -> None:
    """Forget the derived spec model (a study was registered)."""
    global _SPEC_MODEL
    _SPEC_MODEL = None


def _threshold_tag(v: Any) -> str | None:
    """Which study's gate rule a ``thresholds`` item is: the first whose rule has all of the
    item's required keys."""
    from gauntlet.audit.studies import studies

    if isinstance(v, BaseModel):
        for s in studies():
            if s.Threshold is not None and isinstance(v, s.Threshold):
                return f"threshold-{s.name}"
        return None
    if not isinstance(v, Mapping):
        return None
    for s in studies():
        T = s.Threshold
        if T is None:
            continue
        required = [k for k, f in T.model_fields.items() if f.is_required()]
        if all(k in v for k in required):
            return f"threshold-{s.name}"
    return None


def spec_model() -> type[AuditSpec]:
    """The pydantic model of a whole spec: :class:`AuditSpec` plus every registered study's keys."""
    global _SPEC_MODEL
    from gauntlet.audit.studies import studies

    registered = studies()
    if _SPEC_MODEL is not None:
        return _SPEC_MODEL
    fields: dict[str, Any] = {}
    for s in registered:
        for key, info in s.Block.model_fields.items():
            fields[key] = (info.annotation, info)
    rules = [Annotated[s.Threshold, Tag(f"threshold-{s.name}")] for s in registered if s.Threshold is not None]
    if rules:
        rule: Any = Annotated[Union[tuple(rules)], Discriminator(_threshold_tag)]  # noqa: UP007 - built at run time
        fields["thresholds"] = (list[rule], Field(default_factory=list))
    model = create_model("AuditSpec", __base__=AuditSpec, __module__=__name__, **fields)
    model.__doc__ = AuditSpec.__doc__
    _SPEC_MODEL = model
    return model


def resolve_studies(spec: AuditSpec) -> list[Any]:
    """Resolve the block of every registered study the spec has, in run order.

    Raises :class:`ConfigError` naming the place when a block is invalid, and when the spec has
    no study block at all.
    """
    from gauntlet.audit.studies import studies

    done: dict[str, Any] = {}
    for cls in studies():
        if cls.present(spec):
            done[cls.name] = cls.resolve(spec, dict(done))
    if not done:
        keys = ", ".join(f"{k} ({s.name})" for s in studies() for k in s.Block.model_fields)
        raise ConfigError(f"spec: nothing to audit; add a study block: {keys}")
    return list(done.values())


def _threshold_owner(th: Any) -> str | None:
    tag = _threshold_tag(th)
    return tag.removeprefix("threshold-") if tag else None


def check_thresholds(spec: AuditSpec, items: Any, where: Any) -> None:
    """Check gate rules against the studies the spec has; ``where(i, th)`` names each rule."""
    by_name = {s.name: s for s in spec.studies}
    for i, th in enumerate(items):
        place = where(i, th)
        owner = _threshold_owner(th)
        study = by_name.get(owner or "")
        if study is None:
            raise ConfigError(f"{place}: a {owner} rule, but the spec has no {owner} block")
        study.check_threshold(th, place)




# ------------------------------------------------------------------------------------------------
# registry choices: model.defense (and the studies' certification methods and detectors)
@dataclass(frozen=True)
class RegistryChoice:
    """A defense-registry entry resolved from the spec: its name and checked parameters."""

    name: str
    params: dict[str, Any]

    def create(self) -> Any:
        from gauntlet.defenses.registry import create

        return create(self.name, **self.params)


@dataclass(frozen=True)
class DefenseChoice(RegistryChoice):
    """``model.defense`` resolved: registry name, parameters and the EOT draws asked for."""

    eot_samples: int | None = None
    randomized: bool = False


_KIND_WORDS = {
    "preprocessing": "a preprocessing defense",
    "certification": "a certification method",
    "detector": "a detector",
}


def defense_class(name: str, kind: str, place: str, what: str) -> type:
    """The registered defense class ``name`` of ``kind``; a place-named error otherwise."""
    from gauntlet.defenses.registry import get_defense_class, list_defenses

    allowed = ", ".join(list_defenses(kind))
    try:
        cls = get_defense_class(name, suggest_kind=kind)
    except GauntletError as err:
        raise ConfigError(f"{place}.name: {err}; {what} takes {_KIND_WORDS.get(kind, kind)}: {allowed}") from None
    if cls.kind != kind:
        raise ConfigError(
            f"{place}.name: {name!r} is a {cls.kind} defense, but {what} takes {_KIND_WORDS.get(kind, kind)}: {allowed}"
        )
    return cls


def param_message(name: str, place: str, msg: str) -> str:
    """``pgd: parameter 'steps' must be ...`` → ``attacks[1].steps: must be ...``."""
    prefix = f"{name}: parameter '"
    if msg.startswith(prefix):
        key, sep, tail = msg[len(prefix):].partition("' ")
        if sep:
            return f"{place}.{key}: {tail}"
    return f"{place}: {msg}"


def check_defense_params(cls: type, params: Mapping[str, Any], place: str) -> Any:
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
        raise ConfigError(param_message(cls.name, place, str(err).splitlines()[0])) from None  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{place}: invalid parameters for {cls.name} ({exc})") from None  # type: ignore[attr-defined]


def resolve_defense(spec: AuditSpec) -> DefenseChoice | None:
    """Check ``model.defense`` against the registry (a preprocessing defense, valid parameters,
    ``eot_samples`` only for randomized transforms); ``None`` when the spec has none."""
    d = spec.model.defense
    if d is None:
        return None
    place = "model.defense"
    cls = defense_class(d.name, "preprocessing", place, place)
    check_defense_params(cls, d.params, place)
    randomized = bool(getattr(cls, "randomized", False))
    if d.eot_samples is not None and d.eot_samples > 1 and not randomized:
        raise ConfigError(
            f"{place}.eot_samples: {d.name} is deterministic, so EOT has nothing to average; "
            "leave eot_samples unset (it only applies to randomized defenses)"
        )
    return DefenseChoice(d.name, dict(d.params), d.eot_samples, randomized)


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
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{label}:{at}: invalid YAML ({problem}); fix the syntax") from None
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
        raise ConfigError(f"{label or 'spec'}: the spec is empty; it needs model, data and a study block such as threats")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{label or 'spec'}: the spec must be a mapping with keys {', '.join(_top_keys())}; "
            f"got a {type(data).__name__}"
        )
    try:
        spec = AuditSpec.model_validate(data)
    except ValidationError as exc:
        loc, msg = _first_error(exc)
        raise ConfigError(f"{msg}{where(loc)}") from None
    spec.with_base_dir(base, label)
    try:
        resolve_defense(spec)
        spec._studies = resolve_studies(spec)
        check_thresholds(spec, spec.thresholds, lambda i, th: f"thresholds[{i}]")
        _check_accepted_flags(spec)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(f"{msg}{where(_loc_of(msg))}") from None
    return spec


def _check_accepted_flags(spec: AuditSpec) -> None:
    known = {fid for s in spec.studies for fid in s.hygiene_checks()}
    for i, item in enumerate(spec.accept_flags):
        if item.flag not in known:
            close = difflib.get_close_matches(item.flag, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"accept_flags[{i}].flag: no hygiene check is named {item.flag!r}; {hint}the checks are "
                + ", ".join(sorted(known))
            )


def _top_keys() -> list[str]:
    from gauntlet.audit.studies import study_keys

    return list(CORE_KEYS[:2]) + list(study_keys()) + list(CORE_KEYS[2:])


def _place(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "spec"


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
    rule = next((str(p)[len("threshold-"):] for p in err["loc"] if str(p).startswith("threshold-")), None)
    typ, msg, value = err["type"], err["msg"], err.get("input")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if typ == "extra_forbidden" and len(loc) == 1:
        from gauntlet.audit.studies import studies

        key = str(loc[0])
        close = difflib.get_close_matches(key, _top_keys(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        blocks = "; ".join(f"{s.name}: {', '.join(s.Block.model_fields)}" for s in studies())
        return loc, (
            f"{key}: unknown block; {hint}the core keys are {', '.join(CORE_KEYS)} and the registered studies' "
            f"blocks are {blocks}{more}"
        )
    if typ in ("union_tag_not_found", "union_tag_invalid") and loc[:1] == ("thresholds",):
        return loc, f"{_place(loc)}: not a gate rule; write one of {_rule_shapes()}{more}"
    if typ == "extra_forbidden":
        field = str(loc[-1]) if loc else "?"
        allowed = _fields_at(loc[:-1], rule)
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
    hint_type = _type_hint(loc)
    if typ in ("model_type", "model_attributes_type", "dict_type") and hint_type:
        msg = hint_type
    elif msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be "):]
        for words, sym in _COMPARISONS:
            msg = msg.replace(words, sym)
    else:
        msg = msg[:1].lower() + msg[1:]
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) <= 60 else f"a {type(value).__name__}"
    return loc, f"{_place(loc)}: {msg}, got {shown}{more}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (through Annotated, Optional and list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_of(typing.get_args(annotation)[0])
    if origin in (list, tuple, Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = spec_model()
    for key in (p for p in loc if isinstance(p, str)):
        if cls is None or key not in cls.model_fields:
            return None
        cls = _model_of(cls.model_fields[key].annotation)
    return cls


def _fields_at(loc: tuple[Any, ...], rule: str | None = None) -> list[str]:
    """The keys allowed at a place of the spec (for did-you-mean hints); ``rule``: the study whose
    gate rule a ``thresholds`` item was read as."""
    if rule is not None and loc[:1] == ("thresholds",) and len(loc) == 2:
        from gauntlet.audit.studies import get_study

        T = get_study(rule).Threshold
        return list(T.model_fields) if T is not None else []
    cls = _model_at(loc)
    return list(cls.model_fields) if cls is not None else []


def _rule_shapes() -> str:
    from gauntlet.audit.studies import studies

    shapes = [
        "{" + ", ".join(k for k, f in s.Threshold.model_fields.items() if f.is_required()) + f"}} ({s.name})"
        for s in studies() if s.Threshold is not None
    ]
    return " or ".join(shapes)


def _type_hint(loc: tuple[Any, ...]) -> str | None:
    """A study block's own wording for an item of the wrong type (``attacks[2]: must be ...``)."""
    from gauntlet.audit.studies import studies

    if not loc or not isinstance(loc[0], str):
        return None
    for s in studies():
        hint = getattr(s, "item_type_hints", {}).get(loc[0])
        if hint:
            return str(hint)
    return None


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

    Model and data identity are hashed separately (file and array contents).  Each study adds
    what of its block changes its results (:meth:`~gauntlet.audit.studies.Study.hash_payload`).
    The payload of the built-in studies is the one earlier versions hashed, so unit keys — and
    the unit seeds derived from them — and with them every number of a report stay as they were.
    """
    exclude = {"path", "name", "version", "trust", "remote"} | ({"defense"} if spec.model.defense is None else set())
    if spec.model.url is None:  # the keys a url model added, left out so file audits hash as before
        exclude |= {"url", "output"}
    payload: dict[str, Any] = {
        "model": spec.model.model_dump(mode="json", exclude=exclude),
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "schema": 1,
    }
    for study in spec.studies:
        payload.update(study.hash_payload())
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
