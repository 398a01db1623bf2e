"""Audit studies: one module per kind of audit block, registered by name.

Every module in this package is imported (and so registered) on first use of the registry, so a
new study is one new file whose class carries ``@register_study``.  Studies from other packages
register through the ``gauntlet.studies`` entry point group (the entry point names a module to
import).  See :mod:`gauntlet.audit.studies.base` for the contract and ``docs/architecture.md`` for
the recipe.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, TypeVar

from gauntlet.audit.studies.base import AuditEnv, ChoiceUnit, Metric, Study, StudyOutput, Threshold, work_key, work_seed
from gauntlet.errors import ConfigError, UnknownNameError

__all__ = [
    "AuditEnv",
    "ChoiceUnit",
    "Metric",
    "Study",
    "StudyOutput",
    "Threshold",
    "get_study",
    "list_studies",
    "register_study",
    "studies",
    "studies_in",
    "study_keys",
    "unregister_study",
    "work_key",
    "work_seed",
]

_REGISTRY: dict[str, type[Study]] = {}
_ORDER: list[str] = []
_LOADED = False
S = TypeVar("S", bound=type[Study])


def register_study(cls: S) -> S:
    """Class decorator: add a study to the registry under ``cls.name``.

    Studies run, report and render in registration order (this package's modules are imported
    in the order of ``_BUILTIN``, then any others alphabetically).  Its spec keys must not clash
    with the core keys or another study's.  A plug-in registered before the built-in studies were
    loaded loads them first, so it always runs after them, whichever module was imported first.
    """
    _load_all()  # a no-op while the built-ins themselves register (loading has started)
    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise ConfigError(f"study class {cls.__name__} needs a lower_snake_case `name`, got {name!r}")
    if name in _REGISTRY:
        if _REGISTRY[name] is cls:
            return cls
        if _REGISTRY[name].__qualname__ != cls.__qualname__ or _REGISTRY[name].__module__ != cls.__module__:
            raise ConfigError(f"study name {name!r} is registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
    from gauntlet.audit.spec import CORE_KEYS

    for key in cls.Block.model_fields:
        if key in CORE_KEYS:
            raise ConfigError(f"study {name!r}: spec key {key!r} is a core key of the audit spec")
        for other in _REGISTRY.values():
            if other.name != name and key in other.Block.model_fields:
                raise ConfigError(f"study {name!r}: spec key {key!r} is already owned by study {other.name!r}")
    if name not in _ORDER:
        _ORDER.append(name)
    _REGISTRY[name] = cls
    from gauntlet.audit import spec as _spec

    _spec.invalidate_spec_model()
    return cls


def unregister_study(name: str) -> None:
    """Remove a study from the registry (a plug-in's tests clean up with it)."""
    _REGISTRY.pop(name, None)
    if name in _ORDER:
        _ORDER.remove(name)
    from gauntlet.audit import spec as _spec

    _spec.invalidate_spec_model()


#: built-in studies, in the order they run and report
_BUILTIN = ("evasion", "certify", "detect")


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")]
    for mod in sorted(names, key=lambda n: (_BUILTIN.index(n) if n in _BUILTIN else len(_BUILTIN), n)):
        importlib.import_module(f"{__name__}.{mod}")
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="gauntlet.studies"):
            importlib.import_module(ep.value.split(":", 1)[0])
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is reported, never a traceback
        raise ConfigError(f"cannot load a study plug-in from the 'gauntlet.studies' entry points ({exc})") from None


def studies() -> list[type[Study]]:
    """Every registered study class, in run order."""
    _load_all()
    order = sorted(_ORDER, key=lambda n: (_BUILTIN.index(n) if n in _BUILTIN else len(_BUILTIN), _ORDER.index(n)))
    return [_REGISTRY[n] for n in order]


def studies_in(report: Mapping[str, Any]) -> list[type[Study]]:
    """The registered studies that have sections in ``report``, in run order."""
    return [s for s in studies() if s.in_report(report)]


def list_studies() -> list[str]:
    """Names of the registered studies, in run order."""
    return [s.name for s in studies()]


def study_keys() -> dict[str, str]:
    """Spec key → the study that owns it."""
    return {k: s.name for s in studies() for k in s.Block.model_fields}


def get_study(name: str) -> type[Study]:
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown study {name!r}{hint}; registered: {', '.join(_ORDER)}")
    return _REGISTRY[name]
