"""Certification: certified accuracy vs radius (the spec's ``certify`` block).

Each item names a certification method of the defense registry (``ibp``, ``randomized_smoothing``)
and runs on the **undefended** model (the model file, without ``model.defense``) over the audited
samples, in units of ``batch_size`` samples so that a long smoothing run resumes mid-way.  The
report section ``certification`` has one entry per item: the certified-accuracy-vs-radius curve,
the abstention rate, the average certified radius and ``ran_on``, the model it ran on (see
:func:`ran_on_record`; the section's HTML header names it).  Gate rules:
``{certify: ibp, radius: 0.01, min_certified_accuracy: 0.5}`` or ``--fail-under certify:ibp:0.01=50%``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import AfterValidator, BeforeValidator, Field

from gauntlet.audit.html import e, eps_text, fmt_value, is_num, num, pct, plot_png
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STR_OR_NULL, STRING, array_of
from gauntlet.audit.spec import (
    AuditSpec,
    Fraction,
    RegistryChoice,
    RegistryItem,
    Strict,
    Text,
    as_list,
    check_defense_params,
    defense_class,
    non_negative,
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
)
from gauntlet.errors import ConfigError, GauntletError

__all__ = [
    "RAN_ON",
    "CertifyChoice",
    "CertifyChunk",
    "CertifySpec",
    "CertifyStudy",
    "CertifyThreshold",
    "ran_on_html",
    "ran_on_of",
    "ran_on_record",
    "ran_on_text",
    "resolve_certify",
]

Radius = Annotated[float, Field(strict=True), AfterValidator(non_negative)]


def _one_or_list(v: Any) -> Any:
    return [v] if isinstance(v, (Mapping, str)) else v


class CertifySpec(RegistryItem):
    """One ``certify`` item: a certification defense (``randomized_smoothing``, ``ibp``) and its
    parameters, run on the undefended model over the audited samples; ``radii`` are the points of
    the certified-accuracy-vs-radius curve (default: the method's own, see
    :meth:`~gauntlet.defenses.certify.Certification.default_radii`)."""

    own_keys = ("radii",)

    radii: Annotated[list[Radius], BeforeValidator(as_list), Field(min_length=1)] | None = None


class CertifyBlock(Strict):
    """The certify study's spec key."""

    certify: Annotated[list[CertifySpec], BeforeValidator(_one_or_list)] = Field(default_factory=list)


class CertifyThreshold(Threshold):
    """Gate: certified accuracy of method ``certify`` at ``radius`` must be ≥ the minimum."""

    metric_name = "certified_accuracy"
    label_fields: ClassVar[dict[str, str]] = {"method": "certify", "radius": "radius"}
    bound_field = "min_certified_accuracy"
    prefix = "certify"

    certify: Text
    radius: Radius
    min_certified_accuracy: Fraction


@dataclass(frozen=True)
class CertifyChoice(RegistryChoice):
    """One ``certify`` item resolved."""

    index: int = 0
    radii: tuple[float, ...] | None = None
    norm: str = ""

    @property
    def place(self) -> str:
        return f"certify[{self.index}]"

    def curve_radii(self) -> list[float] | None:
        """The radii the curve is evaluated at when known before the run (``None``: from the results)."""
        if self.radii is not None:
            return sorted({0.0, *self.radii})
        if self.name == "ibp":
            eps = self.params.get("eps", [])
            return sorted({0.0, *(float(v) for v in (eps if isinstance(eps, (list, tuple)) else [eps]))})
        return None


def resolve_certify(spec: AuditSpec) -> list[CertifyChoice]:
    """Check every ``certify`` item (a certification method, valid parameters)."""
    out = []
    for i, item in enumerate(spec.certify):  # type: ignore[attr-defined]
        place = f"certify[{i}]"
        cls = defense_class(item.name, "certification", place, "certify")
        check_defense_params(cls, item.params, place)
        radii = tuple(sorted(set(item.radii))) if item.radii is not None else None
        out.append(CertifyChoice(item.name, dict(item.params), i, radii, str(getattr(cls, "norm", ""))))
    return out


@dataclass(frozen=True)
class CertifyChunk(ChoiceUnit):
    """``certify[index]`` on samples ``start:stop``; saved on its own so a long run resumes mid-way."""

    kind = "certify"

    @property
    def cost(self) -> float:
        n = self.choice.params.get("n", 100) if self.choice.name == "randomized_smoothing" else 10
        return float((self.stop - self.start) * (n if isinstance(n, (int, float)) else 100))


