"""Defenses: ``create(name, **params)``, ``list_defenses()``, and the ``Defense`` base class.

Subpackages by kind: ``training``, ``preprocessing``, ``detection``, ``ensemble``, ``certify``,
``sanitize``, ``privacy`` (output hardening and query monitoring).
"""

from gauntlet.defenses import certify, detection, ensemble, preprocessing, privacy, training
from gauntlet.defenses.base import KINDS, Defense
from gauntlet.defenses.registry import create, describe_defenses, get_defense_class, list_defenses, register

__all__ = [
    "KINDS",
    "Defense",
    "certify",
    "create",
    "describe_defenses",
    "detection",
    "ensemble",
    "get_defense_class",
    "list_defenses",
    "preprocessing",
    "privacy",
    "register",
    "training",
]
