"""``load``: the one front door to every dataset format Gauntlet reads (nothing is downloaded)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gauntlet.data.arrays import as_dataset, load_npy, load_npz
from gauntlet.data.base import Dataset, too_many
from gauntlet.data.cifar import find_cifar_dir, load_cifar10
from gauntlet.data.digits import load_digits
from gauntlet.data.idx import find_idx_dir, load_idx, read_idx
from gauntlet.data.images import IMAGE_SUFFIXES, load_image_folder
from gauntlet.errors import ConfigError, DataError, UnknownNameError

__all__ = ["ACCEPTED", "BUILTIN", "load"]

ACCEPTED = (
    "the builtin 'digits', or a path to: a folder of MNIST/Fashion-MNIST IDX files, "
    "a CIFAR-10 python-batches folder, a .npz with x and y, a .npy with labels=, "
    "or an image folder root/<class>/*.png"
)
# Well-known names that are not bundled: say where their files go instead of "unknown".
_NOT_BUNDLED = {"mnist", "fashion-mnist", "fashion_mnist", "fashionmnist", "kmnist", "cifar10", "cifar-10", "cifar"}


def _digits(_: Path | None, *, split: str = "test", test_fraction: float = 0.25) -> Dataset:
    return load_digits(split, test_fraction=test_fraction)


def _idx_file(path: Path, *, labels: str | Path | None = None, num_classes: int = 10) -> Dataset:
    """One IDX images file plus ``labels=`` (another IDX file)."""
    if labels is None:
        raise ConfigError(f"load: {path} is a single IDX file; pass labels= (its IDX labels file) or load its folder")
    lab = Path(labels)
    if not lab.exists() and not lab.is_absolute():
        lab = path.parent / lab
    x, y = read_idx(path), read_idx(lab)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path} holds {x.shape[0]} images but {lab.name} holds {y.shape[0]} labels")
    return as_dataset(
        x, y, name=path.name.removesuffix(".gz"), x_source=str(path), y_source=str(lab), num_classes=num_classes
    )


BUILTIN: dict[str, Callable[..., Dataset]] = {"digits": _digits}


def _pick(path: Path) -> tuple[str, Callable[..., Dataset]]:
    """The format of an existing path and its loader."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return "a .npz file", load_npz
        if suffix == ".npy":
            return "a .npy file", load_npy
        if "idx" in path.name.lower():
            return "an IDX file", _idx_file
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; accepted: {ACCEPTED}")
    if find_idx_dir(path) is not None:
        return "an IDX folder", load_idx
    if find_cifar_dir(path) is not None:
        return "a CIFAR-10 folder", load_cifar10
    entries = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        raise DataError(f"{path}: empty folder; accepted: {ACCEPTED}")
    if not any((path / e).is_dir() or (path / e).suffix.lower() in IMAGE_SUFFIXES for e in entries):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DataError(f"{path}: holds no dataset files Gauntlet recognises ({shown}); accepted: {ACCEPTED}")
    return "an image folder", load_image_folder


def _options(fn: Callable[..., Dataset]) -> list[str]:
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "split"]


def load(name_or_path: str | Path, *, split: str = "test", n: int | None = None, seed: int = 0, **opts: Any) -> Dataset:
    """Load a dataset by builtin name or path, optionally a reproducible random subset.

    Args:
        name_or_path: ``"digits"`` (bundled 8×8 digits), a folder of MNIST-format IDX files
            (``t10k-images-idx3-ubyte[.gz]`` …), a CIFAR-10 batches folder (``data_batch_1`` …
            ``test_batch``), a ``.npz`` with ``x``/``y`` (or ``x_test``/``y_test``), a ``.npy`` of
            inputs with ``labels=``, or an image folder ``root/<class>/*.png``.
        split: ``"train"``, ``"test"`` or ``"all"`` where the format has splits; single-split
            files ignore it.
        n: keep a random subset of ``n`` samples (all when None); ``seed`` makes it reproducible.
            More than the split holds is a :class:`~gauntlet.errors.ConfigError` naming both counts.
        **opts: format options, e.g. ``bounds=`` / ``num_classes=`` / ``channels_last=`` for
            arrays, ``color=`` / ``size=`` / ``classes=`` for image folders, ``labels=`` for .npy.

    Images come out as ``(N, C, H, W)`` float32 in [0, 1]; uint8 data are scaled by 1/255.
    """
    if not isinstance(split, str):
        raise ConfigError(f"load: split must be a string such as 'test', got {split!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"load: n must be a positive int or None, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"load: seed must be an int, got {seed!r}")
    if not isinstance(name_or_path, (str, Path)):
        raise ConfigError(f"load: expected a dataset name or path, got {type(name_or_path).__name__}")

    key = str(name_or_path).strip().lower()
    path: Path | None = None
    if isinstance(name_or_path, str) and key in BUILTIN:
        kind, fn = f"the builtin {key!r}", BUILTIN[key]
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            if key in _NOT_BUNDLED:
                raise UnknownNameError(
                    f"dataset {name_or_path!r} is not bundled and Gauntlet never downloads: "
                    "pass the folder that holds its files"
                )
            if isinstance(name_or_path, Path) or "/" in key or "\\" in key or path.suffix:
                raise DataError(f"{path}: no such file or folder")
            raise UnknownNameError(f"unknown dataset {name_or_path!r}; accepted: {ACCEPTED}")
        kind, fn = _pick(path)

    accepted = _options(fn)
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        hint = f"accepted: {', '.join(accepted)}" if accepted else "it takes none"
        raise ConfigError(f"load: option {', '.join(unknown)} does not apply to {kind}; {hint}")
    has_split = "split" in inspect.signature(fn).parameters
    if has_split:
        opts["split"] = split
    ds = fn(path, **opts)
    if n is not None and n > len(ds):
        if not has_split or split == "all":
            what = key if path is None else str(path)
        else:  # a path's format may have no splits and ignore split=, so only name what was asked
            what = f"the {split} split of {key}" if path is None else f"{path} (split={split!r})"
        raise ConfigError(f"load: {too_many(n, what, len(ds))}")
    return ds.subset(n, seed)
