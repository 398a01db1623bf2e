"""The study contract: one kind of audit block, owned end to end by one class in one module.

A study owns, in one place:

* **its spec keys** — ``Block``, a pydantic model whose fields are merged into the top level of the
  audit spec (``threats`` and ``attacks`` for evasion, ``certify``, ``detect``); validated with the
  place-named errors of :func:`gauntlet.audit.spec.load_spec`;
* **its resolution** — :meth:`Study.resolve` checks the block against the registries and returns
  the study instance (a ``ConfigError`` that starts with the place in the file otherwise);
* **its checks** — :meth:`Study.check` tries what depends on the loaded model before anything is
  stored;
* **its plan** — :meth:`Study.plan`, units with stable keys (the resume key) and a seed derived from
  the key, in the study's canonical order; ``unit.cost`` lets the runner run the cheapest first;
* **one unit** — :meth:`Study.run` computes a JSON-able record (stored as is, read back on resume);
* **its report** — :meth:`Study.merge` turns the records (in plan order) into its sections of
  ``report.json`` (JSON Schema pieces in ``sections``) and its hygiene flags; :meth:`Study.html`,
  :meth:`Study.cards`, :meth:`Study.text` and :meth:`Study.summary` render them;
* **its metrics** — :meth:`Study.metrics` reads named numbers back from a report (what the gate,
  ``--fail-under``, ``--max-regression`` and ``compare`` use) and ``Threshold`` is the gate rule
  shape it accepts in ``thresholds`` (and :meth:`Study.parse_threshold` on the command line).

The runner, store, report, HTML page and gate only ever go through this interface.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torch import Tensor

    from gauntlet.audit.spec import AuditSpec

__all__ = [
    "AuditEnv",
    "ChoiceUnit",
    "ItemsStudy",
    "LabelledChoice",
    "Metric",
    "Study",
    "StudyOutput",
    "Threshold",
    "load_block_data",
    "split_rule",
    "work_key",
    "work_seed",
]


def work_key(spec_digest: str, *parts: Any) -> str:
    """A unit's stable key: a hash of the spec's digest and what the unit computes."""
    blob = json.dumps([spec_digest, *parts], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def work_seed(spec_seed: int, key: str) -> int:
    """A unit's seed: a deterministic function of the spec's seed and the unit key."""
    return int(hashlib.sha256(f"{spec_seed}/{key}".encode()).hexdigest()[:8], 16) % (2**31 - 1)


def split_rule(text: str, prefix: str, labels: int, optional: int = 0, what: str = "bound") -> tuple[list[str | None], float] | None:
    """A ``--fail-under`` text ``PREFIX:L1[:L2...]=VALUE`` split into its labels (``labels``
    required ones, then up to ``optional`` more, ``None`` where absent) and its value, a number or
    a percentage (``10%`` is 0.1).  ``None`` when the text is not in this syntax; a one-line
    :class:`~gauntlet.errors.ConfigError` naming the text when the value is not a number."""
    import re

    from gauntlet.errors import ConfigError

    label = r"\s*:\s*([^:=\s]+)"
    pattern = rf"\s*{re.escape(prefix)}" + label * labels + "".join(rf"(?:{label})?" for _ in range(optional))
    m = re.fullmatch(pattern + r"\s*=\s*([^\s%]+)\s*(%?)\s*", text or "")
    if not m:
        return None
    *names, value, percent = m.groups()
    try:
        number = float(value) / (100.0 if percent else 1.0)
    except ValueError:
        raise ConfigError(f"--fail-under {text!r}: the {what} must be a number") from None
    return list(names), number


def study_cache_dir(name: str) -> Path:
    """Where a study keeps what it trains between runs (checkpoints, reference models):
    ``$GAUNTLET_CACHE/<name>``, else ``$XDG_CACHE_HOME/gauntlet/<name>``, else
    ``~/.cache/gauntlet/<name>``."""
    import os

    root = os.environ.get("GAUNTLET_CACHE")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gauntlet" / name


def load_block_data(spec: AuditSpec, data: Any, place: str, like: Tensor) -> tuple[Tensor, Tensor]:
    """A study block's own data (a :class:`~gauntlet.audit.spec.DataSpec`: builtin ``name`` or
    ``path``, ``split``, ``n``, ``seed``, ``options``) as ``(x, y)`` in the audited data's dtype;
    loader failures and per-sample shapes unlike the audited data's (``like``) are one-line
    errors that start with ``place``."""
    import torch

    from gauntlet.data import load as load_data
    from gauntlet.errors import DataError, GauntletError

    source = spec.resolve_path(data.path) if data.path else str(data.name)
    try:
        ds = load_data(source, split=data.split, n=data.n, seed=data.seed, **data.options)
    except GauntletError as err:
        raise type(err)(f"{place}: {err}") from None
    except Exception as exc:  # noqa: BLE001 - a loader's own failure is one line
        line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{place}: cannot load {str(source)!r} ({type(exc).__name__}: {line})") from None
    x, y = ds.x, ds.y
    if tuple(x.shape[1:]) != tuple(like.shape[1:]):
        raise DataError(
            f"{place}: the samples have shape {tuple(x.shape[1:])} but the audited data {tuple(like.shape[1:])}; "
            "use the same kind of data for both"
        )
    return x.to(like.dtype), y.to(torch.int64)


@dataclass
class AuditEnv:
    """What units run against: the loaded model (and its views) and the audited data.

    ``model`` is the audited model (the adaptive wrap of ``model.defense`` when the spec has one),
    ``base_model`` the loaded file, ``naive_model`` the defense's naive wrap (``None`` without a
    defense).  ``clean_pred`` are the audited model's labels on the clean data, computed once by
    the runner before any unit.  Everything here is picklable, so an executor may ship it to
    worker processes once.
    """

    model: Any
    x: Tensor
    y: Tensor
    batch_size: int
    seed: int
    base_model: Any = None
    naive_model: Any = None
    defense_info: dict[str, Any] | None = None
    clean_pred: Tensor | None = None

    def __post_init__(self) -> None:
        if self.base_model is None:
            self.base_model = self.model


@dataclass(frozen=True)
class LabelledChoice:
    """A resolved labelled attack item of a study's block (``spec.LabelledItem``): its position
    ``index`` in the block's ``attacks``, the report's ``label``, the registry ``name`` and its
    ``params``.  Subclasses set ``block`` (the spec key) for place-named errors."""

    index: int
    label: str
    name: str
    params: dict[str, Any]

    block: ClassVar[str] = ""

    @property
    def place(self) -> str:
        return f"{self.block}.attacks[{self.index}]"


@dataclass(frozen=True)
class ChoiceUnit:
    """A unit of work on one resolved item of a study's block (``choice``) over samples
    ``start:stop``, with its stable ``key`` and the ``seed`` derived from it.  A study subclasses
    it to name it (``kind``) and estimate its ``cost``."""

    key: str
    choice: Any = field(hash=False, compare=False)
    seed: int = 0
    start: int = 0
    stop: int = 0

    kind: ClassVar[str] = "unit"

    def describe(self) -> str:
        return f"{self.kind} {self.choice.name} [{self.start}:{self.stop}]"

    @classmethod
    def chunks(cls, choices: Sequence[Any], n: int, batch_size: int, spec_digest: str, seed: int) -> list[Any]:
        """Units of this class over every choice (with an ``index``) × consecutive slices of
        ``batch_size`` of ``n`` samples, keyed by ``kind``, the choice's index and the slice."""
        out = []
        for c in choices:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                key = work_key(spec_digest, cls.kind, c.index, start, stop)
                out.append(cls(key=key, choice=c, seed=work_seed(seed, key), start=start, stop=stop))
        return out

    @property
    def cost(self) -> float:
        return float(self.stop - self.start)


