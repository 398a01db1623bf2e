"""Audit scaling: wall time grows linearly with the number of examples, peak memory stays flat.

One command::

    .venv/bin/python benchmarks/bench_audit_scaling.py            # n = 250, 1000, 4000
    .venv/bin/python benchmarks/bench_audit_scaling.py --n 250 1000

Each n runs in its own subprocess (one torch thread): a full ``run_audit`` (the ``quick`` preset,
L∞ ε ∈ {0.1, 0.2, 0.3}, batches of 250, an SQLite store, report.json + report.html) of the shared
clean-trained LeNet5 (``models.load(path, arch="lenet5")``) on the first n of a seeded random
subset of the MNIST test set (``data.load("../shared/data/mnist", n=n)``).  A warm-up audit on
50 samples loads every lazy import first; then the peak-RSS counter is reset
(``/proc/self/clear_refs``) and the measured audit runs.  Reported: wall time, time per 1000
samples, peak RSS and its growth over the pre-audit RSS, and the store's size (per sample it keeps
success flags and norms only, never adversarial inputs), plus the median time per unit of each
attack and the fixed overhead (loading, hygiene checks, report): on a shared machine the total
wall time is noisy, while a constant time per unit (units have a fixed size, ``batch_size``) is
what makes the total linear in n.

Memory is measured as resident memory, and glibc's allocator blurs that: by default its mmap
threshold grows with the largest block freed, after which an attack's ever-changing tensor sizes
(early stopping shrinks the working batch) are served from a fragmenting heap whose free pages
stay resident — peak RSS then wanders by up to a few hundred MB from run to run without any data
being held.  The benchmark therefore fixes the threshold at glibc's initial 128 KiB
(``MALLOC_MMAP_THRESHOLD_``) so that RSS tracks live memory; ``--default-malloc`` measures with
the default allocator instead.  (Between units the runner calls ``malloc_trim`` so that, either
way, resident memory does not creep up over a long audit.)

Results go to ``benchmarks/results/audit_scaling.json``; data and models are read from
``../shared`` (override with ``GAUNTLET_SHARED``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "models/advertorch_lenet5_mnist_clntrained.pt"
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, fixed (see the module docstring)


def shared_dir() -> Path:
    p = Path(os.environ.get("GAUNTLET_SHARED", ROOT.parent / "shared"))
    if not (p / MODEL).is_file() or not (p / "data" / "mnist").is_dir():
        raise SystemExit(f"{p / MODEL} or {p / 'data' / 'mnist'} not found; set GAUNTLET_SHARED=/path/to/shared")
    return p


def spec_for(shared: Path, n: int) -> dict[str, Any]:
    return {
        "model": {"path": str(shared / MODEL), "name": "lenet5-clean", "arch": "lenet5"},
        "data": {"path": str(shared / "data" / "mnist"), "split": "test", "n": n, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.2, 0.3]}],
        "attacks": {"preset": "quick"},
        "batch_size": 250,
        "seed": 0,
    }


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux >= 4.0
        return True
    except OSError:
        return False


def child(n: int, workdir: Path) -> dict[str, Any]:
    import resource

    import torch

    torch.set_num_threads(1)
    from gauntlet.audit import load_spec, run_audit

    shared = shared_dir()
    run_audit(load_spec(spec_for(shared, 50)), out_dir=workdir / "warmup", store=f"sqlite:///{workdir / 'warmup.db'}")
    import gc

    gc.collect()
    reset = _reset_peak()
    base_kb = _status_kb("VmRSS") or 0
    db = workdir / "audit.db"
    t0 = time.perf_counter()
    run = run_audit(load_spec(spec_for(shared, n)), out_dir=workdir / "out", store=f"sqlite:///{db}")
    seconds = time.perf_counter() - t0
    peak_kb = (_status_kb("VmHWM") if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep = run.report
    import statistics

    from gauntlet.audit.store import open_store

    with open_store(f"sqlite:///{db}", create=False) as st:  # every unit's record, as stored
        units = [rec for study, rec in st.records(run.audit_id).values() if study == "evasion"]
    per_attack: dict[str, list[float]] = {}
    for u in units:
        per_attack.setdefault(u["attack"], []).append(u["seconds"])
    unit_total = sum(sum(v) for v in per_attack.values())
    return {
        "n": n,
        "seconds": seconds,
        "seconds_per_1000": 1000 * seconds / n,
        "peak_rss_mb": peak_kb / 1024,
        "rss_before_mb": base_kb / 1024,
        "peak_growth_mb": (peak_kb - base_kb) / 1024 if reset else None,
        "store_kb": sum(f.stat().st_size for f in workdir.glob("audit.db*")) / 1024,
        "units": len(units),
        "unit_seconds_median": {a: statistics.median(v) for a, v in per_attack.items()},
        "units_seconds": unit_total,
        "overhead_seconds": seconds - unit_total,
        "grad_evals": sum(u["grad_evals"] for u in units),
        "clean_accuracy": rep["clean_accuracy"],
        "worst_case": {f"{r['norm']} {r['eps']:g}": r["robust_accuracy"] for r in rep["worst_case"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[250, 1000, 4000])
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (peak RSS then includes allocator fragmentation)",
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.workdir)))
        return

    shared_dir()
    rows = []
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
            if not args.default_malloc:
                env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--workdir", tmp],
                env=env, capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"n={n}: the audit subprocess failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        growth = "n/a" if row["peak_growth_mb"] is None else f"{row['peak_growth_mb']:.1f}"
        print(
            f"n={n:>5}  {row['seconds']:7.1f} s  {row['seconds_per_1000']:6.1f} s/1k  peak RSS {row['peak_rss_mb']:6.0f} MB "
            f"(+{growth} MB over pre-audit)  store {row['store_kb']:.0f} KB  {row['units']} units, median s/unit "
            + ", ".join(f"{a} {v:.2f}" for a, v in row["unit_seconds_median"].items())
            + f", fixed overhead {row['overhead_seconds']:.1f} s",
            flush=True,
        )
    base = rows[0]
    for r in rows:
        r["time_ratio_vs_first"] = r["seconds"] / base["seconds"]
        r["n_ratio_vs_first"] = r["n"] / base["n"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "audit_scaling",
        "what": "gauntlet audit wall time and peak memory vs number of examples (quick preset, LeNet5, MNIST)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": 1},
        "malloc": "glibc default" if args.default_malloc else f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}",
        "rows": rows,
    }
    path = RESULTS / ("audit_scaling_default_malloc.json" if args.default_malloc else "audit_scaling.json")
    path.write_text(json.dumps(doc, indent=2))
    if len(rows) > 1:
        last = rows[-1]
        print(
            f"time x{last['time_ratio_vs_first']:.2f} for n x{last['n_ratio_vs_first']:.0f}; "
            f"peak RSS {base['peak_rss_mb']:.0f} -> {last['peak_rss_mb']:.0f} MB; results in {path}"
        )


if __name__ == "__main__":
    main()