# ------------------------------------------------------------------------------------------------
# which model a study ran on (certify and detect run on env.base_model, the model file)
#: the report schema of a section entry's ``ran_on``
RAN_ON: dict[str, Any] = {
    "type": "object",
    "required": ["model", "defense", "view"],
    "properties": {"model": STR_OR_NULL, "defense": STR_OR_NULL, "view": {"type": "string", "enum": ["undefended", "audited"]}},
}


def ran_on_record(spec: AuditSpec) -> dict[str, Any]:
    """What a study that runs on the model file (``AuditEnv.base_model``) ran on, for its report
    section: the model's name (the report's ``model.name``), the spec's ``model.defense``
    (``None`` without one) and the view: ``"undefended"`` — the model file without that defense —
    or ``"audited"`` — there is no defense, so the model file is the audited model."""
    defense = spec.model.defense
    return {
        "model": spec.model.display_name,
        "defense": defense.name if defense is not None else None,
        "view": "undefended" if defense is not None else "audited",
    }


def _defense_name(report: Mapping[str, Any]) -> str | None:
    """The audited model's ``model.defense`` in a report: the evasion study's ``defense`` section,
    else the spec in the manifest."""
    d = report.get("defense")
    if isinstance(d, Mapping) and d.get("name"):
        return str(d["name"])
    spec = (report.get("manifest") or {}).get("spec")
    model = spec.get("model") if isinstance(spec, Mapping) else None
    md = model.get("defense") if isinstance(model, Mapping) else None
    return str(md["name"]) if isinstance(md, Mapping) and md.get("name") else None


