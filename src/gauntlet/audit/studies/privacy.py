"""Privacy: how much the audited model's answers reveal about its training set (``privacy``).

Membership inference against the audited model, with the truth known to the auditor: the
``members`` are rows the model was trained on, the non-members rows it never saw (by default
the audit's own ``data:``, normally a test split).  The block::

    privacy:
      members: {name: digits, split: train, n: 300}     # rows the model was trained on
      nonmembers: {name: digits, split: test, n: 300}   # optional; default: the audit's data
      population: {path: extra.npz}                     # optional: attacker data (rmia, shadow)
      attacks:
        - loss_threshold
        - {name: lira, reference_models: 8, train: {method: standard, epochs: 15}}
        - {name: rmia, reference_models: 2, train: {method: standard, epochs: 15}}

The candidates are the first ``n`` of each side, ``n`` the smaller side's size (balanced, so AUC
and balanced accuracy mean what they say).  One unit per attack, resumable; attacks with
reference models (``lira``, ``rmia``) train them like the audited model (its own network,
re-initialised, with the attack's ``train`` recipe) and keep them under ``cache_dir`` (default
``$GAUNTLET_CACHE/membership``), so an interrupted audit resumes from the models it finished.
The section ``privacy`` reports per attack the AUC, the best balanced accuracy, the TPR at 0.1%
and 1% FPR, the queries, and the ROC curve (drawn log-log in the HTML report, as Carlini et al.
2022 advise: what matters is the few members an attacker identifies with confidence).  Gate:
``{privacy: lira, max_auc: 0.6}``, or ``--fail-under privacy:lira=0.6`` (a maximum AUC).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator
from torch import Tensor

from gauntlet.audit.html import e, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STRING, array_of
from gauntlet.audit.spec import AuditSpec, DataSpec, Fraction, LabelledItem, Strict, Text, unique_labels
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
from gauntlet.errors import ConfigError, DataError, GauntletError

__all__ = ["PrivacyStudy", "PrivacyThreshold"]

FLAG = "membership_below_chance"
_FLAG_TITLE = "membership attacks calibrated on reference or shadow models are not significantly worse than guessing"
#: one-sided z of an AUC below 0.5 that raises the flag (p < 0.005 under the null of no signal)
FLAG_Z = 2.58

#: the false-positive rates at which the ROC curve is kept in the report (log-spaced, 1e-4 … 1)
ROC_GRID = [10 ** (-4 + 4 * i / 40) for i in range(41)]


class MembershipAttackSpec(LabelledItem):
    """A membership-inference attack item; ``label`` names it in the report."""


class PrivacySpec(Strict):
    """The ``privacy`` block."""

    members: DataSpec
    nonmembers: DataSpec | None = None
    population: DataSpec | None = None
    attacks: Annotated[list[MembershipAttackSpec], Field(min_length=1)]
    cache_dir: Text | None = None

    @model_validator(mode="after")
    def _labels_unique(self) -> PrivacySpec:
        unique_labels(self.attacks)
        return self


class PrivacyBlock(Strict):
    """The privacy study's spec key."""

    privacy: PrivacySpec | None = None


class PrivacyThreshold(Threshold):
    """Gate: the AUC of membership attack ``privacy`` must be at most ``max_auc``."""

    metric_name = "privacy_auc"
    label_fields: ClassVar[dict[str, str]] = {"attack": "privacy"}
    bound_field = "max_auc"
    prefix = "privacy"

    privacy: Text
    max_auc: Fraction


@dataclass(frozen=True)
class MembershipChoice(LabelledChoice):
    block = "privacy"


@dataclass(frozen=True)
class PrivacyUnit:
    key: str
    seed: int
    choice: MembershipChoice

    def describe(self) -> str:
        return f"privacy {self.choice.label}"

    @property
    def cost(self) -> float:
        return 10.0 if "reference_models" in self.choice.params or self.choice.name in ("lira", "rmia") else 1.0


