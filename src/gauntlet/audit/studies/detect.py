"""Detection: detectors against plain and detector-aware attacks (the spec's ``detect`` block).

Each item names a detector of the defense registry, fitted and calibrated on the first
``calibration`` audited samples (at false-positive rate ``fpr``) and evaluated on the rest against
attacks of the evasion block (by label), plain and — with ``adaptive`` — detector-aware (Carlini &
Wagner 2017), on the **undefended** model (the model file; the audited model when the spec has no
``model.defense``).  One unit per item.  The report section ``detection`` has one
:meth:`~gauntlet.defenses.detection.DetectionReport.to_dict` per item, to which :meth:`DetectStudy.merge`
adds ``ran_on`` (the model, :func:`~gauntlet.audit.studies.certify.ran_on_record`), the worst case
over plain and detector-aware attacks per ε and a verdict (:func:`assess`), and the test of the
clean false-positive rate against the target (:func:`fpr_check`), which raises the blocking hygiene
flag ``detector_fpr_exceeds_target``.  Gate rules:
``{detector: mahalanobis, attack: pgd, max_undetected_success_rate: 0.1}`` (the worst row of that
attack over ε and modes) or ``--fail-under detect:mahalanobis:pgd=10%``.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import AfterValidator, BeforeValidator, Field

from gauntlet.audit.html import bar, e, eps_text, fmt_value, num, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, NUM, SHARE, STR_OR_NULL, STRING, array_of
from gauntlet.audit.spec import (
    AuditSpec,
    Bool,
    Fraction,
    RegistryChoice,
    RegistryItem,
    Strict,
    Text,
    check_defense_params,
    defense_class,
    open_unit,
    str_list,
)
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import (
    AuditEnv,
    ChoiceUnit,
    ItemsStudy,
    Metric,
    Study,
    StudyOutput,
    Threshold,
    work_key,
    work_seed,
)
from gauntlet.audit.studies.certify import RAN_ON, ran_on_html, ran_on_of, ran_on_record, ran_on_text
from gauntlet.audit.studies.evasion import AttackChoice, accepts_targeted, resolve_attacks
from gauntlet.errors import ConfigError, GauntletError

__all__ = [
    "EVADED_AT",
    "FPR_ALPHA",
    "FPR_FLAG",
    "HOLDS_AT",
    "DetectAttack",
    "DetectChoice",
    "DetectSpec",
    "DetectStudy",
    "DetectTask",
    "DetectThreshold",
    "assess",
    "binomial_tail",
    "fpr_check",
    "resolve_detect",
]


def _one_or_list(v: Any) -> Any:
    return [v] if isinstance(v, (Mapping, str)) else v


class DetectSpec(RegistryItem):
    """One ``detect`` item: a detector fitted and calibrated on the first ``calibration`` audited
    samples (at false-positive rate ``fpr``) and evaluated on the rest against ``attacks`` (labels
    from ``attacks``), plain and — with ``adaptive`` — detector-aware (Carlini & Wagner 2017)."""

    own_keys = ("fpr", "calibration", "attacks", "adaptive")

    fpr: Annotated[float, Field(strict=True), AfterValidator(open_unit)] = 0.05
    calibration: Annotated[int, Field(strict=True, ge=2)] | None = None
    attacks: Annotated[list[Text], BeforeValidator(str_list), Field(min_length=1)] | None = None
    adaptive: Bool = True


class DetectBlock(Strict):
    """The detect study's spec key."""

    detect: Annotated[list[DetectSpec], BeforeValidator(_one_or_list)] = Field(default_factory=list)


class DetectThreshold(Threshold):
    """Gate: the undetected success rate of ``attack`` against ``detector`` (its worst row over ε
    and plain / detector-aware modes) must be ≤ the maximum."""

    metric_name = "undetected_success_rate"
    label_fields: ClassVar[dict[str, str]] = {"detector": "detector", "attack": "attack"}
    bound_field = "max_undetected_success_rate"
    prefix = "detect"

    detector: Text
    attack: Text
    max_undetected_success_rate: Fraction


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
        if accepts_targeted(get_attack_class(self.attack_name)):
            kwargs["targeted"] = False
        return create(self.attack_name, **kwargs)


