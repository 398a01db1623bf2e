"""The average attack: filler items rated around each item's own mean."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gauntlet.attacks.poisoning._shilling import ShillingAttack
from gauntlet.attacks.registry import register


@register
class AverageShilling(ShillingAttack):
    """Push attack whose fake profiles rate randomly chosen filler items with ratings drawn around
    each item's mean (and standard deviation): more knowledge than the random attack, profiles
    closer to real ones.  Parameters as in :class:`ShillingAttack`."""

    name: ClassVar[str] = "average_shilling"
    description: ClassVar[str] = "shilling push attack: fake profiles with random filler items rated around each item's mean"
    reference: ClassVar[str] = (
        "Lam, Riedl, 'Shilling recommender systems for fun and profit', WWW 2004, https://doi.org/10.1145/988672.988726; "
        "Mobasher et al., 'Toward trustworthy recommender systems', ACM TOIT 7(4) 2007, https://doi.org/10.1145/1278366.1278372"
    )

    def _profiles(
        self, ratings: Any, target: int, n_fake: int, n_filler: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        mu, sd = ratings.item_means().double().numpy(), ratings.item_stds().double().numpy()
        rated = ratings.item_counts().numpy() > 0
        never = {j for j in range(ratings.n_items) if not rated[j]}
        exclude = {target} | (never if ratings.n_items - len(never) - 1 >= n_filler else set())
        items = self._random_fillers(rng, ratings.n_items, exclude, n_fake, n_filler)
        return items, rng.normal(mu[items], np.maximum(sd[items], 0.5)), {}
