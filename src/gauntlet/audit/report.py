"""Assemble ``report.json`` (schema version 1.1) from an :class:`~gauntlet.audit.records.AuditOutcome`.

Definitions used throughout (per sample ``i`` of the audited data, per attack, norm and ε):

* **robust** — the model classifies ``x[i]`` correctly *and* the attack did not succeed on it;
  ``robust_accuracy`` is the share of robust samples among all samples.
* **success_rate** — the share of *correctly classified* samples the attack fooled (clean
  mistakes are not counted as attack successes); ``null`` when no sample is classified correctly.
* **median_perturbation** — the median size (in the threat's norm) of the perturbations that
  fooled a correctly classified sample; ``null`` when the attack fooled none.
* **worst case** — per sample, robust only if *no* attack succeeded at that (norm, ε).  Runs
  against the naive view of a defense (labels ending in ``" (naive)"``) are not part of it.
* **cost** — queries, gradient evaluations and seconds of a unit are summed per attack; in the
  per-ε result rows a unit's cost is shared equally among the ε values it ran.
* **defense gap** — with ``model.defense``, per attack and (norm, ε): the naive view's robust
  accuracy minus the adaptive (BPDA + EOT) view's.  A positive gap is robustness that only came
  from masked gradients.

Schema 1.1 adds the optional sections ``defense``, ``certification`` and ``detection`` to 1.0;
a 1.0 report is still a valid report (:func:`validate_report` accepts both versions).

:data:`REPORT_SCHEMA` is the JSON Schema of the document; :func:`validate_report` checks a
report against it (and is what readers of stored reports should call).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from gauntlet.audit.records import NAIVE_SUFFIX, AuditOutcome, UnitRecord, is_naive
from gauntlet.errors import DataError

SCHEMA_VERSION = "1.1"
#: every version :func:`validate_report` accepts (1.1 only adds optional sections to 1.0)
SCHEMA_VERSIONS = ("1.0", "1.1")

__all__ = [
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "aggregate",
    "build_report",
    "defense_rows",
    "validate_report",
]


# ------------------------------------------------------------------------------------------
# aggregation
@dataclass
class _Cell:
    """Per-sample outcomes of one attack at one (norm, ε), merged over units."""

    success: list[bool | None]
    norms: list[float | None]
    queries: int = 0
    grad_evals: int = 0
    seconds: float = 0.0


@dataclass
class Aggregate:
    """Results per (attack, norm, ε), worst case per (norm, ε) and cost per attack."""

    results: list[dict[str, Any]] = field(default_factory=list)
    worst_case: list[dict[str, Any]] = field(default_factory=list)
    cost: list[dict[str, Any]] = field(default_factory=list)


def _check_unit(u: UnitRecord, k: int, n: int) -> None:
    where = f"unit {k} ({u.attack}, {u.norm}, samples {u.start}:{u.stop})"
    if not (0 <= u.start < u.stop <= n):
        raise DataError(f"{where}: samples must lie in 0:{n} with start < stop; the unit does not match the data")
    if len(u.success) != len(u.eps) or len(u.norms) != len(u.eps):
        raise DataError(f"{where}: success and norms need one row per ε ({len(u.eps)}), got {len(u.success)} and {len(u.norms)}")
    m = u.stop - u.start
    for row_s, row_n in zip(u.success, u.norms):
        if len(row_s) != m or len(row_n) != m:
            raise DataError(f"{where}: each success/norms row needs {m} values, got {len(row_s)} and {len(row_n)}")


def _split_int(total: int, parts: int) -> list[int]:
    q, r = divmod(int(total), parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _summarise(success: list[bool | None], norms: list[float | None], clean_correct: Sequence[bool]) -> dict[str, Any]:
    covered = [i for i, s in enumerate(success) if s is not None]
    correct = [i for i in covered if clean_correct[i]]
    fooled = [i for i in correct if success[i]]
    robust = len(correct) - len(fooled)
    fooled_norms = [float(norms[i]) for i in fooled if norms[i] is not None and math.isfinite(float(norms[i]))]  # type: ignore[arg-type]
    return {
        "robust_accuracy": robust / len(covered) if covered else None,
        "success_rate": len(fooled) / len(correct) if correct else None,
        "median_perturbation": _median(fooled_norms),
        "robust_count": robust,
        "n": len(covered),
    }


def aggregate(units: Sequence[UnitRecord], clean_correct: Sequence[bool]) -> Aggregate:
    """Aggregate finished units into result rows, worst-case rows and per-attack cost.

    A sample covered by several units of the same (attack, norm, ε) counts as fooled if any of
    them fooled it. Rows are ordered by first appearance of the attack and the norm, then by ε.
    The worst case leaves out runs against a defense's naive view (labels ending in
    ``" (naive)"``): it describes the audited, adaptively attacked model.
    """
    n = len(clean_correct)
    cells: dict[tuple[str, str, float], _Cell] = {}
    costs: dict[str, dict[str, Any]] = {}
    attack_order: dict[str, int] = {}
    norm_order: dict[str, int] = {}
    for k, u in enumerate(units):
        _check_unit(u, k, n)
        attack_order.setdefault(u.attack, len(attack_order))
        norm_order.setdefault(u.norm, len(norm_order))
        c = costs.setdefault(
            u.attack,
            {"attack": u.attack, "attack_name": u.attack_name, "units": 0, "samples": 0,
             "queries": 0, "grad_evals": 0, "seconds": 0.0},
        )
        c["units"] += 1
        c["samples"] += u.stop - u.start
        c["queries"] += int(u.queries)
        c["grad_evals"] += int(u.grad_evals)
        c["seconds"] += float(u.seconds)
        q_split = _split_int(u.queries, len(u.eps))
        g_split = _split_int(u.grad_evals, len(u.eps))
        for e_i, eps in enumerate(u.eps):
            key = (u.attack, u.norm, float(eps))
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _Cell([None] * n, [None] * n)
            cell.queries += q_split[e_i]
            cell.grad_evals += g_split[e_i]
            cell.seconds += float(u.seconds) / len(u.eps)
            for j in range(u.stop - u.start):
                i = u.start + j
                s = bool(u.success[e_i][j])
                v = float(u.norms[e_i][j])
                prev = cell.success[i]
                if prev is None or (s and not prev):
                    cell.success[i], cell.norms[i] = s, v
                elif s and prev and cell.norms[i] is not None:
                    cell.norms[i] = min(v, cell.norms[i])  # type: ignore[type-var]

    out = Aggregate()
    for (attack, norm, eps) in sorted(cells, key=lambda t: (attack_order[t[0]], norm_order[t[1]], t[2])):
        cell = cells[(attack, norm, eps)]
        row = {"attack": attack, "norm": norm, "eps": eps}
        row.update(_summarise(cell.success, cell.norms, clean_correct))
        row.update({"queries": cell.queries, "grad_evals": cell.grad_evals, "seconds": cell.seconds})
        out.results.append(row)

    threats = sorted({(nm, e) for (a, nm, e) in cells if not is_naive(a)}, key=lambda t: (norm_order[t[0]], t[1]))
    for norm, eps in threats:
        attacks = [
            a for a in sorted(attack_order, key=attack_order.get)  # type: ignore[arg-type]
            if (a, norm, eps) in cells and not is_naive(a)
        ]
        success: list[bool | None] = [None] * n
        norms: list[float | None] = [None] * n
        for a in attacks:
            cell = cells[(a, norm, eps)]
            for i in range(n):
                s = cell.success[i]
                if s is None:
                    continue
                if success[i] is None:
                    success[i], norms[i] = s, cell.norms[i]
                elif s and not success[i]:
                    success[i], norms[i] = True, cell.norms[i]
                elif s and success[i] and cell.norms[i] is not None and norms[i] is not None:
                    norms[i] = min(norms[i], cell.norms[i])  # type: ignore[type-var]
        row = {"norm": norm, "eps": eps}
        row.update(_summarise(success, norms, clean_correct))
        row["attacks"] = attacks
        out.worst_case.append(row)

    for attack in sorted(costs, key=lambda a: attack_order[a]):
        c = costs[attack]
        c["queries_per_sample"] = c["queries"] / c["samples"] if c["samples"] else None
        out.cost.append(c)
    return out


# ------------------------------------------------------------------------------------------
# JSON helpers
def _jsonable(v: Any) -> Any:
    """Plain JSON values from tuples, tensors, NumPy scalars/arrays, paths and sets."""
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted(_jsonable(x) for x in v)
    if isinstance(v, PurePath):
        return str(v)
    if hasattr(v, "tolist"):  # torch / numpy tensors and scalars
        return _jsonable(v.tolist())
    if hasattr(v, "model_dump"):
        return _jsonable(v.model_dump(mode="json"))
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return str(v)


def _spec_dict(spec: Any) -> Any:
    if spec is None:
        return None
    if hasattr(spec, "model_dump"):
        return _jsonable(spec.model_dump(mode="json"))
    return _jsonable(spec)


def defense_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Adaptive vs naive robust accuracy per attack and (norm, ε), from the result rows.

    One row per adaptive result that has a naive counterpart (``"<label> (naive)"``); ``gap`` is
    naive minus adaptive robust accuracy (``None`` when either is unknown).
    """
    naive = {(r["attack"][: -len(NAIVE_SUFFIX)], r["norm"], float(r["eps"])): r for r in results if is_naive(r["attack"])}
    rows = []
    for r in results:
        if is_naive(r["attack"]):
            continue
        other = naive.get((r["attack"], r["norm"], float(r["eps"])))
        if other is None:
            continue
        a, b = r.get("robust_accuracy"), other.get("robust_accuracy")
        rows.append({
            "attack": r["attack"],
            "norm": r["norm"],
            "eps": float(r["eps"]),
            "adaptive_robust_accuracy": a,
            "naive_robust_accuracy": b,
            "gap": (b - a) if (a is not None and b is not None) else None,
        })
    return rows