def ran_on_of(entries: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ran_on`` of a section's entries; for a report written before sections recorded it,
    what the runner did then (the model file: undefended when the spec had ``model.defense``)."""
    for x in entries:
        r = x.get("ran_on")
        if isinstance(r, Mapping):
            return dict(r)
    defense = _defense_name(report)
    return {
        "model": (report.get("model") or {}).get("name"),
        "defense": defense,
        "view": "undefended" if defense is not None else "audited",
    }


def ran_on_text(r: Mapping[str, Any]) -> str:
    """``the undefended model digits (without model.defense bit_depth_reduction)`` or ``the audited model digits``."""
    name = r.get("model") or "(unnamed)"
    if r.get("view") == "undefended":
        return f"the undefended model {name} (without model.defense {r.get('defense')})"
    return f"the audited model {name}"


def ran_on_html(r: Mapping[str, Any]) -> str:
    """:func:`ran_on_text` for a section header."""
    name = f"<b>{e(r.get('model') or '(unnamed)')}</b>"
    if r.get("view") == "undefended":
        return (
            f"on the undefended model {name}, without <span class='mono'>model.defense</span> "
            f"<b>{e(r.get('defense'))}</b>"
        )
    return f"on the audited model {name}"


# ------------------------------------------------------------------------------------------------
# report
_CURVE_POINT = {"type": "array", "minItems": 2, "maxItems": 2, "items": NON_NEGATIVE}
_CERTIFICATION = array_of(
    ["method", "norm", "params", "n", "curve", "abstain_rate", "seconds"],
    {
        "method": STRING, "norm": STRING, "params": {"type": "object"}, "model": STRING, "n": COUNT,
        "curve": {"type": "array", "minItems": 1, "items": _CURVE_POINT}, "certified_accuracy": SHARE,
        "abstain_rate": SHARE, "average_certified_radius": NON_NEGATIVE, "max_radius": NON_NEGATIVE,
        "seconds": NON_NEGATIVE, "chunks": COUNT, "ran_on": RAN_ON,
    },
)


def _cert_plot(cert: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """One PNG per norm: certified accuracy vs radius, one line per certification method."""
    by_norm: dict[str, list[Mapping[str, Any]]] = {}
    for c in cert:
        pts = [p for p in c.get("curve") or [] if isinstance(p, (list, tuple)) and len(p) == 2 and all(is_num(v) for v in p)]
        if pts:
            by_norm.setdefault(str(c.get("norm")), []).append({**c, "curve": pts})
    if not by_norm:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = []
    for norm, items in by_norm.items():
        fig = Figure(figsize=(5.4, 3.5), dpi=160)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for i, c in enumerate(items):
            pts = sorted(c["curve"])
            # between two evaluated radii draw the lower value: a certificate is never overstated
            ax.step([p[0] for p in pts], [100 * p[1] for p in pts], where="pre", marker="o", markersize=4,
                    linewidth=1.8, color=f"C{i % 10}", label=str(c.get("method")))
        title = f"Certified accuracy vs radius — {norm}"
        out.append((norm, plot_png(fig, ax, f"radius ({norm})", "certified accuracy (%)", title)))
    return out


def _certification_html(report: Mapping[str, Any]) -> str:
    cert = [c for c in report.get("certification") or [] if isinstance(c, Mapping)]
    if not cert:
        return ""
    figs = "".join(
        f"<figure><img class='plot' data-cert='{e(norm)}' alt='certified accuracy versus radius, {e(norm)}' src='{url}'>"
        f"<figcaption>{e(norm)}: share of samples classified correctly and certified at each radius "
        "(abstentions count as errors); between two evaluated radii the line shows the lower value.</figcaption></figure>"
        for norm, url in _cert_plot(cert)
    )
    rows = []
    for c in cert:
        curve = ", ".join(
            f"{eps_text(p[0])}: {pct(p[1])}" for p in (c.get("curve") or []) if isinstance(p, (list, tuple)) and len(p) == 2
        )
        params = ", ".join(f"{e(k)}={e(fmt_value(v))}" for k, v in (c.get("params") or {}).items())
        rows.append(
            f"<tr class='cert'><td>{e(c.get('method'))}</td><td>{e(c.get('norm'))}</td><td class='mono'>{params}</td>"
            f"<td class='num'>{num(c.get('n'))}</td><td class='num'>{pct(c.get('certified_accuracy'))}</td>"
            f"<td class='num'>{pct(c.get('abstain_rate'))}</td><td class='num'>{num(c.get('average_certified_radius'))}</td>"
            f"<td>{curve}</td><td class='num'>{num(c.get('seconds'), '{:.2f}')}</td></tr>"
        )
    head = (
        "<tr><th>method</th><th>norm</th><th>parameters</th><th class='num'>n</th><th class='num'>certified at 0</th>"
        "<th class='num'>abstained</th><th class='num'>avg. certified radius</th><th>certified accuracy by radius</th>"
        "<th class='num'>seconds</th></tr>"
    )
    note = (
        "<p class='note'>Certified accuracy at radius r: "
        "share of all samples that are classified correctly and provably keep their class within distance r "
        "(randomized smoothing: with probability at least 1 − alpha over its sampling). Average certified radius: "
        "mean over all samples of the radius, 0 where wrong or abstained.</p>"
    )
    plots = f"<div class='plots'>{figs}</div>" if figs else ""
    head2 = f"<h2>Certification <span class='sub'>{ran_on_html(ran_on_of(cert, report))}</span></h2>"
    return f"<section id='certification'>{head2}{plots}<table class='cert'>{head}{''.join(rows)}</table>{note}</section>"


# ------------------------------------------------------------------------------------------------
# the study
@register_study
class CertifyStudy(ItemsStudy):
    """Certified accuracy vs radius of certification methods on the undefended model (the model
    file; the audited model when the spec has no ``model.defense``)."""

    name = "certify"
    title = "certification methods: certified accuracy vs radius on the undefended model"
    Block = CertifyBlock
    Threshold = CertifyThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"certification": _CERTIFICATION}

    choices: list[CertifyChoice]
    #: what the units run on, recorded in every entry (:func:`ran_on_record`); ``None``: not known
    ran_on: dict[str, Any] | None = None

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> CertifyStudy:
        items = [c.model_dump(mode="json") for c in spec.certify]
        study = cls(resolve_certify(spec), spec.batch_size, spec.seed, items)
        study.ran_on = ran_on_record(spec)
        return study

    def check_threshold(self, th: Any, place: str) -> None:
        mine = [c for c in self.choices if c.name == th.certify]
        if not mine:
            names = ", ".join(repr(c.name) for c in self.choices)
            raise ConfigError(f"{place}.certify: no certify item uses method {th.certify!r}; the spec certifies with {names}")
        radii = mine[0].curve_radii()
        if radii is not None and not any(math.isclose(th.radius, r, rel_tol=1e-9, abs_tol=1e-12) for r in radii):
            raise ConfigError(
                f"{place}.radius: the {th.certify} curve is evaluated at radii {', '.join(f'{r:g}' for r in radii)}; "
                f"add {th.radius:g} to {mine[0].place}.radii"
            )

    @classmethod
    def parse_threshold(cls, text: str) -> CertifyThreshold | None:
        m = re.fullmatch(r"\s*certify\s*:\s*(\w+)\s*:\s*([^=\s]+)\s*=\s*([^\s%]+)\s*(%?)\s*", text or "")
        if not m:
            return None
        method, radius_s, min_s, percent = m.groups()
        try:
            radius, minimum = float(radius_s), float(min_s)
        except ValueError:
            raise ConfigError(f"--fail-under {text!r}: the radius and the minimum must be numbers") from None
        return CertifyThreshold.from_text(  # type: ignore[no-any-return]
            text, certify=method, radius=radius, min_certified_accuracy=minimum / (100.0 if percent else 1.0)
        )

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        """Fail before anything is stored when a method cannot handle the model: run it on one
        sample (randomized smoothing with a single noise draw)."""
        for c in self.choices:
            params = {**c.params, "n0": 1, "n": 1} if c.name == "randomized_smoothing" else c.params
            try:
                RegistryChoice(c.name, params).create().certify(env.base_model, env.x[:1], env.y[:1], seed=0)
            except GauntletError as err:
                msg = str(err)
                raise type(err)(msg if msg.startswith(c.place) else f"{c.place}: {msg}") from None

    def plan(self, env: AuditEnv, spec_digest: str) -> list[CertifyChunk]:
        return CertifyChunk.chunks(self.choices, int(env.x.shape[0]), self.batch_size, spec_digest, self.seed)

    def run(self, env: AuditEnv, unit: CertifyChunk) -> dict[str, Any]:
        """Certify samples ``unit.start:unit.stop``; a JSON-able record of the per-sample results."""
        from gauntlet.audit.report import jsonable

        sl = slice(unit.start, unit.stop)
        cert = unit.choice.create().certify(env.base_model, env.x[sl], env.y[sl], seed=unit.seed)
        out = {
            "index": unit.choice.index,
            "method": cert.method,
            "norm": cert.norm,
            "start": unit.start,
            "stop": unit.stop,
            "label": [int(v) for v in env.y[sl].tolist()],
            "prediction": [int(v) for v in cert.prediction.tolist()],
            "radius": [float(v) for v in cert.radius.double().tolist()],
            "params": jsonable({k: v for k, v in cert.params.items() if k != "seed"}),
            "seconds": float(cert.seconds),
        }
        if "max_radius" in cert.info:
            out["max_radius"] = float(cert.info["max_radius"])
        return out

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        """One entry per ``certify`` item from its chunks: the certified-accuracy-vs-radius curve,
        the abstention rate and the average certified radius over all audited samples."""
        from gauntlet.defenses.certify import Certification

        entries = []
        for choice in self.choices:
            recs = sorted((r for r in records if r["index"] == choice.index), key=lambda r: r["start"])
            if not recs:
                continue
            pred = torch.tensor([p for r in recs for p in r["prediction"]], dtype=torch.int64)
            radius = torch.tensor([v for r in recs for v in r["radius"]], dtype=torch.float64)
            y = torch.tensor([v for r in recs for v in r["label"]], dtype=torch.int64)
            params = dict(recs[0]["params"])
            cert = Certification(
                method=recs[0]["method"], norm=recs[0]["norm"], prediction=pred, radius=radius, y=y,
                params=params, seconds=sum(float(r["seconds"]) for r in recs),
            )
            curve = cert.curve(list(choice.radii) if choice.radii is not None else None)
            correct = (pred == y) & ~cert.abstained
            entry: dict[str, Any] = {
                "method": cert.method,
                "norm": cert.norm,
                "params": params,
                "model": "base",
                "n": len(cert),
                "curve": [[float(r), float(a)] for r, a in curve],
                "certified_accuracy": cert.certified_accuracy(0.0),
                "abstain_rate": float(cert.abstained.double().mean()) if len(cert) else 0.0,
                "average_certified_radius": float(torch.where(correct, radius, torch.zeros_like(radius)).mean()) if len(cert) else 0.0,
                "seconds": cert.seconds,
                "chunks": len(recs),
            }
            if any("max_radius" in r for r in recs):
                entry["max_radius"] = max(float(r.get("max_radius", 0.0)) for r in recs)
            if self.ran_on is not None:
                entry["ran_on"] = dict(self.ran_on)
            entries.append(entry)
        return StudyOutput(sections={"certification": entries})

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for c in report.get("certification") or []:
            for r, acc in c.get("curve") or []:
                n = int(c.get("n") or 0)
                out.append(Metric(
                    study="certify", name="certified_accuracy", labels={"method": str(c["method"]), "radius": float(r)},
                    value=acc, what=f"certify {c['method']} {c.get('norm')} radius {float(r):g}", title="certified accuracy",
                    count=round(acc * n) if n else None, n=n or None,
                ))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _certification_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        cert = [c for c in report.get("certification") or [] if isinstance(c, Mapping)]
        lines = [f"certification on {ran_on_text(ran_on_of(cert, report))}"] if cert else []
        for c in cert:
            curve = ", ".join(f"{float(r):g}: {100 * a:.1f}%" for r, a in c.get("curve") or [])
            lines.append(f"certify {c['method']} ({c.get('norm')}): certified accuracy by radius {curve}")
        return lines
