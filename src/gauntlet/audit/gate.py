"""The gate: thresholds and regressions that decide an audit's exit code (0 pass, 1 fail).

Generic over studies: every study names the numbers of a report it owns (its
:meth:`~gauntlet.audit.studies.Study.metrics`) and the rule shape it accepts (``Threshold``).
Thresholds come from the spec (``thresholds:``) and the command line (``--fail-under``, in the
syntax of the study that reads it: ``pgd:linf:0.1=0.5`` for evasion — the attack may be
``worst_case`` —, ``certify:ibp:0.01=50%``, ``detect:mahalanobis:pgd=10%``).  ``--max-regression
2pp`` fails the gate when any metric (or the clean accuracy) moved the wrong way by more than 2
percentage points since the last finished audit of the same model name in the store.  Metrics a
study marks informational (a defense's naive view, ``"pgd (naive)"``) are gated only by a
threshold that names them; they never count as regressions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gauntlet.audit.studies import Metric, studies, studies_in
from gauntlet.errors import ConfigError

__all__ = [
    "compare_reports",
    "evaluate_gate",
    "metrics_of",
    "parse_alpha",
    "parse_regression",
    "parse_threshold",
    "summary_line",
]

_TOL = 1e-9


def parse_threshold(text: str) -> Any:
    """A ``--fail-under`` text as the gate rule of the first study whose syntax it is in."""
    head = (text or "").split(":", 1)[0].strip()

    def prefix(s: Any) -> str | None:
        return s.Threshold.prefix if s.Threshold is not None else None

    # a study whose syntax starts with its own word first (certify:..., detect:...), then the others
    for study in sorted(studies(), key=lambda s: prefix(s) != head):
        if prefix(study) not in (None, head):
            continue
        rule = study.parse_threshold(text)
        if rule is not None:
            return rule
    shapes = "; ".join(
        f"{s.name}: {s.Threshold.__doc__.strip().splitlines()[0]}" for s in studies() if s.Threshold is not None and s.Threshold.__doc__
    )
    raise ConfigError(
        f"--fail-under {text!r}: expected attack:norm:eps=min_robust_accuracy, e.g. 'pgd:linf:0.1=0.5' or "
        f"'worst_case:l2:0.5=40%', certify:method:radius=min or detect:detector:attack=max ({shapes})"
    )


def parse_regression(text: str | float | None) -> float | None:
    """``"2pp"``, ``"2%"`` or ``"0.02"`` → 0.02 (a fraction of accuracy); ``None`` stays ``None``."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(pp|%)?\s*", str(text))
        if not m:
            raise ConfigError(
                f"--max-regression {text!r}: expected percentage points such as '2pp' or '2%', or a fraction such as 0.02"
            )
        value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not (0.0 <= value <= 1.0) or not math.isfinite(value):
        raise ConfigError(f"--max-regression {text!r}: must be between 0 and 100 pp")
    return value


def parse_alpha(value: float | str | None) -> float | None:
    """``--alpha``: the significance level of a regression, in (0, 0.5]; ``None`` stays ``None``."""
    if value is None:
        return None
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--alpha {value!r}: expected a significance level such as 0.05") from None
    if not (0.0 < alpha <= 0.5) or not math.isfinite(alpha):
        raise ConfigError(f"--alpha {value!r}: must be in (0, 0.5], e.g. 0.05 (a 5% chance of calling noise a regression)")
    return alpha


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def metrics_of(report: Mapping[str, Any]) -> list[Metric]:
    """Every study's metrics in a report, in run order."""
    return [m for s in studies_in(report) for m in s.metrics(report)]


def _find(metrics: Sequence[Metric], name: str, labels: Mapping[str, Any]) -> Metric | None:
    return next((m for m in metrics if m.matches(name, labels)), None)


def _significant(
    m_a: Metric | None, m_b: Metric | None, key: Any, outcomes_a: Mapping[Any, Any] | None,
    outcomes_b: Mapping[Any, Any] | None, alpha: float,
) -> bool | None:
    """Whether ``b`` is worse than ``a`` beyond noise (see :mod:`gauntlet.audit.stats`)."""
    from gauntlet.audit.stats import drop_is_significant

    va = (outcomes_a or {}).get(key)
    vb = (outcomes_b or {}).get(key)
    before = after = None
    if va is not None and vb is not None and len(va) == len(vb):
        pairs = [(x, y) for x, y in zip(va, vb) if x is not None and y is not None]
        before, after = [bool(x) for x, _ in pairs], [bool(y) for _, y in pairs]
    counts = None
    if m_a is not None and m_b is not None and None not in (m_a.count, m_a.n, m_b.count, m_b.n):
        counts = (int(m_a.count), int(m_a.n), int(m_b.count), int(m_b.n))  # type: ignore[arg-type]
    if m_a is not None and not m_a.higher_is_better:  # a rise is the regression: swap the roles
        before, after = (None, None) if before is None else ([not x for x in before], [not y for y in after or []])
        counts = None if counts is None else (counts[1] - counts[0], counts[1], counts[3] - counts[2], counts[3])
    return drop_is_significant(before, after, counts, alpha)


