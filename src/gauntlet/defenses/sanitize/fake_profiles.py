"""Fake-profile (shilling) detection from rating-deviation and similarity features."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.attacks.poisoning._base import precision_recall
from gauntlet.defenses.base import Defense
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import SanitizationResult
from gauntlet.errors import ConfigError, DataError

__all__ = ["FakeProfiles", "profile_features"]

#: the attack models the detector is calibrated on
SIMULATED: tuple[str, ...] = ("random_shilling", "average_shilling", "bandwagon_shilling", "optimized_shilling")
FEATURES: tuple[str, ...] = ("rdma", "wdma", "wda", "degsim", "length_var", "mean_var", "max_dev", "mean_pop", "mean_dev")


def profile_features(ratings: Any, *, neighbours: int = 25) -> dict[str, Tensor]:
    """Per-user features of a ``Ratings`` set (float ``(n_users,)`` each).

    ``rdma``: mean over the user's ratings of ``|r - item mean| / item count`` (Rating Deviation from
    Mean Agreement); ``wdma``: the same with the squared count (weights rare items more); ``wda``:
    the RDMA sum, not averaged; ``degsim``: mean Pearson similarity to the user's ``neighbours`` most
    similar users (fake profiles of one attack resemble each other); ``length_var``: how far the
    profile's length is from the mean length, over the lengths' total squared deviation;
    ``mean_var``: the variance of the user's deviations from the item means, excluding its single
    most deviating rating (a pushed target), low for profiles built from item means; ``max_dev``:
    that largest signed deviation; ``mean_dev``: the mean signed deviation; ``mean_pop``: the mean
    log count of the rated items (real users follow popularity, random fillers do not).
    """
    u, i, r = ratings.users, ratings.items, ratings.ratings.double()
    n_u, n_i = ratings.n_users, ratings.n_items
    cnt_i = torch.bincount(i, minlength=n_i).double()
    mean_i = ratings.item_means().double()
    dev = (r - mean_i[i]).abs()
    length = torch.bincount(u, minlength=n_u).double()
    wda = torch.zeros(n_u, dtype=torch.float64).index_add_(0, u, dev / cnt_i[i])
    wdma = torch.zeros(n_u, dtype=torch.float64).index_add_(0, u, dev / cnt_i[i] ** 2) / length.clamp(min=1)
    rdma = wda / length.clamp(min=1)
    lv = (length - length.mean()).abs() / ((length - length.mean()) ** 2).sum().clamp(min=1e-12)
    # deviation variance without each user's largest deviation
    sdev = r - mean_i[i]
    s1 = torch.zeros(n_u, dtype=torch.float64).index_add_(0, u, sdev)
    s2 = torch.zeros(n_u, dtype=torch.float64).index_add_(0, u, sdev**2)
    mx = torch.zeros(n_u, dtype=torch.float64).scatter_reduce_(0, u, sdev.abs(), reduce="amax", include_self=True)
    sgn = torch.zeros(n_u, dtype=torch.float64)
    top = sdev.abs() == mx[u]
    sgn.index_put_((u[top],), sdev[top])  # one of the largest deviations, with its sign
    m = (length - 1).clamp(min=1)
    mean_var = ((s2 - sgn**2) / m - ((s1 - sgn) / m) ** 2).clamp(min=0)
    # Pearson similarity: user-mean-centred rows, cosine over the whole item space
    mean_u = torch.zeros(n_u, dtype=torch.float64).index_add_(0, u, r) / length.clamp(min=1)
    x = torch.zeros(n_u, n_i, dtype=torch.float64)
    x[u, i] = r - mean_u[u]
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    k = max(1, min(int(neighbours), n_u - 1))
    degsim = sim.topk(k, dim=1).values.mean(1)
    mean_pop = torch.zeros(n_u, dtype=torch.float64).index_add_(0, u, cnt_i[i].log()) / length.clamp(min=1)
    return {
        "rdma": rdma, "wdma": wdma, "wda": wda, "degsim": degsim, "length_var": lv, "mean_var": mean_var,
        "max_dev": sgn, "mean_pop": mean_pop, "mean_dev": s1 / length.clamp(min=1),
    }


def _matrix(ratings: Any, neighbours: int) -> Tensor:
    f = profile_features(ratings, neighbours=neighbours)
    return torch.stack([f[k] for k in FEATURES], dim=1)


@register
class FakeProfiles(Defense):
    """Scores every user profile of a recommender's ratings for being a shilling profile and flags
    the most suspicious at a stated false-positive budget.

    Calibrated the way Mobasher et al. train their detectors, on simulated attacks: ``fit(ratings)``
    injects the attack models of :data:`SIMULATED` (random, average, bandwagon and optimised push attacks of
    ``sim_fraction`` fake profiles at random unpopular targets, several filler sizes) into the
    defender's ratings, computes :func:`profile_features` for every profile and fits a gradient
    boosted classifier (scikit-learn) to tell the injected profiles from the existing ones; the
    threshold is the ``1 - fpr`` quantile of the existing profiles' out-of-fold scores (two folds
    of users), which holds false positives on genuine users near ``fpr``.  ``detect`` then scores the profiles of new ratings
    (the trusted ones plus whatever was added since).  Fitting on ratings that already hold the
    fakes teaches the classifier that they are genuine: fit on a trusted snapshot.

    Args:
        fpr: the false-positive budget on genuine profiles, in (0, 0.5).
        neighbours: how many most-similar users ``degsim`` averages over.
        sim_fraction: the most simulated fake profiles per injection, as a share of the users, in
            (0, 0.5) (round 0 simulates it, round 1 a third of it, round 2 a sixth, then again).
        sim_rounds: how many simulated injections (each of every attack model) calibrate it.
        seed: seeds the simulation and the classifier.
    """

    name: ClassVar[str] = "fake_profiles"
    kind: ClassVar[str] = "profiles"
    description: ClassVar[str] = "flags shilling profiles by rating deviation (RDMA/WDMA/WDA) and similarity (DegSim) features"
    reference: ClassVar[str] = (
        "Mobasher, Burke, Bhaumik, Williams, 'Toward trustworthy recommender systems: an analysis of attack models and "
        "algorithm robustness', ACM TOIT 7(4) 2007, https://doi.org/10.1145/1278366.1278372; Chirita, Nejdl, Zamfir, "
        "'Preventing shilling attacks in online recommender systems', WIDM 2005"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "fpr": [Interval(float, 0, 0.5, closed="neither")],
        "neighbours": [Interval(int, 1, None)],
        "sim_fraction": [Interval(float, 0, 0.5, closed="neither")],
        "sim_rounds": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(
        self, *, fpr: float = 0.05, neighbours: int = 25, sim_fraction: float = 0.03, sim_rounds: int = 6, seed: int = 0
    ) -> None:
        self.fpr = fpr
        self.neighbours = neighbours
        self.sim_fraction = sim_fraction
        self.sim_rounds = sim_rounds
        self.seed = seed
        self._validate()

    def _check(self, ratings: Any, where: str) -> None:
        from gauntlet.learning.recommender import Ratings

        if not isinstance(ratings, Ratings):
            raise DataError(f"fake_profiles.{where}: ratings must be a gauntlet.learning.recommender.Ratings set, got {type(ratings).__name__}")
        if ratings.n_users < 10 or len(ratings) == 0 or ratings.n_items < 20:
            raise DataError(
                f"fake_profiles.{where}: needs at least 10 users and 20 items with ratings, got {ratings.n_users} x {ratings.n_items}"
            )

    def fit(self, ratings: Any) -> FakeProfiles:
        """Calibrate on simulated attacks injected into ``ratings`` (taken as genuine)."""
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped]  # scikit-learn ships no type information

        from gauntlet.attacks.registry import create

        self._validate()
        self._check(ratings, "fit")
        rng = np.random.default_rng(int(self.seed))
        counts = ratings.item_counts().numpy()
        tail = np.nonzero((counts > 0) & (counts <= np.quantile(counts[counts > 0], 0.5)))[0]
        xs, ys, genuine = [], [], []
        for rnd in range(int(self.sim_rounds)):
            for j, attack in enumerate(SIMULATED):
                filler = float(rng.choice([0.02, 0.05, 0.1]))
                share = float(self.sim_fraction) / (1, 3, 6)[rnd % 3]  # the full share first
                res = create(
                    attack, fraction=share, filler_size=filler, target_item=int(rng.choice(tail)),
                    seed=int(self.seed) * 1000 + rnd * 10 + j,
                ).inject(ratings)
                x = _matrix(res.poisoned, int(self.neighbours))
                xs.append(x)
                ys.append(res.is_fake)
                genuine.append(x[~res.is_fake])
        X, Y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
        # the user each row belongs to, for out-of-fold scores of the genuine profiles
        users = np.concatenate([np.arange(len(y)) for y in ys])
        fold = rng.permutation(ratings.n_users) % 2

        def train(mask: np.ndarray) -> Any:
            w = np.where(Y[mask], 0.5 / max(1, Y[mask].sum()), 0.5 / max(1, (~Y[mask]).sum()))
            clf = HistGradientBoostingClassifier(
                max_iter=150, learning_rate=0.1, min_samples_leaf=5, random_state=int(self.seed)
            )
            return clf.fit(X[mask], Y[mask], sample_weight=w)

        genuine_fold = np.where(Y, -1, fold[np.minimum(users, ratings.n_users - 1)])
        oof = []
        for k in (0, 1):
            clf = train(genuine_fold != k)
            held = genuine_fold == k
            oof.append(clf.predict_proba(X[held])[:, 1])
        self.classifier_ = train(np.ones(len(Y), dtype=bool))
        self.threshold_ = float(np.quantile(np.concatenate(oof), 1.0 - float(self.fpr)))
        return self

    def detect(self, ratings: Any, *, is_fake: Tensor | None = None) -> SanitizationResult:
        """Score and flag the profiles of ``ratings`` (a ``gauntlet.learning.recommender.Ratings``);
        with ``is_fake`` (bool ``(n_users,)``) ``info`` also holds precision, recall and the false
        positive rate."""
        t0 = time.perf_counter()
        self._validate()
        self._check(ratings, "detect")
        if is_fake is not None and (
            not isinstance(is_fake, Tensor) or is_fake.dtype != torch.bool or tuple(is_fake.shape) != (ratings.n_users,)
        ):
            raise DataError(f"fake_profiles.detect: is_fake must be a bool tensor of shape ({ratings.n_users},)")
        if not hasattr(self, "classifier_"):
            raise ConfigError("fake_profiles.detect: call fit(trusted_ratings) first, on ratings known to be free of fakes")
        x = _matrix(ratings, int(self.neighbours)).numpy()
        scores = torch.from_numpy(self.classifier_.predict_proba(x)[:, 1]).float()
        flagged = scores > self.threshold_
        info: dict[str, Any] = {"threshold": self.threshold_}
        if is_fake is not None:
            pr = precision_recall(flagged, is_fake)
            n_gen = int((~is_fake).sum())
            info.update(pr, fpr=float((flagged & ~is_fake).sum()) / n_gen if n_gen else 0.0)
        return SanitizationResult(scores, flagged, self.name, self.get_params(), info, time.perf_counter() - t0)
