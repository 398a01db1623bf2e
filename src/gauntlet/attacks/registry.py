"""One registry of attacks: creation, listing and lookup by name.

Every attack class has a ``kind``: ``"evasion"`` (inference time, :class:`~gauntlet.attacks.Attack`,
``run(model, x, y)``) or ``"poisoning"`` (training time,
:class:`~gauntlet.attacks.poisoning.PoisoningAttack`, ``poison(x_train, y_train)``) or
``"extraction"`` (model stealing, :class:`~gauntlet.attacks.extraction.ExtractionAttack`,
``run(target)`` returns a copy of the target) or ``"inference"`` (privacy: membership
inference, :class:`~gauntlet.attacks.inference.MembershipAttack`, ``run(model, members=...,
nonmembers=...)`` scores each candidate).  The attacks on learning that never stops or is
spread out take part in a system from :mod:`gauntlet.learning` instead of a dataset:
``"federated"`` (malicious clients' updates, ``craft(honest_updates, n_malicious=...)``),
``"scheduling"`` (an adversarial scheduler of asynchronous SGD workers), ``"online"`` (a sender
that drifts an online filter) and ``"shilling"`` (fake profiles injected into a recommender).
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from gauntlet._validation import check_param_names
from gauntlet.errors import ConfigError, UnknownNameError

_REGISTRY: dict[str, Any] = {}
A = TypeVar("A", bound=type)
KINDS: tuple[str, ...] = ("evasion", "poisoning", "extraction", "inference", "federated", "scheduling", "online", "shilling")


def register(cls: A) -> A:
    """Class decorator: add an attack to the registry under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise ConfigError(f"attack class {cls.__name__} needs a lower_snake_case `name`, got {name!r}")
    if getattr(cls, "kind", "") not in KINDS:
        raise ConfigError(f"attack class {cls.__name__} needs a `kind` in {KINDS}, got {getattr(cls, 'kind', '')!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"attack name {name!r} is registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    # importing the package registers every attack module in it
    import gauntlet.attacks.evasion
    import gauntlet.attacks.extraction
    import gauntlet.attacks.inference
    import gauntlet.attacks.poisoning  # noqa: F401


def _check_kind(kind: str | None, where: str) -> None:
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {KINDS}, got {kind!r}")


def get_attack_class(name: str, kind: str | None = None) -> Any:
    """The attack class registered as ``name``; with ``kind``, one of that kind only (an
    evasion spec naming a poisoning attack is told so)."""
    _load_all()
    _check_kind(kind, "get_attack_class")
    pool = [n for n, c in _REGISTRY.items() if kind is None or c.kind == kind]
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), pool, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown attack {name!r}{hint} (gauntlet attacks lists all)")
    cls = _REGISTRY[name]
    if kind is not None and cls.kind != kind:
        def a(word: str) -> str:
            return f"an {word}" if word[:1] in "aeiou" else f"a {word}"

        raise ConfigError(f"{name!r} is {a(cls.kind)} attack, not {a(kind)} attack (gauntlet attacks --kind {kind} lists those)")
    return cls


def create(name: str, **params: Any) -> Any:
    """Build a registered attack from its name and keyword hyperparameters.

    A keyword the attack does not take is a :class:`~gauntlet.errors.ConfigError` that names the
    closest parameter and lists them all (not Python's bare ``TypeError``).
    """
    klass = get_attack_class(name)
    check_param_names(name, params, klass._param_names())
    return klass(**params)


def list_attacks(kind: str | None = None) -> list[str]:
    """Names of every registered attack (of one ``kind``: ``"evasion"`` or ``"poisoning"``), sorted."""
    _load_all()
    _check_kind(kind, "list_attacks")
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def describe_attacks(kind: str | None = None) -> dict[str, str]:
    """Name → one-line description (of one ``kind`` when given)."""
    return {n: _REGISTRY[n].description for n in list_attacks(kind)}
