"""Staleness-weighted learning rate: a stale asynchronous SGD update counts less."""

from __future__ import annotations

from typing import ClassVar

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.base import Defense
from gauntlet.defenses.registry import register


@register
class StalenessWeighting(Defense):
    """Each update of staleness ``s`` is applied with the learning rate divided by
    ``(1 + max(0, s - free))**power`` (``lr / (1 + s)`` by default).  A burst of long-paused
    updates then barely moves the model; the price is that every benign update, stale by
    ``workers - 1`` under fair scheduling, is slowed too unless ``free`` covers it.

    Used by :meth:`gauntlet.learning.async_sgd.AsyncSGD.run` (``defense=``) through ``scale(s)``.

    Args:
        power: how fast the weight falls with staleness (> 0).
        free: staleness that is not penalised (e.g. ``workers - 1``).
    """

    name = "staleness_weighting"
    kind = "staleness"
    description = "asynchronous SGD updates applied with the learning rate divided by (1 + staleness)"
    reference = (
        "Zhang, Gupta, Lian, Liu, 'Staleness-aware Async-SGD for Distributed Deep Learning', IJCAI 2016, "
        "https://arxiv.org/abs/1511.05950"
    )
    on_reject: ClassVar[str] = "drop"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "power": [Interval(float, 0, None, closed="neither")],
        "free": [Interval(int, 0, None)],
    }

    def __init__(self, *, power: float = 1.0, free: int = 0) -> None:
        self.power = power
        self.free = free
        self._validate()

    def scale(self, staleness: int) -> float:
        """The factor on the learning rate of an update ``staleness`` versions old."""
        return float((1.0 + max(0, int(staleness) - int(self.free))) ** -float(self.power))
