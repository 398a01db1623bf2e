"""Privacy-inference attacks (membership inference); importing this package registers every
module in it.  Each returns a :class:`MembershipResult` from ``run(model, members=...,
nonmembers=..., seed=...)``: scores, AUC, TPR at low FPR, ROC.  See ``docs/privacy.md``."""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.attacks.inference._base import MembershipAttack, MembershipResult, ReferenceModels

__all__ = ["MembershipAttack", "MembershipResult", "ReferenceModels"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
