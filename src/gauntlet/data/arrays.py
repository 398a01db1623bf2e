"""NumPy arrays as datasets: ``.npz`` files, ``.npy`` files, and the checks every loader shares.

:func:`as_dataset` is the single place where raw arrays become a :class:`Dataset`: it checks
dtypes, shapes, sample counts, non-finite values, bounds and label range, and raises
:class:`~gauntlet.errors.DataError` with a one-line message that names the offending file.

Value convention: ``uint8`` arrays are pixel intensities and are scaled to ``[0, 1]`` (``v / 255``);
every other numeric array is taken as it is and must already lie inside ``bounds``
(``(0, 1)`` unless given).  A 3-D array ``(N, H, W)`` is a stack of grayscale images and gains a
channel axis, ``(N, 1, H, W)``; ``channels_last=True`` turns ``(N, H, W, C)`` into ``(N, C, H, W)``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gauntlet._validation import parse_bounds
from gauntlet.data.base import Dataset
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import InputSpec

__all__ = ["as_dataset", "concat", "load_npy", "load_npz"]

PathLike = str | Path


def _check_num_classes_arg(owner: str, num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"{owner}: num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def _inputs(x: np.ndarray, source: str, bounds: tuple[float, float], channels_last: bool) -> np.ndarray:
    """``x`` as float32 ``(N, ...)`` inside ``bounds``, or a DataError naming ``source``."""
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        kind = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{source}: inputs must be a numeric array (uint8 pixels or floats), got {kind}")
    if x.ndim < 2:
        raise DataError(
            f"{source}: inputs must have shape (N, ...) with one row per sample, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{source}: holds no samples (shape {tuple(x.shape)})")
    if channels_last:
        if x.ndim != 4:
            raise DataError(f"{source}: channels_last needs (N, H, W, C) images, got shape {tuple(x.shape)}")
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 3:
        x = x[:, None]
    if x.dtype == np.uint8:
        out = x.astype(np.float32, order="C")
        out /= np.float32(255.0)
    else:
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                bad = int(x.size - np.count_nonzero(finite))
                first = np.unravel_index(int(np.argmin(finite.reshape(-1))), x.shape)[0]
                raise DataError(
                    f"{source}: inputs hold {bad} NaN/inf values (first in sample {int(first)}); "
                    "clean or drop those samples"
                )
        out = np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = bounds
    vmin, vmax = float(out.min()), float(out.max())
    if vmin < lo or vmax > hi:
        if x.dtype == np.uint8:
            hint = "uint8 data are scaled to [0, 1]"
        elif x.dtype.kind == "f":
            hint = "rescale them"
        else:
            hint = f"{x.dtype} data are used as they are (only uint8 is scaled by 1/255)"
        raise DataError(
            f"{source}: input values span [{vmin:g}, {vmax:g}], outside bounds ({lo:g}, {hi:g}); "
            f"{hint}, or pass bounds= that contain them"
        )
    return np.ascontiguousarray(out)


def _labels(y: Any, source: str, num_classes: int | None) -> tuple[np.ndarray, int]:
    """``y`` as int64 ``(N,)`` in ``[0, num_classes)``, and ``num_classes`` (inferred when None)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = "; they look one-hot: pass class indices (argmax over axis 1)" if y.ndim == 2 else ""
        raise DataError(f"{source}: labels must be a 1-D array of class indices, got shape {tuple(y.shape)}{hint}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise DataError(f"{source}: labels must be whole numbers (class indices), found fractional or NaN values")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{source}: labels must be integer class indices, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: label {int(y.min())} is negative; labels must be class indices 0, 1, 2, ...")
    if y.size and num_classes is not None and y.max() >= num_classes:
        raise DataError(
            f"{source}: label {int(y.max())} is out of range [0, {num_classes - 1}]; "
            "pass num_classes= if the dataset has more classes"
        )
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = max(int(y.max()) + 1 if y.size else 0, 2)
    return y, num_classes


