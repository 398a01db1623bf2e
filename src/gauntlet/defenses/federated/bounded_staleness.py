"""Bounded staleness: asynchronous SGD updates older than a bound are rejected."""

from __future__ import annotations

from typing import ClassVar

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.defenses.base import Defense
from gauntlet.defenses.registry import register


@register
class BoundedStaleness(Defense):
    """The parameter server refuses any update computed more than ``tau`` versions ago (the
    staleness bound of stale-synchronous parallel training).  A refused update is dropped (the
    worker reads the current parameters and goes on with its next mini-batch) or, with
    ``on_reject="recompute"``, recomputed on the same mini-batch at the current parameters.  A
    paused thread's update can then do no more than any update ``tau`` steps old; benign runs
    whose staleness stays within ``tau`` (``workers - 1`` under fair scheduling) lose nothing.

    Used by :meth:`gauntlet.learning.async_sgd.AsyncSGD.run` (``defense=``): ``scale(s)`` is 1
    for ``s <= tau`` and 0 above.

    Args:
        tau: the largest staleness accepted.
        on_reject: ``"drop"`` or ``"recompute"``.
    """

    name = "bounded_staleness"
    kind = "staleness"
    description = "asynchronous SGD updates staler than tau versions dropped or recomputed at the current parameters"
    reference = (
        "Ho, Cipar, Cui, Lee, Kim, Gibbons, Gibson, Ganger, Xing, 'More Effective Distributed ML via a Stale Synchronous "
        "Parallel Parameter Server', NeurIPS 2013, https://papers.nips.cc/paper/2013/hash/b7bb35b9c6ca2aee2df08cf09d7016c2-Abstract.html"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "tau": [Interval(int, 0, None)],
        "on_reject": [Options({"drop", "recompute"})],
    }

    def __init__(self, *, tau: int = 16, on_reject: str = "drop") -> None:
        self.tau = tau
        self.on_reject = on_reject
        self._validate()

    def scale(self, staleness: int) -> float:
        """1 for an update within the bound, 0 (rejected) beyond it."""
        return 1.0 if staleness <= self.tau else 0.0
