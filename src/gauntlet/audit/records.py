"""What an audit run produces: one :class:`UnitRecord` per finished unit, one :class:`AuditOutcome`.

These plain dataclasses are the interface between the runner (which fills them) and the
report builders (:mod:`gauntlet.audit.flags`, :mod:`gauntlet.audit.report`,
:mod:`gauntlet.audit.html`, which read them). They hold JSON-able values only, so a unit can be
written to the store and read back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Suffix of the label of an attack run against the *naive* view of a preprocessing defense
#: (``model.defense`` in the spec): ``"pgd"`` runs on the adaptive (BPDA + EOT) wrap, ``"pgd (naive)"``
#: on the naive one.  Such rows are reported but never enter the worst case or the regression gate.
NAIVE_SUFFIX = " (naive)"


def is_naive(label: str) -> bool:
    """Whether ``label`` names a run against the naive view of the spec's defense."""
    return isinstance(label, str) and label.endswith(NAIVE_SUFFIX)


def naive_label(label: str) -> str:
    """The label of ``label``'s run against the naive view: ``"pgd"`` → ``"pgd (naive)"``."""
    return f"{label}{NAIVE_SUFFIX}"


@dataclass
class UnitRecord:
    """The result of one unit: one attack, one threat (norm, several ε), samples ``start:stop``.

    ``success[i][j]`` / ``norms[i][j]``: whether sample ``start + j`` was fooled at ``eps[i]`` and
    the size of its perturbation in ``norm``.
    """

    attack: str  # label, e.g. "pgd" or "autoattack"
    attack_name: str  # registry name
    params: dict[str, Any]
    norm: str
    eps: tuple[float, ...]
    start: int
    stop: int
    success: list[list[bool]]  # [eps][sample in start:stop]
    norms: list[list[float]]  # [eps][sample]
    queries: int
    grad_evals: int
    seconds: float


@dataclass
class AuditOutcome:
    """Everything one audit produced, ready for :func:`gauntlet.audit.report.build_report`."""

    spec: Any  # an AuditSpec (anything with .model_dump()) or a plain dict
    model_info: dict[str, Any]  # {name, version, sha256, path, capabilities, num_classes, bounds}
    data_info: dict[str, Any]  # {name, n, sha256, shape}
    clean_correct: list[bool]  # per sample
    units: list[UnitRecord]
    flags: list[dict[str, Any]] = field(default_factory=list)  # from audit.flags.compute_flags
    gallery: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    store_audit_id: int | None = None
    #: ``model.defense`` of the spec: ``{name, params, randomized, eot_samples}`` (None: no defense)
    defense: dict[str, Any] | None = None
    #: one entry per ``certify`` item: ``{method, norm, params, n, curve, abstain_rate, seconds, ...}``
    certification: list[dict[str, Any]] = field(default_factory=list)
    #: one :meth:`DetectionReport.to_dict` per ``detect`` item (plus ``calibration_samples``)
    detection: list[dict[str, Any]] = field(default_factory=list)
