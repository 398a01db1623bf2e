"""What an audit run produces: one :class:`AuditOutcome`, ready for
:func:`gauntlet.audit.report.build_report`.

It holds JSON-able values only: the core facts (model, data, clean predictions, manifest), the
report sections every study merged from its records and the hygiene flags the studies raised.
Studies' own record types live in their modules (e.g.
:class:`gauntlet.audit.studies.evasion.UnitRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuditOutcome"]


@dataclass
class AuditOutcome:
    """Everything one audit produced."""

    spec: Any  # an AuditSpec (anything with .model_dump()) or a plain dict
    model_info: dict[str, Any]  # {name, version, sha256, path, capabilities, num_classes, bounds}
    data_info: dict[str, Any]  # {name, n, sha256, shape}
    clean_correct: list[bool]  # per sample
    #: the studies' report sections (``results``, ``certification``, ...), in run order
    sections: dict[str, Any] = field(default_factory=dict)
    flags: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    store_audit_id: int | None = None
    #: each study's unit records in plan order (what its sections were merged from; not in the report)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
