"""Detection: detectors against plain and detector-aware attacks (the spec's ``detect`` block).

Each item names a detector of the defense registry, fitted and calibrated on the first
``calibration`` audited samples (at false-positive rate ``fpr``) and evaluated on the rest against
attacks of the evasion block (by label), plain and — with ``adaptive`` — detector-aware (Carlini &
Wagner 2017), on the **undefended** model.  One unit per item.  The report section ``detection``
has one :meth:`~gauntlet.defenses.detection.DetectionReport.to_dict` per item.  Gate rules:
``{detector: mahalanobis, attack: pgd, max_undetected_success_rate: 0.1}`` (the worst row of that
attack over ε and modes) or ``--fail-under detect:mahalanobis:pgd=10%``.
"""

from __future__ import annotations

import difflib
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
from gauntlet.audit.studies.evasion import AttackChoice, accepts_targeted, resolve_attacks
from gauntlet.errors import ConfigError, GauntletError

__all__ = ["DetectAttack", "DetectChoice", "DetectSpec", "DetectStudy", "DetectTask", "DetectThreshold", "resolve_detect"]


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
_DETECTION = array_of(
    ["detector", "params", "threshold", "target_fpr", "n", "clean_accuracy", "clean_fpr", "rows", "notes"],
    {
        "detector": STRING, "params": {"type": "object"}, "threshold": NUM, "target_fpr": _RATE, "n": COUNT,
        "clean_accuracy": SHARE, "clean_fpr": SHARE, "calibration_samples": COUNT, "fit_samples": COUNT,
        "seconds": NON_NEGATIVE, "notes": {"type": "array", "items": STRING}, "rows": _ROWS,
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
        parts.append(
            f"<h3>{e(d.get('detector'))} <span class='mono sub'>{params}</span></h3>"
            f"<div class='sub'>fitted and calibrated on {num(d.get('calibration_samples'))} samples, evaluated on "
            f"{num(d.get('n'))} · target FPR {pct(d.get('target_fpr'))}, clean FPR {pct(d.get('clean_fpr'))} · "
            f"clean accuracy {pct(d.get('clean_accuracy'))}</div>"
            f"<table class='det'>{head}{rows}</table>" + (f"<ul class='checks'>{notes}</ul>" if notes else "")
        )
    note = (
        "<p class='note'>Detection runs on the undefended model. Rates are over the samples classified correctly: "
        "success = the attack fools the classifier; undetected success = it fools the classifier and the detector "
        "does not flag it (what matters to a defender). Detector-aware rows attack classifier and detector together "
        "(Carlini &amp; Wagner 2017).</p>"
    )
    return f"<section id='detection'><h2>Detection</h2>{''.join(parts)}{note}</section>"


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

    choices: list[DetectChoice]

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> DetectStudy:
        evasion = resolved.get("evasion")
        if evasion is None:
            raise ConfigError(
                "detect: detectors are evaluated against the spec's attacks on its untargeted threats; add threats "
                "(and attacks)"
            )
        items = [d.model_dump(mode="json") for d in spec.detect]
        return cls(resolve_detect(spec, evasion.attacks), spec.batch_size, spec.seed, items)  # type: ignore[attr-defined]

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
        return StudyOutput(sections={"detection": [dict(r) for r in records]})

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
        lines = []
        for m in cls.metrics(report):
            v = "n/a" if m.value is None else f"{100 * m.value:.1f}%"
            lines.append(f"{m.what}: worst undetected success rate {v}")
        return lines
