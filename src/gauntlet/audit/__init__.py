"""Robustness audits: spec → studies → units → executor → store → report (JSON/HTML) → gate.

``run_audit(load_spec("spec.yaml"), out_dir="report")`` is ``gauntlet audit spec.yaml --out report``
as a library call.  Each kind of audit block (evasion attacks × threats, certification,
detection, ...) is a study plug-in in :mod:`gauntlet.audit.studies`.  See ``docs/audit.md`` for
the spec reference and ``docs/architecture.md`` for how to add a study.
"""

from gauntlet.audit.executors import Executor, LocalExecutor, RayExecutor, make_executor
from gauntlet.audit.gate import compare_reports, evaluate_gate, parse_regression, parse_threshold
from gauntlet.audit.records import AuditOutcome
from gauntlet.audit.runner import AuditRun, ProgressEvent, execute, prepare, run_audit, write_reports
from gauntlet.audit.spec import AuditSpec, load_spec, resolve_defense, spec_hash
from gauntlet.audit.store import DEFAULT_STORE_URL, Store, open_store
from gauntlet.audit.studies import Study, get_study, list_studies, register_study

__all__ = [
    "DEFAULT_STORE_URL",
    "AuditOutcome",
    "AuditRun",
    "AuditSpec",
    "Executor",
    "LocalExecutor",
    "ProgressEvent",
    "RayExecutor",
    "Store",
    "Study",
    "compare_reports",
    "evaluate_gate",
    "execute",
    "get_study",
    "list_studies",
    "load_spec",
    "make_executor",
    "open_store",
    "parse_regression",
    "parse_threshold",
    "prepare",
    "register_study",
    "resolve_defense",
    "run_audit",
    "spec_hash",
    "write_reports",
]