@dataclass
class StudyOutput:
    """What a study adds to the report: top-level ``sections`` and hygiene ``flags``."""

    sections: dict[str, Any] = field(default_factory=dict)
    flags: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Metric:
    """One named number of a report, e.g. robust accuracy of ``pgd`` at L∞ ε = 0.1.

    ``labels`` identify it within its ``name`` (``{"attack": "pgd", "norm": "linf", "eps": 0.1}``);
    ``what`` is how messages name it (``"pgd linf ε=0.1"``) and ``title`` the quantity (``"robust
    accuracy"``).  ``higher_is_better`` decides the direction of a regression; ``regression=False``
    metrics are informational and never count as regressions (a defense's naive view).
    """

    study: str
    name: str
    labels: Mapping[str, Any]
    value: float | None
    what: str
    title: str
    higher_is_better: bool = True
    regression: bool = True
    #: the samples behind a proportion (``count`` of ``n``), for its uncertainty; ``None``: unknown
    count: int | None = None
    n: int | None = None
    #: a headline number: the report's history shows its trend over earlier audits
    headline: bool = False

    @property
    def key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """The metric's identity: its name and sorted labels (how per-sample outcomes are keyed)."""
        return self.name, tuple(sorted(self.labels.items()))

    def matches(self, name: str, labels: Mapping[str, Any]) -> bool:
        if name != self.name or set(labels) != set(self.labels):
            return False
        for k, v in labels.items():
            mine = self.labels[k]
            if isinstance(v, (int, float)) and isinstance(mine, (int, float)) and not isinstance(v, bool):
                if not math.isclose(float(v), float(mine), rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif v != mine:
                return False
        return True


def _text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class Threshold(BaseModel):
    """A gate rule on one metric.  A study's rule subclasses this with its fields and says, as
    class attributes, which metric it names (``metric_name``), which fields give the metric's
    labels (``label_fields``: label → field, in ``--fail-under`` order) and which field is the bound
    (``bound_field``: ``min_...`` — the metric must be at least it — or ``max_...`` — at most)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric_name: ClassVar[str] = ""
    label_fields: ClassVar[dict[str, str]] = {}
    bound_field: ClassVar[str] = ""
    #: the first word of the ``--fail-under`` syntax (``certify:...``); ``None``: none
    prefix: ClassVar[str | None] = None

    def metric(self) -> tuple[str, dict[str, Any]]:
        """The metric's name and labels, as :meth:`Study.metrics` names it."""
        return self.metric_name, {label: getattr(self, f) for label, f in self.label_fields.items()}

    def bound(self) -> tuple[str, float]:
        """``("min", value)`` or ``("max", value)``."""
        return ("max" if self.bound_field.startswith("max_") else "min"), float(getattr(self, self.bound_field))

    def describe(self) -> str:
        """The rule in ``--fail-under`` syntax."""
        words = ([self.prefix] if self.prefix else []) + [_text(getattr(self, f)) for f in self.label_fields.values()]
        return ":".join(words) + f"={_text(getattr(self, self.bound_field))}"

    @classmethod
    def from_text(cls, text: str, **fields: Any) -> Any:
        """The rule from the fields parsed out of a ``--fail-under`` text; a one-line
        :class:`ConfigError` naming the text and the field when a value is invalid."""
        from pydantic import ValidationError

        from gauntlet.errors import ConfigError

        try:
            return cls(**fields)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            raise ConfigError(f"--fail-under {text!r}: {field} {msg}") from None

    def what(self) -> str:
        """How messages name the metric the rule is on."""
        name, labels = self.metric()
        return " ".join([name, *(_text(v) for v in labels.values())])


class Study(ABC):
    """Base class of audit studies; register a subclass with
    :func:`gauntlet.audit.studies.register_study`."""

    #: registry key, also the name of the study's units in the store (``kind``)
    name: ClassVar[str]
    #: one line for ``gauntlet studies`` and error messages
    title: ClassVar[str] = ""
    #: the spec keys it owns: a pydantic model whose fields are merged into the spec's top level
    Block: ClassVar[type[BaseModel]]
    #: the gate rule shape it accepts in ``thresholds`` (``None``: none)
    Threshold: ClassVar[type[Threshold] | None] = None
    #: its report.json sections: name → JSON Schema piece
    sections: ClassVar[dict[str, dict[str, Any]]] = {}
    #: sections every report with this study must have (it is present when it has any section);
    #: empty: all of ``sections``
    required_sections: ClassVar[tuple[str, ...]] = ()
    #: report schema versions < 2.0 always had these sections
    in_every_v1_report: ClassVar[bool] = False

    # -- spec -----------------------------------------------------------------------------------
    @classmethod
    def present(cls, spec: AuditSpec) -> bool:
        """Whether ``spec`` has this study's block (any of its keys set to a non-empty value)."""
        return any(getattr(spec, k, None) not in (None, [], {}) for k in cls.Block.model_fields)

    @classmethod
    @abstractmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> Study:
        """Check the block against the registries (``resolved``: the studies resolved before this
        one) and return the study; raise :class:`~gauntlet.errors.ConfigError` naming the place."""

    def hash_payload(self) -> dict[str, Any]:
        """What of the spec changes this study's results: entered into the spec hash."""
        return {}

    def check_threshold(self, th: Any, place: str) -> None:
        """Raise :class:`ConfigError` unless ``th`` (of type ``Threshold``) names a metric this
        spec will produce."""

    @classmethod
    def parse_threshold(cls, text: str) -> Any | None:
        """A ``--fail-under`` text in this study's syntax as a ``Threshold``; ``None`` if it is not."""
        return None

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        """Fail (place-named error) before anything is stored when the model cannot be used."""

    @abstractmethod
    def plan(self, env: AuditEnv, spec_digest: str) -> list[Any]:
        """The units: objects with ``key``, ``seed``, ``describe()`` and optionally ``cost``."""

    @abstractmethod
    def run(self, env: AuditEnv, unit: Any) -> dict[str, Any]:
        """Compute one unit; return a JSON-able record."""

    @abstractmethod
    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        """The study's report sections from its records (in plan order).  ``env`` is ``None`` when
        only records are available (rebuilding a report), so model-based extras are skipped."""

    def cross_flags(self, sections: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Hygiene flags that compare this study's sections with other studies' (``sections``: every
        study's merged sections of this audit, e.g. a transfer attack that beats the evasion
        study's white-box worst case).  Called once all studies have merged.  Default: none."""
        return []

    @classmethod
    def outcomes(cls, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> dict[tuple[str, Any], list[bool | None]]:
        """Per-sample outcomes (True counts towards the metric) of the metrics that are a share of
        the audited samples, keyed like :attr:`Metric.key`: with them a change between two audits
        of the same data is tested per sample (McNemar).  Default: none."""
        return {}

    def manifest(self, units: Sequence[Any]) -> dict[str, Any]:
        """What the reproducibility manifest records about the study's plan."""
        return {"units": len(units)}

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        """The named numbers of this study in a report."""
        return []

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        """The study's sections of ``report.html`` (empty when the report has none)."""
        return ""

    @classmethod
    def cards(cls, report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Headline cards ``(title, value html, subtitle)`` at the top of ``report.html``."""
        return []

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        """Lines the CLI prints for the study's results."""
        return []

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        """Short phrases for the one-line verdict (``worst case linf ε=0.1 51.1%``)."""
        return []

    def headline(self, report: Mapping[str, Any]) -> dict[str, Any] | None:
        """The study's headline for the report's verdict sentence, or ``None``.

        A dict with ``study``, ``text`` (a clause such as ``"at L∞ ε=0.1 (inputs in [0, 1]), pgd
        takes accuracy from 98.0% to 51.1% (95% CI 46–56%)"``) and ``metric`` (``{"name", "labels"}``
        of the :class:`Metric` it reports, so the gate rule on it can be quoted beside it).  The
        verdict uses the first study, in run order, that offers one.
        """
        return None

    #: hygiene flags that say the study's numbers are unreliable: raised in a gated audit, each
    #: fails the gate unless the spec accepts it (``accept_flags``)
    blocking_flags: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def hygiene_checks(cls) -> dict[str, str]:
        """id → title of the hygiene checks the study runs (listed when none raised a flag)."""
        return {}

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The sections a report with this study must have."""
        return cls.required_sections or tuple(cls.sections)

    @classmethod
    def in_report(cls, report: Mapping[str, Any]) -> bool:
        return any(k in report for k in cls.sections)


class ItemsStudy(Study):
    """A study whose block is one list of items (``certify: [...]``, ``detect: [...]``): it keeps
    the resolved ``choices``, the spec's ``batch_size`` and ``seed``, and hashes the items as
    written (``items``)."""

    def __init__(self, choices: list[Any], batch_size: int, seed: int, items: list[dict[str, Any]]) -> None:
        self.choices = choices
        self.batch_size = batch_size
        self.seed = seed
        self.items = items

    def hash_payload(self) -> dict[str, Any]:
        return {self.name: self.items}
