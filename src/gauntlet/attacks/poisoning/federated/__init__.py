"""Malicious federated clients (kind ``"federated"``): ``craft(name, honest_updates,
n_malicious=...)`` returns the updates they send; importing this package registers every module
in it.  The federation they take part in is :mod:`gauntlet.learning.federated`; see
``docs/federated.md``."""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.attacks.poisoning.federated._base import FederatedAttack, craft

__all__ = ["FederatedAttack", "craft"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
