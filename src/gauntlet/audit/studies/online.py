"""Online: an online spam filter poisoned a little each round, with and without a defense (``online``).

The study needs nothing of the audited model: the learner is built in
(:mod:`gauntlet.learning.spam`: ``SGDClassifier`` on hashed text, updated with ``partial_fit`` on
each round's user-labelled mail, from a seeded synthetic mail generator).  Each run is a stream of
rounds with an optional online attack (``boiling_frog``), an optional online defense
(``holdout_validation``, ``drift_detection``) and optional benign topic drift; after every round
the filter is measured on held-out real spam (acceptance: spam classified ham) and held-out ham of
the round's topics (false positives), and the defense's refusals are counted (false alarms when no
attacker is present).  The block::

    online:
      rounds: 30                 # attacked rounds per run (each run may set its own)
      per_round: 200             # messages per round
      spam_rate: 0.2             # real spam in each round, labelled spam by users
      warmup_rounds: 15          # clean rounds before the first attacked one
      runs:
        - {attack: {name: boiling_frog, share: 0.25}, label: frog}
        - {attack: boiling_frog, defense: drift_detection, label: frog+drift}
        - {defense: drift_detection, drift: 0.02, label: benign drift}   # false alarms

Units: one per run, resumable.  The section ``online`` reports per run the acceptance before the
attack, its peak and last value, the first round above 50%, the defense's refusal rate and the
per-round curves (SVG line charts of acceptance and of refused updates in the HTML).  Gate:
``{online: frog+drift, max_acceptance: 0.1}`` or ``--fail-under online:frog+drift=10%`` (a
maximum of the peak held-out spam acceptance over the run's rounds).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from gauntlet.audit.html import e, line_chart_svg, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STRING, array_of
from gauntlet.audit.spec import AuditSpec, Fraction, RegistryItem, Strict, Text
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import AuditEnv, Metric, Study, StudyOutput, Threshold, split_rule, work_key
from gauntlet.errors import ConfigError, GauntletError

__all__ = ["OnlineStudy", "OnlineThreshold"]


class OnlineRun(Strict):
    """One run of the ``online`` block: an attack and a defense (each optional) on one stream."""

    label: Text | None = None
    attack: RegistryItem | None = None
    defense: RegistryItem | None = None
    rounds: Annotated[int, Field(strict=True, ge=1)] | None = None
    drift: Annotated[float, Field(ge=0, lt=1)] = 0.0
    seed: Annotated[int, Field(strict=True, ge=0)] | None = None

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return f"{self.attack.name if self.attack else 'no attack'} / {self.defense.name if self.defense else 'undefended'}"


class OnlineSpec(Strict):
    """The ``online`` block."""

    runs: Annotated[list[OnlineRun], Field(min_length=1)]
    rounds: Annotated[int, Field(strict=True, ge=1)] = 30
    per_round: Annotated[int, Field(strict=True, ge=10)] = 200
    spam_rate: Annotated[float, Field(ge=0, lt=1)] = 0.2
    warmup_rounds: Annotated[int, Field(strict=True, ge=1)] = 15
    eval_size: Annotated[int, Field(strict=True, ge=10)] = 500
    trusted_size: Annotated[int, Field(strict=True, ge=10)] = 200

    @model_validator(mode="after")
    def _unique(self) -> OnlineSpec:
        labels = [r.display for r in self.runs]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"runs: two runs are labelled {dup[0]!r}; give one of them a label:")
        return self


class OnlineBlock(Strict):
    """The online study's spec key."""

    online: OnlineSpec | None = None


class OnlineThreshold(Threshold):
    """Gate: a run's peak held-out spam acceptance must be at most the maximum."""

    metric_name = "online_acceptance"
    label_fields: ClassVar[dict[str, str]] = {"run": "online"}
    bound_field = "max_acceptance"
    prefix = "online"

    online: Text
    max_acceptance: Fraction


@dataclass(frozen=True)
class OnlineUnit:
    key: str
    seed: int
    run: int
    cost: float = 1.0

    def describe(self) -> str:
        return f"online run #{self.run}"


_ROUND = {
    "type": "object", "required": ["round", "acceptance", "false_positives", "refused"],
    "properties": {"round": COUNT, "acceptance": SHARE, "false_positives": SHARE, "refused": {"type": "boolean"},
                   "attacker_spam_fraction": SHARE},
}
_ONLINE = array_of(
    ["run", "acceptance", "max_acceptance", "rounds"],
    {
        "run": STRING, "attack": {"type": ["string", "null"]}, "defense": {"type": ["string", "null"]},
        "drift": NON_NEGATIVE, "initial_acceptance": SHARE, "acceptance": SHARE, "max_acceptance": SHARE,
        "max_false_positives": SHARE, "refused_share": SHARE, "first_round_above_half": {"type": ["integer", "null"]},
        "eval_size": COUNT, "rounds": {"type": "array", "items": _ROUND}, "seconds": NON_NEGATIVE,
    },
)