@dataclass(frozen=True)
class DetectChoice(RegistryChoice):
    """One ``detect`` item resolved: the detector, its calibration and the attacks it faces."""

    index: int = 0
    fpr: float = 0.05
    calibration: int | None = None
    adaptive: bool = True
    attacks: tuple[DetectAttack, ...] = ()

    @property
    def place(self) -> str:
        return f"detect[{self.index}]"

    def calibration_for(self, n: int) -> int:
        """Samples used to fit and calibrate the detector when ``n`` are audited (default: half)."""
        return self.calibration if self.calibration is not None else n // 2


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
    for i, item in enumerate(spec.detect):  # type: ignore[attr-defined]
        place = f"detect[{i}]"
        cls = defense_class(item.name, "detector", place, "detect")
        check_defense_params(cls, item.params, place)
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
        out.append(DetectChoice(item.name, dict(item.params), i, float(item.fpr), item.calibration, item.adaptive, tuple(runs)))
    return out


@dataclass(frozen=True)
class DetectTask(ChoiceUnit):
    """``detect[index]``: fit and calibrate on samples ``0:start``, evaluate on ``start:stop``."""

    kind = "detect"

    @property
    def calibration(self) -> int:
        return self.start

    @property
    def n(self) -> int:
        return self.stop

    @property
    def cost(self) -> float:
        return float((self.stop - self.start) * 100 * len(self.choice.attacks) * (2 if self.choice.adaptive else 1))


def _split_calibration(detector: Any, calibration: int) -> int:
    """How many of the ``calibration`` samples fit the detector's statistics; the rest set its
    threshold.  Detectors that learn statistics from clean data (``mahalanobis``) get half, since a
    threshold calibrated on the points the statistics were fitted on under-states the false-positive
    rate; detectors without statistics use every calibration sample for both."""
    from gauntlet.defenses.detection._base import Detector

    learns = type(detector)._fit_statistics is not Detector._fit_statistics
    return calibration - calibration // 2 if learns else calibration


# ------------------------------------------------------------------------------------------------
# the verdict and the false-positive-rate check
#: a detector *holds* when the worst undetected success over plain and detector-aware attacks is at most this
HOLDS_AT = 0.10
#: a detector is *evaded* when the worst undetected success is at least this (the attacker wins on most points)
EVADED_AT = 0.50
#: the one-sided binomial test of the clean FPR against the target raises the flag below this p-value
FPR_ALPHA = 0.01
#: the hygiene flag's id
FPR_FLAG = "detector_fpr_exceeds_target"
_FPR_TITLE = "A detector's clean false-positive rate exceeds its target"


def _mode(adaptive: Any) -> str:
    return "detector-aware" if adaptive else "plain"


