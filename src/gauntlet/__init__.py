"""Gauntlet: attack, harden and audit machine-learning models.

The subpackages (``attacks``, ``models``, ``data``, ``defenses``, ``norms``) are imported on first
use, so ``import gauntlet`` and ``gauntlet --help`` do not pay for PyTorch until it is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gauntlet import errors
from gauntlet.errors import GauntletError

if TYPE_CHECKING:
    from gauntlet import attacks, data, defenses, models, norms
    from gauntlet.attacks import AttackResult
    from gauntlet.threat import ThreatModel

__version__ = "0.1.0"

__all__ = ["AttackResult", "GauntletError", "ThreatModel", "__version__", "attacks", "data", "defenses", "errors", "models", "norms"]

_SUBPACKAGES = ("attacks", "data", "defenses", "models", "norms")
_NAMES = {"AttackResult": "gauntlet.attacks", "ThreatModel": "gauntlet.threat"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"gauntlet.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'gauntlet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
