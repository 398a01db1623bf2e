"""Extraction: how faithfully an attacker with query access copies the audited model (``extraction``).

Each model-stealing attack runs against the audited model at each query budget; the stolen copy's
**fidelity** (agreement with the audited model) and accuracy are measured on the audit's data,
which the attacker never queries.  With a ``monitor`` (``prada``), every attack's queries pass
through a watched copy of the model and the report gives the query at which it raised its alarm
— or that it never did.  The block::

    extraction:
      query_set: {name: digits, split: train}        # the attacker's pool of natural inputs
      budgets: [500, 2000]                           # max_queries per run
      attacks:
        - knockoff
        - {name: copycat, epochs: 10}
        - {name: knockoff, query_strategy: jacobian, rounds: 4, label: knockoff-jbda}
      monitor: {name: prada, delta: 0.9}              # optional

Units: one per attack × budget, resumable.  Attacks that take a ``query_set`` get the block's
(unless their item sets another strategy that needs none); every attack gets ``max_queries`` from
``budgets`` (an attack item may fix its own ``max_queries``, then it runs once).  Gate:
``{extraction: knockoff, max_fidelity: 0.9}`` (the highest fidelity over the budgets), or
``--fail-under extraction:knockoff=90%``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from gauntlet.audit.html import e, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STRING, array_of
from gauntlet.audit.spec import AuditSpec, DataSpec, Fraction, LabelledItem, RegistryItem, Strict, Text, unique_labels
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import (
    AuditEnv,
    LabelledChoice,
    Metric,
    Study,
    StudyOutput,
    Threshold,
    load_block_data,
    split_rule,
    work_key,
    work_seed,
)
from gauntlet.errors import ConfigError, GauntletError

__all__ = ["ExtractionStudy", "ExtractionThreshold"]


class ExtractionAttackSpec(LabelledItem):
    """An extraction attack item; ``label`` names it in the report."""


class ExtractionSpec(Strict):
    """The ``extraction`` block."""

    attacks: Annotated[list[ExtractionAttackSpec], Field(min_length=1)]
    budgets: Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(min_length=1)] = Field(default_factory=lambda: [1000])
    query_set: DataSpec | None = None
    monitor: RegistryItem | None = None

    @model_validator(mode="after")
    def _unique(self) -> ExtractionSpec:
        unique_labels(self.attacks)
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError("budgets: a budget is listed twice")
        return self


class ExtractionBlock(Strict):
    """The extraction study's spec key."""

    extraction: ExtractionSpec | None = None


class ExtractionThreshold(Threshold):
    """Gate: the stolen copy's fidelity (the highest over the budgets) must be at most the maximum."""

    metric_name = "extraction_fidelity"
    label_fields: ClassVar[dict[str, str]] = {"attack": "extraction"}
    bound_field = "max_fidelity"
    prefix = "extraction"

    extraction: Text
    max_fidelity: Fraction


@dataclass(frozen=True)
class ExtractionChoice(LabelledChoice):
    block = "extraction"


@dataclass(frozen=True)
class ExtractionUnit:
    key: str
    seed: int
    choice: ExtractionChoice
    budget: int

    def describe(self) -> str:
        return f"extraction {self.choice.label} ({self.budget} queries)"

    @property
    def cost(self) -> float:
        return self.budget / 1000


_RUN = {
    "type": "object",
    "required": ["budget", "queries", "fidelity"],
    "properties": {
        "budget": COUNT, "queries": COUNT, "fidelity": SHARE, "accuracy": SHARE,
        "monitor_fired_at": {"type": ["integer", "null"], "minimum": 1}, "seconds": NON_NEGATIVE,
    },
}
_EXTRACTION = array_of(
    ["attack", "name", "runs", "max_fidelity"],
    {
        "attack": STRING, "name": STRING, "params": {"type": "object"}, "runs": {"type": "array", "items": _RUN},
        "max_fidelity": SHARE, "monitor": {"type": ["string", "null"]}, "n": COUNT,
    },
)


def _entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("extraction") or [] if isinstance(t, Mapping)]