def _eps_words(norm: Any, eps: Any) -> str:
    e_s = f"{float(eps):g}" if isinstance(eps, (int, float)) and not isinstance(eps, bool) else "minimal"
    return f"{norm} ε={e_s}" if norm else f"ε={e_s}"


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def assess(d: Mapping[str, Any]) -> dict[str, Any]:
    """The worst case and the verdict of one detection entry (a ``DetectionReport`` dict).

    ``worst_case``: per norm and ε, the largest ``undetected_success_rate`` over every attack, plain
    and detector-aware (the row it comes from named); ``worst_undetected_success_rate``: the largest
    of those.  The verdict reads that worst case: ``"holds"`` when it is at most :data:`HOLDS_AT`
    (10%), ``"evaded"`` when it is at least :data:`EVADED_AT` (50%: the attacker wins on most
    points), ``"partial"`` between, ``None`` when no row has a rate (no evaluated point classified
    correctly).  ``verdict_text`` is one sentence saying it, naming the row, and — for a detector
    that holds — whether a detector-aware attack was among those tried and whether the attacks
    fooled the classifier at all (a detector that faced attacks which barely succeed is untested).
    """
    rows = [r for r in d.get("rows") or [] if isinstance(r, Mapping)]
    det = str(d.get("detector"))
    by_eps: dict[tuple[str, float | None], dict[str, Any]] = {}
    for r in rows:
        v = _num(r.get("undetected_success_rate"))
        key = (str(r.get("norm")), _num(r.get("eps")))
        if v is None:
            by_eps.setdefault(key, {"norm": r.get("norm"), "eps": key[1], "undetected_success_rate": None})
            continue
        cur = by_eps.get(key)
        if cur is None or cur["undetected_success_rate"] is None or v > cur["undetected_success_rate"]:
            by_eps[key] = {
                "norm": r.get("norm"), "eps": key[1], "undetected_success_rate": v, "attack": str(r.get("attack")),
                "adaptive": bool(r.get("adaptive")), "n_correct": r.get("n_correct"),
            }
    worst_case = sorted(by_eps.values(), key=lambda w: (str(w["norm"]), w["eps"] if w["eps"] is not None else -1.0))
    rated = [w for w in worst_case if w["undetected_success_rate"] is not None]
    out: dict[str, Any] = {"worst_case": worst_case, "worst_undetected_success_rate": None, "verdict": None}
    if not rated:
        out["verdict_text"] = f"{det}: no verdict — no attack has a measured rate (no rows, or no evaluated point classified correctly)"
        return out
    top = max(rated, key=lambda w: w["undetected_success_rate"])  # the first of equal maxima
    worst = float(top["undetected_success_rate"])
    out["worst_undetected_success_rate"] = worst
    n = top.get("n_correct")
    of = f" of {n} points" if isinstance(n, int) else " of points"
    where = f"{top['attack']}, {_mode(top['adaptive'])}, {_eps_words(top['norm'], top['eps'])}"
    aware = any(r.get("adaptive") for r in rows)
    if worst >= EVADED_AT:
        out["verdict"] = "evaded"
        who = "an adaptive attacker" if top["adaptive"] else "even a plain attacker"
        tail = "it does not stop an attacker who knows it" if top["adaptive"] else "it does not stop even an attacker who ignores it"
        out["verdict_text"] = f"{det}: {who} evades it on {_p(worst)}{of} ({where}; undetected success); {tail}"
    elif worst > HOLDS_AT:
        out["verdict"] = "partial"
        who = "an adaptive attacker" if top["adaptive"] else "a plain attacker"
        out["verdict_text"] = (
            f"{det}: partial — {who} evades it on {_p(worst)}{of} ({where}; undetected success); it stops only part of the attacks"
        )
    else:
        out["verdict"] = "holds"
        scope = "plain and detector-aware attacks" if aware else (
            "plain attacks only; not tested against an attacker who knows it (no detector-aware run)"
        )
        text = f"{det}: holds — worst undetected success {_p(worst)}{of} ({where}) over {scope}"
        fooled = [v for v in (_num(r.get("success_rate")) for r in rows) if v is not None]
        if fooled and max(fooled) <= HOLDS_AT:
            text += (
                f"; but the attacks fool the classifier on at most {_p(max(fooled))} of points, so this says little "
                "about the detector"
            )
        out["verdict_text"] = text
    return out


