"""Defenses of learners that never stop (kind ``"online"``): an online model's updates checked
before they are applied; importing this package registers every module in it.  See
``docs/online.md``."""

from __future__ import annotations

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
