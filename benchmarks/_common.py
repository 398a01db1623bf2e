"""Shared helpers for the benchmark scripts: MNIST test data, the shared pretrained models,
interleaved timing with medians, markdown tables and JSON output.

Data and models are read by path from the ``shared`` folder beside the checkout
(``../shared``; override with ``GAUNTLET_SHARED=/path/to/shared``). Nothing is downloaded.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import platform
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def shared_dir() -> Path:
    p = Path(os.environ.get("GAUNTLET_SHARED", ROOT.parent / "shared"))
    if not p.is_dir():
        raise SystemExit(f"shared data folder {p} not found; set GAUNTLET_SHARED=/path/to/shared")
    return p


# ----------------------------------------------------------------------------------------------
# data
def _read_idx(path: Path) -> Tensor:
    """A (gzipped) IDX file as a uint8 tensor (tiny local reader, used when gauntlet.data has none)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise SystemExit(f"{path}: not an IDX file of uint8 (magic {raw[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8)
    return data.reshape(shape)


def mnist_test(n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` MNIST test images as float32 ``(n, 1, 28, 28)`` in [0, 1] and int64 labels.

    Uses ``gauntlet.data.load`` on the IDX folder when that loader exists and returns the expected
    tensors, else a small local IDX reader.
    """
    folder = shared_dir() / "data" / "mnist"
    x = y = None
    try:
        from gauntlet.data import load  # type: ignore[attr-defined]

        ds = load(str(folder), split="test")
        if tuple(ds.x.shape[1:]) == (1, 28, 28) and ds.x.dtype == torch.float32 and ds.x.shape[0] == 10000:
            x, y = ds.x, ds.y.to(torch.int64)
    except Exception:  # loader absent or with another signature: fall back to the local reader
        x = y = None
    if x is None or y is None:
        imgs = _read_idx(folder / "t10k-images-idx3-ubyte.gz")
        labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
        x = imgs.unsqueeze(1).to(torch.float32) / 255.0
        y = labels.to(torch.int64)
    if n is not None:
        x, y = x[:n], y[:n]
    return x.contiguous(), y.contiguous()


# ----------------------------------------------------------------------------------------------
# models
MODELS: dict[str, tuple[str, str]] = {
    # name: (file under shared/models, architecture in gauntlet.models.zoo)
    "lenet5_clntrained": ("advertorch_lenet5_mnist_clntrained.pt", "lenet5"),
    "lenet5_advtrained": ("advertorch_lenet5_mnist_advtrained.pt", "lenet5"),
    "smallcnn_trades": ("trades_smallcnn_mnist.pt", "smallcnn"),
    "wong_kolter_small": ("wongkolter_convex_mnist_small.pt", "wong_kolter_small"),
}


def load_model(name: str) -> nn.Module:
    """A shared pretrained MNIST model (eval mode, CPU), weights loaded with ``strict=True``."""
    from gauntlet.models.zoo import ARCHITECTURES

    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    fname, arch = MODELS[name]
    net = ARCHITECTURES[arch]()
    state = torch.load(shared_dir() / "models" / fname, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------------
# timing
def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any]]:
    """Time every function ``repeats`` times, interleaved (A B C … A B C …), after ``warmup``
    untimed rounds. Returns the wall times and the CPU times (``time.process_time``: this
    process's own CPU seconds, much less sensitive than wall time to other processes competing
    for the cores) per name, and the last return value per name.

    Interleaving spreads background load evenly over the methods; report medians.
    """
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, Any] = {}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            last[name] = out
            if r >= warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
            if progress is not None:
                tag = "warmup" if r < warmup else f"{r - warmup + 1}/{repeats}"
                progress(f"[{tag}] {name}: {dt:.3f}s wall, {dc:.3f}s cpu")
    return wall, cpu, last


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """Relative spread of the timings: (max - min) / median."""
    m = median(xs)
    return (max(xs) - min(xs)) / m if m > 0 else 0.0


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-round ratios a[i] / b[i] (rounds are interleaved, so neighbours share the load)."""
    return [x / y for x, y in zip(a, b)]


# ----------------------------------------------------------------------------------------------
# output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(list(headers)), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def environment() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg": list(load) if load else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_json(name: str, obj: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return path
