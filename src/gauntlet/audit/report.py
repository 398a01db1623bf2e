"""Assemble ``report.json`` (schema version 2.1) from an :class:`~gauntlet.audit.records.AuditOutcome`.

The core of every report: ``schema_version``, ``audit_id``, ``model``, ``data``,
``clean_accuracy`` (the audited model on the clean data), ``flags`` (hygiene flags the studies
raised), ``gate`` and the reproducibility ``manifest``.  Every study adds its own top-level
sections (evasion: ``results``, ``worst_case``, ``cost``, ``gallery``, ``defense``; certify:
``certification``; detect: ``detection``), each described by the study's JSON Schema piece.

Schema 2.0 makes the study sections optional (an audit may have no evasion block); a study's
sections are required together once one of them is present.  2.1 adds the ``verdict`` (state and
sentence), ``headline_eps``, the gate's ``rules`` table and the model's ``history`` (baseline deltas
and trends); all optional, so 2.0 reports validate as they are.  1.0 and 1.1 reports (which always
had the evasion sections) still validate: :func:`validate_report` accepts every version in
:data:`SCHEMA_VERSIONS`.

:func:`report_schema` (also ``REPORT_SCHEMA``) is the JSON Schema of the document;
:func:`validate_report` checks a report against it (and is what readers of stored reports should
call).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from gauntlet.audit.records import AuditOutcome
from gauntlet.errors import DataError

SCHEMA_VERSION = "2.1"
#: every version :func:`validate_report` accepts
SCHEMA_VERSIONS = ("1.0", "1.1", "2.0", "2.1")

__all__ = [  # and REPORT_SCHEMA, built on first use (module __getattr__)
    "COUNT",
    "NON_NEGATIVE",
    "NUM",
    "NUM_OR_NULL",
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "SHARE",
    "STRING",
    "STR_OR_NULL",
    "array_of",
    "build_report",
    "comparable",
    "jsonable",
    "report_schema",
    "validate_report",
]

#: the report's own keys, before and after the studies' sections
_CORE_REQUIRED = ("schema_version", "model", "data", "clean_accuracy", "flags", "gate", "manifest")


# ------------------------------------------------------------------------------------------
# JSON helpers
def jsonable(v: Any) -> Any:
    """Plain JSON values from tuples, tensors, NumPy scalars/arrays, paths and sets."""
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted(jsonable(x) for x in v)
    if isinstance(v, PurePath):
        return str(v)
    if hasattr(v, "tolist"):  # torch / numpy tensors and scalars
        return jsonable(v.tolist())
    if hasattr(v, "model_dump"):
        return jsonable(v.model_dump(mode="json"))
    if hasattr(v, "item"):
        return jsonable(v.item())
    return str(v)


def _spec_dict(spec: Any) -> Any:
    if spec is None:
        return None
    if hasattr(spec, "model_dump"):
        return jsonable(spec.model_dump(mode="json"))
    return jsonable(spec)


#: what legitimately differs between two runs of one audit: timings, the manifest, the store's id
#: and the store's history of the model
VOLATILE_KEYS = ("seconds", "manifest", "audit_id", "history")


def comparable(report: Any, ignore: Sequence[str] = VOLATILE_KEYS) -> Any:
    """A copy of ``report`` without the keys in ``ignore`` at any depth: two runs of one audit (resumed,
    on Ray, on another day) give equal ``comparable`` reports."""
    if isinstance(report, Mapping):
        return {k: comparable(v, ignore) for k, v in report.items() if k not in ignore}
    if isinstance(report, list):
        return [comparable(v, ignore) for v in report]
    return report


def build_report(outcome: AuditOutcome, gate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``report.json`` document (schema version 2.1) for one audit.

    ``gate`` defaults to ``{"passed": None, "violations": []}`` (not evaluated); the audit
    command replaces it with :func:`gauntlet.audit.gate.evaluate_gate`'s answer.
    """
    clean = [bool(c) for c in outcome.clean_correct]
    info = dict(jsonable(outcome.model_info or {}))
    model = {"name": info.pop("name", None), "version": info.pop("version", None), "sha256": info.pop("sha256", None)}
    model.update(info)
    dinfo = dict(jsonable(outcome.data_info or {}))
    data = {"name": dinfo.pop("name", None), "n": dinfo.pop("n", len(clean)), "sha256": dinfo.pop("sha256", None)}
    data.update(dinfo)
    manifest = dict(jsonable(outcome.manifest or {}))
    if "spec" not in manifest:
        manifest["spec"] = _spec_dict(outcome.spec)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "audit_id": outcome.store_audit_id,
        "model": model,
        "data": data,
        "clean_accuracy": sum(clean) / len(clean) if clean else None,
    }
    for key, section in (outcome.sections or {}).items():
        if key in report or key in ("flags", "gate", "manifest"):
            raise DataError(f"a study section may not be named {key!r}: it is a core key of the report")
        report[key] = jsonable(section)
    report["flags"] = jsonable(list(outcome.flags or []))
    report["gate"] = jsonable(dict(gate)) if gate is not None else {"passed": None, "violations": []}
    report["manifest"] = manifest
    return report


