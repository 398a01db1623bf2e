"""Thread layouts on this machine: one thread, two intra-op threads, or two one-thread processes
each on half the work (inter-op), for the gradient attacks an audit runs (issue 14).

    .venv/bin/python benchmarks/bench_threads.py [--repeats 3] [--n 256]

Setting: the TRADES SmallCNN and advertorch's clean LeNet5 from ``../shared/models``, the first
``--n`` MNIST test images, L∞ ε = 0.3: PGD-40 (``early_stop=False``: a fixed amount of work) and
APGD-CE (100 steps, ``early_stop=True``, as in an audit).  Layouts:

* ``1 thread``: one process, ``torch.set_num_threads(1)``, the whole batch;
* ``2 threads (intra-op)``: one process, two threads, the whole batch;
* ``2 processes (inter-op)``: two warm worker processes of one thread each, half the batch each
  at once (what an audit's process executor does with two units).

Wall time is what a layout buys (CPU time only says what it costs), so the table gives medians of
wall seconds over interleaved rounds (A B C, A B C, ...) and the speed-up over one thread; the
inter-op time runs from handing out the halves to the last result (worker start-up excluded,
as an audit pays it once).  Results: stdout and ``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, load_model, markdown_table, mnist_test, write_json

import gauntlet as gt

ATTACKS: dict[str, dict[str, Any]] = {
    "pgd-40": {"name": "pgd", "eps": 0.3, "steps": 40, "early_stop": False},
    "apgd-ce": {"name": "apgd_ce", "eps": 0.3, "steps": 100, "early_stop": True},
}
_STATE: dict[str, Any] = {}


def _model(name: str) -> gt.models.TorchModel:
    return gt.models.TorchModel(load_model(name), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))


def _run(model: gt.models.TorchModel, attack: str, x: torch.Tensor, y: torch.Tensor) -> int:
    params = dict(ATTACKS[attack])
    res = gt.attacks.create(params.pop("name"), **params).run(model, x, y, seed=0)
    return int((~res.success).sum())


def _worker_init(model_name: str) -> None:
    torch.set_num_threads(1)
    _STATE["model"] = _model(model_name)


def _worker(job: tuple[str, torch.Tensor, torch.Tensor]) -> int:
    attack, x, y = job
    return _run(_STATE["model"], attack, x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--models", nargs="+", default=["smallcnn_trades", "lenet5_clntrained"])
    args = ap.parse_args()
    x, y = mnist_test(args.n)
    half = args.n // 2
    rows, record = [], {"environment": environment(), "cpus": os.cpu_count(), "cells": {}}
    ctx = mp.get_context("spawn")
    for model_name in args.models:
        model = _model(model_name)
        model.warm_up(x)
        with ctx.Pool(2, initializer=_worker_init, initargs=(model_name,)) as pool:
            pool.map(_worker, [("pgd-40", x[:64], y[:64])] * 2)  # warm the workers (fast paths built)
            for attack in ATTACKS:
                times: dict[str, list[float]] = {"1 thread": [], "2 threads (intra-op)": [], "2 processes (inter-op)": []}
                robust: dict[str, int] = {}
                for _ in range(args.repeats):
                    for layout, spent in times.items():
                        t0 = time.perf_counter()
                        if layout == "2 processes (inter-op)":
                            parts = pool.map(_worker, [(attack, x[:half], y[:half]), (attack, x[half:], y[half:])])
                            robust[layout] = sum(parts)
                        else:
                            torch.set_num_threads(1 if layout == "1 thread" else 2)
                            robust[layout] = _run(model, attack, x, y)
                        spent.append(time.perf_counter() - t0)
                torch.set_num_threads(1)
                base = statistics.median(times["1 thread"])
                for layout, ts in times.items():
                    med = statistics.median(ts)
                    rows.append([model_name, attack, layout, f"{med:.2f}", f"{base / med:.2f}×", f"{robust[layout]}/{args.n}"])
                record["cells"][f"{model_name}/{attack}"] = {"wall": times, "robust": robust}
                print(markdown_table(["model", "attack", "layout", "wall s (median)", "speed-up", "robust"], rows[-3:]), flush=True)
    print()
    print(f"{args.n} MNIST test images, {args.repeats} interleaved rounds, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(markdown_table(["model", "attack", "layout", "wall s (median)", "speed-up", "robust"], rows))
    print(f"\nresults: {write_json('threads.json', record)}")


if __name__ == "__main__":
    main()
