"""Datasets as tensors plus an input spec; paths in, never downloads.

:func:`load` is the front door (``load("digits")``, ``load("path/to/mnist", split="test", n=1000)``);
the per-format loaders below are public for callers that know their format.
"""

from gauntlet.data.arrays import as_dataset, load_npy, load_npz
from gauntlet.data.base import Dataset
from gauntlet.data.cifar import load_cifar10, read_cifar_batch
from gauntlet.data.digits import load_digits
from gauntlet.data.idx import load_idx, read_idx
from gauntlet.data.images import load_image_folder
from gauntlet.data.loader import load

__all__ = [
    "Dataset",
    "as_dataset",
    "load",
    "load_cifar10",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_npy",
    "load_npz",
    "read_cifar_batch",
    "read_idx",
]
