"""The random attack: filler items rated around the global mean."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gauntlet.attacks.poisoning._shilling import ShillingAttack
from gauntlet.attacks.registry import register


@register
class RandomShilling(ShillingAttack):
    """Push attack whose fake profiles rate randomly chosen filler items with ratings drawn from
    the normal distribution of all ratings (global mean and standard deviation): it needs only
    system-wide statistics.  Parameters as in :class:`ShillingAttack`."""

    name: ClassVar[str] = "random_shilling"
    description: ClassVar[str] = "shilling push attack: fake profiles with random filler items rated around the global mean"
    reference: ClassVar[str] = (
        "Lam, Riedl, 'Shilling recommender systems for fun and profit', WWW 2004, https://doi.org/10.1145/988672.988726"
    )

    def _profiles(
        self, ratings: Any, target: int, n_fake: int, n_filler: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        mu, sd = self._global_stats(ratings)
        items = self._random_fillers(rng, ratings.n_items, {target}, n_fake, n_filler)
        return items, rng.normal(mu, sd, items.shape), {"global_mean": mu, "global_std": sd}
