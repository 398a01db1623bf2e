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
from collections.abc import Mapping
from typing import Any

import numpy as np

from gauntlet.audit.records import NAIVE_SUFFIX, is_naive

__all__ = ["render_html"]

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
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(190px,1fr)); gap:12px; margin:16px 0; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; }
.card .k { color:var(--muted); font-size:13px; font-weight:600; }
.card .v { font-size:26px; font-weight:650; margin-top:2px; }
.card .s { color:var(--muted); font-size:13px; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:650; font-size:13px; }
.b-ok { background:var(--okbg); color:var(--ok); } .b-bad { background:var(--badbg); color:var(--bad); }
.b-none { background:#eef0f4; color:var(--muted); } .b-warn { background:var(--warnbg); color:var(--warn); }
.b-info { background:var(--infobg); color:var(--info); }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:16px; }
figure { margin:0; max-width:680px; } figure img.plot { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
th { color:var(--muted); font-weight:600; font-size:13px; background:#fafbfd; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.worst td { font-weight:650; background:#f3f5ff; }
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
.gallery { display:grid; grid-template-columns:repeat(auto-fill,minmax(330px,1fr)); gap:14px; }
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
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if _is_num(v) else "—"


def _num(v: Any, fmt: str = "{:.4g}") -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return fmt.format(v) if _is_num(v) else "—"


def _eps(v: Any) -> str:
    return f"{v:g}" if _is_num(v) else _e(v)


# ------------------------------------------------------------------------------------------
# images
def _png(img: np.ndarray) -> bytes:
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


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_image(a: Any) -> np.ndarray | None:
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


def _to_uint8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = np.clip((np.nan_to_num(img) - lo) / (hi - lo), 0.0, 1.0)
    out = np.round(scaled * 255).astype(np.uint8)
    k = max(1, min(16, math.ceil(96 / max(out.shape[0], out.shape[1]))))  # nearest-neighbour upscale
    return np.repeat(np.repeat(out, k, axis=0), k, axis=1)


# ------------------------------------------------------------------------------------------
# plots
def _plot_png(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> str:
    """Finish a percentage-vs-budget plot in the report's style and return it as a PNG data URL."""
    ax.set_ylim(-3, 103)
    ax.set_xlim(left=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#e3e7ee", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version string: byte-stable output
    return _data_url(buf.getvalue())


def _plots(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One PNG (data URL) per norm: robust accuracy vs ε per attack and the worst case."""
    results = [r for r in report.get("results", []) if _is_num(r.get("eps")) and _is_num(r.get("robust_accuracy"))]
    worst = [r for r in report.get("worst_case", []) if _is_num(r.get("eps")) and _is_num(r.get("robust_accuracy"))]
    norms = list(dict.fromkeys([r["norm"] for r in results] + [r["norm"] for r in worst]))
    if not norms:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clean = report.get("clean_accuracy")
    out = []
    for norm in norms:
        fig = Figure(figsize=(5.4, 3.5), dpi=160)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        attacks = list(dict.fromkeys(r["attack"] for r in results if r["norm"] == norm))
        base = [a for a in attacks if not is_naive(str(a))]
        colour = {a: f"C{i % 10}" for i, a in enumerate(base)}
        for i, attack in enumerate(attacks):
            rows = sorted((r for r in results if r["norm"] == norm and r["attack"] == attack), key=lambda r: r["eps"])
            xs = [r["eps"] for r in rows]
            ys = [100 * r["robust_accuracy"] for r in rows]
            if _is_num(clean):
                xs, ys = [0.0, *xs], [100 * clean, *ys]
            if is_naive(str(attack)):  # the naive view of a defense: dotted, in its attack's colour
                c = colour.get(str(attack)[: -len(NAIVE_SUFFIX)], f"C{(len(base) + i) % 10}")
                ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.4, linestyle=":", color=c, label=str(attack))
                continue
            ax.plot(xs, ys, marker="o", markersize=4.5, linewidth=1.8, color=colour[attack], label=str(attack))
        rows = sorted((r for r in worst if r["norm"] == norm), key=lambda r: r["eps"])
        if rows:
            xs = [r["eps"] for r in rows]
            ys = [100 * r["robust_accuracy"] for r in rows]
            if _is_num(clean):
                xs, ys = [0.0, *xs], [100 * clean, *ys]
            ax.plot(xs, ys, color="black", linestyle="--", linewidth=2.6, marker="s", markersize=5, label="worst case", zorder=5)
        title = f"Robust accuracy vs ε — {norm}"
        out.append((str(norm), _plot_png(fig, ax, f"ε ({norm})", "robust accuracy (%)", title)))
    return out


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
    bits = [f"data <b>{_e(data.get('name'))}</b> · n = {_num(data.get('n'))}"]
    if sha:
        bits.append(f"model sha256 <span class='mono'>{_e(sha)}…</span>")
    if report.get("audit_id") is not None:
        bits.append(f"audit #{_e(report['audit_id'])}")
    if when:
        bits.append(_e(when))
    return (
        f"<header><h1>Robustness audit — {_e(name)}{_e(version)}</h1>"
        f"<div class='sub'>{' · '.join(bits)}</div></header>"
    )


def _gate_badge(gate: Mapping[str, Any]) -> str:
    passed = gate.get("passed")
    if passed is True:
        return "<span class='badge b-ok'>PASSED</span>"
    if passed is False:
        return "<span class='badge b-bad'>FAILED</span>"
    return "<span class='badge b-none'>NOT EVALUATED</span>"


def _cards(report: Mapping[str, Any]) -> str:
    flags = report.get("flags") or []
    warnings = sum(1 for f in flags if f.get("severity") == "warning")
    gate = report.get("gate") or {}
    cards = [
        ("Clean accuracy", _pct(report.get("clean_accuracy")), f"{_num((report.get('data') or {}).get('n'))} samples"),
    ]
    by_norm: dict[str, list[Mapping[str, Any]]] = {}
    for r in report.get("worst_case") or []:
        by_norm.setdefault(str(r.get("norm")), []).append(r)
    for norm, rows in by_norm.items():
        rows = sorted(rows, key=lambda r: r.get("eps") if _is_num(r.get("eps")) else 0)
        last = rows[-1]
        detail = ", ".join(f"ε={_eps(r.get('eps'))}: {_pct(r.get('robust_accuracy'))}" for r in rows[:-1][-3:])
        cards.append((f"Worst case · {_e(norm)} ε={_eps(last.get('eps'))}", _pct(last.get("robust_accuracy")), detail))
    cards.append(("Gate", _gate_badge(gate), f"{len(gate.get('violations') or [])} violation(s)"))
    badge = f"<span class='badge {'b-warn' if warnings else 'b-ok'}'>{warnings}</span>"
    cards.append(("Hygiene flags", badge, "warnings raised" if warnings else "no warning raised"))
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='k'>{k}</div><div class='v'>{v}</div><div class='s'>{s}</div></div>"
        for k, v, s in cards
    ) + "</div>"


def _gate(report: Mapping[str, Any]) -> str:
    gate = report.get("gate") or {}
    viol = gate.get("violations") or []
    body = "".join(f"<li>{_e(v)}</li>" for v in viol)
    text = {True: "Every threshold is met.", False: "Some thresholds are not met:", None: "No thresholds were evaluated for this report."}
    return (
        f"<section id='gate'><h2>Gate {_gate_badge(gate)}</h2><div>{_e(text.get(gate.get('passed'), ''))}</div>"
        + (f"<ul class='violations'>{body}</ul>" if body else "")
        + "</section>"
    )


def _plots_section(report: Mapping[str, Any]) -> str:
    plots = _plots(report)
    if not plots:
        return "<section id='curves'><h2>Robust accuracy vs ε</h2><p class='note'>No results to plot.</p></section>"
    figs = "".join(
        f"<figure><img class='plot' data-norm='{_e(norm)}' alt='robust accuracy versus epsilon, {_e(norm)}' src='{url}'>"
        f"<figcaption>{_e(norm)}: one line per attack; the dashed black line is the per-sample worst case over all "
        "attacks. ε = 0 is clean accuracy. Dotted lines (if any) attack the naive view of the defense and are "
        "not part of the worst case.</figcaption></figure>"
        for norm, url in plots
    )
    return f"<section id='curves'><h2>Robust accuracy vs ε</h2><div class='plots'>{figs}</div></section>"


def _bar(v: Any) -> str:
    w = max(0.0, min(100.0, 100 * v)) if _is_num(v) else 0.0
    return f"<span class='bar'><span style='width:{w:.1f}%'></span></span>{_pct(v)}"


def _results(report: Mapping[str, Any]) -> str:
    results = report.get("results") or []
    worst = report.get("worst_case") or []
    norms = list(dict.fromkeys([str(r.get("norm")) for r in results] + [str(r.get("norm")) for r in worst]))
    head = (
        "<tr><th>attack</th><th class='num'>ε</th><th class='num'>robust accuracy</th><th class='num'>success rate</th>"
        "<th class='num'>median perturbation</th><th class='num'>queries</th><th class='num'>grad evals</th><th class='num'>seconds</th></tr>"
    )
    rows = []
    for norm in norms:
        rows.append(f"<tr class='group'><td colspan='8'>norm {_e(norm)}</td></tr>")
        for r in (r for r in results if str(r.get("norm")) == norm):
            rows.append(
                f"<tr class='result'><td>{_e(r.get('attack'))}</td><td class='num'>{_eps(r.get('eps'))}</td>"
                f"<td class='num'>{_bar(r.get('robust_accuracy'))}</td><td class='num'>{_pct(r.get('success_rate'))}</td>"
                f"<td class='num'>{_num(r.get('median_perturbation'))}</td><td class='num'>{_num(r.get('queries'))}</td>"
                f"<td class='num'>{_num(r.get('grad_evals'))}</td><td class='num'>{_num(r.get('seconds'), '{:.2f}')}</td></tr>"
            )
        for r in (r for r in worst if str(r.get("norm")) == norm):
            rows.append(
                f"<tr class='worst'><td>worst case</td><td class='num'>{_eps(r.get('eps'))}</td>"
                f"<td class='num'>{_bar(r.get('robust_accuracy'))}</td><td class='num'>{_pct(r.get('success_rate'))}</td>"
                f"<td class='num'>{_num(r.get('median_perturbation'))}</td><td class='num'>—</td><td class='num'>—</td><td class='num'>—</td></tr>"
            )
    note = (
        "<p class='note'>Robust accuracy: share of samples classified correctly and not fooled. Success rate: share of the "
        "correctly classified samples the attack fooled. Median perturbation: over the successful attacks, in the threat's "
        "norm. Worst case: a sample counts as robust only if no attack fooled it. A unit's cost is shared equally among "
        "the ε values it ran.</p>"
    )
    return f"<section id='results'><h2>Results</h2><table class='results'>{head}{''.join(rows)}</table>{note}</section>"


def _evidence(ev: Any) -> str:
    if not isinstance(ev, Mapping) or not ev:
        return ""
    scalars = [(k, v) for k, v in ev.items() if not isinstance(v, (list, dict))]
    parts = []
    if scalars:
        parts.append(" · ".join(f"{_e(k)}: <span class='mono'>{_e(_fmt_value(v))}</span>" for k, v in scalars))
    for k, v in ev.items():
        if isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            cols = list(dict.fromkeys(c for i in v for c in i))
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{_e(_fmt_value(i.get(c)))}</td>" for c in cols) + "</tr>" for i in v[:20])
            parts.append(f"<div>{_e(k)}:</div><table>{head and '<tr>' + head + '</tr>'}{body}</table>")
        elif isinstance(v, (list, dict)):
            parts.append(f"{_e(k)}: <span class='mono'>{_e(json.dumps(v)[:300])}</span>")
    return "<div class='evidence'>" + "<br>".join(parts) + "</div>"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _flags(report: Mapping[str, Any]) -> str:
    from gauntlet.audit.flags import CHECKS

    flags = report.get("flags") or []
    items = []
    for f in flags:
        cls = "flag info" if f.get("severity") == "info" else "flag"
        sev = "b-info" if f.get("severity") == "info" else "b-warn"
        items.append(
            f"<div class='{cls}' data-flag='{_e(f.get('id'))}'><h3><span class='badge {sev}'>{_e(f.get('severity'))}</span> "
            f"{_e(f.get('title'))} <span class='mono sub'>{_e(f.get('id'))}</span></h3>"
            f"<p>{_e(f.get('explanation'))}</p>{_evidence(f.get('evidence'))}</div>"
        )
    if not any(f.get("severity") == "warning" for f in flags):
        checks = "".join(f"<li>{_e(t)}</li>" for t in CHECKS.values())
        items.insert(0, f"<div class='ok-panel'><b>No hygiene flag raised.</b> Checked:<ul class='checks'>{checks}</ul></div>")
    return f"<section id='flags'><h2>Evaluation hygiene</h2>{''.join(items)}</section>"


def _gallery(report: Mapping[str, Any]) -> str:
    gallery = report.get("gallery") or []
    bounds = (report.get("model") or {}).get("bounds")
    items = []
    for g in gallery:
        x, xa = _as_image(g.get("x")), _as_image(g.get("x_adv"))
        if x is None or xa is None or x.shape != xa.shape:
            continue
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(_is_num(b) for b in bounds) and bounds[0] < bounds[1]:
            lo, hi = float(bounds[0]), float(bounds[1])
        else:
            lo, hi = float(min(x.min(), xa.min())), float(max(x.max(), xa.max()))
            hi = hi if hi > lo else lo + 1.0
        d = np.abs(xa - x)
        dmax = float(d.max())
        amp = d / dmax if dmax > 0 else d
        imgs = [
            ("clean", _to_uint8(x, lo, hi)),
            ("adversarial", _to_uint8(xa, lo, hi)),
            (f"|δ| ×{(hi - lo) / dmax:.3g}" if dmax > 0 else "|δ| = 0", _to_uint8(amp, 0.0, 1.0)),
        ]
        cells = "".join(
            f"<div><img class='gal' alt='{_e(lbl)}' src='{_data_url(_png(im))}'>{_e(lbl)}</div>" for lbl, im in imgs
        )
        cap = (
            f"#{_e(g.get('index'))} · label <b>{_e(g.get('label'))}</b> · clean → {_e(g.get('pred_clean'))}, "
            f"adversarial → <b>{_e(g.get('pred_adv'))}</b><br><span class='sub'>{_e(g.get('attack'))}, "
            f"ε={_eps(g.get('eps'))}{', ' + _e(g.get('norm')) if g.get('norm') else ''}</span>"
        )
        items.append(f"<div class='ex'><div class='imgs'>{cells}</div><div class='cap'>{cap}</div></div>")
    if not items:
        return ""
    return (
        "<section id='gallery'><h2>Adversarial examples</h2><div class='gallery'>" + "".join(items) + "</div>"
        "<p class='note'>Right: the perturbation |x_adv − x| stretched to the full range so that it is visible.</p></section>"
    )


def _signed_pp(v: Any) -> str:
    return f"{100 * v:+.1f} pp" if _is_num(v) else "—"


def _defense(report: Mapping[str, Any]) -> str:
    d = report.get("defense")
    if not isinstance(d, Mapping):
        return ""
    from gauntlet.audit.flags import MASKING_GAP

    params = ", ".join(f"{_e(k)}={_e(_fmt_value(v))}" for k, v in (d.get("params") or {}).items())
    view = (
        f"randomized: adaptive attacks average {_e(d.get('eot_samples'))} draws per gradient (EOT)"
        if d.get("randomized")
        else "deterministic: adaptive attacks backpropagate through a differentiable stand-in (BPDA)"
    )
    rows = []
    for r in d.get("rows") or []:
        gap = r.get("gap")
        cls = " class='masking'" if _is_num(gap) and gap >= MASKING_GAP - 1e-12 else ""
        rows.append(
            f"<tr{cls}><td>{_e(r.get('attack'))}</td><td>{_e(r.get('norm'))}</td><td class='num'>{_eps(r.get('eps'))}</td>"
            f"<td class='num'>{_bar(r.get('adaptive_robust_accuracy'))}</td><td class='num'>{_pct(r.get('naive_robust_accuracy'))}</td>"
            f"<td class='num'>{_signed_pp(gap)}</td></tr>"
        )
    head = (
        "<tr><th>attack</th><th>norm</th><th class='num'>ε</th><th class='num'>adaptive (BPDA + EOT)</th>"
        "<th class='num'>naive</th><th class='num'>gap (naive − adaptive)</th></tr>"
    )
    table = f"<table class='defense'>{head}{''.join(rows)}</table>" if rows else "<p class='note'>No attack results.</p>"
    note = (
        "<p class='note'>The audited model is the defense's adaptive wrap; every attack also ran against the naive "
        "wrap (autograd through the transform as implemented, one random draw). A positive gap is robustness "
        f"that was only masking; rows with a gap of {100 * MASKING_GAP:g} pp or more are highlighted. Naive runs "
        "are not part of the worst case and are gated only by thresholds that name them.</p>"
    )
    return (
        f"<section id='defense'><h2>Defense — {_e(d.get('name'))}</h2>"
        f"<div class='sub'>{params or 'default parameters'} · {view}</div>{table}{note}</section>"
    )


def _cert_plot(cert: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """One PNG per norm: certified accuracy vs radius, one line per certification method."""
    by_norm: dict[str, list[Mapping[str, Any]]] = {}
    for c in cert:
        pts = [p for p in c.get("curve") or [] if isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_num(v) for v in p)]
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
        out.append((norm, _plot_png(fig, ax, f"radius ({norm})", "certified accuracy (%)", title)))
    return out


def _certification(report: Mapping[str, Any]) -> str:
    cert = [c for c in report.get("certification") or [] if isinstance(c, Mapping)]
    if not cert:
        return ""
    figs = "".join(
        f"<figure><img class='plot' data-cert='{_e(norm)}' alt='certified accuracy versus radius, {_e(norm)}' src='{url}'>"
        f"<figcaption>{_e(norm)}: share of samples classified correctly and certified at each radius "
        "(abstentions count as errors); between two evaluated radii the line shows the lower value.</figcaption></figure>"
        for norm, url in _cert_plot(cert)
    )
    rows = []
    for c in cert:
        curve = ", ".join(
            f"{_eps(p[0])}: {_pct(p[1])}" for p in (c.get("curve") or []) if isinstance(p, (list, tuple)) and len(p) == 2
        )
        params = ", ".join(f"{_e(k)}={_e(_fmt_value(v))}" for k, v in (c.get("params") or {}).items())
        rows.append(
            f"<tr class='cert'><td>{_e(c.get('method'))}</td><td>{_e(c.get('norm'))}</td><td class='mono'>{params}</td>"
            f"<td class='num'>{_num(c.get('n'))}</td><td class='num'>{_pct(c.get('certified_accuracy'))}</td>"
            f"<td class='num'>{_pct(c.get('abstain_rate'))}</td><td class='num'>{_num(c.get('average_certified_radius'))}</td>"
            f"<td>{curve}</td><td class='num'>{_num(c.get('seconds'), '{:.2f}')}</td></tr>"
        )
    head = (
        "<tr><th>method</th><th>norm</th><th>parameters</th><th class='num'>n</th><th class='num'>certified at 0</th>"
        "<th class='num'>abstained</th><th class='num'>avg. certified radius</th><th>certified accuracy by radius</th>"
        "<th class='num'>seconds</th></tr>"
    )
    note = (
        "<p class='note'>Certification runs on the undefended model (the model file). Certified accuracy at radius r: "
        "share of all samples that are classified correctly and provably keep their class within distance r "
        "(randomized smoothing: with probability at least 1 − alpha over its sampling). Average certified radius: "
        "mean over all samples of the radius, 0 where wrong or abstained.</p>"
    )
    plots = f"<div class='plots'>{figs}</div>" if figs else ""
    return f"<section id='certification'><h2>Certification</h2>{plots}<table class='cert'>{head}{''.join(rows)}</table>{note}</section>"


def _detection(report: Mapping[str, Any]) -> str:
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
            f"<tr class='det'><td>{_e(r.get('attack'))}</td><td>{'detector-aware' if r.get('adaptive') else 'plain'}</td>"
            f"<td class='num'>{_eps(r.get('eps'))}</td><td class='num'>{_pct(r.get('success_rate'))}</td>"
            f"<td class='num'>{_pct(r.get('tpr'))}</td><td class='num'>{_bar(r.get('undetected_success_rate'))}</td>"
            f"<td class='num'>{_num(r.get('auroc'), '{:.3f}')}</td><td class='num'>{_num(r.get('seconds'), '{:.2f}')}</td></tr>"
            for r in d.get("rows") or []
            if isinstance(r, Mapping)
        )
        params = ", ".join(f"{_e(k)}={_e(_fmt_value(v))}" for k, v in (d.get("params") or {}).items())
        notes = "".join(f"<li>{_e(n)}</li>" for n in d.get("notes") or [])
        parts.append(
            f"<h3>{_e(d.get('detector'))} <span class='mono sub'>{params}</span></h3>"
            f"<div class='sub'>fitted and calibrated on {_num(d.get('calibration_samples'))} samples, evaluated on "
            f"{_num(d.get('n'))} · target FPR {_pct(d.get('target_fpr'))}, clean FPR {_pct(d.get('clean_fpr'))} · "
            f"clean accuracy {_pct(d.get('clean_accuracy'))}</div>"
            f"<table class='det'>{head}{rows}</table>" + (f"<ul class='checks'>{notes}</ul>" if notes else "")
        )
    note = (
        "<p class='note'>Detection runs on the undefended model. Rates are over the samples classified correctly: "
        "success = the attack fools the classifier; undetected success = it fools the classifier and the detector "
        "does not flag it (what matters to a defender). Detector-aware rows attack classifier and detector together "
        "(Carlini &amp; Wagner 2017).</p>"
    )
    return f"<section id='detection'><h2>Detection</h2>{''.join(parts)}{note}</section>"


def _cost(report: Mapping[str, Any]) -> str:
    cost = report.get("cost") or []
    if not cost:
        return ""
    rows = "".join(
        f"<tr class='cost'><td>{_e(c.get('attack'))}</td><td class='num'>{_num(c.get('units'))}</td>"
        f"<td class='num'>{_num(c.get('queries'))}</td><td class='num'>{_num(c.get('grad_evals'))}</td>"
        f"<td class='num'>{_num(c.get('queries_per_sample'), '{:.1f}')}</td><td class='num'>{_num(c.get('seconds'), '{:.2f}')}</td></tr>"
        for c in cost
    )
    head = (
        "<tr><th>attack</th><th class='num'>units</th><th class='num'>queries</th><th class='num'>grad evals</th>"
        "<th class='num'>queries / sample</th><th class='num'>seconds</th></tr>"
    )
    return f"<section id='cost'><h2>Cost</h2><table class='cost'>{head}{rows}</table></section>"


def _manifest(report: Mapping[str, Any]) -> str:
    manifest = report.get("manifest") or {}
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (
        "<section id='manifest'><h2>Reproducibility manifest</h2>"
        f"<pre class='manifest'>{_e(text)}</pre></section>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (a string; write it with UTF-8)."""
    model = report.get("model") or {}
    title = f"Gauntlet audit — {model.get('name') or 'model'}"
    from gauntlet import __version__ as version
    body = "".join([
        _header(report),
        _cards(report),
        _gate(report),
        _plots_section(report),
        _results(report),
        _defense(report),
        _certification(report),
        _detection(report),
        _flags(report),
        _gallery(report),
        _cost(report),
        _manifest(report),
    ])
    footer = f"Generated by gauntlet {_e(version)} · report schema {_e(report.get('schema_version'))}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}<footer>{footer}</footer></main></body></html>\n"
    )
