"""Certify defenses; importing this package registers every module in it.

``randomized_smoothing`` (Cohen et al. 2019, certified L2 radius) and ``ibp`` (interval bound
propagation, Gowal et al. 2018, verified L∞ radius) return a :class:`Certification`.
"""

from __future__ import annotations

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from gauntlet.defenses.certify._result import ABSTAIN, Certification, Certifier
from gauntlet.defenses.certify.ibp import (
    IBPCertifier,
    ibp_bounds,
    interval_forward,
    margin_bounds,
    verified,
    verified_accuracy,
)
from gauntlet.defenses.certify.smoothing import RandomizedSmoothing, RandomizedSmoothingCertifier

__all__ = [
    "ABSTAIN",
    "Certification",
    "Certifier",
    "IBPCertifier",
    "RandomizedSmoothing",
    "RandomizedSmoothingCertifier",
    "ibp_bounds",
    "interval_forward",
    "margin_bounds",
    "verified",
    "verified_accuracy",
]
