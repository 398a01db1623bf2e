"""Render a report (``report.json``'s dict) as one self-contained HTML page.

The page needs no network: CSS is inline, plots are PNG images drawn with matplotlib's Agg
canvas and embedded as ``data:`` URLs, gallery images are PNGs encoded here, and a
Content-Security-Policy forbids any outside request. Every string from the report is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "as_image",
    "bar",
    "ci_pct",
    "data_url",
    "e",
    "eps_text",
    "fmt_value",
    "is_num",
    "num",
    "pct",
    "plot_png",
    "png",
    "render_html",
    "scroll",
    "signed_pp",
    "sparkline",
    "to_uint8",
]

_CSS = """
:root { --fg:#1d2430; --muted:#5b6577; --line:#e3e7ee; --bg:#f6f8fb; --card:#fff;
        --ok:#1a7f37; --okbg:#e7f6ec; --bad:#c62828; --badbg:#fdecea; --warn:#9a6700; --warnbg:#fff6dd;
        --info:#0b5cad; --infobg:#e8f1fb; --accent:#3b5bdb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 24px 48px; }
header { margin-bottom:18px; }
h1 { font-size:26px; margin:0 0 4px; letter-spacing:-.01em; }
h2 { font-size:19px; margin:0 0 12px; }
h3 { font-size:15px; margin:0 0 6px; }
.sub { color:var(--muted); font-size:14px; }
.mono, code, pre { font-family: ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace; font-size:13px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 20px; margin:16px 0; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(min(190px,100%),1fr)); gap:12px; margin:16px 0; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; }
.card .k { color:var(--muted); font-size:13px; font-weight:600; }
.card .v { font-size:26px; font-weight:650; margin-top:2px; }
.card .s { color:var(--muted); font-size:13px; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:650; font-size:13px; }
.b-ok { background:var(--okbg); color:var(--ok); } .b-bad { background:var(--badbg); color:var(--bad); }
.b-none { background:#eef0f4; color:var(--muted); } .b-warn { background:var(--warnbg); color:var(--warn); }
.b-info { background:var(--infobg); color:var(--info); }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(min(420px,100%),1fr)); gap:16px; }
figure { margin:0; max-width:680px; } figure img.plot { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
th { color:var(--muted); font-weight:600; font-size:13px; background:#fafbfd; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.worst td, tr.total td { font-weight:650; background:#f3f5ff; }
tr.group td { background:#fafbfd; color:var(--muted); font-weight:600; }
.bar { display:inline-block; width:70px; height:8px; background:#e9ecf2; border-radius:4px; margin-right:8px; vertical-align:middle; overflow:hidden; }
.bar span { display:block; height:100%; background:var(--accent); }
.flag { border-left:4px solid var(--warn); background:var(--warnbg); border-radius:6px; padding:10px 14px; margin:10px 0; }
.flag.info { border-color:var(--info); background:var(--infobg); }
.flag p { margin:4px 0 6px; }
.evidence { font-size:12.5px; color:#3a4352; }
.evidence table { font-size:12.5px; margin-top:4px; background:rgba(255,255,255,.6); }
.evidence th, .evidence td { padding:3px 8px; }
.ok-panel { border-left:4px solid var(--ok); background:var(--okbg); border-radius:6px; padding:10px 14px; }
ul.checks { margin:6px 0 0; padding-left:20px; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill,minmax(min(330px,100%),1fr)); gap:14px; }
.ex { border:1px solid var(--line); border-radius:8px; padding:10px; }
.ex .imgs { display:flex; gap:8px; }
.ex .imgs div { text-align:center; font-size:12px; color:var(--muted); }
.ex img { width:96px; height:96px; image-rendering:pixelated; border:1px solid var(--line); border-radius:4px; display:block; background:#000; }
.ex .cap { font-size:13px; margin-top:6px; } .ex .cap .sub { font-size:12px; }
pre.manifest { background:#0f1623; color:#d7deea; padding:14px; border-radius:8px; overflow:auto; max-height:520px; margin:0; }
.violations { margin:8px 0 0; padding-left:20px; color:var(--bad); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
.note { color:var(--muted); font-size:13px; margin:8px 0 0; }
tr.masking td { background:var(--warnbg); }
.verdict { border-left:6px solid var(--muted); background:#eef0f4; font-size:17px; font-weight:600; padding:14px 18px; }
.verdict p { margin:0; }
.verdict.v-ok { border-color:var(--ok); background:var(--okbg); color:#134d26; }
.verdict.v-bad { border-color:var(--bad); background:var(--badbg); color:#7f1d1d; }
.verdict.v-none { border-color:#8a93a3; background:#eef0f4; color:#3a4352; }
.scroll { overflow-x:auto; max-width:100%; }
section { overflow-x:auto; } /* a safety net: a study's wide table scrolls its section, never the page */
.evidence { overflow-x:auto; }
.scroll table { min-width:100%; }
.sub.ci { font-size:12px; }
td.best { font-weight:700; }
td.best::after { content:" ★"; color:var(--accent); }
tr.regression td { background:var(--badbg); }
svg.spark { vertical-align:middle; }
header .sub, .note, figcaption { overflow-wrap:anywhere; }
@media (max-width:600px) {
  main { padding:14px 10px 32px; }
  section { padding:12px 12px; }
  h1 { font-size:21px; }
  .card .v { font-size:22px; }
  .ex .imgs { flex-wrap:wrap; }
  .ex img { width:80px; height:80px; }
}
@media print {
  body { background:#fff; font-size:12px; }
  main { max-width:none; padding:0; }
  section, .card, figure, .ex, .flag { break-inside:avoid; }
  section { border-color:#bbb; }
  .scroll { overflow:visible; }
  pre.manifest { max-height:none; white-space:pre-wrap; overflow-wrap:anywhere; background:#fff; color:#000; border:1px solid #bbb; }
  .verdict, .badge, .bar span, tr.worst td, tr.masking td, tr.regression td { -webkit-print-color-adjust:exact; print-color-adjust:exact; }
  .plots { grid-template-columns:1fr 1fr; }
  footer { margin-top:8px; }
}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if is_num(v) else "—"


def num(v: Any, fmt: str = "{:.4g}") -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return fmt.format(v) if is_num(v) else "—"


def eps_text(v: Any) -> str:
    return f"{v:g}" if is_num(v) else e(v)


# ------------------------------------------------------------------------------------------
# images
def png(img: np.ndarray) -> bytes:
    """Encode an ``(H, W)`` or ``(H, W, 3)`` uint8 array as PNG."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    color = 2 if img.ndim == 3 else 0
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def as_image(a: Any) -> np.ndarray | None:
    """``(C, H, W)`` with C in {1, 3} (or ``(H, W)``) as a float ``(H, W[, 3])`` array; else None."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    return None


def to_uint8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = np.clip((np.nan_to_num(img) - lo) / (hi - lo), 0.0, 1.0)
    out = np.round(scaled * 255).astype(np.uint8)
    k = max(1, min(16, math.ceil(96 / max(out.shape[0], out.shape[1]))))  # nearest-neighbour upscale
    return np.repeat(np.repeat(out, k, axis=0), k, axis=1)


# ------------------------------------------------------------------------------------------
# plots
def plot_png(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> str:
    """Finish a percentage-vs-budget plot in the report's style and return it as a PNG data URL."""
    ax.set_ylim(-3, 103)
    ax.set_xlim(left=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#e3e7ee", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    handles, _ = ax.get_legend_handles_labels()
    if handles:  # below the axes, never over a curve
        ax.legend(frameon=False, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(handles)))
    fig.tight_layout()
    buf = io.BytesIO()
    # no version string: byte-stable output; the tight box takes the legend below the axes in
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    return data_url(buf.getvalue())


# ------------------------------------------------------------------------------------------
# sections
def _header(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    data = report.get("data") or {}
    manifest = report.get("manifest") or {}
    name = model.get("name") or "model"
    version = f" v{model['version']}" if model.get("version") not in (None, "") else ""
    sha = str(model.get("sha256") or "")[:12]
    when = manifest.get("finished_at") or manifest.get("finished") or manifest.get("started_at") or ""
    bits = [f"data <b>{e(data.get('name'))}</b> · n = {num(data.get('n'))}"]
    if sha:
        bits.append(f"model sha256 <span class='mono'>{e(sha)}…</span>")
    if report.get("audit_id") is not None:
        bits.append(f"audit #{e(report['audit_id'])}")
    if when:
        bits.append(e(when))
    return (
        f"<header><h1>Robustness audit — {e(name)}{e(version)}</h1>"
        f"<div class='sub'>{' · '.join(bits)}</div></header>"
    )


def _gate_badge(gate: Mapping[str, Any]) -> str:
    passed = gate.get("passed")
    if passed is True:
        return "<span class='badge b-ok'>PASSED</span>"
    if passed is False:
        return "<span class='badge b-bad'>FAILED</span>"
    return "<span class='badge b-none'>NO GATE CONFIGURED</span>"


def _cards(report: Mapping[str, Any]) -> str:
    from gauntlet.audit.studies import studies_in

    flags = report.get("flags") or []
    warnings = sum(1 for f in flags if f.get("severity") == "warning")
    gate = report.get("gate") or {}
    cards = [
        ("Clean accuracy", pct(report.get("clean_accuracy")), f"{num((report.get('data') or {}).get('n'))} samples"),
    ]
    for study in studies_in(report):
        cards.extend(study.cards(report))
    cards.append(("Gate", _gate_badge(gate), f"{len(gate.get('violations') or [])} violation(s)"))
    badge = f"<span class='badge {'b-warn' if warnings else 'b-ok'}'>{warnings}</span>"
    cards.append(("Hygiene flags", badge, "warnings raised" if warnings else "no warning raised"))
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='k'>{k}</div><div class='v'>{v}</div><div class='s'>{s}</div></div>"
        for k, v, s in cards
    ) + "</div>"


def _verdict(report: Mapping[str, Any]) -> str:
    """The verdict sentence above the fold: passed (green), failed (red), no gate configured (grey)."""
    from gauntlet.audit.verdict import build_verdict

    v = report.get("verdict")
    if not isinstance(v, Mapping) or not v.get("sentence"):
        v = build_verdict(report)  # a report from before 2.1: the gate's state, without a headline
    state = str(v.get("state"))
    cls = {"passed": "v-ok", "failed": "v-bad"}.get(state, "v-none")
    return f"<section id='verdict' class='verdict {cls}' data-state='{e(state)}'><p>{e(v.get('sentence'))}</p></section>"


def pp(v: Any) -> str:
    """A share as percentage points: ``0.02`` → ``"2.0 pp"``."""
    return f"{100 * v:.1f} pp" if is_num(v) else "—"


def signed_pp(v: Any) -> str:
    return f"{100 * v:+.1f} pp" if is_num(v) else "—"


def ci_pct(ci: Any) -> str:
    """``" (46–56)"`` — a Wilson 95% interval beside a percentage; empty when unknown."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_num(v) for v in ci):
        return f" <span class='sub ci'>({100 * ci[0]:.0f}–{100 * ci[1]:.0f})</span>"
    return ""


def scroll(table: str) -> str:
    """A table in its own horizontally scrolling box (narrow screens never scroll the page)."""
    return f"<div class='scroll'>{table}</div>"


def _rules_table(gate: Mapping[str, Any]) -> str:
    rules = [r for r in gate.get("rules") or [] if isinstance(r, Mapping)]
    if not rules:
        return ""
    rows = []
    for r in rules:
        word = "≥" if r.get("kind") == "min" else "≤"
        ok = r.get("passed")
        badge = "<span class='badge b-ok'>met</span>" if ok else "<span class='badge b-bad'>violated</span>"
        if r.get("metric") == "regression":  # --max-regression: drops in percentage points
            required, actual = (pp(r.get("required")), pp(r.get("actual")))
        else:
            required, actual = pct(r.get("required")), pct(r.get("actual"))
        rows.append(
            f"<tr class='rule'><td class='mono'>{e(r.get('rule'))}</td><td>{e(r.get('what'))} · {e(r.get('title'))}</td>"
            f"<td class='num'>{actual}{ci_pct(r.get('ci'))}</td><td class='num'>{word} {required}</td>"
            f"<td class='num'>{signed_pp(r.get('margin'))}</td><td>{badge}</td></tr>"
        )
    head = (
        "<tr><th>rule</th><th>metric</th><th class='num'>actual (95% CI)</th><th class='num'>required</th>"
        "<th class='num'>margin</th><th>result</th></tr>"
    )
    return scroll(f"<table class='rules'>{head}{''.join(rows)}</table>")


def _gate(report: Mapping[str, Any]) -> str:
    gate = report.get("gate") or {}
    viol = gate.get("violations") or []
    body = "".join(f"<li>{e(v)}</li>" for v in viol)
    text = {True: "Every threshold is met.", False: "Some thresholds are not met:", None: "No gate is configured: no threshold and no --max-regression, so nothing was required of this model."}
    return (
        f"<section id='gate'><h2>Gate {_gate_badge(gate)}</h2><div>{e(text.get(gate.get('passed'), ''))}</div>"
        + (f"<ul class='violations'>{body}</ul>" if body else "")
        + _rules_table(gate)
        + "</section>"
    )


def sparkline(values: Sequence[Any], width: int = 96, height: int = 22) -> str:
    """A tiny inline SVG line of ``values`` (shares in [0, 1]; ``None`` skipped), the last point marked."""
    pts = [(i, float(v)) for i, v in enumerate(values) if is_num(v)]
    if len(pts) < 2:
        return ""
    n = max(len(values) - 1, 1)
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span = (hi - lo) or 1.0

    def xy(i: int, v: float) -> tuple[float, float]:
        return 2 + (width - 4) * i / n, height - 3 - (height - 6) * (v - lo) / span

    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
    lx, ly = xy(*pts[-1])
    title = " → ".join(pct(v) for _, v in pts)
    return (
        f"<svg class='spark' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img'>"
        f"<title>{e(title)}</title><polyline fill='none' stroke='#3b5bdb' stroke-width='1.5' points='{coords}'/>"
        f"<circle cx='{lx:.1f}' cy='{ly:.1f}' r='2.2' fill='#1d2430'/></svg>"
    )


CURVE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def line_chart_svg(series: Sequence[tuple[str, Sequence[float | None]]], *, title: str, ylabel: str,
                   xlabel: str = "round", x0: int = 1, width: int = 380, height: int = 240) -> str:
    """Lines of shares in [0, 1] against a round index starting at ``x0``, one per ``(name, values)``,
    with a legend; ``None`` values are skipped."""
    pad_l, pad_b, pad_t, pad_r = 42, 34, 20, 10
    n = max((len(v) for _, v in series), default=0)
    if n == 0:
        return ""

    def xy(i: int, v: float) -> tuple[float, float]:
        fx = i / max(n - 1, 1)
        return pad_l + fx * (width - pad_l - pad_r), height - pad_b - v * (height - pad_b - pad_t)

    parts = [(f"<svg class='curve' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
              f"aria-label='{e(title)}'><text x='{pad_l}' y='13' font-size='12'>{e(title)}</text>")]
    for k in range(5):
        _, gy = xy(0, k / 4)
        parts.append(f"<line x1='{pad_l}' y1='{gy:.1f}' x2='{width - pad_r}' y2='{gy:.1f}' stroke='#eee'/>"
                     f"<text x='{pad_l - 4}' y='{gy + 3:.1f}' font-size='10' text-anchor='end'>{25 * k}%</text>")
    for i in sorted({0, n - 1, (n - 1) // 2}):
        gx, _ = xy(i, 0)
        parts.append(f"<text x='{gx:.1f}' y='{height - pad_b + 14}' font-size='10' text-anchor='middle'>{i + x0}</text>")
    parts.append(f"<text x='{(pad_l + width - pad_r) / 2:.1f}' y='{height - 6}' font-size='11' text-anchor='middle'>{e(xlabel)}</text>")
    parts.append(f"<text x='11' y='{(height - pad_b + pad_t) / 2:.1f}' font-size='11' text-anchor='middle' "
                 f"transform='rotate(-90 11 {(height - pad_b + pad_t) / 2:.1f})'>{e(ylabel)}</text>")
    for j, (name, values) in enumerate(series):
        colour = CURVE_COLOURS[j % len(CURVE_COLOURS)]
        pts = [xy(i, float(v)) for i, v in enumerate(values) if isinstance(v, (int, float))]
        if pts:
            coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            parts.append(f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='1.5'><title>{e(name)}</title></polyline>")
        parts.append(f"<text x='{width - pad_r - 4}' y='{pad_t + 12 + 12 * j}' font-size='10' text-anchor='end' fill='{colour}'>{e(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _history(report: Mapping[str, Any]) -> str:
    """This audit against its baseline (the rows ``gauntlet compare`` prints) and each headline
    metric's trend over the model's earlier audits on the same data."""
    h = report.get("history")
    if not isinstance(h, Mapping):
        return ""
    trend = {(t.get("metric"), json.dumps(t.get("labels") or {}, sort_keys=True)): t for t in h.get("trend") or []}

    def spark(metric: str, labels: Mapping[str, Any]) -> str:
        t = trend.get((metric, json.dumps(dict(labels), sort_keys=True)))
        return sparkline([p.get("value") for p in t.get("points") or []]) if t else ""

    base = h.get("baseline_audit_id")
    rows = []
    c = h.get("clean_accuracy")
    if isinstance(c, Mapping):
        rows.append(("clean accuracy", c, spark("clean_accuracy", {})))
    labels_of = {"study", "metric", "what", "a", "b", "delta", "worse", "gated", "regression", "significant"}
    for r in h.get("rows") or []:
        labels = {k: v for k, v in r.items() if k not in labels_of}
        rows.append((str(r.get("what")), r, spark(str(r.get("metric")), labels)))
    if base is None:  # no baseline, only the trends
        rows = [(str(t.get("what")), {}, sparkline([p.get("value") for p in t.get("points") or []])) for t in trend.values()]
    body = []
    for what, r, sp in rows:
        sig = r.get("significant")
        mark = "" if sig is None else (" <span class='sub'>significant</span>" if sig else " <span class='sub'>within noise</span>")
        cls = " class='regression'" if r.get("regression") else ""
        body.append(
            f"<tr{cls}><td>{e(what)}</td><td class='num'>{pct(r.get('a'))}</td><td class='num'>{pct(r.get('b'))}</td>"
            f"<td class='num'>{signed_pp(r.get('delta'))}{mark}</td><td>{sp}</td></tr>"
        )
    label = f"baseline #{e(base)}" if base is not None else "baseline"
    head = f"<tr><th>metric</th><th class='num'>{label}</th><th class='num'>this audit</th><th class='num'>Δ</th><th>trend</th></tr>"
    points = max((len(t.get("points") or []) for t in trend.values()), default=0)
    note = (
        f"<p class='note'>Baseline: audit #{e(base)}, the last audit of this model that did not fail its gate on the same "
        "data (or the one --baseline named); the same rows as <span class='mono'>gauntlet compare</span>. "
        if base is not None else "<p class='note'>No earlier audit passed its gate on this data, so there is no baseline. "
    ) + f"Trends: the last {points} audits of this model on this data, oldest first.</p>"
    table = f"<table class='history'>{head}{''.join(body)}</table>"
    return f"<section id='history'><h2>History</h2>{scroll(table)}{note}</section>"


def bar(v: Any) -> str:
    w = max(0.0, min(100.0, 100 * v)) if is_num(v) else 0.0
    return f"<span class='bar'><span style='width:{w:.1f}%'></span></span>{pct(v)}"


def _evidence(ev: Any) -> str:
    if not isinstance(ev, Mapping) or not ev:
        return ""
    scalars = [(k, v) for k, v in ev.items() if not isinstance(v, (list, dict))]
    parts = []
    if scalars:
        parts.append(" · ".join(f"{e(k)}: <span class='mono'>{e(fmt_value(v))}</span>" for k, v in scalars))
    for k, v in ev.items():
        if isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            cols = list(dict.fromkeys(c for i in v for c in i))
            head = "".join(f"<th>{e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{e(fmt_value(i.get(c)))}</td>" for c in cols) + "</tr>" for i in v[:20])
            parts.append(f"<div>{e(k)}:</div><table>{head and '<tr>' + head + '</tr>'}{body}</table>")
        elif isinstance(v, (list, dict)):
            parts.append(f"{e(k)}: <span class='mono'>{e(json.dumps(v)[:300])}</span>")
    return "<div class='evidence'>" + "<br>".join(parts) + "</div>"


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _flags(report: Mapping[str, Any]) -> str:
    from gauntlet.audit.studies import studies_in

    flags = report.get("flags") or []
    items = []
    for f in flags:
        cls = "flag info" if f.get("severity") == "info" else "flag"
        sev = "b-info" if f.get("severity") == "info" else "b-warn"
        items.append(
            f"<div class='{cls}' data-flag='{e(f.get('id'))}'><h3><span class='badge {sev}'>{e(f.get('severity'))}</span> "
            f"{e(f.get('title'))} <span class='mono sub'>{e(f.get('id'))}</span></h3>"
            f"<p>{e(f.get('explanation'))}</p>{_evidence(f.get('evidence'))}"
            + (f"<p class='note'><b>Accepted by the spec:</b> {e(f.get('accepted'))}</p>" if f.get("accepted") else "")
            + "</div>"
        )
    if not any(f.get("severity") == "warning" for f in flags):
        titles = [t for study in studies_in(report) for t in study.hygiene_checks().values()]
        checks = "".join(f"<li>{e(t)}</li>" for t in titles)
        items.insert(0, f"<div class='ok-panel'><b>No hygiene flag raised.</b> Checked:<ul class='checks'>{checks}</ul></div>")
    return f"<section id='flags'><h2>Evaluation hygiene</h2>{''.join(items)}</section>"


def _manifest(report: Mapping[str, Any]) -> str:
    manifest = report.get("manifest") or {}
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (
        "<section id='manifest'><h2>Reproducibility manifest</h2>"
        f"<pre class='manifest'>{e(text)}</pre></section>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (a string; write it with UTF-8)."""
    from gauntlet.audit.studies import studies_in

    model = report.get("model") or {}
    title = f"Gauntlet audit — {model.get('name') or 'model'}"
    from gauntlet import __version__ as version
    body = "".join([
        _header(report),
        _verdict(report),
        _cards(report),
        _gate(report),
        *(study.html(report) for study in studies_in(report)),
        _history(report),
        _flags(report),
        _manifest(report),
    ])
    footer = f"Generated by gauntlet {e(version)} · report schema {e(report.get('schema_version'))}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}<footer>{footer}</footer></main></body></html>\n"
    )
