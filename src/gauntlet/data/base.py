"""The ``Dataset`` every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gauntlet.errors import ConfigError
from gauntlet.models.base import InputSpec


def too_many(n: int, what: str, available: int) -> str:
    """The one message for a subset larger than its data: ``n`` samples asked of ``what``."""
    return f"n={n} but {what} has {available} samples; use n <= {available} or omit n"


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32, ``(N, ...)``, inside ``spec.bounds``), labels ``y`` (int64, ``(N,)``)."""

    x: Tensor
    y: Tensor
    spec: InputSpec
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, n: int | None, seed: int = 0) -> Dataset:
        """A random subset of ``n`` samples (all when ``n`` is None or ``len``), reproducible by seed.

        ``n`` larger than the dataset is a :class:`~gauntlet.errors.ConfigError`, never a silent cap.
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"Dataset.subset: n must be a positive int or None, got {n!r}")
        if n is not None and n > len(self):
            raise ConfigError(f"Dataset.subset: {too_many(n, self.name, len(self))}")
        if n is None or n == len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return Dataset(self.x[idx], self.y[idx], self.spec, self.num_classes, self.name)
