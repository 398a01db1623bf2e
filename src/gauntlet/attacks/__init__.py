"""Attacks: ``create(name, **params)``, ``list_attacks()``, and the ``Attack`` base class."""

from gauntlet.attacks.base import Attack, Context, loss_and_grad
from gauntlet.attacks.registry import create, describe_attacks, get_attack_class, list_attacks, register
from gauntlet.attacks.result import AttackResult

__all__ = [
    "Attack",
    "AttackResult",
    "Context",
    "create",
    "describe_attacks",
    "get_attack_class",
    "list_attacks",
    "loss_and_grad",
    "register",
]