def _entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("online") or [] if isinstance(t, Mapping)]


def _cumulative(flags: Sequence[Any]) -> list[float]:
    out, n = [], 0
    for i, f in enumerate(flags, 1):
        n += bool(f)
        out.append(n / i)
    return out


def _online_html(report: Mapping[str, Any]) -> str:

    entries = _entries(report)
    if not entries:
        return ""
    head = ("<tr><th>run</th><th>attack</th><th>defense</th><th class='num'>drift</th><th class='num'>before</th>"
            "<th class='num'>peak</th><th class='num'>last round</th><th class='num'>first round &gt; 50%</th>"
            "<th class='num'>updates refused</th></tr>")
    rows = []
    for t in entries:
        first = t.get("first_round_above_half")
        rows.append(
            f"<tr class='online'><td>{e(t.get('run'))}</td><td>{e(t.get('attack') or '–')}</td><td>{e(t.get('defense') or '–')}</td>"
            f"<td class='num'>{pct(t.get('drift'))}</td><td class='num'>{pct(t.get('initial_acceptance'))}</td>"
            f"<td class='num'><b>{pct(t.get('max_acceptance'))}</b></td><td class='num'>{pct(t.get('acceptance'))}</td>"
            f"<td class='num'>{'never' if first is None else e(first)}</td>"
            f"<td class='num'>{pct(t.get('refused_share')) if t.get('defense') else '–'}</td></tr>"
        )
    # round 0 is the filter after its warm-up; the curves start there
    acc = [(str(t.get("run")), [r.get("acceptance") for r in t.get("rounds") or []]) for t in entries]
    charts = [line_chart_svg(acc, title="held-out spam accepted per round", ylabel="spam accepted", x0=0)]
    defended = [t for t in entries if t.get("defense")]
    if defended:
        ref = [(str(t.get("run")), [None, *_cumulative([r.get("refused") for r in (t.get("rounds") or [])[1:]])]) for t in defended]
        charts.append(line_chart_svg(ref, title="updates refused so far", ylabel="share of rounds", x0=0))
    n = entries[0].get("eval_size")
    note = (
        f"<p class='note'>An online spam filter (logistic regression on hashed words, updated every round on that round's "
        f"user-labelled mail) measured after every round on {e(n)} held-out real spam: accepted = classified ham. Round 0 is "
        "the filter after its clean warm-up. The attacker's mail is delivered and never reported, so the filter learns it as "
        "ham. Updates refused: rounds whose update the defense kept out (false alarms in a run without an attack).</p>"
    )
    return (f"<section id='online'><h2>Online learning under a drifting attacker</h2><div class='scroll'>"
            f"<table class='online'>{head}{''.join(rows)}</table></div><div>{''.join(charts)}</div>{note}</section>")


