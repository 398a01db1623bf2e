"""Model-extraction (model-stealing) attacks; importing this package registers every module in it.

Each returns an :class:`ExtractionResult` from ``run(target, seed=...)``: the stolen copy as a
:class:`~gauntlet.models.Model`, the queries it cost, and ``fidelity(x)`` (agreement with the
target).  See ``docs/privacy.md``.
"""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.attacks.extraction._base import ExtractionAttack, ExtractionResult, QueryBudget, agreement, predict_labels

__all__ = ["ExtractionAttack", "ExtractionResult", "QueryBudget", "agreement", "predict_labels"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
