"""Audit executors: local vs Ray (1 and 2 workers) wall time on one 40-unit audit, and Ray's per-unit overhead.

One command::

    .venv/bin/python benchmarks/bench_audit_executors.py               # n = 500, batches of 50, 2 repeats
    .venv/bin/python benchmarks/bench_audit_executors.py --repeats 3

One audit spec: the shared clean-trained LeNet5 (``arch: lenet5``) on the first n of a seeded random
subset of the MNIST test set (``data: {path: ../shared/data/mnist, n: n}``), FGSM and PGD-20,
L∞ ε ∈ {0.1, 0.2, 0.3} and L2 ε ∈ {1, 2}, batches of 50: 2 attacks × 2 norms × 10 batches = 40
units (a unit is one attack × one norm, all of its ε, × one batch), each stored one by one in a
fresh SQLite store, report.json + report.html written.  It runs three ways, interleaved
(local, ray-1, ray-2, local, ray-1, ray-2, …), all in this process:

* **local** — ``run_audit(..., executor="local")`` with ``torch.set_num_threads(1)``;
* **ray-k** — a local Ray cluster of k CPUs is started first (``RayExecutor(workers=k).start()``,
  timed as *cluster start*), the audit then runs on it through a second ``RayExecutor`` that reuses
  the connection (timed as *execute*: the same ``run_audit`` call as the local one, including
  Ray's worker start-up, putting the model and data in the object store, and scheduling), and the
  cluster is shut down (``ray.shutdown()``, timed) before the next run, so that the next
  ``RayExecutor(workers=k)`` starts a k-CPU cluster.  *Total* = start + execute + shutdown, what
  ``gauntlet audit --executor ray --workers k`` pays beyond process start.

Reported: medians over the repeats of each phase, the ratios to local measured in this run, the
sum of the units' own wall seconds (``report["cost"]``: shows whether Ray workers compute at the
local speed), and Ray's per-unit overhead = (ray-1 execute − local execute) / units, computed per
repeat (paired) and as the difference of medians.  On a machine shared with other jobs wall time
is noisy, so the same is also measured in CPU seconds: this process's ``time.process_time()`` plus,
for Ray, the user + system time of every process of the cluster (raylet, GCS, workers, found by
their private ``RAY_TMPDIR`` in ``/proc/*/environ``; a worker reaped by the raylet counts in the
raylet's children time) — the CPU a Ray audit costs beyond the local one, whatever the load.  Every Ray report must equal the local
report once timings and the manifest are stripped (``comparable()`` as in the tests); the script
asserts it and says so.

Ray's session files go to a private temporary folder (``RAY_TMPDIR``), so the benchmark neither
joins nor disturbs a Ray cluster someone else runs on the machine.  Results go to
``benchmarks/results/audit_executors.json``; data and the model are read from ``../shared``
(override with ``GAUNTLET_SHARED``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402

MODEL = "models/advertorch_lenet5_mnist_clntrained.pt"
MODES = ("local", "ray-1", "ray-2")


def shared_dir() -> Path:
    """The shared folder (``_common.shared_dir``), checked for the LeNet5 and MNIST this benchmark needs."""
    p = _common.shared_dir()
    if not (p / MODEL).is_file() or not (p / "data" / "mnist").is_dir():
        raise SystemExit(f"bench_audit_executors: {p / MODEL} or {p / 'data' / 'mnist'} not found; set GAUNTLET_SHARED=/path/to/shared")
    return p


def spec_for(shared: Path, n: int, batch_size: int, pgd_steps: int) -> dict[str, Any]:
    return {
        "model": {"path": str(shared / MODEL), "name": "lenet5-clean", "arch": "lenet5"},
        "data": {"path": str(shared / "data" / "mnist"), "split": "test", "n": n, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.2, 0.3]}, {"norm": "l2", "eps": [1.0, 2.0]}],
        "attacks": ["fgsm", {"name": "pgd", "steps": pgd_steps}],
        "batch_size": batch_size,
        "seed": 0,
    }


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without timings, the manifest and the audit id (``gauntlet.audit.report.comparable``)."""
    from gauntlet.audit.report import comparable as strip

    return strip(report)  # type: ignore[no-any-return]


def unit_seconds(report: dict[str, Any]) -> float:
    return float(sum(c["seconds"] for c in report.get("cost") or []))


_TCK = os.sysconf("SC_CLK_TCK")


