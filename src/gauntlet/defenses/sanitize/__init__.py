"""Training-data defenses (kind ``"sanitizer"``): score every training row for being poison and
flag a removal set; importing this package registers every module in it.  See ``docs/poisoning.md``."""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.defenses.sanitize._base import SanitizationResult, Sanitizer

__all__ = ["SanitizationResult", "Sanitizer"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
