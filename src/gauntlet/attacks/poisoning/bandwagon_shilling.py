"""The bandwagon attack: the most popular items rated the maximum, random fillers around the global mean."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gauntlet._validation import Constraint, Interval
from gauntlet.attacks.poisoning._shilling import ShillingAttack
from gauntlet.attacks.registry import register


@register
class BandwagonShilling(ShillingAttack):
    """Push attack whose fake profiles rate the ``n_selected`` most popular items (most ratings)
    the maximum, which makes them similar to many real users, and random filler items around
    the global mean, as the random attack.  Needs only public popularity.

    Args:
        n_selected: how many popular items every profile rates 5 (part of ``filler_size``'s
            count when it is smaller).
        fraction, n_fake, filler_size, target_item, seed: as in :class:`ShillingAttack`.
    """

    name: ClassVar[str] = "bandwagon_shilling"
    description: ClassVar[str] = "shilling push attack: the most popular items rated 5 plus random fillers around the global mean"
    reference: ClassVar[str] = (
        "Mobasher, Burke, Bhaumik, Williams, 'Toward trustworthy recommender systems: an analysis of attack models and "
        "algorithm robustness', ACM TOIT 7(4) 2007, https://doi.org/10.1145/1278366.1278372"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"n_selected": [Interval(int, 1, None)]}

    def __init__(
        self, *, fraction: float = 0.01, n_fake: int | None = None, filler_size: float = 0.05, target_item: int | None = None,
        n_selected: int = 5, seed: int = 0,
    ) -> None:
        self.n_selected = n_selected
        super().__init__(fraction=fraction, n_fake=n_fake, filler_size=filler_size, target_item=target_item, seed=seed)

    def _profiles(
        self, ratings: Any, target: int, n_fake: int, n_filler: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        counts = ratings.item_counts().numpy().astype(float)
        counts[target] = -1.0
        k = min(int(self.n_selected), n_filler)
        selected = np.argsort(-counts, kind="stable")[:k]
        mu, sd = self._global_stats(ratings)
        rest = n_filler - k
        if rest:
            fill = self._random_fillers(rng, ratings.n_items, {target, *selected.tolist()}, n_fake, rest)
            items = np.concatenate([np.tile(selected, (n_fake, 1)), fill], axis=1)
            values = np.concatenate([np.full((n_fake, k), 5.0), rng.normal(mu, sd, fill.shape)], axis=1)
        else:
            items, values = np.tile(selected, (n_fake, 1)), np.full((n_fake, k), 5.0)
        return items, values, {"selected": selected.tolist()}
