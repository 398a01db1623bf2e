"""The optimised attack: filler items and ratings chosen on a surrogate matrix factorisation."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from gauntlet._validation import Constraint, Interval
from gauntlet.attacks.poisoning._shilling import ShillingAttack
from gauntlet.attacks.registry import register


@register
class OptimizedShilling(ShillingAttack):
    """Push attack that fits a surrogate biased matrix factorisation to the ratings it can see and
    chooses each fake profile's fillers from it: for a fake user ``f`` rating the target 5, the
    target's learnt factor ``q_t`` moves toward ``p_f``, which the fillers' ratings set.  The
    attack takes the genuine users who have not rated the target, the direction ``d`` of their mean
    factor and, per profile, the candidate items the surrogate predicts them to like most
    (``b_i + q_i . d``, among the ``candidate_share`` most popular items, sampled to vary the
    profiles), and rates them ``margin`` below their mean: the fake user's factor ``p_f`` follows
    ``d`` while its bias stays low, so the target's 5 is left for the target's own bias and factor
    to explain.  The target thus gains the bias of a loved item and the taste of the users it is
    pushed to (a surrogate version of the gradient-based choice of Li et al. 2016 / Fang et al.
    2020; on the synthetic benchmark this beat rating the fillers 5 or 1).

    Args:
        candidate_share: the share of the most-rated items the fillers are chosen from, in (0, 1].
        margin: how far below each filler item's mean rating it is rated, in [0, 4].
        surrogate_factors, surrogate_epochs: the surrogate MF's rank and Adam steps.
        fraction, n_fake, filler_size, target_item, seed: as in :class:`ShillingAttack`.
    """

    name: ClassVar[str] = "optimized_shilling"
    description: ClassVar[str] = "shilling push attack: filler items and ratings chosen on a surrogate matrix factorisation"
    reference: ClassVar[str] = (
        "Li, Wang, Singh, Vorobeychik, 'Data poisoning attacks on factorization-based collaborative filtering', NeurIPS "
        "2016, https://arxiv.org/abs/1608.08182; Fang, Gong, Liu, 'Influence function based data poisoning attacks to "
        "top-N recommender systems', WWW 2020, https://arxiv.org/abs/2002.08025"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "candidate_share": [Interval(float, 0, 1, closed="right")],
        "margin": [Interval(float, 0, 4)],
        "surrogate_factors": [Interval(int, 1, None)],
        "surrogate_epochs": [Interval(int, 1, None)],
    }

    def __init__(
        self, *, fraction: float = 0.01, n_fake: int | None = None, filler_size: float = 0.05, target_item: int | None = None,
        candidate_share: float = 0.3, margin: float = 1.0, surrogate_factors: int = 16, surrogate_epochs: int = 150,
        seed: int = 0,
    ) -> None:
        self.candidate_share = candidate_share
        self.margin = margin
        self.surrogate_factors = surrogate_factors
        self.surrogate_epochs = surrogate_epochs
        super().__init__(fraction=fraction, n_fake=n_fake, filler_size=filler_size, target_item=target_item, seed=seed)

    def _profiles(
        self, ratings: Any, target: int, n_fake: int, n_filler: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        from gauntlet.learning.recommender import MatrixFactorization

        mf = MatrixFactorization(
            n_factors=int(self.surrogate_factors), epochs=int(self.surrogate_epochs), seed=int(self.seed)
        ).fit(ratings)
        users = torch.nonzero(~mf.rated_[:, target]).flatten()
        d = mf.P_[users].mean(0)
        d = d / d.norm().clamp(min=1e-12)
        align = (mf.Q_ @ d).double().numpy()
        liked = mf.bi_.double().numpy() + align * float(mf.P_[users].norm(dim=1).mean())
        counts = ratings.item_counts().numpy().astype(float)
        counts[target] = -1.0
        n_cand = max(n_filler + 1, round(float(self.candidate_share) * ratings.n_items))
        cand = np.argsort(-counts, kind="stable")[: min(n_cand, ratings.n_items - 1)]
        cand = cand[cand != target]
        by_liking = cand[np.argsort(-liked[cand], kind="stable")]
        pool = by_liking[: max(n_filler, min(2 * n_filler, len(cand)))]
        means = ratings.item_means().double().numpy()
        items = np.stack(
            [rng.choice(pool, size=n_filler, replace=False, p=_rank_weights(len(pool))) for _ in range(n_fake)]
        )
        values = np.clip(means[items] - float(self.margin), 1.0, 5.0)
        return items, values, {"direction": d.tolist(), "pool": [int(j) for j in pool]}


def _rank_weights(n: int) -> np.ndarray:
    w = 1.0 / np.sqrt(np.arange(n) + 1.0)
    return w / w.sum()