@register_study
class OnlineStudy(Study):
    """An online spam filter under a boiling-frog attacker, per defense; held-out spam acceptance per round."""

    name = "online"
    title = "online: a built-in online spam filter drifted by an attacker round by round, per defense; acceptance per round"
    Block = OnlineBlock
    Threshold = OnlineThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"online": _ONLINE}

    def __init__(self, block: OnlineSpec, spec: AuditSpec) -> None:
        self.block = block
        self.seed = spec.seed

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> OnlineStudy:
        block: OnlineSpec = spec.online
        study = cls(block, spec)
        for i in range(len(block.runs)):
            study._objects(i)
        return study

    def _objects(self, i: int) -> tuple[Any, Any]:
        """The run's attack and defense, built from the registries (place-named errors)."""
        from gauntlet import attacks, defenses

        run = self.block.runs[i]
        built: list[Any] = []
        for what, item, create in (("attack", run.attack, attacks.create), ("defense", run.defense, defenses.create)):
            place = f"online.runs[{i}].{what}"
            if item is None:
                built.append(None)
                continue
            try:
                obj = create(item.name, **item.params)
            except GauntletError as err:
                raise ConfigError(f"{place}: {err}") from None
            if getattr(obj, "kind", None) != "online":
                raise ConfigError(f"{place}: {item.name!r} is a {getattr(obj, 'kind', '?')} {what}, not an online one; "
                                  f"see gauntlet {what}s --kind online")
            built.append(obj)
        attack, defense = built
        share = getattr(attack, "share", None)
        if isinstance(share, float) and share >= 1 - self.block.spam_rate:
            raise ConfigError(f"online.runs[{i}].attack: share {share:g} leaves no room for the round's ham with spam_rate "
                              f"{self.block.spam_rate:g}; lower it below {1 - self.block.spam_rate:g}")
        return attack, defense

    def hash_payload(self) -> dict[str, Any]:
        return {"online": self.block.model_dump(mode="json")}

    def check_threshold(self, th: Any, place: str) -> None:
        labels = [r.display for r in self.block.runs]
        if th.online not in labels:
            raise ConfigError(f"{place}.online: no run is labelled {th.online!r}; the spec has {', '.join(map(repr, labels))}")

    @classmethod
    def parse_threshold(cls, text: str) -> OnlineThreshold | None:
        """``online:LABEL=MAX`` (a maximum peak held-out spam acceptance; ``10%`` or ``0.1``)."""
        rule = split_rule(text, "online", 1, what="maximum acceptance")
        if rule is None:
            return None
        (label,), maximum = rule
        return OnlineThreshold.from_text(text, online=label, max_acceptance=maximum)  # type: ignore[no-any-return]

    # -- run ------------------------------------------------------------------------------------
    def plan(self, env: AuditEnv, spec_digest: str) -> list[OnlineUnit]:
        b = self.block
        units = []
        for i, run in enumerate(b.runs):
            key = work_key(spec_digest, "online", i)
            # every run of a block streams the same mail unless it sets its own seed, so runs differ only by
            # their attack, defense and drift
            seed = run.seed if run.seed is not None else self.seed
            units.append(OnlineUnit(key=key, seed=seed, run=i, cost=float((run.rounds or b.rounds) + b.warmup_rounds)))
        return units

    def run(self, env: AuditEnv, unit: OnlineUnit) -> dict[str, Any]:
        from gauntlet.learning.spam import run_stream

        b = self.block
        r = b.runs[unit.run]
        attack, defense = self._objects(unit.run)
        t0 = time.perf_counter()
        try:
            res = run_stream(rounds=r.rounds or b.rounds, per_round=b.per_round, spam_rate=b.spam_rate,
                             warmup_rounds=b.warmup_rounds, attacker=attack, defense=defense, drift=r.drift,
                             eval_size=b.eval_size, trusted_size=b.trusted_size, seed=unit.seed)
        except GauntletError as err:
            raise type(err)(f"online.runs[{unit.run}]: {err}") from None
        return {
            "run": unit.run, "acceptance": res.acceptance, "false_positives": res.false_positives,
            "refused": res.refused, "attacker_spam_fraction": res.attacker_spam_fraction,
            "seconds": time.perf_counter() - t0,
        }

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        b = self.block
        by = {rec.get("run"): rec for rec in records}
        entries = []
        for i, run in enumerate(b.runs):
            rec = by.get(i)
            if rec is None:
                continue
            acc = [float(a) for a in rec.get("acceptance") or []]
            fps = [float(a) for a in rec.get("false_positives") or []]
            refused = [bool(x) for x in rec.get("refused") or []]
            frac = [float(a) for a in rec.get("attacker_spam_fraction") or []]
            if not acc:
                continue
            rounds = [{"round": k, "acceptance": acc[k], "false_positives": fps[k] if k < len(fps) else None,
                       "refused": refused[k] if k < len(refused) else False,
                       "attacker_spam_fraction": frac[k] if k < len(frac) else 0.0} for k in range(len(acc))]
            attacked = refused[1:]
            entries.append({
                "run": run.display, "attack": run.attack.name if run.attack else None,
                "defense": run.defense.name if run.defense else None, "drift": run.drift,
                "initial_acceptance": acc[0], "acceptance": acc[-1], "max_acceptance": max(acc),
                "max_false_positives": max(fps) if fps else None,
                "refused_share": sum(attacked) / len(attacked) if attacked else 0.0,
                "first_round_above_half": next((k for k, a in enumerate(acc) if a > 0.5), None),
                "eval_size": b.eval_size, "rounds": rounds, "seconds": float(rec.get("seconds") or 0.0),
            })
        return StudyOutput(sections={"online": entries})

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for t in _entries(report):
            n = t.get("eval_size")
            v = t.get("max_acceptance")
            out.append(Metric(
                study="online", name="online_acceptance", labels={"run": str(t["run"])}, value=v,
                what=f"online {t['run']}", title="peak held-out spam acceptance", higher_is_better=False,
                count=round(float(v) * n) if isinstance(v, (int, float)) and isinstance(n, int) else None,
                n=n if isinstance(n, int) else None,
            ))
            if t.get("defense"):
                out.append(Metric(
                    study="online", name="online_refused", labels={"run": str(t["run"])}, value=t.get("refused_share"),
                    what=f"online {t['run']}", title="share of updates refused", higher_is_better=False, regression=False,
                ))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _online_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        lines = []
        for t in _entries(report):
            first = t.get("first_round_above_half")
            lines.append(
                f"online {t['run']}: held-out spam accepted {100 * float(t.get('initial_acceptance') or 0):.1f}% before, "
                f"peak {100 * float(t.get('max_acceptance') or 0):.1f}%"
                + (f" (above 50% from round {first})" if isinstance(first, int) else "")
                + (f", {100 * float(t.get('refused_share') or 0):.1f}% of updates refused" if t.get("defense") else "")
            )
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        attacked = [t for t in _entries(report) if t.get("attack") and isinstance(t.get("max_acceptance"), (int, float))]
        worst = max(attacked, key=lambda t: float(t["max_acceptance"]), default=None)
        return [f"online worst: {worst['run']} {100 * float(worst['max_acceptance']):.1f}% spam accepted"] if worst else []
