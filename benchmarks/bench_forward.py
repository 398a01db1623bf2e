"""Forward throughput of TorchModel's fast path (a frozen, inference-optimised TorchScript copy of the
network, issue 14) against the eager module.

    .venv/bin/python benchmarks/bench_forward.py [--repeats 15] [--batch 256] [--compile]

Setting: one CPU thread, the shared pretrained MNIST models advertorch LeNet5 (``clntrained``) and
TRADES SmallCNN, the first ``--batch`` (256) MNIST test images as one batch.  Timed, interleaved
(A B C … A B C …), CPU time (``time.process_time``), medians over ``--repeats`` rounds of 5 forward
passes each:

* **eager**: ``net(x)`` under ``torch.no_grad()`` (the reference, what every query cost before);
* **TorchModel fast=False**: ``model.scores(x)`` under ``torch.no_grad()``, eager through the adapter;
* **TorchModel scores / predict**: the same under ``torch.no_grad()`` with the fast path (the
  default): what Square, every black-box attack and every success check pay per query.

The **build** (trace, freeze, MKLDNN conversion and the exactness check on two probe batches)
happens once, on the first query of at least 32 images (smaller batches run eagerly), and is
reported separately (CPU and wall seconds, including that first query of 32).  The **max
abs logit difference** is fast vs eager over the first 1,000 test images.  ``--compile`` adds
``torch.compile(net, dynamic=True)`` (inductor) for comparison: its build is its first two calls.

Must reach (issue 14): fast ≥ 2× eager at batch 256 on LeNet5 and SmallCNN, logits within 1e-5.
Results: a markdown table on stdout and ``benchmarks/results/forward.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

import gauntlet as gt
from gauntlet.models._fast import MIN_BATCH

MODELS = ["lenet5_clntrained", "smallcnn_trades"]
INNER = 5  # forward passes per timed call


def timed_build(fn: Callable[[], Any]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def model_flops(net: torch.nn.Module, x: Tensor) -> float:
    """Floating-point operations of one forward pass on ``x``: 2 per multiply-add of every
    convolution and linear layer (what dominates; activations and pools are not counted)."""
    total = 0.0

    def hook(mod: torch.nn.Module, inp: Any, out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            total += 2.0 * out.numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total += 2.0 * out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return total


def sgemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """This core's float32 matrix-multiply rate through PyTorch (one thread, ``n``×``n``, the best
    of ``repeats`` CPU-timed rounds): the practical ceiling of dense float32 work here."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(4):
            a @ b
        best = min(best, (time.process_time() - c0) / 4)
    return 2.0 * n**3 / best / 1e9