_POINT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_PRIVACY = array_of(
    ["attack", "name", "auc", "balanced_accuracy", "tpr_at_0.1%_fpr", "tpr_at_1%_fpr", "roc"],
    {
        "attack": STRING, "name": STRING, "params": {"type": "object"}, "auc": SHARE, "balanced_accuracy": SHARE,
        "tpr_at_0.1%_fpr": SHARE, "tpr_at_1%_fpr": SHARE, "members": COUNT, "nonmembers": COUNT,
        "queries": {"type": "number", "minimum": 0}, "roc": {"type": "array", "items": _POINT},
        "info": {"type": "object"}, "seconds": NON_NEGATIVE,
        "dp": {"type": ["object", "null"]},
    },
)


def dp_metadata(path: Path) -> dict[str, Any] | None:
    """What ``gauntlet train --method dp_sgd`` recorded beside a model's weights: ε, δ, noise and
    accountant (the safetensors header's ``gauntlet.privacy``, or ``<file>.json`` beside a
    ``.pt``); ``None`` when the model says nothing about differential privacy."""
    import json

    meta: Mapping[str, Any] | None = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        elif path.with_name(path.name + ".json").is_file():
            meta = json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError, ImportError):
        return None
    raw = (meta or {}).get("gauntlet.privacy")
    try:
        privacy = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    if not isinstance(privacy, Mapping) or not isinstance(privacy.get("epsilon"), (int, float)):
        return None
    return {k: privacy[k] for k in ("epsilon", "delta", "noise_multiplier", "accountant") if k in privacy}


