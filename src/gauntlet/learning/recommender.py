"""A matrix-factorisation recommender on seeded synthetic ratings with a long tail.

:func:`synthetic_ratings` draws explicit 1-5 ratings from a latent-factor ground truth, with
power-law item popularity and user activity, as a :class:`Ratings` set of (user, item, rating)
triples.  :class:`MatrixFactorization` (global mean + user/item biases + latent factors, full-batch
Adam on the squared error) predicts ratings and recommends the top-k unrated items.  The shilling
attacks (:mod:`gauntlet.attacks.poisoning`, kind ``"shilling"``) append fake users to a
:class:`Ratings` set; :meth:`MatrixFactorization.hit_ratio_at` and :func:`prediction_shift` measure
what they achieve on the genuine users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Constraint, Hyperparameters, Interval, validate_params
from gauntlet.errors import ConfigError, DataError

__all__ = ["MatrixFactorization", "Ratings", "prediction_shift", "synthetic_ratings"]

R_MIN, R_MAX = 1.0, 5.0


@dataclass(frozen=True)
class Ratings:
    """A sparse rating matrix as triples: ``users``/``items`` int64 ``(R,)``, ``ratings`` float32
    ``(R,)`` in [1, 5], over ``n_users`` x ``n_items``; at most one rating per (user, item)."""

    users: Tensor
    items: Tensor
    ratings: Tensor
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        u, i, r = self.users, self.items, self.ratings
        if not all(isinstance(t, Tensor) for t in (u, i, r)):
            raise DataError("Ratings: users, items and ratings must be torch tensors")
        if u.dim() != 1 or u.shape != i.shape or u.shape != r.shape:
            raise DataError(
                f"Ratings: users, items and ratings must be 1-D of one length, got {tuple(u.shape)}, {tuple(i.shape)}, {tuple(r.shape)}"
            )
        if u.dtype != torch.int64 or i.dtype != torch.int64:
            raise DataError("Ratings: users and items must be int64 indices; use .long()")
        if not r.dtype.is_floating_point or not bool(torch.isfinite(r).all()):
            raise DataError("Ratings: ratings must be finite floats")
        if len(r) and (float(r.min()) < R_MIN or float(r.max()) > R_MAX):
            raise DataError(f"Ratings: ratings must lie in [1, 5], got [{float(r.min()):g}, {float(r.max()):g}]")
        if len(u) and (int(u.min()) < 0 or int(u.max()) >= self.n_users or int(i.min()) < 0 or int(i.max()) >= self.n_items):
            raise DataError(f"Ratings: user indices must be in [0, {self.n_users}) and item indices in [0, {self.n_items})")
        if len(torch.unique(u * self.n_items + i)) != len(u):
            raise DataError("Ratings: a (user, item) pair is rated twice; keep one rating per pair")

    def __len__(self) -> int:
        return int(self.ratings.shape[0])

    def dense(self) -> Tensor:
        """The ``(n_users, n_items)`` matrix, 0 where unrated."""
        m = torch.zeros(self.n_users, self.n_items)
        m[self.users, self.items] = self.ratings.float()
        return m

    def rated(self) -> Tensor:
        """Bool ``(n_users, n_items)``: which pairs are rated."""
        m = torch.zeros(self.n_users, self.n_items, dtype=torch.bool)
        m[self.users, self.items] = True
        return m

    def item_counts(self) -> Tensor:
        return torch.bincount(self.items, minlength=self.n_items)

    def item_means(self) -> Tensor:
        """Mean rating of each item (the global mean for unrated items)."""
        n = self.item_counts().float()
        s = torch.zeros(self.n_items).index_add_(0, self.items, self.ratings.float())
        glob = float(self.ratings.mean()) if len(self) else 3.0
        return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, glob))

    def item_stds(self) -> Tensor:
        """Standard deviation of each item's ratings (0 for items with fewer than two)."""
        n = self.item_counts().float()
        mu = self.item_means()
        ss = torch.zeros(self.n_items).index_add_(0, self.items, (self.ratings.float() - mu[self.items]) ** 2)
        return torch.where(n > 1, (ss / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(ss))

    def append_users(self, users: Tensor, items: Tensor, ratings: Tensor, n_new: int) -> Ratings:
        """This set with ``n_new`` users appended (``users`` indexed from 0 among the new ones)."""
        return Ratings(
            torch.cat([self.users, users.long() + self.n_users]),
            torch.cat([self.items, items.long()]),
            torch.cat([self.ratings, ratings.float()]),
            self.n_users + n_new,
            self.n_items,
        )


def synthetic_ratings(
    *, n_users: int = 1000, n_items: int = 500, rank: int = 8, mean_activity: float = 30.0, zipf: float = 1.0,
    noise: float = 0.5, seed: int = 0,
) -> Ratings:
    """Seeded synthetic explicit ratings with a long tail.

    Item popularity follows a power law (item ``j`` is drawn with weight ``(j + 1) ** -zipf`` after
    a seeded shuffle), user activity is log-normal with mean ``mean_activity`` (at least 5 ratings);
    ratings are ``3.5 + b_u + b_i + p_u . q_i + noise`` from a rank-``rank`` ground truth, rounded
    and clipped to 1-5 (popular items are rated a little higher, as in real data).
    """
    validate_params(
        "synthetic_ratings",
        {"n_users": n_users, "n_items": n_items, "rank": rank, "mean_activity": mean_activity, "zipf": zipf, "noise": noise},
        {
            "n_users": [Interval(int, 2, None)], "n_items": [Interval(int, 10, None)], "rank": [Interval(int, 1, None)],
            "mean_activity": [Interval(float, 5, None)], "zipf": [Interval(float, 0, None)], "noise": [Interval(float, 0, None)],
        },
    )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    pop = np.empty(n_items)
    pop[order] = (np.arange(n_items) + 1.0) ** -float(zipf)
    pop /= pop.sum()
    sigma = 0.8
    act = rng.lognormal(math.log(mean_activity) - sigma**2 / 2, sigma, n_users)
    act = np.clip(np.round(act), 5, max(5, n_items // 2)).astype(int)
    p = rng.normal(0, 1 / math.sqrt(rank), (n_users, rank))
    q = rng.normal(0, 1, (n_items, rank))
    bu = rng.normal(0, 0.3, n_users)
    bi = rng.normal(0, 0.4, n_items) + 0.3 * (np.log(pop) - np.log(pop).mean()) / (np.log(pop).std() + 1e-12)
    us, its, rs = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=int(act[u]), replace=False, p=pop)
        r = 3.5 + bu[u] + bi[items] + q[items] @ p[u] + rng.normal(0, noise, len(items))
        us.append(np.full(len(items), u))
        its.append(items)
        rs.append(np.clip(np.round(r), R_MIN, R_MAX))
    return Ratings(
        torch.from_numpy(np.concatenate(us)).long(), torch.from_numpy(np.concatenate(its)).long(),
        torch.from_numpy(np.concatenate(rs)).float(), n_users, n_items,
    )


class MatrixFactorization(Hyperparameters):
    """Biased matrix factorisation ``mu + b_u + b_i + p_u . q_i`` fitted to explicit ratings by
    full-batch Adam on the squared error with L2 weight decay on the factors and biases.

    Args:
        n_factors: latent dimension.
        epochs: full-batch Adam steps.
        lr: Adam's learning rate.
        weight_decay: L2 penalty per rating on the factors and biases.
        seed: seeds the factors' initialisation.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "n_factors": [Interval(int, 1, None)], "epochs": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")], "weight_decay": [Interval(float, 0, None)],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(self, *, n_factors: int = 16, epochs: int = 200, lr: float = 0.05, weight_decay: float = 0.05, seed: int = 0) -> None:
        self.n_factors = n_factors
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        validate_params("MatrixFactorization", self.get_params(), self._parameter_constraints)

    def fit(self, data: Ratings) -> MatrixFactorization:
        """Fit to ``data``; remembers which pairs are rated (they are never recommended)."""
        if not isinstance(data, Ratings):
            raise DataError(f"MatrixFactorization.fit: data must be a Ratings set, got {type(data).__name__}")
        if len(data) == 0:
            raise DataError("MatrixFactorization.fit: the rating set is empty")
        g = torch.Generator().manual_seed(int(self.seed))
        k = int(self.n_factors)
        P = (torch.randn(data.n_users, k, generator=g) * 0.1).requires_grad_()
        Q = (torch.randn(data.n_items, k, generator=g) * 0.1).requires_grad_()
        bu = torch.zeros(data.n_users, requires_grad=True)
        bi = torch.zeros(data.n_items, requires_grad=True)
        mu = float(data.ratings.mean())
        u, i, r = data.users, data.items, data.ratings.float()
        opt = torch.optim.Adam([P, Q, bu, bi], lr=float(self.lr))
        lam = float(self.weight_decay)
        for _ in range(int(self.epochs)):
            opt.zero_grad()
            pu, qi = P[u], Q[i]
            pred = mu + bu[u] + bi[i] + (pu * qi).sum(1)
            loss = ((pred - r) ** 2).mean() + lam * ((pu**2).sum(1) + (qi**2).sum(1) + bu[u] ** 2 + bi[i] ** 2).mean()
            loss.backward()
            opt.step()
        self.mu_, self.P_, self.Q_ = mu, P.detach(), Q.detach()
        self.bu_, self.bi_ = bu.detach(), bi.detach()
        self.rated_ = data.rated()
        return self

    def _check_fitted(self, where: str) -> None:
        if not hasattr(self, "P_"):
            raise ConfigError(f"MatrixFactorization.{where}: call fit(ratings) first")

    def _users(self, users: Any, where: str) -> Tensor:
        n = self.P_.shape[0]
        if users is None:
            return torch.arange(n)
        t = torch.as_tensor(users)
        if t.dim() != 1 or t.dtype not in (torch.int64, torch.int32) or (len(t) and (int(t.min()) < 0 or int(t.max()) >= n)):
            raise DataError(f"MatrixFactorization.{where}: users must be a 1-D int tensor of indices in [0, {n})")
        return t.long()

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        """Predicted ratings of the (user, item) pairs (unclipped)."""
        self._check_fitted("predict")
        u, i = torch.as_tensor(users).long(), torch.as_tensor(items).long()
        return self.mu_ + self.bu_[u] + self.bi_[i] + (self.P_[u] * self.Q_[i]).sum(-1)

    def scores(self, users: Tensor | None = None) -> Tensor:
        """Predicted ratings ``(len(users), n_items)`` (all users when None)."""
        self._check_fitted("scores")
        u = self._users(users, "scores")
        return self.mu_ + self.bu_[u, None] + self.bi_[None, :] + self.P_[u] @ self.Q_.T

    def top_k(self, k: int, users: Tensor | None = None) -> Tensor:
        """The ``k`` highest-predicted items each user has not rated, ``(len(users), k)``."""
        self._check_fitted("top_k")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.Q_.shape[0]:
            raise ConfigError(f"MatrixFactorization.top_k: k must be an int in [1, {self.Q_.shape[0]}], got {k!r}")
        u = self._users(users, "top_k")
        s = self.scores(u).masked_fill(self.rated_[u], -math.inf)
        return s.topk(k, dim=1).indices

    def hit_ratio_at(self, k: int, target_item: int, users: Tensor | None = None) -> float:
        """Share of ``users`` who have not rated ``target_item`` that get it in their top-``k``
        (the genuine users are the ones to pass; all users when None)."""
        self._check_fitted("hit_ratio_at")
        n_items = self.Q_.shape[0]
        if isinstance(target_item, bool) or not isinstance(target_item, int) or not 0 <= target_item < n_items:
            raise ConfigError(f"hit_ratio_at: target_item must be an item index in [0, {n_items}), got {target_item!r}")
        u = self._users(users, "hit_ratio_at")
        u = u[~self.rated_[u, target_item]]
        if len(u) == 0:
            return 0.0
        return float((self.top_k(k, u) == target_item).any(1).float().mean())


def prediction_shift(before: MatrixFactorization, after: MatrixFactorization, target_item: int, users: Tensor) -> float:
    """Mean change of the target item's predicted rating (clipped to 1-5) over ``users`` who had
    not rated it, from the recommender ``before`` the attack to the one ``after``."""
    u = torch.as_tensor(users).long()
    u = u[~before.rated_[u, target_item]]
    if len(u) == 0:
        return 0.0
    t = torch.full_like(u, int(target_item))
    return float((after.predict(u, t).clamp(R_MIN, R_MAX) - before.predict(u, t).clamp(R_MIN, R_MAX)).mean())
