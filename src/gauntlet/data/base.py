"""The ``Dataset`` every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gauntlet.models.base import InputSpec


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
        """A random subset of ``n`` samples (all when ``n`` is None or ≥ len), reproducible by seed."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return Dataset(self.x[idx], self.y[idx], self.spec, self.num_classes, self.name)