def cluster_cpu(ray_tmp: str) -> dict[int, float]:
    """CPU seconds (user + system) so far of every live process of our Ray cluster, by pid: the
    processes whose environment has our private ``RAY_TMPDIR`` (raylet, GCS, workers, agents),
    this process excluded."""
    needle = f"RAY_TMPDIR={ray_tmp}".encode()
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                continue
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(d)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TCK
    return out


def run_local(spec: Any, work: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from gauntlet.audit import run_audit

    c0, t0 = time.process_time(), time.perf_counter()
    run = run_audit(spec, out_dir=work / f"out-{tag}", store=f"sqlite:///{work / f'{tag}.db'}", executor="local")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return run.report, {"start": 0.0, "execute": seconds, "shutdown": 0.0, "total": seconds,
                        "cpu_start": 0.0, "cpu_execute": cpu, "cpu_execute_driver": cpu}


def run_ray(spec: Any, work: Path, tag: str, workers: int, ray_tmp: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import ray

    from gauntlet.audit import run_audit
    from gauntlet.audit.executors import RayExecutor

    assert not ray.is_initialized()
    c0, t0 = time.process_time(), time.perf_counter()
    owner = RayExecutor(workers=workers)
    owner.start()  # starts a local cluster of `workers` CPUs and owns it
    c1, t1 = time.process_time(), time.perf_counter()
    k1 = cluster_cpu(ray_tmp)
    try:
        # a second executor finds ray initialized: it uses the cluster and does not shut it down
        run = run_audit(
            spec, out_dir=work / f"out-{tag}", store=f"sqlite:///{work / f'{tag}.db'}", executor=RayExecutor(workers=workers)
        )
        c2, t2 = time.process_time(), time.perf_counter()
        k2 = cluster_cpu(ray_tmp)
    finally:
        owner.close()  # ray.shutdown()
    t3 = time.perf_counter()
    assert not ray.is_initialized()
    cpus = run.report["manifest"]["executor"].get("cpus")
    assert cpus == workers, f"ray-{workers}: the cluster had {cpus} CPUs"
    cluster_exec = sum(v - k1.get(pid, 0.0) for pid, v in k2.items())
    return run.report, {"start": t1 - t0, "execute": t2 - t1, "shutdown": t3 - t2, "total": t3 - t0,
                        "cpu_start": (c1 - c0) + sum(k1.values()), "cpu_execute": (c2 - c1) + cluster_exec,
                        "cpu_execute_driver": c2 - c1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="MNIST test images (default 500)")
    ap.add_argument("--batch-size", type=int, default=50, help="samples per unit (default 50: 40 units at n=500)")
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of local, ray-1, ray-2 (default 2)")
    args = ap.parse_args()

    shared = shared_dir()
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("bench_audit_executors: Ray is not installed (pip install 'gauntlet[ray]')") from None
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.pop("RAY_ADDRESS", None)  # always a fresh local cluster, never someone else's
    ray_tmp = tempfile.mkdtemp(prefix="gbe-")  # short: Ray's socket paths live below it
    os.environ["RAY_TMPDIR"] = ray_tmp

    import torch

    torch.set_num_threads(1)
    from gauntlet.audit import load_spec, run_audit

    spec = load_spec(spec_for(shared, args.n, args.batch_size, args.pgd_steps))
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="gauntlet-bench-exec-"))
    try:
        # warm-up: every lazy import and the data decoder, outside the measurements
        run_audit(load_spec(spec_for(shared, 50, 50, 2)), store=None)
        reference: dict[str, Any] | None = None
        units = None
        for r in range(args.repeats):
            for mode in MODES:
                tag = f"{mode}-{r}"
                load_before = os.getloadavg()[0]
                if mode == "local":
                    report, t = run_local(spec, work, tag)
                else:
                    report, t = run_ray(spec, work, tag, int(mode.split("-")[1]), ray_tmp)
                plan_units = report["manifest"]["plan"]["units"]
                units = units or plan_units
                assert plan_units == units and report["manifest"]["units_reused"] == 0
                assert report["manifest"]["executor"]["name"] == mode.split("-")[0]
                if reference is None:
                    reference = comparable(report)
                equal = comparable(report) == reference
                assert equal, f"{tag}: the report differs from the first local report (beyond timings and manifest)"
                row = {"repeat": r, "mode": mode, **t, "unit_seconds": unit_seconds(report),
                       "units": plan_units, "equal_to_local": equal, "load_avg_1m_before": load_before}
                rows.append(row)
                print(
                    f"[{r}] {mode:6s} total {t['total']:6.1f} s  (start {t['start']:5.1f}, execute {t['execute']:6.1f}, "
                    f"shutdown {t['shutdown']:4.1f})  CPU start {t['cpu_start']:5.1f} s, execute {t['cpu_execute']:6.1f} s "
                    f"(driver {t['cpu_execute_driver']:5.1f})  Σ unit {row['unit_seconds']:6.1f} s  {plan_units} units  "
                    f"report == local: {equal}  load {load_before:.1f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert units is not None
    med: dict[str, dict[str, float]] = {}
    for mode in MODES:
        mine = [x for x in rows if x["mode"] == mode]
        med[mode] = {k: statistics.median(x[k] for x in mine) for k in ("start", "execute", "shutdown", "total", "unit_seconds", "cpu_start", "cpu_execute")}
    loc = med["local"]
    ratios = {
        mode: {"execute_vs_local": med[mode]["execute"] / loc["execute"], "total_vs_local": med[mode]["total"] / loc["total"]}
        for mode in MODES
    }
    ratios["ray-2_vs_ray-1"] = {
        "execute": med["ray-2"]["execute"] / med["ray-1"]["execute"],
        "total": med["ray-2"]["total"] / med["ray-1"]["total"],
    }
    paired, paired_cpu = [], []
    for r in range(args.repeats):
        by = {x["mode"]: x for x in rows if x["repeat"] == r}
        paired.append((by["ray-1"]["execute"] - by["local"]["execute"]) / units)
        paired_cpu.append((by["ray-1"]["cpu_execute"] - by["local"]["cpu_execute"]) / units)
    overhead = {
        "per_unit_seconds_paired_median": statistics.median(paired),
        "per_unit_seconds_paired": paired,
        "per_unit_seconds_of_medians": (med["ray-1"]["execute"] - loc["execute"]) / units,
        "local_seconds_per_unit": loc["execute"] / units,
        "per_unit_cpu_seconds_paired_median": statistics.median(paired_cpu),
        "per_unit_cpu_seconds_paired": paired_cpu,
        "local_cpu_seconds_per_unit": loc["cpu_execute"] / units,
    }

    print()
    print(f"{units} units, n = {args.n}, batches of {args.batch_size}, medians of {args.repeats} interleaved repeats:")
    print()
    print("| executor | total | cluster start | execute | shutdown | execute vs local | total vs local "
          "| Σ unit wall | CPU: start | CPU: execute |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        m = med[mode]
        print(
            f"| {mode} | {m['total']:.1f} s | {m['start']:.1f} s | {m['execute']:.1f} s | {m['shutdown']:.1f} s | "
            f"{ratios[mode]['execute_vs_local']:.2f}× | {ratios[mode]['total_vs_local']:.2f}× | "
            f"{m['unit_seconds']:.1f} s | {m['cpu_start']:.1f} s | {m['cpu_execute']:.1f} s |"
        )
    print()
    print(
        f"ray-2 / ray-1: execute {ratios['ray-2_vs_ray-1']['execute']:.2f}×, total {ratios['ray-2_vs_ray-1']['total']:.2f}×; "
        f"Ray per-unit overhead (ray-1 execute − local execute) / {units}: "
        f"{overhead['per_unit_seconds_paired_median']:+.3f} s paired median "
        f"({', '.join(f'{p:+.3f}' for p in paired)}), {overhead['per_unit_seconds_of_medians']:+.3f} s from the medians, "
        f"against {overhead['local_seconds_per_unit']:.2f} s per unit locally; in CPU time "
        f"{overhead['per_unit_cpu_seconds_paired_median']:+.3f} s per unit paired median "
        f"({', '.join(f'{p:+.3f}' for p in paired_cpu)}) against {overhead['local_cpu_seconds_per_unit']:.2f} s"
    )
    print(f"EQUAL: all {2 * args.repeats} Ray reports == the local report (comparable(): timings and manifest stripped)")

    doc = {
        "benchmark": "audit_executors",
        "what": "gauntlet audit wall time, local executor vs Ray with 1 and 2 workers (LeNet5, MNIST, FGSM + PGD)",
        "machine": {**_common.environment(), "platform": platform.platform(), "ray": __import__("ray").__version__},
        "spec": spec_for(Path("../shared"), args.n, args.batch_size, args.pgd_steps),
        "units": units,
        "repeats": args.repeats,
        "order": "interleaved: " + ", ".join(MODES) + " per repeat",
        "rows": rows,
        "medians": med,
        "ratios": ratios,
        "ray_overhead": overhead,
        "reports_equal": all(x["equal_to_local"] for x in rows),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_audit_executors.py", *sys.argv[1:]]),
    }
    path = _common.write_json("audit_executors.json", doc)
    print(f"results in {path}")


if __name__ == "__main__":
    main()
