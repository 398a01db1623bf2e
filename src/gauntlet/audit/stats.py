"""Uncertainty of audit numbers: Wilson intervals and the significance of a drop between two audits.

An accuracy measured on ``n`` samples is a binomial proportion; two audits of one model that differ
only in their seeds move by about a percentage point on a few hundred samples, so a regression is
called only when the drop is beyond that noise:

* the same samples in both audits (same data hash, per-sample outcomes in the store): the exact
  one-sided McNemar test on the discordant samples — ``b`` held in the baseline and lost now,
  ``c`` the other way round; under no change each discordant sample is a fair coin, so the
  p-value is ``P(X ≥ b)`` for ``X ~ Binomial(b + c, 1/2)``;
* otherwise: Newcombe's hybrid score interval for the difference of two independent proportions
  (built from their Wilson intervals); the drop is significant when the interval's lower end,
  one-sided at level ``alpha``, is above 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["drop_is_significant", "mcnemar_drop_p", "newcombe_drop_lower", "wilson"]


def _z(alpha: float) -> float:
    from scipy.stats import norm  # type: ignore[import-untyped]

    return float(norm.ppf(1.0 - alpha))


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0:
        return (0.0, 1.0)
    z = _z(alpha / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_drop_p(before: Sequence[bool], after: Sequence[bool]) -> float:
    """One-sided exact McNemar p-value that ``after`` holds fewer samples than ``before``
    (paired per sample)."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes need equal lengths, got {len(before)} and {len(after)}")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    if b == 0:
        return 1.0
    from scipy.stats import binom  # type: ignore[import-untyped]

    return float(binom.sf(b - 1, b + c, 0.5))


def newcombe_drop_lower(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float = 0.05) -> float:
    """Lower end of the one-sided ``1 - alpha`` Newcombe interval of ``p_a - p_b`` (the drop)."""
    pa, pb = k_a / n_a, k_b / n_b
    la, _ = wilson(k_a, n_a, 2 * alpha)
    _, ub = wilson(k_b, n_b, 2 * alpha)
    return (pa - pb) - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)


def drop_is_significant(
    before: Sequence[bool] | None,
    after: Sequence[bool] | None,
    counts: tuple[int, int, int, int] | None,
    alpha: float,
) -> bool | None:
    """Whether a drop from the baseline is beyond noise: paired (McNemar) when both per-sample
    outcome lists are given, else from the counts ``(k_a, n_a, k_b, n_b)`` (Newcombe); ``None``
    when neither is available."""
    if before is not None and after is not None and len(before) == len(after):
        return mcnemar_drop_p(before, after) < alpha
    if counts is not None and counts[1] > 0 and counts[3] > 0:
        return newcombe_drop_lower(*counts, alpha=alpha) > 0
    return None