def _extraction_html(report: Mapping[str, Any]) -> str:
    entries = _entries(report)
    if not entries:
        return ""
    monitor = next((t.get("monitor") for t in entries if t.get("monitor")), None)
    head = (
        "<tr><th>attack</th><th class='num'>queries</th><th class='num'>fidelity</th><th class='num'>copy accuracy</th>"
        + (f"<th class='num'>{e(monitor)} alarm at query</th>" if monitor else "") + "</tr>"
    )
    rows = []
    for t in entries:
        runs = list(t.get("runs") or [])
        for i, r in enumerate(runs):
            name = f"<td rowspan='{len(runs)}'>{e(t.get('name'))}</td>" if i == 0 else ""
            fired = r.get("monitor_fired_at")
            alarm = f"<td class='num'>{fired if fired is not None else 'never'}</td>" if monitor else ""
            rows.append(
                f"<tr class='extraction'>{name}<td class='num'>{int(r.get('queries') or 0)}</td>"
                f"<td class='num'><b>{pct(r.get('fidelity'))}</b></td><td class='num'>{pct(r.get('accuracy'))}</td>{alarm}</tr>"
            )
    note = (
        "<p class='note'>Fidelity: the share of the audited data on which the stolen copy gives the audited model's label "
        "(the attacker never queries those inputs). Queries: inputs sent to the model, within the budget.</p>"
    )
    return (
        f"<section id='extraction'><h2>Extraction</h2><div class='scroll'><table class='extraction'>{head}{''.join(rows)}"
        f"</table></div>{note}</section>"
    )


