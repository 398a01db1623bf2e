"""Declarative validation of hyperparameters, in the style of scikit-learn.

A class lists its constraints once (``{"eps": [Interval(float, 0, None, closed="neither")]}``)
and :func:`validate_params` checks a dict of values against them, raising
:class:`~gauntlet.errors.ConfigError` with one uniform message.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gauntlet.errors import ConfigError, GauntletError


class Hyperparameters:
    """Mixin of every configurable class (attacks, defenses): hyperparameters are the keyword-only
    ``__init__`` arguments, stored unchanged on ``self``, so ``get_params`` rebuilds the object."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters exactly as given (or defaulted) at construction."""
        return {k: getattr(self, k) for k in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Constraint:
    def is_satisfied_by(self, value: Any) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A real or integral number in an interval; ``None`` bounds are open-ended."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both" | "left" | "right" | "neither"

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.kind is float and not isinstance(value, numbers.Real):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.low is not None:
            if self.closed in ("both", "left") and v < self.low:
                return False
            if self.closed in ("right", "neither") and v <= self.low:
                return False
        if self.high is not None:
            if self.closed in ("both", "right") and v > self.high:
                return False
            if self.closed in ("left", "neither") and v >= self.high:
                return False
        return True

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a finite number"
        parts = []
        if self.low is not None:
            parts.append((">= " if self.closed in ("both", "left") else "> ") + _fmt(self.low))
        if self.high is not None:
            parts.append(("<= " if self.closed in ("both", "right") else "< ") + _fmt(self.high))
        return name + (" " + " and ".join(parts) if parts else "")


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values."""

    values: frozenset

    def __init__(self, values: Iterable[Any]) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:
            return False

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in sorted(self.values, key=str))


@dataclass(frozen=True)
class IsNone(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"


@dataclass(frozen=True)
class Boolean(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "a bool"


@dataclass(frozen=True)
class SequenceOf(Constraint):
    """A non-empty list/tuple whose every item satisfies ``item``."""

    item: Constraint

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) == 0:
            return False
        return all(self.item.is_satisfied_by(v) for v in value)

    def describe(self) -> str:
        return "a non-empty list of " + self.item.describe()


@dataclass(frozen=True)
class Check(Constraint):
    """An arbitrary predicate with a description."""

    predicate: Callable[[Any], bool]
    description: str

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except Exception:  # noqa: BLE001 - a predicate that cannot judge the value rejects it
            return False

    def describe(self) -> str:
        return self.description


def _fmt(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() else repr(v)


def validate_params(
    owner: str,
    params: Mapping[str, Any],
    constraints: Mapping[str, Sequence[Constraint]],
    error: type[ConfigError] = ConfigError,
) -> None:
    """Raise ``error`` for the first parameter that satisfies none of its constraints."""
    for key, allowed in constraints.items():
        if key not in params:
            continue
        value = params[key]
        if any(c.is_satisfied_by(value) for c in allowed):
            continue
        wanted = " or ".join(c.describe() for c in allowed)
        numeric = all(isinstance(c, (Interval, IsNone, Boolean)) for c in allowed)
        got = f"the string {value!r}" if numeric and isinstance(value, str) else repr(value)
        raise error(f"{owner}: parameter {key!r} must be {wanted}, got {got}")


def check_param_names(owner: str, given: Iterable[str], accepted: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming the keyword arguments in ``given`` that are not in
    ``accepted``, with the closest accepted name(s) and the full list:
    ``"pgd: unknown parameter 'stepz'; did you mean 'steps'? pgd takes norm, eps, steps, ..."``."""
    known = list(accepted)
    unknown = sorted(k for k in given if k not in known)
    if not unknown:
        return
    close = [m for k in unknown for m in difflib.get_close_matches(k, known, n=1, cutoff=0.6)]
    close = list(dict.fromkeys(close))
    what = "parameter" if len(unknown) == 1 else "parameters"
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ";"
    takes = f"{owner} takes {', '.join(known)}" if known else f"{owner} takes no parameters"
    raise ConfigError(f"{owner}: unknown {what} {', '.join(repr(k) for k in unknown)}{hint} {takes}")


# ------------------------------------------------------------------------------------------------
# value bounds and per-sample shapes: the one parser behind every adapter, defense and data loader
def parse_bounds(
    owner: str,
    bounds: object,
    *,
    finite: bool = True,
    error: type[GauntletError] = ConfigError,
    expected: str | None = None,
) -> tuple[float, float]:
    """``bounds`` as floats ``(low, high)`` with ``low < high`` (both finite unless ``finite=False``).

    Any pair is accepted (a tuple, list, array or tensor of two numbers; not a string).  Raises
    ``error`` with ``"{owner}: bounds must be a pair (low, high), got …"`` when ``bounds`` is not
    a pair of numbers and ``"{owner}: bounds must be finite with low < high, got …"`` (``"… must
    satisfy low < high …"`` with ``finite=False``) when they are out of order; ``expected``
    replaces both descriptions by one (``"{owner}: bounds must be {expected}, got …"``).
    """
    try:
        if isinstance(bounds, (str, bytes)) or len(bounds) != 2:  # type: ignore[arg-type]
            raise TypeError
        lo, hi = float(bounds[0]), float(bounds[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        what = f"be {expected}" if expected else "be a pair (low, high)"
        raise error(f"{owner}: bounds must {what}, got {bounds!r}") from None
    if (finite and not (math.isfinite(lo) and math.isfinite(hi))) or not lo < hi:
        what = f"be {expected}" if expected else ("be finite with low < high" if finite else "satisfy low < high")
        raise error(f"{owner}: bounds must {what}, got {bounds!r}")
    return lo, hi


def is_bounds(value: Any) -> bool:
    """A declarative hyperparameter's bounds: a tuple or list of two finite numbers with ``low < high``."""
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in value
    ):
        return False
    try:
        parse_bounds("", value)
    except ConfigError:
        return False
    return True


#: the constraint of a ``bounds`` hyperparameter (see :func:`is_bounds`)
BOUNDS = Check(is_bounds, "a pair (low, high) of finite numbers with low < high")


def parse_shape(owner: str, shape: Any) -> tuple[int, ...] | None:
    """A per-sample shape as a tuple of positive ints, or ``None`` (raises :class:`ConfigError`)."""
    if shape is None:
        return None
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if not dims or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) > 0 for d in dims):
        raise ConfigError(
            f"{owner}: input_shape must be the per-sample shape as positive ints, e.g. (1, 28, 28), got {shape!r}"
        )
    return tuple(int(d) for d in dims)