def as_dataset(
    x: np.ndarray,
    y: Any,
    *,
    name: str,
    x_source: str,
    y_source: str | None = None,
    bounds: Sequence[float] | None = None,
    num_classes: int | None = None,
    channels_last: bool = False,
) -> Dataset:
    """Check ``x`` / ``y`` (see the module docstring) and wrap them as a :class:`Dataset`.

    ``x_source`` / ``y_source`` name the files the arrays came from; every error message starts
    with the relevant one.  ``num_classes`` defaults to ``max(y) + 1``.
    """
    y_source = y_source or x_source
    lo, hi = parse_bounds(name, (0.0, 1.0) if bounds is None else bounds)
    k = _check_num_classes_arg(name, num_classes)
    xs = _inputs(x, x_source, (lo, hi), channels_last)
    ys, k = _labels(y, y_source, k)
    if xs.shape[0] != ys.shape[0]:
        where = x_source if x_source == y_source else f"{x_source} and {y_source}"
        raise DataError(f"{where}: {xs.shape[0]} inputs but {ys.shape[0]} labels; the counts must match")
    spec = InputSpec(tuple(int(s) for s in xs.shape[1:]), torch.float32, (lo, hi))
    return Dataset(torch.from_numpy(xs), torch.from_numpy(ys), spec, k, name)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _np_load(path: Path) -> Any:
    """``np.load`` without pickles, after checking the file starts like a .npy or .npz (zip) file."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if head != _NPY_MAGIC and head[:4] not in _ZIP_MAGIC:
        raise DataError(f"{path}: is not a .npy/.npz file (no NumPy or zip header; pickles are refused)")
    return np.load(path, allow_pickle=False)


def _np_load_error(path: Path, e: ValueError) -> DataError:
    if "allow_pickle" in str(e) or "pickle" in str(e):
        return DataError(f"{path}: holds an object array, which needs unpickling and is refused; save numeric arrays")
    return DataError(f"{path}: not a readable .npy/.npz file ({e})")


def concat(parts: Sequence[Dataset], source: str | Path) -> Dataset:
    """Datasets of one kind (e.g. the train and test files of one folder) joined in order."""
    first = parts[0]
    if len(parts) == 1:
        return first
    for p in parts[1:]:
        if p.spec.shape != first.spec.shape:
            raise DataError(
                f"{source}: parts hold samples of shape {first.spec.shape} and {p.spec.shape}; they must match"
            )
    k = max(p.num_classes for p in parts)
    x = torch.cat([p.x for p in parts])
    y = torch.cat([p.y for p in parts])
    return Dataset(x, y, first.spec, k, first.name)


def _npz_keys(keys: list[str], split: str, x_key: str | None, y_key: str | None) -> tuple[str, str]:
    if x_key is not None or y_key is not None:
        return x_key or "x", y_key or "y"
    if "x" in keys or "y" in keys:
        return "x", "y"
    if split != "all" and f"x_{split}" in keys:  # the Keras layout: x_train, y_train, x_test, y_test
        return f"x_{split}", f"y_{split}"
    return "x", "y"


def load_npz(
    path: PathLike,
    *,
    split: str = "test",
    x_key: str | None = None,
    y_key: str | None = None,
    bounds: Sequence[float] | None = None,
    num_classes: int | None = None,
    channels_last: bool = False,
) -> Dataset:
    """A ``.npz`` holding inputs ``x`` and labels ``y`` (or ``x_<split>`` / ``y_<split>``, the Keras layout).

    ``x_key`` / ``y_key`` pick other array names.  Object arrays (pickles) are refused.
    """
    path = Path(path)
    try:
        npz = _np_load(path)
        if not hasattr(npz, "files"):
            raise DataError(f"{path}: is a single .npy array, not an .npz archive; use load_npy(..., labels=)")
        with npz:
            keys = list(npz.files)
            xk, yk = _npz_keys(keys, split, x_key, y_key)
            for k, role in ((xk, "inputs"), (yk, "labels")):
                if k not in keys:
                    raise DataError(
                        f"{path}: no array {k!r} ({role}); the file holds {keys}; pass x_key=/y_key= to pick others"
                    )
            x, y = npz[xk], npz[yk]
    except DataError:
        raise
    except ValueError as e:
        raise _np_load_error(path, e) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read .npz file ({type(e).__name__}: {e})") from None
    src = f"{path}[{xk!r}]"
    return as_dataset(
        x,
        y,
        name=path.stem,
        x_source=src,
        y_source=f"{path}[{yk!r}]",
        bounds=bounds,
        num_classes=num_classes,
        channels_last=channels_last,
    )


def _read_npy(path: Path, role: str) -> np.ndarray:
    try:
        arr = _np_load(path)
    except ValueError as e:
        raise _np_load_error(path, e) from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise DataError(f"{path}: is an .npz archive, not a single .npy array of {role}")
    return arr


def _read_labels(labels: Any, x_path: Path) -> tuple[np.ndarray, str]:
    if isinstance(labels, (str, Path)):
        p = Path(labels).expanduser()
        if not p.exists() and not p.is_absolute() and (x_path.parent / p).exists():
            p = x_path.parent / p  # a bare sibling name, resolved next to the inputs file
        if not p.exists():
            raise DataError(f"{p}: labels file not found (given as labels= for {x_path})")
        if p.suffix.lower() in (".txt", ".csv"):
            delimiter = "," if p.suffix.lower() == ".csv" else None
            try:
                return np.loadtxt(p, dtype=np.float64, delimiter=delimiter, ndmin=1), str(p)
            except ValueError as e:
                raise DataError(f"{p}: labels text must hold one class index per line ({e})") from None
        return _read_npy(p, "labels"), str(p)
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy(), "labels="
    return np.asarray(labels), "labels="


def load_npy(
    path: PathLike,
    *,
    labels: Any = None,
    bounds: Sequence[float] | None = None,
    num_classes: int | None = None,
    channels_last: bool = False,
) -> Dataset:
    """A ``.npy`` of inputs, with labels from ``labels=``: a ``.npy`` / ``.txt`` / ``.csv`` file or an array.

    A relative labels path that does not exist from the working directory is looked up beside ``path``.
    """
    path = Path(path)
    if labels is None:
        raise ConfigError(f"load_npy: {path} holds inputs only; pass labels= (a .npy/.txt file or an array)")
    x = _read_npy(path, "inputs")
    y, y_src = _read_labels(labels, path)
    return as_dataset(
        x,
        y,
        name=path.stem,
        x_source=str(path),
        y_source=y_src,
        bounds=bounds,
        num_classes=num_classes,
        channels_last=channels_last,
    )
