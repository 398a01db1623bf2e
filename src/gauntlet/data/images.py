"""A folder of image files, one subfolder per class: ``root/<class>/*.png`` (needs Pillow).

Classes are the subfolder names, sorted (numerically when every name is an integer), or the
order given with ``classes=``.  A root whose subfolders are all split names (``train``, ``test``,
``val``…) is read as ``root/<split>/<class>/...``, with the class list taken over all splits so
indices agree between them.  Images come out as ``(N, C, H, W)`` float32 in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.data.arrays import as_dataset
from gauntlet.data.base import Dataset
from gauntlet.errors import ConfigError, DataError

__all__ = ["IMAGE_SUFFIXES", "load_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_DIRS = ("train", "test", "val", "valid", "validation")
_COLORS = ("auto", "grayscale", "rgb")
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("reading image folders needs Pillow: pip install 'gauntlet[images]'") from None
    return Image


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_dir()]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in _visible(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _sort_classes(names: set[str]) -> list[str]:
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _size_arg(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    try:
        h, w = pair
    except (TypeError, ValueError):
        h = w = None
    if not (
        isinstance(h, int) and isinstance(w, int) and not isinstance(h, bool) and not isinstance(w, bool) and h > 0 and w > 0
    ):
        raise ConfigError(f"load_image_folder: size must be a positive int or (height, width), got {size!r}")
    return h, w


def _read(path: Path, color: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB)."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            im.load()
            gray = im.mode in _GRAY_MODES
            if im.mode.startswith("I;16"):  # 16-bit grayscale: keep the top 8 bits (PIL would clip)
                im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
            want = "L" if color == "grayscale" or (color == "auto" and gray) else "RGB"
            if im.mode != want:
                im = im.convert(want)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e})") from None


def load_image_folder(
    root: str | Path,
    *,
    split: str = "test",
    color: str = "auto",
    size: int | tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Images under ``root/<class>/`` (or ``root/<split>/<class>/``) with their class indices.

    Args:
        split: with split subfolders, which one (``"all"`` reads every one); otherwise ignored.
        color: ``"grayscale"`` (C=1), ``"rgb"`` (C=3), or ``"auto"``: grayscale when every image is.
        size: resize every image to ``(height, width)`` (an int for square); without it all images
            must share one size.
        classes: class names in label order; default the sorted subfolder names.
    """
    root = Path(root)
    if color not in _COLORS:
        raise ConfigError(f"load_image_folder: color must be one of {', '.join(_COLORS)}, got {color!r}")
    hw = _size_arg(size)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    subdirs = _subdirs(root)
    if not subdirs:
        if _images_in(root):
            raise DataError(f"{root}: images must sit in one subfolder per class (root/<class>/*.png)")
        raise DataError(f"{root}: empty folder: no class subfolders of images")
    if all(d.name.lower() in SPLIT_DIRS for d in subdirs):
        by_name = {d.name.lower(): d for d in subdirs}
        if split == "all":
            split_dirs = [by_name[n] for n in sorted(by_name)]
        elif split in by_name:
            split_dirs = [by_name[split]]
        else:
            raise DataError(f"{root}: no {split!r} subfolder; it holds {sorted(by_name)}")
        found = {c.name for d in subdirs for c in _subdirs(d)}
    else:
        split_dirs = [root]
        found = {d.name for d in subdirs}
    if classes is None:
        names = _sort_classes(found)
    else:
        names = [str(c) for c in classes]
        extra = sorted(found - set(names))
        if extra:
            raise DataError(f"{root}: class folders {extra} are not in classes={names}")
    if len(names) < 2:
        raise DataError(f"{root}: only one class folder {names}; pass classes= with the full class list")
    index = {n: i for i, n in enumerate(names)}

    files: list[tuple[Path, int]] = []
    for d in split_dirs:
        for c in sorted(_subdirs(d), key=lambda c: index[c.name]):
            imgs = _images_in(c)
            if not imgs:
                raise DataError(f"{c}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend((p, index[c.name]) for p in imgs)
    if not files:
        raise DataError(f"{root}: empty folder: no images in its class subfolders")

    arrays: list[np.ndarray] = []
    for p, _ in files:
        a = _read(p, color, hw)
        if arrays and a.shape[:2] != arrays[0].shape[:2]:
            h0, w0 = arrays[0].shape[:2]
            raise DataError(
                f"{p}: image is {a.shape[0]}x{a.shape[1]} but {files[0][0]} is {h0}x{w0}; "
                "pass size=(height, width) to resize all images"
            )
        arrays.append(a)
    if any(a.ndim == 3 for a in arrays):  # mixed grayscale and colour in "auto": grey becomes RGB
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    x = np.stack(arrays)
    y = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    name = root.name if split_dirs == [root] else f"{root.name}-{split}"
    return as_dataset(x, y, name=name, x_source=str(root), num_classes=len(names), channels_last=x.ndim == 4)
