"""Gauntlet: attack, harden and audit machine-learning models."""

from gauntlet import attacks, data, defenses, errors, models, norms
from gauntlet.attacks import AttackResult
from gauntlet.errors import GauntletError
from gauntlet.threat import ThreatModel

__version__ = "0.1.0"

__all__ = ["AttackResult", "GauntletError", "ThreatModel", "__version__", "attacks", "data", "defenses", "errors", "models", "norms"]