def compare_reports(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    max_regression: float = 0.0,
    *,
    alpha: float | None = None,
    outcomes_a: Mapping[Any, Any] | None = None,
    outcomes_b: Mapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """Every metric of report ``a`` and ``b`` and their difference.

    A row is a regression when ``b`` moved the wrong way (lower, for a metric where higher is
    better) by more than ``max_regression`` (a fraction; 0.02 = 2 pp) — and, with ``alpha``, when
    that move is also significant at level ``alpha``: paired per sample (exact McNemar) where both
    audits' per-sample ``outcomes`` are given (same data), else from the two proportions
    (Newcombe); a row whose significance cannot be judged falls back to the move alone.
    Informational metrics never are regressions.  Rows only one report has get ``None`` on the
    other side.  Each row carries the metric's labels (evasion: ``attack``, ``norm``, ``eps``),
    ``study``, ``metric``, ``what`` and, with ``alpha``, ``significant``.
    """
    ma, mb = metrics_of(a), metrics_of(b)
    keys: list[Metric] = list(ma)
    for m in mb:
        if _find(keys, m.name, m.labels) is None:
            keys.append(m)
    rows = []
    for k in keys:
        ra, rb = _find(ma, k.name, k.labels), _find(mb, k.name, k.labels)
        va = ra.value if ra else None
        vb = rb.value if rb else None
        delta = (vb - va) if (va is not None and vb is not None) else None
        worse = None if delta is None else (-delta if k.higher_is_better else delta) + 0.0  # never -0.0
        regression = bool(worse is not None and worse > max_regression + _TOL) and k.regression
        row = {
            **dict(k.labels),
            "study": k.study,
            "metric": k.name,
            "what": k.what,
            "a": va,
            "b": vb,
            "delta": delta,
            "worse": worse,
            "gated": k.regression,
        }
        if alpha is not None and worse is not None and worse > 0:
            row["significant"] = _significant(ra, rb, k.key, outcomes_a, outcomes_b, alpha)
            regression = regression and row["significant"] is not False
        row["regression"] = regression
        rows.append(row)
    ca, cb = a.get("clean_accuracy"), b.get("clean_accuracy")
    clean_delta = (cb - ca) if (ca is not None and cb is not None) else None
    clean: dict[str, Any] = {
        "a": ca,
        "b": cb,
        "delta": clean_delta,
        "regression": bool(clean_delta is not None and -clean_delta > max_regression + _TOL),
    }
    if alpha is not None and clean_delta is not None and clean_delta < 0:
        na, nb = (a.get("data") or {}).get("n"), (b.get("data") or {}).get("n")
        clean_a = Metric("core", "clean_accuracy", {}, ca, "clean", "clean accuracy", count=round(ca * na), n=na) if na else None
        clean_b = Metric("core", "clean_accuracy", {}, cb, "clean", "clean accuracy", count=round(cb * nb), n=nb) if nb else None
        clean["significant"] = _significant(clean_a, clean_b, ("clean_accuracy", ()), outcomes_a, outcomes_b, alpha)
        clean["regression"] = clean["regression"] and clean["significant"] is not False
    return {
        "rows": rows,
        "clean_accuracy": clean,
        "regressions": sum(r["regression"] for r in rows) + int(clean["regression"]),
        "max_regression": max_regression,
        "same_data": (a.get("data") or {}).get("sha256") == (b.get("data") or {}).get("sha256"),
    }


def evaluate_gate(
    report: Mapping[str, Any],
    thresholds: Sequence[Any],
    previous_report: Mapping[str, Any] | None = None,
    max_regression: float | None = None,
    *,
    alpha: float | None = None,
    outcomes_previous: Mapping[Any, Any] | None = None,
    outcomes: Mapping[Any, Any] | None = None,
    accepted_flags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{"passed": bool | None, "violations": [str, ...]}`` for a report under thresholds and a baseline.

    ``passed`` is ``None`` — *no gate configured* — when there is no threshold and no
    ``max_regression``: nothing was required, so nothing passed (the exit code is 0 all the same).
    In a gated audit every raised hygiene flag a study counts as *blocking* (its numbers are not
    reliable: zero or shattered gradients, a black box beating the white box, ...) is a violation
    unless ``accepted_flags`` (flag id → reason, the spec's ``accept_flags``) accepts it.
    """
    if not thresholds and max_regression is None:
        return {"passed": None, "violations": []}
    violations: list[str] = []
    blocking = {fid for s in studies_in(report) for fid in s.blocking_flags}
    accepted = dict(accepted_flags or {})
    for f in report.get("flags") or []:
        fid = str(f.get("id"))
        if f.get("severity") == "warning" and fid in blocking and fid not in accepted:
            violations.append(
                f"hygiene flag {fid}: {f.get('title')}; the numbers are not reliable until the evaluation is fixed, "
                f"or accept it in the spec (accept_flags: [{{flag: {fid}, reason: ...}}])"
            )
    metrics = metrics_of(report)
    rules: list[dict[str, Any]] = []
    for th in thresholds:
        name, labels = th.metric()
        kind, bound = th.bound()
        m = _find(metrics, name, labels)
        v = m.value if m is not None else None
        margin = None if v is None else (v - bound if kind == "min" else bound - v)
        ok = margin is not None and margin >= -_TOL
        rules.append({
            "rule": th.describe(),
            "study": m.study if m is not None else None,
            "metric": name,
            "labels": dict(labels),
            "what": m.what if m is not None else th.what(),
            "title": m.title if m is not None else name.replace("_", " "),
            "kind": kind,
            "required": bound,
            "actual": v,
            "ci": _wilson(m),
            "margin": margin,
            "passed": ok,
        })
        if m is None:
            violations.append(f"{th.what()}: no result in the report (threshold {_pct(bound)})")
        elif kind == "min" and not ok:
            violations.append(f"{m.what}: {m.title} {_pct(v)} < required {_pct(bound)}")
        elif kind == "max" and not ok:
            violations.append(f"{m.what}: {m.title} {_pct(v)} > allowed {_pct(bound)}")
    if previous_report is not None and max_regression is not None:
        cmp = compare_reports(
            previous_report, report, max_regression, alpha=alpha, outcomes_a=outcomes_previous, outcomes_b=outcomes
        )
        ref = previous_report.get("audit_id")
        vs = f"audit #{ref}" if ref is not None else "the previous audit"
        if cmp["clean_accuracy"]["regression"]:
            c = cmp["clean_accuracy"]
            violations.append(
                f"clean accuracy fell {-100 * c['delta']:.1f} pp ({_pct(c['a'])} → {_pct(c['b'])}) since {vs}; "
                f"allowed {100 * max_regression:g} pp"
            )
        titles = {(m.name, m.study): m.title for m in metrics}
        for r in cmp["rows"]:
            if r["regression"]:
                title = titles.get((r["metric"], r["study"]), r["metric"].replace("_", " "))
                verb = "fell" if r["delta"] < 0 else "rose"
                violations.append(
                    f"{r['what']}: {title} {verb} {abs(100 * r['delta']):.1f} pp "
                    f"({_pct(r['a'])} → {_pct(r['b'])}) since {vs}; allowed {100 * max_regression:g} pp"
                )
        rules.append(_regression_rule(cmp, max_regression, vs))
    return {"passed": not violations, "violations": violations, "rules": rules}


def _wilson(m: Metric | None) -> list[float] | None:
    if m is None or m.count is None or not m.n:
        return None
    from gauntlet.audit.stats import wilson

    return list(wilson(int(m.count), int(m.n)))


def _regression_rule(cmp: Mapping[str, Any], max_regression: float, vs: str) -> dict[str, Any]:
    """``--max-regression`` as one row of the thresholds table: the largest drop of any gated metric
    (or the clean accuracy) since the baseline, against the allowed drop."""
    candidates: list[tuple[float, str, bool]] = [
        (float(r["worse"]), str(r["what"]), bool(r["regression"])) for r in cmp["rows"] if r.get("gated") and r.get("worse") is not None
    ]
    c = cmp["clean_accuracy"]
    if c["delta"] is not None:
        candidates.append((-c["delta"] + 0.0, "clean accuracy", bool(c["regression"])))
    worst: tuple[float | None, str | None, bool] = max(candidates, default=(None, None, False), key=lambda t: (t[2], t[0] or 0.0))
    return {
        "rule": f"max_regression={100 * max_regression:g}pp",
        "study": None,
        "metric": "regression",
        "labels": {},
        "what": f"largest drop since {vs}" + (f" ({worst[1]})" if worst[1] else ""),
        "title": "drop",
        "kind": "max",
        "required": max_regression,
        "actual": worst[0],
        "ci": None,
        "margin": None if worst[0] is None else max_regression - worst[0],
        "passed": cmp["regressions"] == 0,
    }


def summary_line(report: Mapping[str, Any], where: str | None = None) -> str:
    """The one-line verdict the CLI prints last."""
    gate = report.get("gate") or {}
    model = report.get("model") or {}
    name = str(model.get("name") or "model") + (f" v{model['version']}" if model.get("version") else "")
    parts = [f"clean {_pct(report.get('clean_accuracy'))}"]
    for s in studies_in(report):
        parts.extend(s.summary(report))
    flags = [f for f in report.get("flags") or [] if f.get("severity") == "warning"]
    if flags:
        parts.append(f"{len(flags)} hygiene flag{'s' if len(flags) != 1 else ''}")
    tail = f"; report {where}" if where else ""
    if gate.get("passed") is False:
        v = gate.get("violations") or []
        first = v[0] if v else "gate failed"
        more = f" (+{len(v) - 1} more)" if len(v) > 1 else ""
        return f"FAIL {name}: {first}{more}; {', '.join(parts)}{tail}"
    if gate.get("passed") is None:
        return f"NO GATE {name}: no threshold or --max-regression configured; {', '.join(parts)}{tail}"
    return f"PASS {name}: {', '.join(parts)}{tail}"
