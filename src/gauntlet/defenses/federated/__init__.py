"""Defenses of learning spread over many participants: robust aggregation of federated client
updates (kind ``"aggregation"``, each also a Flower strategy) and staleness control of
asynchronous SGD (kind ``"staleness"``); importing this package registers every module in it.
See ``docs/federated.md``."""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.defenses.federated._base import Aggregation, Aggregator, aggregate

__all__ = ["Aggregation", "Aggregator", "aggregate"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