def bench_model(name: str, x: Tensor, x_check: Tensor, repeats: int, use_compile: bool) -> dict[str, Any]:
    net = C.load_model(name)
    fast = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 28, 28))
    slow = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 28, 28), fast=False)

    # one-off build: the first forward-only query of at least MIN_BATCH images traces, freezes,
    # optimises and checks the copy (the time includes that query's own forward pass)
    def first_query() -> None:
        with torch.no_grad():
            fast.scores(x[:MIN_BATCH], count=False)

    build_cpu, build_wall = timed_build(first_query)
    if fast.fast_path != "frozen":
        raise SystemExit(f"{name}: the fast path was not built: {fast.fast_path}")

    with torch.no_grad():
        ref = net(x_check)
        got = fast.scores(x_check, count=False)
    max_diff = float((got - ref).abs().max())
    scale = float(ref.abs().max())

    def loop(f: Callable[[Tensor], Tensor]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.no_grad():
                for _ in range(INNER):
                    out = f(x)
            return out

        return run

    fns: dict[str, Callable[[], Any]] = {
        "eager net(x)": loop(net),
        "TorchModel fast=False": loop(lambda v: slow.scores(v, count=False)),
        "TorchModel scores (fast)": loop(lambda v: fast.scores(v, count=False)),
        "TorchModel predict (fast)": loop(lambda v: fast.predict(v, count=False)),
    }
    compile_build: tuple[float, float] | None = None
    compile_diff: float | None = None
    if use_compile:
        compiled = torch.compile(net, dynamic=True)

        def warm() -> None:
            with torch.no_grad():
                compiled(x)
                compiled(x[:3])

        compile_build = timed_build(warm)
        with torch.no_grad():
            compile_diff = float((compiled(x_check) - ref).abs().max())
        fns["torch.compile (inductor)"] = loop(compiled)

    wall, cpu, _ = C.interleaved(fns, repeats, warmup=1)
    images = INNER * x.shape[0]
    base = C.median(cpu["eager net(x)"])
    rows = {}
    for k in fns:
        med = C.median(cpu[k])
        ratios = C.paired_ratios(cpu["eager net(x)"], cpu[k])
        rows[k] = {
            "cpu_median_s": med,
            "images_per_s": images / med,
            "speedup_vs_eager": base / med,
            "paired_speedup_median": C.median(ratios),
            "spread": C.spread(cpu[k]),
            "cpu_s": cpu[k],
            "wall_s": wall[k],
        }
    flops = model_flops(net, x)
    for row in rows.values():
        row["gflops"] = flops * INNER / row["cpu_median_s"] / 1e9
    if fast._frozen.builds != 1:
        raise SystemExit(f"{name}: the frozen copy was built {fast._frozen.builds} times (expected once)")
    return {
        "model": name,
        "batch": int(x.shape[0]),
        "fast_path": fast.fast_path,
        "build_cpu_s": build_cpu,
        "build_wall_s": build_wall,
        "max_abs_logit_diff": max_diff,
        "gflop_per_batch": flops / 1e9,
        "logit_scale": scale,
        "compile_build_cpu_s": None if compile_build is None else compile_build[0],
        "compile_build_wall_s": None if compile_build is None else compile_build[1],
        "compile_max_abs_logit_diff": compile_diff,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (inductor); slow to build")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x_all, _ = C.mnist_test(1000)
    x = x_all[: args.batch].contiguous()

    results = [bench_model(name, x, x_all, args.repeats, args.compile) for name in MODELS]
    peak = sgemm_gflops()
    table = []
    for r in results:
        for k, row in r["rows"].items():
            table.append([
                r["model"], k, round(row["images_per_s"]), f"{row['speedup_vs_eager']:.2f}×",
                f"{row['paired_speedup_median']:.2f}×", f"{row['spread']:.2f}",
            ])
    print(C.markdown_table(["model", "forward", "images/s (CPU)", "vs eager", "paired", "spread"], table))
    print()
    for r in results:
        fast = r["rows"]["TorchModel scores (fast)"]["paired_speedup_median"]
        ok = fast >= 2.0 and r["max_abs_logit_diff"] <= 1e-5
        extra = ""
        if r["compile_build_cpu_s"] is not None:
            extra = (
                f"; torch.compile build {r['compile_build_cpu_s']:.1f} s CPU ({r['compile_build_wall_s']:.1f} s wall),"
                f" max diff {r['compile_max_abs_logit_diff']:.2g}"
            )
        eager_gf = r["rows"]["eager net(x)"]["gflops"]
        fast_gf = r["rows"]["TorchModel scores (fast)"]["gflops"]
        print(
            f"{r['model']}: {r['gflop_per_batch']:.2f} GFLOP per batch; eager {eager_gf:.0f} GFLOP/s, fast {fast_gf:.0f} GFLOP/s "
            f"= {fast_gf / peak:.0%} of this core's sgemm rate ({peak:.0f} GFLOP/s); 2× eager needs {2 * eager_gf:.0f} GFLOP/s"
        )
        print(
            f"{r['model']}: build {r['build_cpu_s']:.3f} s CPU ({r['build_wall_s']:.3f} s wall), "
            f"max |fast - eager| {r['max_abs_logit_diff']:.2g} (logit scale {r['logit_scale']:.1f}), "
            f"fast scores {fast:.2f}× eager: must reach ≥ 2× and ≤ 1e-5: {'REACHED' if ok else 'NOT REACHED'}{extra}"
        )
    path = C.write_json("forward.json", {"env": C.environment(), "args": vars(args), "sgemm_gflops": peak, "results": results})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
