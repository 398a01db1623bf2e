"""One registry of attacks: creation, listing and lookup by name."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, TypeVar

from gauntlet._validation import check_param_names
from gauntlet.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from gauntlet.attacks.base import Attack

_REGISTRY: dict[str, type[Attack]] = {}
A = TypeVar("A", bound="type[Attack]")


def register(cls: A) -> A:
    """Class decorator: add an attack to the registry under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise ConfigError(f"attack class {cls.__name__} needs a lower_snake_case `name`, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"attack name {name!r} is registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    # importing the package registers every attack module in it
    import gauntlet.attacks.evasion  # noqa: F401


def get_attack_class(name: str) -> type[Attack]:
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown attack {name!r}{hint} (gauntlet attacks lists all)")
    return _REGISTRY[name]


def create(name: str, **params: Any) -> Attack:
    """Build a registered attack from its name and keyword hyperparameters.

    A keyword the attack does not take is a :class:`~gauntlet.errors.ConfigError` that names the
    closest parameter and lists them all (not Python's bare ``TypeError``).
    """
    klass = get_attack_class(name)
    check_param_names(name, params, klass._param_names())
    return klass(**params)


def list_attacks() -> list[str]:
    """Names of every registered attack, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def describe_attacks() -> dict[str, str]:
    """Name → one-line description."""
    _load_all()
    return {n: _REGISTRY[n].description for n in sorted(_REGISTRY)}