# ------------------------------------------------------------------------------------------
# schema: the vocabulary studies write their sections' pieces in
NUM: dict[str, Any] = {"type": "number"}
NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
NON_NEGATIVE: dict[str, Any] = {"type": "number", "minimum": 0}
SHARE: dict[str, Any] = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
STRING: dict[str, Any] = {"type": "string"}
STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}


def array_of(required: Sequence[str], properties: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The schema of a list of objects with ``required`` keys and typed ``properties``."""
    item = {"type": "object", "required": list(required), "properties": dict(properties)}
    return {"type": "array", "items": item, **extra}


_CORE_PROPERTIES: dict[str, Any] = {
    "schema_version": {"type": "string", "enum": list(SCHEMA_VERSIONS)},
    "audit_id": {"type": ["integer", "null"]},
    "model": {
        "type": "object",
        "required": ["name", "version", "sha256"],
        "properties": {"name": STR_OR_NULL, "version": STR_OR_NULL, "sha256": STR_OR_NULL},
    },
    "data": {
        "type": "object",
        "required": ["name", "n", "sha256"],
        # manifest_sha256 (optional, absent before it existed): the dataset hash of the data's
        # files, the one ``gauntlet data hash PATH`` prints; null for a builtin dataset
        "properties": {"name": STR_OR_NULL, "n": COUNT, "sha256": STR_OR_NULL, "manifest_sha256": STR_OR_NULL},
    },
    "clean_accuracy": SHARE,
    "flags": array_of(
        ["id", "severity", "title", "explanation", "evidence"],
        {"id": STRING, "severity": {"type": "string", "enum": ["warning", "info"]}, "title": STRING,
         "explanation": STRING, "evidence": {"type": "object"}, "accepted": STRING},
    ),
    "gate": {
        "type": "object",
        "required": ["passed", "violations"],
        "properties": {
            "passed": {"type": ["boolean", "null"]},
            "violations": {"type": "array", "items": {"type": "string"}},
            "baseline_audit_id": {"type": ["integer", "null"]},
            "rules": array_of(
                ["rule", "what", "kind", "required", "actual", "margin", "passed"],
                {"rule": STRING, "study": STR_OR_NULL, "metric": STRING, "labels": {"type": "object"}, "what": STRING,
                 "title": STRING, "kind": {"type": "string", "enum": ["min", "max"]}, "required": NUM,
                 "actual": NUM_OR_NULL, "ci": {"type": ["array", "null"], "minItems": 2, "maxItems": 2, "items": SHARE},
                 "margin": NUM_OR_NULL, "passed": {"type": "boolean"}},
            ),
        },
    },
    "manifest": {"type": "object"},
    # 2.1: the verdict above the fold, the ε it leads with, and the model's history
    "verdict": {
        "type": "object",
        "required": ["state", "sentence", "headline"],
        "properties": {
            "state": {"type": "string", "enum": ["passed", "failed", "no_gate"]},
            "sentence": STRING,
            "headline": {"type": ["object", "null"], "properties": {"study": STRING, "text": STRING, "metric": {"type": "object"}}},
        },
    },
    "headline_eps": {"type": ["number", "null"], "minimum": 0},
    "history": {
        "type": ["object", "null"],
        "required": ["baseline_audit_id", "rows", "trend"],
        "properties": {
            "baseline_audit_id": {"type": ["integer", "null"]},
            "rows": {"type": "array", "items": {"type": "object", "required": ["metric", "what", "a", "b", "delta"]}},
            "clean_accuracy": {"type": ["object", "null"]},
            "trend": array_of(
                ["what", "metric", "points"],
                {"what": STRING, "metric": STRING, "labels": {"type": "object"},
                 "points": array_of(["audit_id", "value"], {"audit_id": {"type": ["integer", "null"]}, "value": NUM_OR_NULL})},
            ),
        },
    },
}


def report_schema(version: str = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of a report of ``version``: the core keys and every registered study's
    sections.  Before 2.0 the sections of the studies every report had (evasion) were required."""
    from gauntlet.audit.studies import studies

    required = list(_CORE_REQUIRED)
    properties = dict(_CORE_PROPERTIES)
    for study in studies():
        properties.update(study.sections)
        if version.startswith("1.") and study.in_every_v1_report:
            required += [s for s in study.required() if s not in required]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gauntlet audit report",
        "type": "object",
        "required": required,
        "properties": properties,
    }


def __getattr__(name: str) -> Any:
    if name == "REPORT_SCHEMA":  # built on first use: it includes every registered study's sections
        return report_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """Check ``report`` against its version's schema; raise :class:`DataError` naming the first bad place."""
    from gauntlet.audit.studies import studies_in

    version = report.get("schema_version") if isinstance(report, dict) else None
    schema = report_schema(version if version in SCHEMA_VERSIONS else SCHEMA_VERSION)
    err = _check(report, schema, "report")
    if err is None and isinstance(report, dict):
        for study in studies_in(report):
            missing = [s for s in study.required() if s not in report]
            if missing:
                err = f"report: missing required key {missing[0]!r} (the {study.name} study's sections go together)"
                break
    if err:
        raise DataError(f"{err} (not a valid gauntlet report, schema version {' or '.join(SCHEMA_VERSIONS)})")
