"""IDX files (MNIST, Fashion-MNIST, KMNIST): gzip-compressed or raw, read with NumPy in one pass.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values row-major.  MNIST images are
``0x00000803`` (uint8, 3 dims: N, rows, cols); labels are ``0x00000801`` (uint8, 1 dim).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from gauntlet.data.arrays import as_dataset, concat
from gauntlet.data.base import Dataset
from gauntlet.errors import ConfigError, DataError

__all__ = ["find_idx_dir", "load_idx", "read_idx"]

_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK = 1 << 26
_PREFIX = {"train": ("train",), "test": ("t10k", "test")}
_SPLITS = ("train", "test", "all")


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _read_exact(f: _Readable, n: int) -> bytes:
    """Up to ``n`` bytes, read in bounded chunks so a lying header cannot force a huge allocation."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file (``.gz`` or raw, detected from the content), native byte order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: IDX file not found")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise DataError(f"{path}: truncated IDX file: {len(magic)} bytes, shorter than the 4-byte magic number")
            code, ndim = magic[2], magic[3]
            if magic[:2] != b"\0\0" or code not in _TYPES or ndim == 0:
                raise DataError(
                    f"{path}: bad IDX magic number 0x{magic.hex()}: not an IDX file "
                    "(MNIST images start 0x00000803, labels 0x00000801)"
                )
            head = f.read(4 * ndim)
            if len(head) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX file: the header ends before its {ndim} dimension sizes")
            shape = struct.unpack(f">{ndim}I", head)
            dtype = np.dtype(_TYPES[code])
            need = math.prod(shape) * dtype.itemsize
            body = _read_exact(f, need)
            if len(body) < need:
                raise DataError(
                    f"{path}: truncated IDX file: header declares shape {shape} ({need} bytes of data) "
                    f"but only {len(body)} bytes follow"
                )
            if f.read(1):
                raise DataError(f"{path}: corrupt IDX file: data continues past the shape {shape} its header declares")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _find(folder: Path, prefix: str, kind: str) -> Path | None:
    """``<prefix>-<kind>-idxN-ubyte`` (or ``.idxN-ubyte``), raw preferred over ``.gz``."""
    dims = "idx3" if kind == "images" else "idx1"
    for stem in (f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"):
        for suffix in ("", ".gz"):
            p = folder / (stem + suffix)
            if p.is_file():
                return p
    return None


def find_idx_dir(folder: Path) -> Path | None:
    """``folder`` or its torchvision-style ``raw`` / ``<Name>/raw`` subfolder, if it holds IDX images."""
    candidates = [folder, folder / "raw"] + ([d / "raw" for d in sorted(folder.iterdir()) if d.is_dir()])
    for d in candidates:
        if d.is_dir() and any(_find(d, p, "images") for ps in _PREFIX.values() for p in ps):
            return d
    return None


def _split_files(folder: Path, split: str) -> tuple[Path, Path]:
    for prefix in _PREFIX[split]:
        images, labels = _find(folder, prefix, "images"), _find(folder, prefix, "labels")
        if images is not None or labels is not None:
            break
    p = _PREFIX[split][0]
    if images is None or labels is None:
        missing = f"{p}-images-idx3-ubyte[.gz]" if images is None else f"{p}-labels-idx1-ubyte[.gz]"
        raise DataError(f"{folder}: no {split} IDX file {missing}; the {split} split needs both images and labels")
    return images, labels


def load_idx(folder: str | Path, *, split: str = "test", num_classes: int = 10) -> Dataset:
    """MNIST-format IDX files from ``folder``: ``(N, 1, H, W)`` float32 in [0, 1] with int64 labels.

    ``split`` picks ``train-*`` or ``t10k-*`` files (``"all"`` concatenates both); files may be
    gzip-compressed or raw.  ``num_classes`` is 10 for MNIST and Fashion-MNIST; labels outside
    ``[0, num_classes)`` are an error.
    """
    folder = Path(folder)
    if split not in _SPLITS:
        raise ConfigError(f"load_idx: split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of IDX files")
    root = find_idx_dir(folder) or folder
    parts = []
    for part in ("train", "test") if split == "all" else (split,):
        img_path, lab_path = _split_files(root, part)
        x, y = read_idx(img_path), read_idx(lab_path)
        if x.ndim != 3:
            raise DataError(f"{img_path}: an IDX images file must hold (N, rows, cols), found shape {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{lab_path}: an IDX labels file must hold (N,), found shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{img_path} holds {x.shape[0]} images but {lab_path.name} holds {y.shape[0]} labels; "
                "the files do not belong together"
            )
        name = f"{folder.name}-{split}"
        parts.append(
            as_dataset(x, y, name=name, x_source=str(img_path), y_source=str(lab_path), num_classes=num_classes)
        )
    return concat(parts, root)
