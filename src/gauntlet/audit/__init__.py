"""Robustness audits: spec → plan → units (resumable, stored) → report (JSON/HTML) → gate.

``run_audit(load_spec("spec.yaml"), out_dir="report")`` is ``gauntlet audit spec.yaml --out report``
as a library call.  See ``docs/audit.md`` for the spec reference.
"""

from gauntlet.audit.gate import compare_reports, evaluate_gate, parse_regression, parse_threshold
from gauntlet.audit.plan import Unit, make_plan
from gauntlet.audit.records import AuditOutcome, UnitRecord
from gauntlet.audit.runner import AuditRun, ProgressEvent, execute, prepare, run_audit, write_reports
from gauntlet.audit.spec import (
    PRESETS,
    AuditSpec,
    ThresholdSpec,
    load_spec,
    resolve_attacks,
    resolve_certify,
    resolve_defense,
    resolve_detect,
    spec_hash,
)
from gauntlet.audit.store import DEFAULT_STORE_URL, Store, open_store

__all__ = [
    "DEFAULT_STORE_URL",
    "PRESETS",
    "AuditOutcome",
    "AuditRun",
    "AuditSpec",
    "ProgressEvent",
    "Store",
    "ThresholdSpec",
    "Unit",
    "UnitRecord",
    "compare_reports",
    "evaluate_gate",
    "execute",
    "load_spec",
    "make_plan",
    "open_store",
    "parse_regression",
    "parse_threshold",
    "prepare",
    "resolve_attacks",
    "resolve_certify",
    "resolve_defense",
    "resolve_detect",
    "run_audit",
    "spec_hash",
    "write_reports",
]
