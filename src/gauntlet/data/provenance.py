"""Data provenance: a manifest of a dataset's files and rows, and exactly what changed since.

:func:`build_manifest` walks a file or a folder (recursively, in sorted order, paths relative to
it, symbolic links recorded but never followed) and records every file's size and SHA-256.  For
array files — ``.npy``, ``.npz``, ``.pt``/``.pth`` tensors (read with ``weights_only=True``),
IDX files (MNIST, raw or ``.gz``) and CIFAR-10 batches (the restricted unpickler of
:mod:`gauntlet.data.cifar`) — it also records the SHA-256 of every row (the bytes of
``array[i]``, little-endian), so :func:`verify_manifest` can name each changed, added or
removed row, not just the file.  The dataset hash is the SHA-256 over the sorted file entries
(path, size and hash of each file, path and target of each link): two folders with the same
dataset hash hold the same bytes under the same names.

Rows are compared by position: row ``i`` changed when its hash differs, rows past the old count
were added, rows past the new count were removed.  A file whose bytes are the same as in the
manifest is not parsed again, so verifying unchanged data costs one read of each file.

The manifest is JSON::

    {"format": "gauntlet-data-manifest", "format_version": 1, "algorithm": "sha256",
     "kind": "folder", "root": "mnist", "created_at": "...", "dataset_sha256": "...",
     "files": [{"path": "train-images-idx3-ubyte.gz", "size": 9912422, "sha256": "...",
                "format": "idx", "arrays": [{"name": "", "dtype": "uint8",
                                             "shape": [60000, 28, 28], "rows": ["<hex>", ...]}]},
               {"path": "latest", "link": "v2"}]}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.errors import ConfigError, DataError

__all__ = [
    "ALGORITHM",
    "FORMAT",
    "FORMAT_VERSION",
    "Verification",
    "build_manifest",
    "dataset_sha256",
    "load_manifest",
    "manifest_sha256",
    "parse_manifest",
    "row_hashes",
    "verify_manifest",
    "write_manifest",
]

FORMAT = "gauntlet-data-manifest"
FORMAT_VERSION = 1
ALGORITHM = "sha256"

_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
_CIFAR_FILES = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"}


# ------------------------------------------------------------------------------------------------
# walking and hashing
def _walk(root: Path, exclude: set[Path]) -> list[tuple[str, Path, bool]]:
    """``(relative POSIX path, path, is_link)`` of every regular file and symbolic link under
    ``root``, sorted by path; links are not followed, other special files are skipped."""
    if not root.is_dir():
        return [(root.name, root, False)]
    found: list[tuple[str, Path, bool]] = []

    def scan(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as err:
            raise DataError(f"{folder}: cannot list the folder ({err.strerror or err})") from None
        for d in entries:
            r = rel + d.name
            if d.is_symlink():
                found.append((r, Path(d.path), True))
            elif d.is_dir(follow_symlinks=False):
                scan(d.path, r + "/")
            elif d.is_file(follow_symlinks=False) and Path(d.path).resolve() not in exclude:
                found.append((r, Path(d.path), False))

    scan(str(root), "")
    return sorted(found, key=lambda t: t[0])


def _file_sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return size, h.hexdigest()


def row_hashes(array: Any) -> list[str]:
    """The SHA-256 (hex) of each row ``array[i]``: its bytes, C order, little-endian.

    A 0-d array counts as one row.  Accepts NumPy arrays and torch tensors (any dtype, bfloat16
    included: hashed as its raw bytes).
    """
    if not isinstance(array, np.ndarray):  # a torch tensor: its bytes, whatever its dtype
        import torch

        t = array.detach().cpu().contiguous()
        shape = tuple(t.shape)
        flat = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        return _rows_of_bytes(flat, shape[0] if shape else None)
    a = array
    dt = a.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(dt.newbyteorder("<"))
    a = np.ascontiguousarray(a)
    return _rows_of_bytes(a.reshape(-1).view(np.uint8), a.shape[0] if a.ndim else None)


def _rows_of_bytes(flat: np.ndarray, n: int | None) -> list[str]:
    mv = memoryview(flat)  # type: ignore[arg-type]  # an ndarray is a buffer
    sha = hashlib.sha256
    if n is None:
        return [sha(mv).hexdigest()]
    if n == 0:
        return []
    rb = len(mv) // n
    return [sha(mv[i * rb : (i + 1) * rb]).hexdigest() for i in range(n)]


def _format_of(path: Path) -> str | None:
    """The array format a file name says it holds (the formats :func:`gauntlet.data.load` reads)."""
    name = path.name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".pt", ".pth")):
        return "torch"
    if "idx" in name and ("ubyte" in name or name.endswith((".idx", ".gz"))):
        return "idx"
    if path.name in _CIFAR_FILES:
        return "cifar"
    return None


def _torch_arrays(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in obj:
            yield from _torch_arrays(obj[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _torch_arrays(v, f"{prefix}.{i}" if prefix else str(i))


def _read_arrays(path: Path, fmt: str) -> list[tuple[str, Any]]:
    """``(name, array)`` of every array in an array file, sorted by name; raises on an unreadable file."""
    if fmt == "npy":
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
        if not isinstance(arr, np.ndarray):
            raise ValueError("not a single .npy array")
        return [("", arr)]
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as npz:
            return sorted((k, npz[k]) for k in npz.files)
    if fmt == "idx":
        from gauntlet.data.idx import read_idx

        return [("", read_idx(path))]
    if fmt == "cifar":
        from gauntlet.data.cifar import read_cifar_batch

        x, y = read_cifar_batch(path)
        return [("data", x), ("labels", np.asarray(y))]
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    found = dict(_torch_arrays(obj))
    if not found:
        raise ValueError(f"holds a {type(obj).__name__} with no tensors")
    return sorted(found.items())


def _dtype_name(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return a.dtype.name if a.dtype.fields is None else str(a.dtype)
    return str(a.dtype).removeprefix("torch.")


def _arrays_entry(path: Path, fmt: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The manifest's ``arrays`` of a file, or ``None`` and why it could not be read as one."""
    try:
        arrays = _read_arrays(path, fmt)
        return [
            {"name": name, "dtype": _dtype_name(a), "shape": [int(s) for s in a.shape], "rows": row_hashes(a)}
            for name, a in arrays
        ], None
    except Exception as exc:  # noqa: BLE001 - a file that only looks like an array file is hashed as bytes
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"not read as {fmt} ({msg[:200]}); hashed as bytes only"


