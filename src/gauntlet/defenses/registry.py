"""One registry of defenses: creation, listing and lookup by name."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, TypeVar

from gauntlet._validation import check_param_names
from gauntlet.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from gauntlet.defenses.base import Defense

_REGISTRY: dict[str, type[Defense]] = {}
D = TypeVar("D", bound="type[Defense]")


def register(cls: D) -> D:
    """Class decorator: add a defense to the registry under ``cls.name``."""
    from gauntlet.defenses.base import KINDS

    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise ConfigError(f"defense class {cls.__name__} needs a lower_snake_case `name`, got {name!r}")
    if getattr(cls, "kind", "") not in KINDS:
        raise ConfigError(f"defense class {cls.__name__} needs a `kind` in {KINDS}, got {getattr(cls, 'kind', '')!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"defense name {name!r} is registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    # importing each subpackage registers every defense module in it
    import gauntlet.defenses.certify
    import gauntlet.defenses.detection
    import gauntlet.defenses.ensemble
    import gauntlet.defenses.federated
    import gauntlet.defenses.online
    import gauntlet.defenses.preprocessing
    import gauntlet.defenses.privacy
    import gauntlet.defenses.sanitize
    import gauntlet.defenses.training  # noqa: F401


def get_defense_class(name: str, suggest_kind: str | None = None) -> type[Defense]:
    """The defense class registered as ``name``; an unknown name suggests the closest registered
    names (of ``suggest_kind`` only, when the caller accepts one kind)."""
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        pool = [n for n, c in _REGISTRY.items() if suggest_kind is None or c.kind == suggest_kind]
        close = difflib.get_close_matches(str(name), pool, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown defense {name!r}{hint} (gauntlet defenses lists all)")
    return _REGISTRY[name]


def create(name: str, **params: Any) -> Defense:
    """Build a registered defense from its name and keyword hyperparameters.

    A keyword the defense does not take is a :class:`~gauntlet.errors.ConfigError` that names the
    closest parameter and lists them all (not Python's bare ``TypeError``).
    """
    klass = get_defense_class(name)
    check_param_names(name, params, klass._param_names())
    return klass(**params)


def list_defenses(kind: str | None = None) -> list[str]:
    """Names of every registered defense (of one ``kind`` when given), sorted."""
    _load_all()
    if kind is not None:
        from gauntlet.defenses.base import KINDS

        if kind not in KINDS:
            raise ConfigError(f"list_defenses: kind must be one of {KINDS}, got {kind!r}")
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def describe_defenses() -> dict[str, tuple[str, str]]:
    """Name → (kind, one-line description)."""
    _load_all()
    return {n: (_REGISTRY[n].kind, _REGISTRY[n].description) for n in sorted(_REGISTRY)}
