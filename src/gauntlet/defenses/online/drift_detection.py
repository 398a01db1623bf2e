"""Drift detection on the mail labelled ham: more spam-like than trusted ham ever is."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.online._base import OnlineDefense
from gauntlet.defenses.registry import register


@register
class DriftDetection(OnlineDefense):
    """A one-sided test on the distribution of the round's ham-labelled mail.  A message's spam
    evidence is its hashed features weighted by the filter's positive (spam-leaning) weights only.
    The weights are those of the filter at ``fit`` (the reference, before any round the attacker
    shares), frozen, so no drift the attacker causes can move them; the ``quantile`` of the trusted
    ham's evidence is the edge of normal ham.  Each round the share of the round's ham-labelled
    messages above the edge is tested against the ``1 − quantile`` expected of ham with a binomial
    test; the update is refused when p < ``alpha``.  Benign topic drift brings new ham words,
    which carry no spam evidence (the reference never saw them, so it has no weight on them), and
    new-topic ham stays inside the edge; a boiling frog's ham-labelled mail carries spam words and
    crosses it.  The filter's hash space must be large enough that new words seldom share a
    bucket with spam words (:class:`~gauntlet.learning.spam.OnlineSpamFilter` uses 2^18).

    Args:
        quantile: the trusted-ham quantile that bounds normal ham, in (0.5, 1).
        alpha: the test's significance level (the per-round false-alarm rate on ham like the trusted).
    """

    name = "drift_detection"
    description = "online updates refused when the round's ham-labelled mail is significantly more spam-like than trusted ham"
    reference = (
        "Kloft & Laskov, 'Security Analysis of Online Centroid Anomaly Detection', JMLR 13 (2012); Gama et al., "
        "'A survey on concept drift adaptation', ACM Computing Surveys 46 (2014)"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "quantile": [Interval(float, 0.5, 1, closed="neither")],
        "alpha": [Interval(float, 0, 1, closed="neither")],
    }

    def __init__(self, *, quantile: float = 0.95, alpha: float = 1e-3) -> None:
        self.quantile = quantile
        self.alpha = alpha
        self._validate()

    def _evidence(self, flt: Any, texts: list[str]) -> np.ndarray:
        """Spam evidence per message: its features weighted by the reference filter's spam-leaning
        weights only (words it had never seen, such as a new topic's, add none)."""
        return np.asarray(flt.features(texts) @ self.weights_).ravel()

    def fit(self, flt: Any, trusted_ham: list[str], trusted_spam: list[str]) -> None:
        self.weights_ = np.maximum(np.asarray(flt.model.coef_[0], dtype=float), 0.0)
        self.edge_ = float(np.quantile(self._evidence(flt, trusted_ham), self.quantile))
        self.p_values_: list[float] = []

    def accept(self, flt: Any, candidate: Any, texts: list[str], labels: np.ndarray) -> bool:
        from scipy.stats import binomtest  # type: ignore[import-untyped]  # stubs are the separate scipy-stubs package

        ham = [t for t, y in zip(texts, labels) if int(y) == 0]
        if not ham:
            return True
        above = int((self._evidence(flt, ham) > self.edge_).sum())
        p = float(binomtest(above, len(ham), 1.0 - self.quantile, alternative="greater").pvalue)
        self.p_values_.append(p)
        return p >= self.alpha