def build_report(outcome: AuditOutcome, gate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``report.json`` document (schema version 1.1) for one audit.

    ``gate`` defaults to ``{"passed": None, "violations": []}`` (not evaluated); the audit
    command replaces it with :func:`gauntlet.audit.gate.evaluate_gate`'s answer.
    """
    clean = [bool(c) for c in outcome.clean_correct]
    agg = aggregate(outcome.units, clean)
    info = dict(_jsonable(outcome.model_info or {}))
    model = {"name": info.pop("name", None), "version": info.pop("version", None), "sha256": info.pop("sha256", None)}
    model.update(info)
    dinfo = dict(_jsonable(outcome.data_info or {}))
    data = {"name": dinfo.pop("name", None), "n": dinfo.pop("n", len(clean)), "sha256": dinfo.pop("sha256", None)}
    data.update(dinfo)
    manifest = dict(_jsonable(outcome.manifest or {}))
    if "spec" not in manifest:
        manifest["spec"] = _spec_dict(outcome.spec)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "audit_id": outcome.store_audit_id,
        "model": model,
        "data": data,
        "clean_accuracy": sum(clean) / len(clean) if clean else None,
        "results": agg.results,
        "worst_case": agg.worst_case,
        "cost": agg.cost,
        "flags": _jsonable(list(outcome.flags or [])),
        "gate": _jsonable(dict(gate)) if gate is not None else {"passed": None, "violations": []},
        "gallery": _jsonable(list(outcome.gallery or [])),
        "manifest": manifest,
    }
    if getattr(outcome, "defense", None) is not None:
        d = dict(_jsonable(outcome.defense))
        report["defense"] = {
            "name": d.get("name"),
            "params": d.get("params") or {},
            "randomized": bool(d.get("randomized", False)),
            "eot_samples": int(d.get("eot_samples") or 1),
            "rows": defense_rows(agg.results),
        }
    if getattr(outcome, "certification", None):
        report["certification"] = _jsonable(list(outcome.certification))
    if getattr(outcome, "detection", None):
        report["detection"] = _jsonable(list(outcome.detection))
    return report


# ------------------------------------------------------------------------------------------
# schema
_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_SHARE = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_STR_OR_NULL = {"type": ["string", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_ROW_COMMON = {
    "robust_accuracy": _SHARE,
    "success_rate": _SHARE,
    "median_perturbation": {"type": ["number", "null"], "minimum": 0},
    "robust_count": _COUNT,
    "n": _COUNT,
}

_CURVE_POINT = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number", "minimum": 0}}
_DEFENSE = {
    "type": "object",
    "required": ["name", "params", "randomized", "eot_samples", "rows"],
    "properties": {
        "name": {"type": "string"},
        "params": {"type": "object"},
        "randomized": {"type": "boolean"},
        "eot_samples": {"type": "integer", "minimum": 1},
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["attack", "norm", "eps", "adaptive_robust_accuracy", "naive_robust_accuracy", "gap"],
                "properties": {
                    "attack": {"type": "string"},
                    "norm": {"type": "string"},
                    "eps": {"type": "number", "minimum": 0},
                    "adaptive_robust_accuracy": _SHARE,
                    "naive_robust_accuracy": _SHARE,
                    "gap": {"type": ["number", "null"], "minimum": -1, "maximum": 1},
                },
            },
        },
    },
}
_CERTIFICATION = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["method", "norm", "params", "n", "curve", "abstain_rate", "seconds"],
        "properties": {
            "method": {"type": "string"},
            "norm": {"type": "string"},
            "params": {"type": "object"},
            "model": {"type": "string"},
            "n": _COUNT,
            "curve": {"type": "array", "minItems": 1, "items": _CURVE_POINT},
            "certified_accuracy": _SHARE,
            "abstain_rate": _SHARE,
            "average_certified_radius": {"type": "number", "minimum": 0},
            "max_radius": {"type": "number", "minimum": 0},
            "seconds": {"type": "number", "minimum": 0},
            "chunks": _COUNT,
        },
    },
}
_DETECTION = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["detector", "params", "threshold", "target_fpr", "n", "clean_accuracy", "clean_fpr", "rows", "notes"],
        "properties": {
            "detector": {"type": "string"},
            "params": {"type": "object"},
            "threshold": _NUM,
            "target_fpr": {"type": "number", "minimum": 0, "maximum": 1},
            "n": _COUNT,
            "clean_accuracy": _SHARE,
            "clean_fpr": _SHARE,
            "calibration_samples": _COUNT,
            "fit_samples": _COUNT,
            "seconds": {"type": "number", "minimum": 0},
            "notes": {"type": "array", "items": {"type": "string"}},
            "rows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "attack", "adaptive", "eps", "norm", "n", "n_correct", "clean_fpr", "success_rate", "tpr",
                        "undetected_success_rate", "auroc",
                    ],
                    "properties": {
                        "attack": {"type": "string"},
                        "adaptive": {"type": "boolean"},
                        "eps": {"type": ["number", "null"], "minimum": 0},
                        "norm": _STR_OR_NULL,
                        "n": _COUNT,
                        "n_correct": _COUNT,
                        "clean_fpr": _SHARE,
                        "success_rate": _SHARE,
                        "tpr": _SHARE,
                        "undetected_success_rate": _SHARE,
                        "auroc": _SHARE,
                        "median_norm": {"type": ["number", "null"], "minimum": 0},
                        "union_undetected_success_rate": _SHARE,
                        "threshold": _NUM,
                        "target_fpr": {"type": "number", "minimum": 0, "maximum": 1},
                        "seconds": {"type": "number", "minimum": 0},
                        "queries": _COUNT,
                    },
                },
            },
        },
    },
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "gauntlet audit report",
    "type": "object",
    "required": [
        "schema_version", "model", "data", "clean_accuracy", "results", "worst_case",
        "cost", "flags", "gate", "gallery", "manifest",
    ],
    "properties": {
        "schema_version": {"type": "string", "enum": list(SCHEMA_VERSIONS)},
        "audit_id": {"type": ["integer", "null"]},
        "model": {
            "type": "object",
            "required": ["name", "version", "sha256"],
            "properties": {"name": _STR_OR_NULL, "version": _STR_OR_NULL, "sha256": _STR_OR_NULL},
        },
        "data": {
            "type": "object",
            "required": ["name", "n", "sha256"],
            "properties": {"name": _STR_OR_NULL, "n": _COUNT, "sha256": _STR_OR_NULL},
        },
        "clean_accuracy": _SHARE,
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "attack", "norm", "eps", "robust_accuracy", "success_rate", "median_perturbation",
                    "queries", "grad_evals", "seconds",
                ],
                "properties": {
                    "attack": {"type": "string"},
                    "norm": {"type": "string"},
                    "eps": {"type": "number", "minimum": 0},
                    **_ROW_COMMON,
                    "queries": _COUNT,
                    "grad_evals": _COUNT,
                    "seconds": {"type": "number", "minimum": 0},
                },
            },
        },
        "worst_case": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["norm", "eps", "robust_accuracy"],
                "properties": {
                    "norm": {"type": "string"},
                    "eps": {"type": "number", "minimum": 0},
                    **_ROW_COMMON,
                    "attacks": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "cost": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["attack", "queries", "grad_evals", "seconds"],
                "properties": {
                    "attack": {"type": "string"},
                    "units": _COUNT,
                    "samples": _COUNT,
                    "queries": _COUNT,
                    "grad_evals": _COUNT,
                    "seconds": {"type": "number", "minimum": 0},
                    "queries_per_sample": _NUM_OR_NULL,
                },
            },
        },
        "flags": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "severity", "title", "explanation", "evidence"],
                "properties": {
                    "id": {"type": "string"},
                    "severity": {"type": "string", "enum": ["warning", "info"]},
                    "title": {"type": "string"},
                    "explanation": {"type": "string"},
                    "evidence": {"type": "object"},
                },
            },
        },
        "gate": {
            "type": "object",
            "required": ["passed", "violations"],
            "properties": {
                "passed": {"type": ["boolean", "null"]},
                "violations": {"type": "array", "items": {"type": "string"}},
            },
        },
        "gallery": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["x", "x_adv"],
                "properties": {"x": {"type": "array"}, "x_adv": {"type": "array"}},
            },
        },
        "manifest": {"type": "object"},
        "defense": _DEFENSE,
        "certification": _CERTIFICATION,
        "detection": _DETECTION,
    },
}

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}


def _check(value: Any, schema: Mapping[str, Any], where: str) -> str | None:
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](value) for t in names):
            return f"{where}: expected {' or '.join(names)}, got {type(value).__name__} {value!r:.60}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: must be one of {schema['enum']}, got {value!r:.60}"
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: must be >= {schema['minimum']}, got {value!r}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}: must be <= {schema['maximum']}, got {value!r}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{where}: missing required key {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                err = _check(value[key], sub, f"{where}.{key}")
                if err:
                    return err
    if isinstance(value, list) and "minItems" in schema and len(value) < schema["minItems"]:
        return f"{where}: needs at least {schema['minItems']} item(s), got {len(value)}"
    if isinstance(value, list) and "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{where}: allows at most {schema['maxItems']} item(s), got {len(value)}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            err = _check(item, schema["items"], f"{where}[{i}]")
            if err:
                return err
    return None


def validate_report(report: Any) -> None:
    """Check ``report`` against :data:`REPORT_SCHEMA`; raise :class:`DataError` naming the first bad place."""
    err = _check(report, REPORT_SCHEMA, "report")
    if err:
        raise DataError(f"{err} (not a valid gauntlet report, schema version {' or '.join(SCHEMA_VERSIONS)})")
