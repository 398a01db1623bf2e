"""``--executor auto`` against the layouts it chooses between, on the machine as it is (issue 14).

One command::

    .venv/bin/python benchmarks/bench_audit_auto.py [--repeats 2] [--audits short,long]

Two audits of the shared MNIST models on the first n of a seeded subset of the MNIST test set,
each stored in a fresh SQLite store with report.json + report.html written:

* **short** — advertorch's clean LeNet5, FGSM and PGD-20, L∞ ε ∈ {0.1, 0.2, 0.3} and L2 ε ∈ {1, 2},
  n = 500 in batches of 50: 40 units of ≈ 0.1–1.5 s (the audit of BENCHMARKS §9);
* **long** — the TRADES SmallCNN, PGD-40 at L∞ ε = 0.3, n = 1,024 in batches of 128: 8 units
  of several seconds each.

Each runs four ways, interleaved (local-1, local-all, ray, auto, local-1, …), all in this process:
*local-1* ``run_audit(executor="local")`` on one torch thread; *local-all* the same on every core
of this process (``os.sched_getaffinity``); *ray* ``run_audit(executor="ray")`` with a local
cluster of every core started and stopped inside the call (what ``gauntlet audit --executor
ray`` costs); *auto* ``run_audit(executor="auto")``.  Wall seconds (what a layout is for), medians
over the repeats, the ratio of each to the fastest fixed layout of the same round, and auto's
decision per run (layout, threads, the measured speed-ups, its first unit's time).  Every report
must equal local-1's once timings and the manifest are stripped; the script asserts it.  The load
average during the run is reported too: the right layout depends on it.

Results: a markdown table on stdout and ``benchmarks/results/audit_auto.json``.  Data and models are
read from ``../shared`` (``GAUNTLET_SHARED``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402

MODES = ("local-1", "local-all", "ray", "auto")
SMALLCNN = "models/trades_smallcnn_mnist.pt"


def spec_for(shared: Path, which: str) -> dict[str, Any]:
    if which == "short":  # section 9's audit, as bench_audit_executors builds it
        from bench_audit_executors import shared_dir as section9_shared
        from bench_audit_executors import spec_for as section9_spec

        section9_shared()  # checks its model and data are there
        return section9_spec(shared, n=500, batch_size=50, pgd_steps=20)
    if not (shared / SMALLCNN).is_file():
        raise SystemExit(f"bench_audit_auto: {shared / SMALLCNN} not found; set GAUNTLET_SHARED=/path/to/shared")
    return {
        "model": {"path": str(shared / SMALLCNN), "name": "smallcnn-long", "arch": "smallcnn"},
        "data": {"path": str(shared / "data" / "mnist"), "split": "test", "seed": 0, "n": 1024},
        "threats": [{"norm": "linf", "eps": [0.3]}],
        "attacks": [{"name": "pgd", "steps": 40}],
        "batch_size": 128,
        "seed": 0,
    }


def run_mode(spec: Any, mode: str, cores: int, work: Path, tag: str) -> tuple[dict[str, Any], float]:
    import torch

    from gauntlet.audit import run_audit

    saved = torch.get_num_threads()
    torch.set_num_threads(1 if mode == "local-1" else cores)
    executor = {"local-1": "local", "local-all": "local"}.get(mode, mode)
    try:
        t0 = time.perf_counter()
        run = run_audit(spec, out_dir=work / f"out-{tag}", store=f"sqlite:///{work / f'{tag}.db'}", executor=executor)
        return run.report, time.perf_counter() - t0
    finally:
        torch.set_num_threads(saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--audits", default="short,long")
    args = ap.parse_args()

    from gauntlet.audit import load_spec
    from gauntlet.audit.executors import available_cpus
    from gauntlet.audit.report import comparable

    shared = _common.shared_dir()
    cores = available_cpus()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="gauntlet-ray-"))
    results: dict[str, Any] = {"environment": _common.environment(), "cores": cores, "audits": {}}
    rows = []
    for which in args.audits.split(","):
        spec = load_spec(spec_for(shared, which))
        times: dict[str, list[float]] = {m: [] for m in MODES}
        decisions: list[dict[str, Any]] = []
        loads: list[float] = []
        reference: dict[str, Any] | None = None
        with tempfile.TemporaryDirectory(prefix="gauntlet-auto-") as tmp:
            for r in range(args.repeats):
                for mode in MODES:
                    loads.append(os.getloadavg()[0])
                    report, seconds = run_mode(spec, mode, cores, Path(tmp), f"{which}-{mode}-{r}")
                    times[mode].append(seconds)
                    if reference is None:
                        reference = comparable(report)
                    assert comparable(report) == reference, f"{which}/{mode}: the report differs from local-1's"
                    if mode == "auto":
                        decisions.append(report["manifest"]["executor"])
                    print(f"{which} round {r} {mode}: {seconds:.1f} s", file=sys.stderr, flush=True)
        fixed = [min(times[m][r] for m in MODES if m != "auto") for r in range(args.repeats)]
        med = {m: statistics.median(v) for m, v in times.items()}
        results["audits"][which] = {"seconds": times, "median": med, "auto": decisions,
                                    "load_average": [min(loads), max(loads)]}
        for m in MODES:
            ratio = statistics.median(times[m][r] / fixed[r] for r in range(args.repeats))
            note = ""
            if m == "auto":
                note = "; ".join(
                    f"{d['layout']}, {d.get('threads')} thread(s)"
                    + (f", measured intra {d['measured']['intra_speedup']:.2f}× inter {d['measured']['inter_speedup']:.2f}×" if "measured" in d else "")
                    for d in decisions
                )
            rows.append([which, m, f"{med[m]:.1f}", f"{ratio:.2f}×", note])
        results["audits"][which]["load_text"] = f"{min(loads):.1f}–{max(loads):.1f}"
    print(_common.markdown_table(["audit", "layout", "wall s (median)", "vs fastest fixed layout (paired median)", "auto decided"], rows))
    for which, a in results["audits"].items():
        print(f"{which}: load average {a['load_text']}")
    print(_common.write_json("audit_auto.json", results))


if __name__ == "__main__":
    main()
