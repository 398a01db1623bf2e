"""The gate: thresholds and regressions that decide an audit's exit code (0 pass, 1 fail).

Thresholds come from the spec (``thresholds:``) and the command line
(``--fail-under "pgd:linf:0.1=0.5"``: attack:norm:ε=minimum robust accuracy; the attack may be
``worst_case``).  ``--max-regression 2pp`` fails the gate when any robust accuracy (or the clean
accuracy) fell by more than 2 percentage points since the last finished audit of the same model
name in the store.  Runs against the naive view of a defense (``"pgd (naive)"``) are gated only
by a threshold that names them; they never count as regressions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gauntlet.audit.records import is_naive
from gauntlet.audit.spec import ThresholdSpec
from gauntlet.errors import ConfigError

__all__ = ["compare_reports", "evaluate_gate", "parse_regression", "parse_threshold", "summary_line"]

_TOL = 1e-9


def parse_threshold(text: str) -> ThresholdSpec:
    """``"pgd:linf:0.1=0.5"`` (or ``=50%``) → a :class:`ThresholdSpec`; the attack may be a naive-view
    label such as ``"pgd (naive)"``."""
    from pydantic import ValidationError

    m = re.fullmatch(
        r"\s*([A-Za-z0-9_\-.]+(?: \(naive\))?)\s*:\s*(\w+)\s*:\s*([^=\s]+)\s*=\s*([^\s%]+)\s*(%?)\s*", text or ""
    )
    if not m:
        raise ConfigError(
            f"--fail-under {text!r}: expected attack:norm:eps=min_robust_accuracy, e.g. 'pgd:linf:0.1=0.5' "
            "or 'worst_case:l2:0.5=40%'"
        )
    attack, norm, eps_s, min_s, pct = m.groups()
    try:
        eps, minimum = float(eps_s), float(min_s)
    except ValueError:
        raise ConfigError(f"--fail-under {text!r}: ε and the minimum must be numbers") from None
    if pct:
        minimum /= 100.0
    try:
        return ThresholdSpec(attack=attack, norm=norm, eps=eps, min_robust_accuracy=minimum)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        raise ConfigError(f"--fail-under {text!r}: {field} {msg}") from None


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


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _find(report: Mapping[str, Any], attack: str, norm: str, eps: float) -> Mapping[str, Any] | None:
    rows = report.get("worst_case", []) if attack == "worst_case" else [
        r for r in report.get("results", []) if r.get("attack") == attack
    ]
    for r in rows:
        if r.get("norm") == norm and math.isclose(float(r.get("eps", math.nan)), eps, rel_tol=1e-9, abs_tol=1e-12):
            return r
    return None


def _rows(report: Mapping[str, Any]) -> dict[tuple[str, str, float], float | None]:
    out: dict[tuple[str, str, float], float | None] = {}
    for r in report.get("results", []):
        out[(str(r["attack"]), str(r["norm"]), float(r["eps"]))] = r.get("robust_accuracy")
    for r in report.get("worst_case", []):
        out[("worst_case", str(r["norm"]), float(r["eps"]))] = r.get("robust_accuracy")
    return out


def _match(key: tuple[str, str, float], keys: Sequence[tuple[str, str, float]]) -> tuple[str, str, float] | None:
    for k in keys:
        if k[0] == key[0] and k[1] == key[1] and math.isclose(k[2], key[2], rel_tol=1e-9, abs_tol=1e-12):
            return k
    return None


def compare_reports(
    a: Mapping[str, Any], b: Mapping[str, Any], max_regression: float = 0.0
) -> dict[str, Any]:
    """Per (attack, norm, ε) robust accuracy of report ``a`` and ``b`` and their difference.

    A row is a regression when ``b`` is lower than ``a`` by more than ``max_regression``
    (a fraction; 0.02 = 2 pp); rows of a defense's naive view (``"pgd (naive)"``) never are.  Rows only one report has get ``None`` on the other side.
    """
    ra, rb = _rows(a), _rows(b)
    keys = list(ra)
    for k in rb:
        if _match(k, keys) is None:
            keys.append(k)
    rows = []
    for k in keys:
        ka, kb = _match(k, list(ra)), _match(k, list(rb))
        va = ra.get(ka) if ka else None
        vb = rb.get(kb) if kb else None
        delta = (vb - va) if (va is not None and vb is not None) else None
        rows.append(
            {
                "attack": k[0],
                "norm": k[1],
                "eps": k[2],
                "a": va,
                "b": vb,
                "delta": delta,
                # a defense's naive-view runs are informational: never a regression
                "regression": bool(delta is not None and -delta > max_regression + _TOL) and not is_naive(k[0]),
            }
        )
    ca, cb = a.get("clean_accuracy"), b.get("clean_accuracy")
    clean_delta = (cb - ca) if (ca is not None and cb is not None) else None
    clean = {
        "a": ca,
        "b": cb,
        "delta": clean_delta,
        "regression": bool(clean_delta is not None and -clean_delta > max_regression + _TOL),
    }
    return {
        "rows": rows,
        "clean_accuracy": clean,
        "regressions": sum(r["regression"] for r in rows) + int(clean["regression"]),
        "max_regression": max_regression,
        "same_data": (a.get("data") or {}).get("sha256") == (b.get("data") or {}).get("sha256"),
    }


def evaluate_gate(
    report: Mapping[str, Any],
    thresholds: Sequence[ThresholdSpec],
    previous_report: Mapping[str, Any] | None = None,
    max_regression: float | None = None,
) -> dict[str, Any]:
    """``{"passed": bool, "violations": [str, ...]}`` for a report under thresholds and a baseline."""
    violations: list[str] = []
    for th in thresholds:
        row = _find(report, th.attack, th.norm, th.eps)
        what = f"{th.attack} {th.norm} ε={th.eps:g}"
        if row is None:
            violations.append(f"{what}: no result in the report (threshold {_pct(th.min_robust_accuracy)})")
            continue
        value = row.get("robust_accuracy")
        if value is None or value < th.min_robust_accuracy - _TOL:
            violations.append(f"{what}: robust accuracy {_pct(value)} < required {_pct(th.min_robust_accuracy)}")
    if previous_report is not None and max_regression is not None:
        cmp = compare_reports(previous_report, report, max_regression)
        ref = previous_report.get("audit_id")
        vs = f"audit #{ref}" if ref is not None else "the previous audit"
        if cmp["clean_accuracy"]["regression"]:
            c = cmp["clean_accuracy"]
            violations.append(
                f"clean accuracy fell {-100 * c['delta']:.1f} pp ({_pct(c['a'])} → {_pct(c['b'])}) since {vs}; "
                f"allowed {100 * max_regression:g} pp"
            )
        for r in cmp["rows"]:
            if r["regression"] and not is_naive(r["attack"]):
                violations.append(
                    f"{r['attack']} {r['norm']} ε={r['eps']:g}: robust accuracy fell {-100 * r['delta']:.1f} pp "
                    f"({_pct(r['a'])} → {_pct(r['b'])}) since {vs}; allowed {100 * max_regression:g} pp"
                )
    return {"passed": not violations, "violations": violations}


def summary_line(report: Mapping[str, Any], where: str | None = None) -> str:
    """The one-line verdict the CLI prints last."""
    gate = report.get("gate") or {}
    model = report.get("model") or {}
    name = str(model.get("name") or "model") + (f" v{model['version']}" if model.get("version") else "")
    parts = [f"clean {_pct(report.get('clean_accuracy'))}"]
    worst = report.get("worst_case") or []
    by_norm: dict[str, list[str]] = {}
    for r in worst:
        by_norm.setdefault(str(r.get("norm")), []).append(f"ε={float(r['eps']):g} {_pct(r.get('robust_accuracy'))}")
    for norm, cells in by_norm.items():
        parts.append(f"worst case {norm} " + ", ".join(cells))
    flags = [f for f in report.get("flags") or [] if f.get("severity") == "warning"]
    if flags:
        parts.append(f"{len(flags)} hygiene flag{'s' if len(flags) != 1 else ''}")
    tail = f"; report {where}" if where else ""
    if gate.get("passed") is False:
        v = gate.get("violations") or []
        first = v[0] if v else "gate failed"
        more = f" (+{len(v) - 1} more)" if len(v) > 1 else ""
        return f"FAIL {name}: {first}{more}; {', '.join(parts)}{tail}"
    return f"PASS {name}: {', '.join(parts)}{tail}"
