"""scikit-learn's bundled 8×8 digits (no download)."""

from __future__ import annotations

import torch

from gauntlet.data.base import Dataset
from gauntlet.models.base import InputSpec


def load_digits(split: str = "test", test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """The 1797 bundled 8×8 digit images as ``(N, 1, 8, 8)`` floats in [0, 1].

    ``split`` is ``"train"``, ``"test"`` or ``"all"``; the split is a fixed stratified shuffle
    (``seed``), so train and test never overlap.
    """
    from sklearn.datasets import load_digits as _load  # type: ignore[import-untyped]  # scikit-learn ships no type information
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]  # scikit-learn ships no type information

    from gauntlet.errors import ConfigError

    if split not in ("train", "test", "all"):
        raise ConfigError(f"load_digits: split must be 'train', 'test' or 'all', got {split!r}")
    bunch = _load()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if split != "all":
        idx = torch.arange(len(y)).numpy()
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
        sel = torch.as_tensor(tr if split == "train" else te)
        x, y = x[sel], y[sel]
    return Dataset(x, y, InputSpec((1, 8, 8), torch.float32, (0.0, 1.0)), 10, f"digits-{split}")
