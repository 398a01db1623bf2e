"""The shared base of the shilling attacks: fake user profiles that push a target item.

A shilling (profile-injection) attack adds ``n_fake`` fake users to a recommender's ratings.
Every fake profile rates the ``target_item`` the maximum (5, a push attack) and rates
``filler_size`` of the other items (the *filler*, chosen and rated per the attack) so that it
looks like a user and pulls the recommender's view of the target toward real users' tastes.
``inject(ratings)`` returns a :class:`ShillingResult`: the fake profiles, the poisoned rating set
and a bool mask of the fake users (for the ``fake_profiles`` detector's precision/recall).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Constraint, Hyperparameters, Interval, IsNone, validate_params
from gauntlet.errors import ConfigError, DataError

__all__ = ["ShillingAttack", "ShillingResult"]


@dataclass(frozen=True)
class ShillingResult:
    """What a shilling attack produced.

    Attributes:
        fake_users, fake_items, fake_ratings: the fake profiles as triples (fake users indexed
            from 0; in ``poisoned`` they are users ``n_genuine + fake_users``).
        poisoned: the genuine ratings with the fake users appended (a ``Ratings`` set).
        is_fake: bool ``(poisoned.n_users,)``, which users are fake.
        n_genuine: how many users are genuine (the first ``n_genuine`` of ``poisoned``).
        target_item: the pushed item; ``attack``/``params``: the attack's name and hyperparameters.
    """

    fake_users: Tensor
    fake_items: Tensor
    fake_ratings: Tensor
    poisoned: Any
    is_fake: Tensor
    n_genuine: int
    target_item: int
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_fake(self) -> int:
        return int(self.is_fake.sum())

    @property
    def genuine_users(self) -> Tensor:
        return torch.arange(self.n_genuine)


class ShillingAttack(Hyperparameters, abc.ABC):
    """Base class of the push attacks by fake profiles (registry kind ``"shilling"``).

    Args:
        fraction: fake profiles as a share of the genuine users, in (0, 1) (used when ``n_fake``
            is None; at least one profile).
        n_fake: the number of fake profiles (overrides ``fraction``).
        filler_size: share of the items each fake profile rates besides the target, in (0, 1).
        target_item: the item to push; None: it must be passed to ``inject``.
        seed: seeds the attack's own generator (filler choice and ratings).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    kind: ClassVar[str] = "shilling"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    _base_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "fraction": [Interval(float, 0, 1, closed="neither")],
        "n_fake": [Interval(int, 1, None), IsNone()],
        "filler_size": [Interval(float, 0, 1, closed="neither")],
        "target_item": [Interval(int, 0, None), IsNone()],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(
        self, *, fraction: float = 0.01, n_fake: int | None = None, filler_size: float = 0.05, target_item: int | None = None,
        seed: int = 0,
    ) -> None:
        self.fraction = fraction
        self.n_fake = n_fake
        self.filler_size = filler_size
        self.target_item = target_item
        self.seed = seed
        self._validate()

    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), {**self._base_constraints, **self._parameter_constraints})

    def inject(self, ratings: Any, *, target_item: int | None = None) -> ShillingResult:
        """Append the fake profiles to ``ratings`` (a :class:`gauntlet.learning.recommender.Ratings`)."""
        from gauntlet.learning.recommender import Ratings

        t0 = time.perf_counter()
        self._validate()
        if not isinstance(ratings, Ratings):
            raise DataError(f"{self.name}.inject: ratings must be a gauntlet.learning.recommender.Ratings set, got {type(ratings).__name__}")
        if len(ratings) == 0:
            raise DataError(f"{self.name}.inject: the rating set is empty; there is nothing to imitate")
        target = self.target_item if target_item is None else target_item
        if target is None:
            raise ConfigError(f"{self.name}.inject: no target item; pass target_item= to the attack or to inject")
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < ratings.n_items:
            raise ConfigError(f"{self.name}.inject: target_item must be an item index in [0, {ratings.n_items}), got {target!r}")
        target = int(target)
        n_fake = int(self.n_fake) if self.n_fake is not None else max(1, round(float(self.fraction) * ratings.n_users))
        n_filler = min(ratings.n_items - 1, max(1, round(float(self.filler_size) * ratings.n_items)))
        rng = np.random.default_rng(int(self.seed))
        items, values, info = self._profiles(ratings, target, n_fake, n_filler, rng)
        items = np.asarray(items, dtype=np.int64)
        values = np.clip(np.round(np.asarray(values, dtype=np.float64)), 1.0, 5.0)
        # the target column, rated the maximum, in front of every profile
        items = np.concatenate([np.full((n_fake, 1), target), items], axis=1)
        values = np.concatenate([np.full((n_fake, 1), 5.0), values], axis=1)
        if (items[:, 1:] == target).any() or any(len(set(row)) != len(row) for row in items.tolist()):
            raise RuntimeError(f"{self.name}: a fake profile rates an item twice")  # pragma: no cover - invariant
        fu = torch.arange(n_fake).repeat_interleave(items.shape[1])
        fi, fr = torch.from_numpy(items.reshape(-1)), torch.from_numpy(values.reshape(-1)).float()
        poisoned = ratings.append_users(fu, fi, fr, n_fake)
        is_fake = torch.zeros(poisoned.n_users, dtype=torch.bool)
        is_fake[ratings.n_users :] = True
        return ShillingResult(
            fu, fi, fr, poisoned, is_fake, ratings.n_users, target, self.name, self.get_params(), info,
            time.perf_counter() - t0,
        )

    @staticmethod
    def _random_fillers(rng: np.random.Generator, n_items: int, exclude: set[int], n_fake: int, n_filler: int) -> np.ndarray:
        pool = np.array([j for j in range(n_items) if j not in exclude])
        if len(pool) < n_filler:
            raise ConfigError(f"filler_size asks for {n_filler} filler items but only {len(pool)} are left; lower filler_size")
        return np.stack([rng.choice(pool, size=n_filler, replace=False) for _ in range(n_fake)])

    @abc.abstractmethod
    def _profiles(
        self, ratings: Any, target: int, n_fake: int, n_filler: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The fake profiles' items ``(n_fake, m)`` (target excluded) and their ratings."""

    @staticmethod
    def _global_stats(ratings: Any) -> tuple[float, float]:
        r = ratings.ratings.double()
        return float(r.mean()), float(r.std()) if len(r) > 1 else 1.0
