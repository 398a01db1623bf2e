"""CIFAR-10 "python version" batches, read with a restricted unpickler.

The official files (``data_batch_1`` … ``data_batch_5``, ``test_batch``) are pickled dicts with
``b"data"`` (uint8, ``(N, 3072)``: 1024 red, then green, then blue values, each row-major 32×32)
and ``b"labels"`` (a list of ints in 0–9).  Unpickling an arbitrary file can run arbitrary code,
so :class:`_BatchUnpickler` resolves only the few NumPy names an array needs; any other global
(``os.system``, ``builtins.eval``, …) is refused with a :class:`~gauntlet.errors.DataError`
before anything is called.
"""

from __future__ import annotations

import importlib
import pickle
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.data.arrays import as_dataset, concat
from gauntlet.data.base import Dataset
from gauntlet.errors import ConfigError, DataError, GauntletError

__all__ = ["find_cifar_dir", "load_cifar10", "read_cifar_batch"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
_SPLITS = ("train", "test", "all")

# (module, name) pairs a pickled NumPy array may reference, across NumPy 1.x/2.x and pickle
# protocols 2-5; each maps to the object NumPy itself would resolve.
_NUMPY_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
}


@cache
def _numpy_internal(module: str, name: str) -> Any:
    """``numpy._core.<module>.<name>`` (NumPy 2) or ``numpy.core.<module>.<name>`` (NumPy 1), without warnings."""
    for pkg in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{pkg}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this NumPy has no {module}.{name}; cannot rebuild pickled arrays")  # pragma: no cover


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` does for the bytes objects Python 3 writes with pickle protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 text")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, bytes and NumPy arrays, and nothing else."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_NAMES:
            return _numpy_internal(*_NUMPY_NAMES[(module, name)])
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):
            return _encode
        raise DataError(
            f"{self._path}: refused to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists, "
            "so this file is not one (it may be malicious)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._path}: refused a persistent-id reference: not a CIFAR batch")


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, path).load()
    except GauntletError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read CIFAR batch ({e})") from None
    except Exception as e:  # noqa: BLE001 - only pickle/NumPy errors can occur: no foreign code is reachable
        raise DataError(f"{path}: not a CIFAR batch: corrupt or truncated pickle ({type(e).__name__}: {e})") from None


def _get(batch: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one batch file: uint8 ``(N, 3, 32, 32)`` and the labels as an array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CIFAR batch file not found")
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}, not a CIFAR batch dict with b'data' and b'labels'")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        keys = [k.decode("latin1") if isinstance(k, bytes) else str(k) for k in batch]
        missing = "data" if data is None else "labels"
        raise DataError(f"{path}: CIFAR batch has no {missing!r} entry; it holds {keys}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: CIFAR 'data' must be a uint8 array of shape (N, 3072), got {got}")
    if isinstance(labels, np.ndarray):
        y = labels
    elif isinstance(labels, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        y = np.asarray(labels, dtype=np.int64)
    else:
        raise DataError(f"{path}: CIFAR 'labels' must be a list of ints, got {type(labels).__name__}")
    return data.reshape(-1, 3, 32, 32), y


def find_cifar_dir(folder: Path) -> Path | None:
    """``folder`` or its ``cifar-10-batches-py`` subfolder, if it holds CIFAR-10 batch files."""
    for d in (folder, folder / "cifar-10-batches-py"):
        if d.is_dir() and any((d / f).is_file() for f in TRAIN_FILES + TEST_FILES):
            return d
    return None


def load_cifar10(folder: str | Path, *, split: str = "test") -> Dataset:
    """CIFAR-10 python batches from ``folder``: ``(N, 3, 32, 32)`` float32 in [0, 1], int64 labels 0–9.

    ``split="train"`` reads ``data_batch_1`` … ``data_batch_5``, ``"test"`` reads ``test_batch``,
    ``"all"`` both; every file of the split must be present.
    """
    folder = Path(folder)
    if split not in _SPLITS:
        raise ConfigError(f"load_cifar10: split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of CIFAR-10 batches")
    root = find_cifar_dir(folder) or folder
    names = {"train": TRAIN_FILES, "test": TEST_FILES, "all": TRAIN_FILES + TEST_FILES}[split]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root}: the CIFAR-10 {split} split needs {', '.join(names)}; missing: {', '.join(missing)}")
    parts = []
    for n in names:
        x, y = read_cifar_batch(root / n)
        src = str(root / n)
        parts.append(as_dataset(x, y, name=f"{folder.name}-{split}", x_source=src, num_classes=10))
    return concat(parts, root)