def _entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("privacy") or [] if isinstance(t, Mapping)]


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _roc_svg(entries: Sequence[Mapping[str, Any]]) -> str:
    """The ROC curves on log-log axes (FPR and TPR from 1e-4 to 1), the chance diagonal dashed."""
    w, h, pad = 360, 300, 40

    def xy(f: float, t: float) -> tuple[float, float]:
        lx = (math.log10(max(f, 1e-4)) + 4) / 4
        ly = (math.log10(max(t, 1e-4)) + 4) / 4
        return pad + lx * (w - pad - 10), h - pad - ly * (h - pad - 10)

    parts = [f"<svg class='roc' width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img' aria-label='ROC curves, log-log'>"]
    x0, y0 = xy(1e-4, 1e-4)
    x1, y1 = xy(1, 1)
    parts.append(f"<rect x='{x0:.1f}' y='{y1:.1f}' width='{x1 - x0:.1f}' height='{y0 - y1:.1f}' fill='none' stroke='#999'/>")
    parts.append(f"<line x1='{x0:.1f}' y1='{y0:.1f}' x2='{x1:.1f}' y2='{y1:.1f}' stroke='#bbb' stroke-dasharray='4 3'/>")
    for k in range(-4, 1):
        gx, _ = xy(10.0**k, 1e-4)
        _, gy = xy(1e-4, 10.0**k)
        parts.append(f"<text x='{gx:.1f}' y='{h - pad + 14}' font-size='10' text-anchor='middle'>1e{k}</text>")
        parts.append(f"<text x='{pad - 4}' y='{gy + 3:.1f}' font-size='10' text-anchor='end'>1e{k}</text>")
    parts.append(f"<text x='{(x0 + x1) / 2:.1f}' y='{h - 6}' font-size='11' text-anchor='middle'>false-positive rate</text>")
    parts.append(f"<text x='12' y='{(y0 + y1) / 2:.1f}' font-size='11' text-anchor='middle' transform='rotate(-90 12 {(y0 + y1) / 2:.1f})'>true-positive rate</text>")
    for i, t in enumerate(entries):
        pts = [p for p in t.get("roc") or [] if isinstance(p, (list, tuple)) and len(p) == 2]
        if not pts:
            continue
        colour = _COLOURS[i % len(_COLOURS)]
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(float(f), float(tp)) for f, tp in pts))
        parts.append(f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='1.5'><title>{e(t.get('name'))}</title></polyline>")
        parts.append(f"<text x='{x0 + 6:.1f}' y='{y1 + 14 + 13 * i:.1f}' font-size='11' fill='{colour}'>{e(t.get('name'))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _privacy_html(report: Mapping[str, Any]) -> str:
    entries = _entries(report)
    if not entries:
        return ""
    head = (
        "<tr><th>attack</th><th class='num'>AUC</th><th class='num'>balanced accuracy</th>"
        "<th class='num'>TPR at 0.1% FPR</th><th class='num'>TPR at 1% FPR</th><th class='num'>queries</th></tr>"
    )
    rows = "".join(
        f"<tr class='privacy'><td>{e(t.get('name'))}</td><td class='num'><b>{_num(t.get('auc'))}</b></td>"
        f"<td class='num'>{pct(t.get('balanced_accuracy'))}</td><td class='num'>{pct(t.get('tpr_at_0.1%_fpr'))}</td>"
        f"<td class='num'>{pct(t.get('tpr_at_1%_fpr'))}</td><td class='num'>{int(t.get('queries') or 0)}</td></tr>"
        for t in entries
    )
    n = entries[0].get("members")
    dp = entries[0].get("dp")
    dp_note = (
        f"<p class='note'>The model says it was trained with DP-SGD: ε = {_num(dp.get('epsilon'))} at δ = {e(dp.get('delta'))} "
        f"(the {e(dp.get('accountant', 'privacy'))} accountant's figure, recorded at training).</p>"
        if isinstance(dp, Mapping) else ""
    )
    note = dp_note + (
        f"<p class='note'>Membership inference on {e(n)} training members and as many non-members. AUC 0.5 and a TPR equal to "
        "the FPR are what guessing gives; the log-log ROC shows how many members an attacker names with few false alarms "
        "(Carlini et al., 2022).</p>"
    )
    return (
        f"<section id='privacy'><h2>Privacy: membership inference</h2><div class='scroll'><table class='privacy'>{head}{rows}"
        f"</table></div>{_roc_svg(entries)}{note}</section>"
    )


def _num(v: Any) -> str:
    return f"{float(v):.3f}" if isinstance(v, (int, float)) else "–"


@register_study
class PrivacyStudy(Study):
    """Membership inference against the audited model, members and non-members known."""

    name = "privacy"
    title = "privacy: membership inference against the audited model (AUC, TPR at low FPR, log-log ROC)"
    Block = PrivacyBlock
    Threshold = PrivacyThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"privacy": _PRIVACY}

    def __init__(self, block: PrivacySpec, choices: list[MembershipChoice], spec: AuditSpec) -> None:
        self.block = block
        self.choices = choices
        self.seed = spec.seed
        self.spec = spec
        self.cache = spec.resolve_path(block.cache_dir) if block.cache_dir else None
        self._data: dict[str, tuple[Tensor, Tensor]] = {}
        self.dp = dp_metadata(spec.resolve_path(spec.model.path)) if spec.model.path else None

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> PrivacyStudy:
        from gauntlet.attacks import create
        from gauntlet.attacks.registry import get_attack_class

        block: PrivacySpec = spec.privacy
        choices = []
        for i, a in enumerate(block.attacks):
            place = f"privacy.attacks[{i}]"
            try:
                klass = get_attack_class(a.name, kind="inference")
                create(a.name, **a.params)
            except GauntletError as err:
                raise ConfigError(f"{place}: {err}") from None
            from gauntlet.attacks.inference import MembershipAttack

            if not issubclass(klass, MembershipAttack):
                raise ConfigError(f"{place}: {a.name!r} is not a membership-inference attack; the privacy block runs those (gauntlet attacks --kind inference)")
            if klass.needs_population and block.population is None:
                raise ConfigError(f"{place}: {a.name} needs attacker data disjoint from the candidates; add privacy.population")
            choices.append(MembershipChoice(i, a.display, a.name, dict(a.params)))
        return cls(block, choices, spec)

    def hash_payload(self) -> dict[str, Any]:
        block = self.block.model_dump(mode="json", exclude={"cache_dir"})
        for side in ("members", "nonmembers", "population"):
            d = getattr(self.block, side)
            if d is not None and d.path:
                block[side]["path"] = str(self.spec.resolve_path(d.path))
        return {"privacy": block}

    def check_threshold(self, th: Any, place: str) -> None:
        labels = [c.label for c in self.choices]
        if th.privacy not in labels:
            raise ConfigError(f"{place}.privacy: no membership attack is labelled {th.privacy!r}; the spec has {', '.join(map(repr, labels))}")

    @classmethod
    def parse_threshold(cls, text: str) -> PrivacyThreshold | None:
        """``privacy:LABEL=MAX`` (a maximum AUC; ``0.6`` or ``60%``)."""
        rule = split_rule(text, "privacy", 1, what="maximum AUC")
        if rule is None:
            return None
        (label,), maximum = rule
        return PrivacyThreshold.from_text(text, privacy=label, max_auc=maximum)  # type: ignore[no-any-return]

    # -- data -----------------------------------------------------------------------------------
    def _load(self, side: str, env: AuditEnv) -> tuple[Tensor, Tensor]:
        if side in self._data:
            return self._data[side]
        d: DataSpec | None = getattr(self.block, side)
        if d is None:  # only nonmembers: the audited data
            x, y = env.x, env.y
        else:
            x, y = load_block_data(self.spec, d, f"privacy.{side}", env.x)
        self._data[side] = (x, y)
        return x, y

    def _candidates(self, env: AuditEnv) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        (xm, ym), (xn, yn) = self._load("members", env), self._load("nonmembers", env)
        n = min(len(ym), len(yn))
        return (xm[:n], ym[:n]), (xn[:n], yn[:n])

    def _attack(self, choice: MembershipChoice) -> Any:
        from gauntlet.attacks import create
        from gauntlet.attacks.registry import get_attack_class

        params = dict(choice.params)
        if self.cache is not None and "cache_dir" in get_attack_class(choice.name)._param_names() and "cache_dir" not in params:
            params["cache_dir"] = str(self.cache)
        return create(choice.name, **params)

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        """The candidates load and match the model; score-based attacks need a model with scores."""
        (xm, _), _ = self._candidates(env)
        if xm.shape[0] < 2:
            raise DataError("privacy: at least 2 members and 2 non-members are needed; raise privacy.members.n")
        if self.block.population is not None:
            self._load("population", env)
        for c in self.choices:
            atk = self._attack(c)
            if atk.needs == "scores" and not env.base_model.has("scores"):
                raise ConfigError(f"{c.place}: {c.name} needs the model's scores, but it returns labels only; use label_only")

    def plan(self, env: AuditEnv, spec_digest: str) -> list[PrivacyUnit]:
        units = []
        for c in self.choices:
            key = work_key(spec_digest, "privacy", c.index)
            units.append(PrivacyUnit(key=key, seed=work_seed(self.seed, key), choice=c))
        return units

    def run(self, env: AuditEnv, unit: PrivacyUnit) -> dict[str, Any]:
        t0 = time.perf_counter()
        members, nonmembers = self._candidates(env)
        population = self._load("population", env) if self.block.population is not None else None
        atk = self._attack(unit.choice)
        try:
            res = atk.run(env.base_model, members=members, nonmembers=nonmembers, population=population, seed=unit.seed)
        except GauntletError as err:
            raise type(err)(f"{unit.choice.place}: {err}") from None
        roc = [[f, res.tpr_at(f)] for f in ROC_GRID]
        return {
            "index": unit.choice.index, "members": int(members[1].shape[0]), "nonmembers": int(nonmembers[1].shape[0]),
            **res.summary(), "queries": int(res.queries), "roc": roc,
            "info": {k: v for k, v in res.info.items() if isinstance(v, (int, float, str, bool))},
            "seconds": time.perf_counter() - t0,
        }

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        entries = []
        for c in self.choices:
            r = next((r for r in records if r.get("index") == c.index), None)
            if r is None:
                continue
            entries.append({
                "attack": c.label, "name": c.label, "params": c.params,
                **{k: r.get(k) for k in ("auc", "balanced_accuracy", "tpr_at_0.1%_fpr", "tpr_at_1%_fpr", "members", "nonmembers",
                                         "queries", "roc", "info", "seconds")},
                "dp": self.dp,
            })
        return StudyOutput(sections={"privacy": entries}, flags=self._flags(entries))

    def _flags(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """An attack with reference or shadow models whose AUC is significantly *below* 0.5: the
        models it is calibrated on do not behave like the target (another recipe, epochs or
        architecture), so its numbers understate the leak."""
        from gauntlet.attacks.registry import get_attack_class

        out = []
        for c, t in zip(self.choices, entries, strict=False):
            params = get_attack_class(c.name)._param_names()
            auc, n1, n2 = t.get("auc"), int(t.get("members") or 0), int(t.get("nonmembers") or 0)
            if not ("train" in params and isinstance(auc, (int, float)) and n1 and n2):
                continue
            se = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # the AUC's standard error when there is no signal
            z = (0.5 - float(auc)) / se
            if z <= FLAG_Z:
                continue
            out.append({
                "id": FLAG,
                "severity": "warning",
                "title": f"privacy {c.label}: AUC {float(auc):.3f} is significantly below chance",
                "explanation": (
                    f"{c.label} scores members as less likely members than non-members (AUC {float(auc):.3f} on {n1} + {n2} "
                    f"candidates, {z:.1f} standard errors below 0.5). An attack calibrated on reference or shadow models does "
                    "this when those models are not trained like the audited one: another recipe, number of epochs, "
                    "architecture or data size. Its figures then understate what an attacker with the right recipe learns. "
                    "What to do: give the attack the audited model's own training recipe (train: {method: ..., epochs: ...})."
                ),
                "evidence": {"attack": c.label, "auc": float(auc), "z": z, "members": n1, "nonmembers": n2},
            })
        return out

    @classmethod
    def hygiene_checks(cls) -> dict[str, str]:
        return {FLAG: _FLAG_TITLE}

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for t in _entries(report):
            name = str(t["name"])
            out.append(Metric(
                study="privacy", name="privacy_auc", labels={"attack": name}, value=t.get("auc"),
                what=f"membership {name}", title="membership-inference AUC", higher_is_better=False,
            ))
            for key, title in (("tpr_at_0.1%_fpr", "TPR at 0.1% FPR"), ("tpr_at_1%_fpr", "TPR at 1% FPR")):
                out.append(Metric(
                    study="privacy", name=f"privacy_{key.replace('%', 'pct').replace('.', '_')}", labels={"attack": name},
                    value=t.get(key), what=f"membership {name}", title=f"membership-inference {title}", higher_is_better=False,
                ))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _privacy_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        lines = []
        entries = _entries(report)
        dp = entries[0].get("dp") if entries else None
        if isinstance(dp, Mapping):
            lines.append(f"privacy: the model was trained with DP-SGD, epsilon {_num(dp.get('epsilon'))} at delta {dp.get('delta')}")
        for t in entries:
            def p(v: Any) -> str:
                return f"{100 * float(v):.2f}%" if isinstance(v, (int, float)) else "–"

            lines.append(
                f"privacy {t['name']}: AUC {_num(t.get('auc'))}, TPR {p(t.get('tpr_at_0.1%_fpr'))} at 0.1% FPR, "
                f"{p(t.get('tpr_at_1%_fpr'))} at 1% FPR ({t.get('members')} members, {t.get('nonmembers')} non-members)"
            )
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        worst = max(((float(t["auc"]), str(t["name"])) for t in _entries(report) if isinstance(t.get("auc"), (int, float))), default=None)
        return [f"membership {worst[1]} AUC {worst[0]:.3f}"] if worst else []
