"""The boiling frog: an attacker that drifts an online learner a little each round."""

from __future__ import annotations

from typing import Any, ClassVar

from gauntlet._validation import Constraint, Hyperparameters, Interval, validate_params
from gauntlet.attacks.registry import register


@register
class BoilingFrog(Hyperparameters):
    """The attacker sends ``share`` of every round's mail to an online spam filter
    (:mod:`gauntlet.learning.spam`).  Its messages look like ordinary ham and are delivered and
    not reported, so the filter learns them as ham; each round it replaces ``step`` more of their
    distinctive words by words of the real spam it wants delivered (up to ``max_fraction``).  No
    round differs much from the last, so a filter that learns online — and a defense that only
    compares a round with the previous one — follows, until the spam vocabulary reads as ham and
    real spam is accepted.

    Args:
        share: the attacker's share of each round's mail, in (0, 1).
        step: how much of its messages' distinctive words moves to the spam vocabulary per round.
        max_fraction: the most spam words its messages carry.
        start: the round the drift starts from (its first messages are pure ham before it).
    """

    name: ClassVar[str] = "boiling_frog"
    kind: ClassVar[str] = "online"
    description: ClassVar[str] = "online poisoning: ham-labelled mail drifting a little more toward spam each round"
    reference: ClassVar[str] = (
        "Barreno, Nelson, Joseph, Tygar, 'The security of machine learning', Machine Learning 81 (2010) (the boiling-frog "
        "attack); Nelson et al., 'Exploiting Machine Learning to Subvert Your Spam Filter', LEET 2008"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "share": [Interval(float, 0, 1, closed="neither")],
        "step": [Interval(float, 0, 1, closed="right")],
        "max_fraction": [Interval(float, 0, 1, closed="right")],
        "start": [Interval(int, 0, None)],
    }

    def __init__(self, *, share: float = 0.2, step: float = 0.05, max_fraction: float = 1.0, start: int = 0) -> None:
        self.share = share
        self.step = step
        self.max_fraction = max_fraction
        self.start = start
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def spam_fraction_at(self, rnd: int) -> float:
        """The share of its messages' distinctive words taken from the spam vocabulary in round ``rnd``."""
        return min(float(self.max_fraction), float(self.step) * max(0, rnd - int(self.start)))

    def messages(self, gen: Any, n: int, rnd: int) -> list[str]:
        """Its ``n`` messages of round ``rnd`` from the mail generator ``gen``."""
        return gen.mix(n, self.spam_fraction_at(rnd), rnd=rnd)  # type: ignore[no-any-return]
