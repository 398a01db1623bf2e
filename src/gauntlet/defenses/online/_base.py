"""The online-defense base class (kind ``"online"``): a check on each round's update of an online learner.

``fit(filter, trusted_ham, trusted_spam)`` once, on the filter after its warm-up and a small trusted,
labelled set the defender keeps apart; then ``accept(filter, candidate, texts, labels)`` decides
whether the round's update (``candidate``: the filter after ``partial_fit`` on the round's mail)
replaces the filter.  :func:`gauntlet.learning.spam.run_stream` calls both and reports the refused
rounds (false alarms when no attacker is present).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gauntlet.defenses.base import Defense

__all__ = ["OnlineDefense"]


class OnlineDefense(Defense):
    """Base class of the online defenses; subclasses implement :meth:`fit` and :meth:`accept`."""

    kind = "online"

    def fit(self, flt: Any, trusted_ham: list[str], trusted_spam: list[str]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def accept(self, flt: Any, candidate: Any, texts: list[str], labels: np.ndarray) -> bool:  # pragma: no cover
        raise NotImplementedError
