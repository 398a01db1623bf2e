"""Poisoning (training-time) attacks; importing this package registers every module in it.

Each returns a :class:`PoisonedDataset` from ``poison(x_train, y_train, seed=...)``; backdoor
attacks (:class:`BackdoorAttack`) also ``apply_trigger(x)``.  See ``docs/poisoning.md``.
"""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.attacks.poisoning._base import (
    BackdoorAttack,
    PoisonedDataset,
    PoisoningAttack,
    precision_recall,
)

__all__ = ["BackdoorAttack", "PoisonedDataset", "PoisoningAttack", "precision_recall"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
