"""Preprocessing defenses; importing this package registers every module in it."""

from __future__ import annotations

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

from gauntlet.defenses.preprocessing._base import PreprocessedModel, Preprocessor
from gauntlet.defenses.preprocessing.bit_depth_reduction import bit_depth
from gauntlet.defenses.preprocessing.median_filter import median_filter

__all__ = ["PreprocessedModel", "Preprocessor", "bit_depth", "median_filter"]
