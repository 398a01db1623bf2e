"""Each round's update validated on a trusted holdout against the filter's validated baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.online._base import OnlineDefense
from gauntlet.defenses.registry import register


@register
class HoldoutValidation(OnlineDefense):
    """Reject On Negative Impact, against a fixed baseline.  At ``fit`` the filter's spam acceptance
    and false positives on the trusted holdout are recorded; a round's update is refused when the
    candidate's acceptance of trusted spam or its false positives on trusted ham exceed that
    baseline by more than ``tolerance``.  Comparing with the validated baseline rather than with the
    previous round is what stops a boiling frog: every single step is small, the sum is not.

    Args:
        tolerance: how far above the baseline either error may go, in [0, 1).
    """

    name = "holdout_validation"
    description = "online updates refused when they raise trusted-holdout spam acceptance or false positives past a tolerance"
    reference = (
        "Nelson et al., 'Exploiting Machine Learning to Subvert Your Spam Filter', LEET 2008 (RONI); Barreno et al., "
        "'The security of machine learning', Machine Learning 81 (2010)"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"tolerance": [Interval(float, 0, 1, closed="left")]}

    def __init__(self, *, tolerance: float = 0.05) -> None:
        self.tolerance = tolerance
        self._validate()

    def fit(self, flt: Any, trusted_ham: list[str], trusted_spam: list[str]) -> None:
        self._ham, self._spam = trusted_ham, trusted_spam
        self.baseline_ = (flt.acceptance(trusted_spam), flt.false_positives(trusted_ham))

    def accept(self, flt: Any, candidate: Any, texts: list[str], labels: np.ndarray) -> bool:
        acc, fp = candidate.acceptance(self._spam), candidate.false_positives(self._ham)
        return bool(acc <= self.baseline_[0] + self.tolerance and fp <= self.baseline_[1] + self.tolerance)