def _entry(rel: str, path: Path, is_link: bool, rows: bool) -> dict[str, Any]:
    if is_link:
        return {"path": rel, "link": os.readlink(path)}
    size, sha = _file_sha256(path)
    entry: dict[str, Any] = {"path": rel, "size": size, "sha256": sha}
    fmt = _format_of(path)
    if rows and fmt is not None:
        arrays, note = _arrays_entry(path, fmt)
        entry["format"] = fmt
        if arrays is not None:
            entry["arrays"] = arrays
        else:
            entry["note"] = note
    return entry


def dataset_sha256(entries: list[dict[str, Any]]) -> str:
    """The dataset hash: SHA-256 over the file entries sorted by path (``F path size sha256`` per
    file, ``L path target`` per link, NUL-separated, one per line).  Row hashes are not part of it:
    they follow from the bytes."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e["path"]):
        if "link" in e:
            h.update(f"L\0{e['path']}\0{e['link']}\n".encode())
        else:
            h.update(f"F\0{e['path']}\0{e['size']}\0{e['sha256']}\n".encode())
    return h.hexdigest()


def _root(path: str | Path) -> Path:
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ConfigError(f"data path must be a file or folder path, got {path!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if not p.is_dir() and not p.is_file():
        raise DataError(f"{p}: not a regular file or a folder")
    return p


def build_manifest(
    path: str | Path, *, rows: bool = True, exclude: Sequence[str | Path] | None = None
) -> dict[str, Any]:
    """The manifest of a file or folder (see the module docstring).

    Args:
        path: a file, or a folder walked recursively (sorted, relative paths, links not followed).
        rows: also hash every row of the array files (``False``: file hashes only, faster).
        exclude: files not to list (e.g. the manifest being written inside the folder).
    """
    root = _root(path)
    skip = {Path(p).expanduser().resolve() for p in exclude or []}
    files = [_entry(rel, p, link, rows) for rel, p, link in _walk(root, skip)]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algorithm": ALGORITHM,
        "kind": "folder" if root.is_dir() else "file",
        "root": root.resolve().name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset_sha256": dataset_sha256(files),
        "files": files,
    }


def manifest_sha256(path: str | Path) -> str:
    """The dataset hash of a file or folder (what ``gauntlet data hash`` prints), without row hashes."""
    root = _root(path)
    return dataset_sha256([_entry(rel, p, link, False) for rel, p, link in _walk(root, set())])


def write_manifest(manifest: dict[str, Any], out: str | Path) -> Path:
    """Write ``manifest`` as JSON to ``out`` atomically (a temporary file renamed into place)."""
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise DataError(f"{out}: folder {str(out.parent)!r} does not exist; create it or pick another --out")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, separators=(",", ":"))
            f.write("\n")
        os.replace(tmp, out)
    except OSError as e:
        raise DataError(f"{out}: cannot write the manifest ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# ------------------------------------------------------------------------------------------------
# reading and checking a manifest
def _bad(where: str, what: str) -> DataError:
    return DataError(f"{where}: {what}; make a manifest with gauntlet data hash PATH --out FILE")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_manifest(obj: Any, where: str = "manifest") -> dict[str, Any]:
    """Check a manifest's structure and its own dataset hash; raise a one-line :class:`DataError`
    naming the first problem."""
    if not isinstance(obj, dict):
        raise _bad(where, f"not a gauntlet data manifest (a JSON {type(obj).__name__}, not an object)")
    if obj.get("format") != FORMAT:
        raise _bad(where, f"not a gauntlet data manifest (format {obj.get('format')!r}, expected {FORMAT!r})")
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(where, f"format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{where}: manifest format version {version} is newer than this gauntlet reads ({FORMAT_VERSION}); upgrade gauntlet"
        )
    if obj.get("algorithm") != ALGORITHM:
        raise _bad(where, f"hash algorithm {obj.get('algorithm')!r} is not supported (only {ALGORITHM!r})")
    if obj.get("kind") not in ("file", "folder"):
        raise _bad(where, f"kind must be 'file' or 'folder', got {obj.get('kind')!r}")
    files = obj.get("files")
    if not isinstance(files, list):
        raise _bad(where, "'files' must be a list of file entries")
    seen: set[str] = set()
    for i, e in enumerate(files):
        at = f"{where}: files[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not e["path"]:
            raise _bad(at, "each file entry needs a 'path' string")
        if e["path"] in seen:
            raise _bad(at, f"path {e['path']!r} is listed twice")
        seen.add(e["path"])
        if "link" in e:
            if not isinstance(e["link"], str):
                raise _bad(at, "'link' must be the link's target string")
            continue
        if not _is_count(e.get("size")) or not isinstance(e.get("sha256"), str) or not _HEX.fullmatch(e["sha256"]):
            raise _bad(at, f"{e['path']!r} needs a byte 'size' and a 64-hex-digit 'sha256'")
        arrays = e.get("arrays")
        if arrays is None:
            continue
        if not isinstance(arrays, list):
            raise _bad(at, "'arrays' must be a list")
        for j, a in enumerate(arrays):
            aw = f"{at}.arrays[{j}]"
            if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not isinstance(a.get("dtype"), str):
                raise _bad(aw, "each array needs a 'name' and a 'dtype' string")
            shape, rows = a.get("shape"), a.get("rows")
            if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
                raise _bad(aw, "'shape' must be a list of sizes")
            if not isinstance(rows, list) or not all(isinstance(r, str) and _HEX.fullmatch(r) for r in rows):
                raise _bad(aw, "'rows' must be a list of 64-hex-digit row hashes")
            if len(rows) != (shape[0] if shape else 1):
                raise _bad(aw, f"holds {len(rows)} row hashes for shape {shape}")
    if obj.get("dataset_sha256") != dataset_sha256(files):
        raise DataError(
            f"{where}: its dataset_sha256 does not match its file entries: the manifest was edited or corrupted; "
            "hash the data again"
        )
    return obj


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a manifest file (one-line :class:`DataError` when missing or malformed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: manifest file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read the manifest ({getattr(e, 'strerror', None) or e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(str(p), f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return parse_manifest(obj, str(p))


# ------------------------------------------------------------------------------------------------
# verifying
@dataclass
class ArrayChange:
    """How one array of a changed file differs: rows by position, dtype and shape."""

    name: str
    dtype: tuple[str | None, str | None]
    shape: tuple[list[int] | None, list[int] | None]
    rows_changed: list[int] = field(default_factory=list)
    rows_added: list[int] = field(default_factory=list)
    rows_removed: list[int] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.shape[0] is None:
            return "added"
        if self.shape[1] is None:
            return "removed"
        return "changed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "dtype": list(self.dtype),
            "shape": list(self.shape),
            "rows_changed": self.rows_changed,
            "rows_added": self.rows_added,
            "rows_removed": self.rows_removed,
        }


@dataclass
class FileChange:
    """A file listed in both the manifest and the data whose bytes (or link target) differ."""

    path: str
    old: dict[str, Any]
    new: dict[str, Any]
    arrays: list[ArrayChange] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        keys = ("size", "sha256", "link")
        return {
            "path": self.path,
            "old": {k: self.old[k] for k in keys if k in self.old},
            "new": {k: self.new[k] for k in keys if k in self.new},
            "arrays": [a.to_dict() for a in self.arrays],
            "note": self.note,
        }


def _brief(e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: e[k] for k in ("path", "size", "sha256", "link") if k in e}
    if "arrays" in e:
        out["rows"] = {a["name"]: len(a["rows"]) for a in e["arrays"]}
    return out


@dataclass
class Verification:
    """What :func:`verify_manifest` found: files added, removed and changed (with their rows)."""

    path: str
    expected_sha256: str
    actual_sha256: str
    files: int
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[FileChange] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def row_counts(self) -> dict[str, int]:
        arrays = [a for f in self.changed for a in f.arrays]
        return {
            "changed": sum(len(a.rows_changed) for a in arrays),
            "added": sum(len(a.rows_added) for a in arrays),
            "removed": sum(len(a.rows_removed) for a in arrays),
        }

    def summary(self) -> str:
        if self.same:
            return f"{self.path}: same as the manifest ({self.files} files, dataset sha256 {self.actual_sha256[:12]})"
        rows = self.row_counts()
        row_text = ", ".join(f"{n} row{'s' if n != 1 else ''} {k}" for k, n in rows.items() if n)
        return (
            f"{self.path}: differs from the manifest: {len(self.changed)} changed, {len(self.added)} added, "
            f"{len(self.removed)} removed of {self.files} files" + (f"; {row_text}" if row_text else "")
            + f" (dataset sha256 {self.expected_sha256[:12]} -> {self.actual_sha256[:12]})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "same": self.same,
            "expected_sha256": self.expected_sha256,
            "actual_sha256": self.actual_sha256,
            "files": self.files,
            "added": self.added,
            "removed": self.removed,
            "changed": [c.to_dict() for c in self.changed],
            "rows": self.row_counts(),
            "summary": self.summary(),
        }

    def lines(self) -> list[str]:
        """One line per changed, added or removed file, with its rows, for the terminal."""
        out: list[str] = []
        for c in self.changed:
            if "link" in c.old or "link" in c.new:
                what = f"link {c.old.get('link', '(file)')!r} -> {c.new.get('link', '(file)')!r}"
            else:
                what = f"{c.old['size']} -> {c.new['size']} bytes"
            out.append(f"changed  {c.path}  ({what})")
            for a in c.arrays:
                label = f"array {a.name!r}" if a.name else "rows"
                if a.status != "changed":
                    n = (a.shape[1] if a.status == "added" else a.shape[0]) or []
                    out.append(f"  {label} {a.status} (shape {n})")
                    continue
                if a.dtype[0] != a.dtype[1] or (a.shape[0] or [])[1:] != (a.shape[1] or [])[1:]:
                    out.append(f"  {label}: dtype {a.dtype[0]} -> {a.dtype[1]}, shape {a.shape[0]} -> {a.shape[1]}")
                for kind, idx in (("changed", a.rows_changed), ("added", a.rows_added), ("removed", a.rows_removed)):
                    if idx:
                        out.append(f"  {label if a.name else 'rows'} {kind} ({len(idx)}): {_ranges(idx)}")
            if not c.arrays and c.note:
                out.append(f"  {c.note}")
        out += [f"added    {e['path']}" for e in self.added]
        out += [f"removed  {e['path']}" for e in self.removed]
        return out


def _ranges(idx: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``1-3, 7``."""
    parts: list[str] = []
    start = prev = idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _diff_arrays(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[ArrayChange]:
    o = {a["name"]: a for a in old}
    n = {a["name"]: a for a in new}
    changes = []
    for name in sorted(set(o) | set(n)):
        a, b = o.get(name), n.get(name)
        if a is None:
            b = n[name]
            changes.append(ArrayChange(name, (None, b["dtype"]), (None, b["shape"]), rows_added=list(range(len(b["rows"])))))
            continue
        if b is None:
            changes.append(ArrayChange(name, (a["dtype"], None), (a["shape"], None), rows_removed=list(range(len(a["rows"])))))
            continue
        ra, rb = a["rows"], b["rows"]
        common = min(len(ra), len(rb))
        ch = ArrayChange(
            name, (a["dtype"], b["dtype"]), (a["shape"], b["shape"]),
            rows_changed=[i for i in range(common) if ra[i] != rb[i]],
            rows_added=list(range(len(ra), len(rb))),
            rows_removed=list(range(len(rb), len(ra))),
        )
        if ch.rows_changed or ch.rows_added or ch.rows_removed or ch.dtype[0] != ch.dtype[1] or ch.shape[0] != ch.shape[1]:
            changes.append(ch)
    return changes


def verify_manifest(
    path: str | Path, manifest: dict[str, Any], *, exclude: Sequence[str | Path] | None = None
) -> Verification:
    """Compare a file or folder with a manifest: every added, removed and changed file, and for
    changed array files every changed, added and removed row (by position).

    A file whose size and SHA-256 match the manifest is not parsed.  A manifest whose rows do not
    match the data's shape still verifies (the extra rows are added or removed).  Raises a one-line
    :class:`DataError` for a missing path or a manifest of the other kind (file vs folder).
    """
    root = _root(path)
    manifest = parse_manifest(manifest)
    kind = "folder" if root.is_dir() else "file"
    if manifest["kind"] != kind:
        raise DataError(
            f"{root}: is a {kind} but the manifest describes a {manifest['kind']}; "
            f"verify the {manifest['kind']} it was made from"
        )
    skip = {Path(p).expanduser().resolve() for p in exclude or []}
    expected = {e["path"]: e for e in manifest["files"]}
    result = Verification(str(path), manifest["dataset_sha256"], "", 0)
    actual: list[dict[str, Any]] = []
    for rel, p, is_link in _walk(root, skip):
        new = _entry(rel, p, is_link, rows=False)
        actual.append(new)
        old = expected.pop(rel, None)
        if old is None:
            result.added.append(_brief(new))
            continue
        if all(old.get(k) == new.get(k) for k in ("size", "sha256", "link")):
            continue
        change = FileChange(rel, old, new)
        if "arrays" in old and not is_link:
            fmt = _format_of(p) or str(old.get("format", ""))
            arrays, note = _arrays_entry(p, fmt) if fmt else (None, "not an array file now")
            if arrays is None:
                change.note = f"rows not compared: {note}"
            else:
                change.arrays = _diff_arrays(old["arrays"], arrays)
                if not change.arrays:
                    change.note = "the bytes differ but every array and row is the same (re-encoded or recompressed)"
        result.changed.append(change)
    result.removed = [_brief(e) for e in sorted(expected.values(), key=lambda e: e["path"])]
    result.files = len(actual)
    result.actual_sha256 = dataset_sha256(actual)
    return result
