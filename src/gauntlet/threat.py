"""The threat model: what the adversary may change, and how much."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gauntlet._validation import Interval, IsNone, Options, validate_params
from gauntlet.errors import ThreatModelError
from gauntlet.norms import NORMS

Knowledge = Literal["white", "score", "label"]


def as_eps_tuple(eps: float | Sequence[float], owner: str = "ThreatModel") -> tuple[float, ...]:
    """Normalise ``eps`` (one value or several) to a tuple of positive floats."""
    if isinstance(eps, (str, bytes)):  # not a list of characters: say what was given
        raise ThreatModelError(
            f"{owner}: parameter 'eps' must be a number > 0 or a list of them, got the string {eps!r}"
        )
    values = [eps] if isinstance(eps, (int, float)) and not isinstance(eps, bool) else eps
    try:
        values = list(values)  # type: ignore[arg-type]
    except TypeError:
        raise ThreatModelError(f"{owner}: eps must be a positive number or a list of them, got {eps!r}") from None
    if not values:
        raise ThreatModelError(f"{owner}: eps must not be an empty list")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or float(v) <= 0:
            where = "eps" if len(values) == 1 and not isinstance(eps, (list, tuple)) else f"eps[{i}]"
            got = f"the string {v!r}" if isinstance(v, (str, bytes)) else repr(v)
            raise ThreatModelError(f"{owner}: {where} must be a finite number > 0, got {got}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class ThreatModel:
    """What the adversary may do.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: the budget, one value or several (for robust-accuracy-vs-ε curves).
        targeted: whether the adversary aims at a chosen class.
        knowledge: ``"white"`` (gradients), ``"score"`` (output scores), ``"label"`` (labels only).
        max_queries: query budget per sample for black-box attacks, or ``None``.
    """

    norm: str = "linf"
    eps: float | tuple[float, ...] = 0.3
    targeted: bool = False
    knowledge: str = "white"
    max_queries: int | None = None
    epsilons: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        validate_params(
            "ThreatModel",
            {"norm": self.norm, "knowledge": self.knowledge, "max_queries": self.max_queries, "targeted": self.targeted},
            {
                "norm": [Options(NORMS)],
                "knowledge": [Options(("white", "score", "label"))],
                "max_queries": [Interval(int, 1, None), IsNone()],
                "targeted": [Options((True, False))],
            },
            error=ThreatModelError,
        )
        object.__setattr__(self, "epsilons", as_eps_tuple(self.eps))

    @property
    def capabilities(self) -> frozenset[str]:
        """Model capabilities this adversary may use."""
        return {
            "white": frozenset({"gradients", "scores", "labels"}),
            "score": frozenset({"scores", "labels"}),
            "label": frozenset({"labels"}),
        }[self.knowledge]