@register_study
class ExtractionStudy(Study):
    """Model stealing against the audited model: the copy's fidelity per query budget."""

    name = "extraction"
    title = "extraction: model-stealing attacks per query budget; the copy's fidelity, and a query monitor's alarm"
    Block = ExtractionBlock
    Threshold = ExtractionThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"extraction": _EXTRACTION}

    def __init__(self, block: ExtractionSpec, choices: list[ExtractionChoice], spec: AuditSpec) -> None:
        self.block = block
        self.choices = choices
        self.seed = spec.seed
        self.spec = spec
        self._pool: Tensor | None = None

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> ExtractionStudy:
        from gauntlet.attacks.registry import get_attack_class
        from gauntlet.defenses import create as create_defense

        block: ExtractionSpec = spec.extraction
        choices = []
        for i, a in enumerate(block.attacks):
            place = f"extraction.attacks[{i}]"
            try:
                klass = get_attack_class(a.name, kind="extraction")
            except GauntletError as err:
                raise ConfigError(f"{place}: {err}") from None
            names = klass._param_names()
            if "query_set" in a.params:
                raise ConfigError(f"{place}: the query set comes from extraction.query_set, not from the attack item")
            params = dict(a.params)
            try:
                probe = dict(params)
                if "max_queries" in names:
                    probe.setdefault("max_queries", block.budgets[0])
                if "query_set" in names and block.query_set is not None:
                    probe["query_set"] = torch.zeros(1, 1)
                klass(**probe)
            except GauntletError as err:
                raise ConfigError(f"{place}: {err}") from None
            choices.append(ExtractionChoice(i, a.display, a.name, params))
        if block.monitor is not None:
            try:
                mon = create_defense(block.monitor.name, **block.monitor.params)
            except GauntletError as err:
                raise ConfigError(f"extraction.monitor: {err}") from None
            if mon.kind != "monitor":
                raise ConfigError(f"extraction.monitor: {block.monitor.name!r} is a {mon.kind} defense, not a query monitor; see gauntlet defenses --kind monitor")
        return cls(block, choices, spec)

    def hash_payload(self) -> dict[str, Any]:
        block = self.block.model_dump(mode="json")
        if self.block.query_set is not None and self.block.query_set.path:
            block["query_set"]["path"] = str(self.spec.resolve_path(self.block.query_set.path))
        return {"extraction": block}

    def check_threshold(self, th: Any, place: str) -> None:
        labels = [c.label for c in self.choices]
        if th.extraction not in labels:
            raise ConfigError(f"{place}.extraction: no extraction attack is labelled {th.extraction!r}; the spec has {', '.join(map(repr, labels))}")

    @classmethod
    def parse_threshold(cls, text: str) -> ExtractionThreshold | None:
        """``extraction:LABEL=MAX`` (a maximum fidelity; ``90%`` or ``0.9``)."""
        rule = split_rule(text, "extraction", 1, what="maximum fidelity")
        if rule is None:
            return None
        (label,), maximum = rule
        return ExtractionThreshold.from_text(text, extraction=label, max_fidelity=maximum)  # type: ignore[no-any-return]

    # -- data -----------------------------------------------------------------------------------
    def _query_pool(self, env: AuditEnv) -> Tensor | None:
        d = self.block.query_set
        if d is None:
            return None
        if self._pool is None:
            x, _ = load_block_data(self.spec, d, "extraction.query_set", env.x)
            self._pool = x
        return self._pool

    def _attack(self, env: AuditEnv, choice: ExtractionChoice, budget: int) -> Any:
        from gauntlet.attacks import create
        from gauntlet.attacks.registry import get_attack_class

        params = dict(choice.params)
        names = get_attack_class(choice.name)._param_names()
        if "max_queries" in names:
            params.setdefault("max_queries", budget)
        pool = self._query_pool(env)
        if "query_set" in names and pool is not None:
            params["query_set"] = pool
        return create(choice.name, **params)

    def _budgets(self, choice: ExtractionChoice) -> list[int]:
        fixed = choice.params.get("max_queries")
        return [int(fixed)] if isinstance(fixed, int) else list(self.block.budgets)

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        """Every attack can be built against this model and pool (a natural-query attack with
        no query set is told so before anything runs)."""
        for c in self.choices:
            try:
                klass = type(self._attack(env, c, self._budgets(c)[0]))
            except GauntletError as err:
                raise type(err)(f"{c.place}: {err}") from None
            if klass.needs == "scores" and not env.base_model.has("scores"):
                raise ConfigError(f"{c.place}: {c.name} needs the model's scores, but it returns labels only; use {klass.labels_alternative!r}")

    def plan(self, env: AuditEnv, spec_digest: str) -> list[ExtractionUnit]:
        units = []
        for c in self.choices:
            for b in self._budgets(c):
                key = work_key(spec_digest, "extraction", c.index, b)
                units.append(ExtractionUnit(key=key, seed=work_seed(self.seed, key), choice=c, budget=b))
        return units

    def run(self, env: AuditEnv, unit: ExtractionUnit) -> dict[str, Any]:
        t0 = time.perf_counter()
        atk = self._attack(env, unit.choice, unit.budget)
        target: Any = env.base_model
        watched = None
        if self.block.monitor is not None:
            from gauntlet.defenses import create as create_defense

            watched = create_defense(self.block.monitor.name, **self.block.monitor.params).wrap(target)  # type: ignore[attr-defined]
            target = watched
        try:
            res = atk.run(target, seed=unit.seed)
        except GauntletError as err:
            raise type(err)(f"{unit.choice.place}: {err}") from None
        from gauntlet.attacks.extraction import predict_labels

        copy_pred = predict_labels(res.model, env.x)
        # the audited model's labels on the audit's data were computed once by the runner
        target_pred = env.clean_pred.cpu() if env.clean_pred is not None and env.model is env.base_model else predict_labels(env.base_model, env.x)
        return {
            "index": unit.choice.index, "budget": unit.budget, "queries": int(res.queries),
            "fidelity": float((copy_pred == target_pred).double().mean()),
            "accuracy": float((copy_pred == env.y.cpu()).double().mean()),
            "monitor_fired_at": watched.fired_at if watched is not None else None,
            "seconds": time.perf_counter() - t0,
        }

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        entries = []
        for c in self.choices:
            runs = sorted((r for r in records if r.get("index") == c.index), key=lambda r: int(r.get("budget") or 0))
            if not runs:
                continue
            keep = ("budget", "queries", "fidelity", "accuracy", "monitor_fired_at", "seconds")
            fids = [float(r["fidelity"]) for r in runs if isinstance(r.get("fidelity"), (int, float))]
            entries.append({
                "attack": c.label, "name": c.label, "params": c.params, "runs": [{k: r.get(k) for k in keep} for r in runs],
                "max_fidelity": max(fids) if fids else None,
                "monitor": self.block.monitor.name if self.block.monitor is not None else None,
                "n": int(env.y.shape[0]) if env is not None else len(clean_correct),
            })
        return StudyOutput(sections={"extraction": entries})

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        return [
            Metric(
                study="extraction", name="extraction_fidelity", labels={"attack": str(t["name"])}, value=t.get("max_fidelity"),
                what=f"extraction {t['name']}", title="fidelity of the stolen copy", higher_is_better=False,
            )
            for t in _entries(report)
        ]

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _extraction_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        lines = []
        for t in _entries(report):
            parts = []
            for r in t.get("runs") or []:
                fired = r.get("monitor_fired_at")
                alarm = "" if t.get("monitor") is None else (f", alarm at query {fired}" if fired is not None else ", no alarm")
                parts.append(f"{int(r.get('queries') or 0)} queries: fidelity {100 * float(r.get('fidelity') or 0):.1f}%{alarm}")
            lines.append(f"extraction {t['name']}: " + "; ".join(parts))
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        worst = max(
            ((float(t["max_fidelity"]), str(t["name"])) for t in _entries(report) if isinstance(t.get("max_fidelity"), (int, float))),
            default=None,
        )
        return [f"extraction {worst[1]} fidelity {100 * worst[0]:.1f}%"] if worst else []