def _assessed(d: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's stored worst case and verdict, or :func:`assess` for reports written before them."""
    if isinstance(d.get("verdict_text"), str) and isinstance(d.get("worst_case"), list):
        return {k: d.get(k) for k in ("worst_case", "worst_undetected_success_rate", "verdict", "verdict_text")}
    return assess(d)


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X ≥ k)`` for ``X ~ Binomial(n, p)``, exact (the pmf summed in log space)."""
    if k <= 0 or p >= 1:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def fpr_check(d: Mapping[str, Any]) -> dict[str, Any] | None:
    """The clean false-positive rate of one detection entry tested against its target.

    ``flagged`` of the ``n`` clean evaluated samples were flagged; under "the FPR is at most
    ``target_fpr``" at least that many has probability ``p_value`` (one-sided exact binomial
    test).  ``exceeds_target`` when ``p_value`` < :data:`FPR_ALPHA` (0.01): more flags than sampling
    noise explains.  ``None`` when the entry lacks the numbers.
    """
    n, fpr, target = d.get("n"), _num(d.get("clean_fpr")), _num(d.get("target_fpr"))
    if not isinstance(n, int) or n <= 0 or fpr is None or target is None:
        return None
    flagged = round(fpr * n)
    p = binomial_tail(flagged, n, target)
    return {"flagged": flagged, "n": n, "p_value": p, "alpha": FPR_ALPHA, "exceeds_target": p < FPR_ALPHA}


def _threshold_samples(d: Mapping[str, Any]) -> int | None:
    cal, fit = d.get("calibration_samples"), d.get("fit_samples")
    if not isinstance(cal, int):
        return None
    return cal - fit if isinstance(fit, int) and 0 < fit < cal else cal


def _fpr_flag(place: str, d: Mapping[str, Any], check: Mapping[str, Any]) -> dict[str, Any]:
    target, fpr = float(d["target_fpr"]), float(d["clean_fpr"])
    k, n, p = check["flagged"], check["n"], check["p_value"]
    m = _threshold_samples(d)
    evidence: dict[str, Any] = {
        "detect": place, "detector": d.get("detector"), "target_fpr": target, "clean_fpr": fpr, "flagged": k, "n": n,
        "p_value": p, "alpha": FPR_ALPHA, "test": "one-sided exact binomial: P(X >= flagged | n, target_fpr) < alpha",
    }
    small = ""
    if m is not None and m > 0:
        expected = (math.floor(m * target + 1e-9) + 1) / (m + 1)
        evidence["threshold_samples"] = m
        evidence["expected_fpr_of_threshold"] = expected
        small = (
            f" A threshold set on {m} clean scores has an expected false-positive rate of (⌊{m}·{target:g}⌋+1)/{m + 1} = "
            f"{_p(expected)}{' — too few for this target' if expected > 1.5 * target else ''}."
        )
    return {
        "id": FPR_FLAG,
        "severity": "warning",
        # the place and numbers in the title keep two detectors' flags apart in the gate's messages
        "title": f"{place} {d.get('detector')}: clean false-positive rate {_p(fpr)} exceeds its {_p(target)} target",
        "explanation": (
            f"{place} ({d.get('detector')}) flags {_p(fpr)} of the {n} clean evaluated samples ({k}), against the "
            f"{_p(target)} false-positive rate its threshold was calibrated to. If the rate were {_p(target)}, {k} or more "
            f"flags in {n} would have probability {p:.2g} (one-sided binomial test; the flag is raised below {FPR_ALPHA:g}), "
            "so this is not sampling noise. The detector then works at a more aggressive point than configured: it flags more "
            "inputs, clean and adversarial alike, so its TPR looks higher and the undetected success lower than at the "
            f"stated false-positive rate — its numbers flatter it and do not describe the detector as configured.{small} "
            "Usual causes: too few calibration samples for the target, calibration samples that differ from the "
            "evaluated ones, or statistics fitted on the threshold's own samples. What to do: raise calibration (well "
            "above 1/fpr samples), calibrate on data like the deployment's, or raise fpr to what the deployment can afford."
        ),
        "evidence": evidence,
    }


# ------------------------------------------------------------------------------------------------
# report
_RATE = {"type": "number", "minimum": 0, "maximum": 1}
_ROWS = array_of(
    ["attack", "adaptive", "eps", "norm", "n", "n_correct", "clean_fpr", "success_rate", "tpr", "undetected_success_rate", "auroc"],
    {
        "attack": STRING, "adaptive": {"type": "boolean"}, "eps": {"type": ["number", "null"], "minimum": 0},
        "norm": STR_OR_NULL, "n": COUNT, "n_correct": COUNT, "clean_fpr": SHARE, "success_rate": SHARE, "tpr": SHARE,
        "undetected_success_rate": SHARE, "auroc": SHARE, "median_norm": {"type": ["number", "null"], "minimum": 0},
        "union_undetected_success_rate": SHARE, "threshold": NUM, "target_fpr": _RATE, "seconds": NON_NEGATIVE,
        "queries": COUNT,
    },
)
_WORST = array_of(
    ["norm", "eps", "undetected_success_rate"],
    {
        "norm": STR_OR_NULL, "eps": {"type": ["number", "null"], "minimum": 0}, "undetected_success_rate": SHARE,
        "attack": STRING, "adaptive": {"type": "boolean"}, "n_correct": COUNT,
    },
)
_FPR_CHECK = {
    "type": "object",
    "required": ["flagged", "n", "p_value", "alpha", "exceeds_target"],
    "properties": {"flagged": COUNT, "n": COUNT, "p_value": _RATE, "alpha": _RATE, "exceeds_target": {"type": "boolean"}},
}
# ran_on, worst_case, worst_undetected_success_rate, verdict, verdict_text and fpr_check are
# optional: reports written before them still validate (the HTML and text compute the verdict)
_DETECTION = array_of(
    ["detector", "params", "threshold", "target_fpr", "n", "clean_accuracy", "clean_fpr", "rows", "notes"],
    {
        "detector": STRING, "params": {"type": "object"}, "threshold": NUM, "target_fpr": _RATE, "n": COUNT,
        "clean_accuracy": SHARE, "clean_fpr": SHARE, "calibration_samples": COUNT, "fit_samples": COUNT,
        "seconds": NON_NEGATIVE, "notes": {"type": "array", "items": STRING}, "rows": _ROWS, "ran_on": RAN_ON,
        "worst_case": _WORST, "worst_undetected_success_rate": SHARE,
        "verdict": {"type": ["string", "null"], "enum": ["holds", "partial", "evaded", None]}, "verdict_text": STRING,
        "fpr_check": _FPR_CHECK,
    },
)


def _detection_html(report: Mapping[str, Any]) -> str:
    dets = [d for d in report.get("detection") or [] if isinstance(d, Mapping)]
    if not dets:
        return ""
    parts = []
    head = (
        "<tr><th>attack</th><th>mode</th><th class='num'>ε</th><th class='num'>success rate</th>"
        "<th class='num'>detected (TPR)</th><th class='num'>undetected success</th><th class='num'>AUROC</th>"
        "<th class='num'>seconds</th></tr>"
    )
    for d in dets:
        a = _assessed(d)
        many_norms = len({str(w.get("norm")) for w in a["worst_case"] or []}) > 1
        worst_rows = "".join(
            f"<tr class='det worst'><td><b>worst case</b>{' (' + e(w.get('norm')) + ')' if many_norms else ''}</td>"
            f"<td>plain + detector-aware</td><td class='num'>{eps_text(w.get('eps'))}</td><td></td><td></td>"
            f"<td class='num'>{bar(w.get('undetected_success_rate'))}</td>"
            f"<td colspan='2' class='sub'>{e(w.get('attack', ''))}{', ' + _mode(w.get('adaptive')) if 'attack' in w else ''}</td></tr>"
            for w in a["worst_case"] or []
            if isinstance(w, Mapping)
        )
        rows = "".join(
            f"<tr class='det'><td>{e(r.get('attack'))}</td><td>{'detector-aware' if r.get('adaptive') else 'plain'}</td>"
            f"<td class='num'>{eps_text(r.get('eps'))}</td><td class='num'>{pct(r.get('success_rate'))}</td>"
            f"<td class='num'>{pct(r.get('tpr'))}</td><td class='num'>{bar(r.get('undetected_success_rate'))}</td>"
            f"<td class='num'>{num(r.get('auroc'), '{:.3f}')}</td><td class='num'>{num(r.get('seconds'), '{:.2f}')}</td></tr>"
            for r in d.get("rows") or []
            if isinstance(r, Mapping)
        )
        params = ", ".join(f"{e(k)}={e(fmt_value(v))}" for k, v in (d.get("params") or {}).items())
        notes = "".join(f"<li>{e(n)}</li>" for n in d.get("notes") or [])
        check = d.get("fpr_check") if isinstance(d.get("fpr_check"), Mapping) else fpr_check(d)
        fpr_note = ""
        if check:
            fpr_note = f" ({num(check.get('flagged'))} of {num(check.get('n'))}"
            if check.get("exceeds_target"):
                fpr_note += f"; above the target beyond sampling noise, p = {num(check.get('p_value'), '{:.2g}')}"
            fpr_note += ")"
        parts.append(
            f"<h3>{e(d.get('detector'))} <span class='mono sub'>{params}</span></h3>"
            f"<p class='det-verdict' data-verdict='{e(a.get('verdict') or 'none')}'><b>Verdict:</b> {e(a.get('verdict_text'))}</p>"
            f"<div class='sub'>fitted and calibrated on {num(d.get('calibration_samples'))} samples, evaluated on "
            f"{num(d.get('n'))} · target FPR {pct(d.get('target_fpr'))}, clean FPR {pct(d.get('clean_fpr'))}{fpr_note} · "
            f"clean accuracy {pct(d.get('clean_accuracy'))}</div>"
            f"<table class='det'>{head}{rows}{worst_rows}</table>" + (f"<ul class='checks'>{notes}</ul>" if notes else "")
        )
    note = (
        "<p class='note'>Rates are over the samples classified correctly: "
        "success = the attack fools the classifier; undetected success = it fools the classifier and the detector "
        "does not flag it (what matters to a defender). Detector-aware rows attack classifier and detector together "
        "(Carlini &amp; Wagner 2017). Worst case: per ε, the highest undetected success over every attack, plain and "
        f"detector-aware. Verdict: the detector holds when the worst case is at most {100 * HOLDS_AT:g}%, is evaded when "
        f"it is at least {100 * EVADED_AT:g}%, and is partial between.</p>"
    )
    head2 = f"<h2>Detection <span class='sub'>{ran_on_html(ran_on_of(dets, report))}</span></h2>"
    return f"<section id='detection'>{head2}{''.join(parts)}{note}</section>"


# ------------------------------------------------------------------------------------------------
# the study
@register_study
class DetectStudy(ItemsStudy):
    """Detectors fitted on clean data and evaluated against plain and detector-aware attacks."""

    name = "detect"
    title = "detectors: TPR, AUROC and undetected success against plain and detector-aware attacks"
    Block = DetectBlock
    Threshold = DetectThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"detection": _DETECTION}
    #: a detector's clean FPR above its target says its numbers are not those of the detector as
    #: configured (a lower threshold flatters TPR and undetected success), so a gated audit fails on it
    blocking_flags: ClassVar[frozenset[str]] = frozenset({FPR_FLAG})

    choices: list[DetectChoice]
    #: what the units run on, recorded in every entry (:func:`ran_on_record`); ``None``: not known
    ran_on: dict[str, Any] | None = None

    @classmethod
    def hygiene_checks(cls) -> dict[str, str]:
        return {FPR_FLAG: _FPR_TITLE}

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> DetectStudy:
        evasion = resolved.get("evasion")
        if evasion is None:
            raise ConfigError(
                "detect: detectors are evaluated against the spec's attacks on its untargeted threats; add threats "
                "(and attacks)"
            )
        items = [d.model_dump(mode="json") for d in spec.detect]
        study = cls(resolve_detect(spec, evasion.attacks), spec.batch_size, spec.seed, items)  # type: ignore[attr-defined]
        study.ran_on = ran_on_record(spec)
        return study

    def check_threshold(self, th: Any, place: str) -> None:
        mine = [c for c in self.choices if c.name == th.detector]
        if not mine:
            names = ", ".join(repr(c.name) for c in self.choices)
            raise ConfigError(f"{place}.detector: no detect item uses detector {th.detector!r}; the spec has {names}")
        keys = list(dict.fromkeys(a.key for c in mine for a in c.attacks))
        if th.attack not in keys:
            close = difflib.get_close_matches(th.attack, keys, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{place}.attack: {th.detector} is not evaluated against {th.attack!r}; {hint}it faces "
                + ", ".join(repr(k) for k in keys)
            )

    @classmethod
    def parse_threshold(cls, text: str) -> DetectThreshold | None:
        m = re.fullmatch(r"\s*detect\s*:\s*(\w+)\s*:\s*([A-Za-z0-9_\-. ]+?)\s*=\s*([^\s%]+)\s*(%?)\s*", text or "")
        if not m:
            return None
        detector, attack, max_s, percent = m.groups()
        try:
            maximum = float(max_s) / (100.0 if percent else 1.0)
        except ValueError:
            raise ConfigError(f"--fail-under {text!r}: the maximum must be a number") from None
        return DetectThreshold.from_text(  # type: ignore[no-any-return]
            text, detector=detector, attack=attack, max_undetected_success_rate=maximum
        )

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        y = env.y
        n = int(y.shape[0])
        for c in self.choices:
            cal = c.calibration_for(n)
            if cal >= n:
                raise ConfigError(
                    f"{c.place}.calibration: must be < the {n} audited samples so that samples remain to evaluate the "
                    f"detector on, got {cal}"
                )
            if cal < 2:
                raise ConfigError(f"{c.place}.calibration: needs at least 2 of the {n} audited samples, got {cal}")
            det = c.create()
            try:
                det._check_model_type(env.base_model, c.place)
                det._check_model(env.base_model)
            except GauntletError as err:
                msg = str(err)
                raise type(err)(msg if msg.startswith(c.place) else f"{c.place}: {msg}") from None
            fit_n = _split_calibration(det, cal)
            if getattr(det, "needs_labels", False) and int(torch.unique(y[:fit_n]).numel()) < 2:
                raise ConfigError(
                    f"{c.place}.calibration: the first {fit_n} samples {c.name} is fitted on hold a single class; "
                    "raise calibration"
                )

    def plan(self, env: AuditEnv, spec_digest: str) -> list[DetectTask]:
        n = int(env.x.shape[0])
        out = []
        for c in self.choices:
            cal = c.calibration_for(n)
            key = work_key(spec_digest, "detect", c.index, cal, n)
            out.append(DetectTask(key=key, choice=c, seed=work_seed(self.seed, key), start=cal, stop=n))
        return out

    def run(self, env: AuditEnv, unit: DetectTask) -> dict[str, Any]:
        """Fit and calibrate ``detect[i]`` on samples ``0:calibration``, evaluate it on the rest."""
        t0 = time.perf_counter()
        c = unit.choice
        det = c.create()
        cal = unit.calibration
        fit_n = _split_calibration(det, cal)
        x, y = env.x, env.y
        det.fit(
            env.base_model, x[:fit_n], y[:fit_n], fpr=c.fpr, batch_size=self.batch_size,
            x_calibration=x[fit_n:cal] if fit_n < cal else None,
        )
        attacks = {a.key: a.create() for a in c.attacks}
        rep = det.evaluate(env.base_model, x[cal:], y[cal:], attacks, seed=unit.seed, adaptive=c.adaptive)
        out: dict[str, Any] = rep.to_dict()
        out["calibration_samples"] = cal
        out["fit_samples"] = fit_n
        out["seconds"] = time.perf_counter() - t0
        return out

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        """One entry per ``detect`` item: its ``DetectionReport`` dict with ``ran_on``, the worst
        case and verdict (:func:`assess`) and the FPR test (:func:`fpr_check`); a
        ``detector_fpr_exceeds_target`` flag per item whose clean FPR is above its target beyond
        sampling noise."""
        out = StudyOutput()
        entries = []
        for i, r in enumerate(records):
            entry = dict(r)
            if self.ran_on is not None:
                entry["ran_on"] = dict(self.ran_on)
            entry.update(assess(entry))
            check = fpr_check(entry)
            if check is not None:
                entry["fpr_check"] = check
                if check["exceeds_target"]:
                    place = self.choices[i].place if i < len(self.choices) else f"detect[{i}]"
                    out.flags.append(_fpr_flag(place, entry, check))
            entries.append(entry)
        out.sections["detection"] = entries
        return out

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for d in report.get("detection") or []:
            worst: dict[str, float | None] = {}
            for r in d.get("rows") or []:
                v = r.get("undetected_success_rate")
                key = str(r.get("attack"))
                if key not in worst or (v is not None and (worst[key] is None or v > worst[key])):  # type: ignore[operator]
                    worst[key] = v
            for attack, v in worst.items():
                out.append(Metric(
                    study="detect", name="undetected_success_rate",
                    labels={"detector": str(d["detector"]), "attack": attack}, value=v,
                    what=f"detect {d['detector']} vs {attack}", title="undetected success rate", higher_is_better=False,
                ))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _detection_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        dets = [d for d in report.get("detection") or [] if isinstance(d, Mapping)]
        if not dets:
            return []
        lines = [f"detection on {ran_on_text(ran_on_of(dets, report))}"]
        for d in dets:
            a = _assessed(d)
            lines.append(f"detect {a['verdict_text']}")
            for w in a["worst_case"] or []:
                lines.append(
                    f"detect {d['detector']} worst case (plain + detector-aware) {_eps_words(w.get('norm'), w.get('eps'))}: "
                    f"undetected success {_p(w.get('undetected_success_rate'))}"
                )
        for m in cls.metrics(report):
            v = "n/a" if m.value is None else f"{100 * m.value:.1f}%"
            lines.append(f"{m.what}: worst undetected success rate {v}")
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        out = []
        for d in report.get("detection") or []:
            if not isinstance(d, Mapping):
                continue
            a = _assessed(d)
            worst = _p(a["worst_undetected_success_rate"])
            out.append(f"{d.get('detector')} {a['verdict'] or 'no verdict'} (worst undetected {worst})")
        return out
