"""Datasets as tensors plus an input spec; paths in, never downloads."""

from gauntlet.data.base import Dataset
from gauntlet.data.digits import load_digits

__all__ = ["Dataset", "load_digits"]
