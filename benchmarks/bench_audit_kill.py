"""Crash safety: 20 × kill -9 at random moments of one audit, local executor then Ray (2 workers).

One command::

    .venv/bin/python benchmarks/bench_audit_kill.py                 # 20 kills per executor
    .venv/bin/python benchmarks/bench_audit_kill.py --kills 5 --executors local

One audit (the shared clean-trained LeNet5, ``arch: lenet5``, on n = 600 MNIST test images, FGSM
and PGD-20, L∞ ε ∈ {0.1, 0.2, 0.3} and L2 ε ∈ {1, 2}, batches of 20: 2 × 2 × 30 = 120 units of
~0.05 s (FGSM) and ~0.7 s (PGD) each) is run through the CLI in subprocesses
(``python -m gauntlet.cli audit spec.yaml --out DIR --store sqlite:///DB --json``, plus
``--executor ray --workers 2`` for Ray; ``OMP_NUM_THREADS=1``, ``PYTHONPATH=src``).  Per executor:

1. a **reference**: the same command, uninterrupted, into a fresh store;
2. the **kills**: the same command is started again and again against one store; once the process
   has itself committed at least one new unit (``SELECT count(*) FROM records`` on a read-only
   connection, polled every 5 ms — so a kill never lands in start-up, which for Ray includes
   starting a cluster), the script sleeps a random 0–0.3 s and sends SIGKILL.  After each kill:
   rows == distinct keys (no duplicate), rows ≥ the count read just before the signal and ≥ the
   previous kill's (nothing lost), one audit row in the store (every restart resumed it).  If the
   audit finishes before a kill lands (it should not: 120 units are more than 20 kills consume),
   that is counted, the round's report is checked like the final one, and the kills go on against
   a fresh store;
3. the **final run** to completion: it must say it resumed with exactly the stored units, leave
   one row per unit, and its report.json must equal the reference's once timings and the manifest
   are stripped (``comparable()`` as in the tests); Ray's must equal the local reference's too.

**Processes left behind by kill -9.**  Every subprocess carries a marker in its environment
(``GAUNTLET_KILL_BENCH=<random token>``) that Ray's raylet, GCS server, agents and workers
inherit.  Right before each kill the script notes which processes carry it (what the kill is about
to hit); once the killed CLI process is reaped, it notes which are still alive, and a thread then
watches those pids (every 0.1 s) to time how long each lives on, while the kills go on.  A leftover
still alive 150 s after its kill is killed by PID (never ``ray stop --force``, which would also stop
other people's Ray clusters on a shared machine) and the result says whether that was needed.  The
same is checked after every clean exit.  Ray's session files go to a private temporary folder
(``RAY_TMPDIR``), so the audits never join an existing cluster.

Results go to ``benchmarks/results/audit_kill.json``; data and the model are read from
``../shared`` (override with ``GAUNTLET_SHARED``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402

MODEL = "models/advertorch_lenet5_mnist_clntrained.pt"
MARKER = "GAUNTLET_KILL_BENCH"
LINGER_LIMIT_S = 150.0  # a leftover still alive this long after its kill is killed by pid


def shared_dir() -> Path:
    """The shared folder (``_common.shared_dir``), checked for the LeNet5 and MNIST this benchmark needs."""
    p = _common.shared_dir()
    if not (p / MODEL).is_file() or not (p / "data" / "mnist").is_dir():
        raise SystemExit(f"bench_audit_kill: {p / MODEL} or {p / 'data' / 'mnist'} not found; set GAUNTLET_SHARED=/path/to/shared")
    return p


def spec_for(shared: Path, n: int, batch_size: int) -> dict[str, Any]:
    return {
        "model": {"path": str(shared / MODEL), "name": "lenet5-clean", "arch": "lenet5"},
        "data": {"path": str(shared / "data" / "mnist"), "split": "test", "n": n, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.2, 0.3]}, {"norm": "l2", "eps": [1.0, 2.0]}],
        "attacks": ["fgsm", {"name": "pgd", "steps": 20}],
        "batch_size": batch_size,
        "seed": 0,
    }


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without timings, the manifest and the audit id (``gauntlet.audit.report.comparable``)."""
    from gauntlet.audit.report import comparable as strip

    return strip(report)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------
# the store, read-only
def db_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT count(*) FROM records WHERE study != 'core'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:  # no table yet, or busy
        return 0


def db_state(db: Path) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT audit_id || ':' || key) FROM records WHERE study != 'core'").fetchone()
        audits = con.execute("SELECT count(*), group_concat(status) FROM audits").fetchone()
        return {"rows": rows, "distinct": distinct, "audits": audits[0], "status": audits[1]}
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------
# processes left behind
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, None when it is gone."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rest[0], int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def marked_processes(token: str) -> list[dict[str, Any]]:
    """Live processes whose environment carries this run's marker (the CLI and all it started)."""
    needle = f"{MARKER}={token}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                continue
            st = _stat(int(d))
            if st is None or st[0] == "Z":
                continue
            comm = Path(f"/proc/{d}/comm").read_text().strip()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append({"pid": int(d), "start": st[1], "comm": comm, "cmd": cmd[:120]})
    return out


class Leftovers:
    """The processes of ours that outlive a killed audit, and how long each one lives on.

    :meth:`after_kill` is called once the killed CLI process has been reaped, when no audit of ours
    runs: every process still carrying the marker is a leftover.  A thread then watches those pids
    (every 0.1 s, same start time: no pid reuse) and notes when each is gone, so that the kills go
    on without waiting for them.  A leftover older than ``limit_s`` is killed by pid, never by name,
    and that is recorded as a cleanup the script had to do.
    """

    def __init__(self, token: str, limit_s: float) -> None:
        self.token, self.limit_s = token, limit_s
        self.tracked: dict[tuple[int, int], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.1):
            now = time.monotonic()
            with self.lock:
                for (pid, start), t in self.tracked.items():
                    if t["gone_after_s"] is None:
                        st = _stat(pid)
                        if st is None or st[1] != start or st[0] == "Z":
                            t["gone_after_s"] = round(now - t["t_kill"], 2)

    def after_kill(self, label: str, t_kill: float) -> list[dict[str, Any]]:
        """Register what outlives this kill; kill (by pid) what outlived an earlier one too long."""
        self.reap_old()
        new = []
        with self.lock:
            for p in marked_processes(self.token):
                key = (p["pid"], p["start"])
                if key not in self.tracked:
                    t = {"kill": label, "pid": p["pid"], "comm": p["comm"], "cmd": p["cmd"], "t_kill": t_kill,
                         "gone_after_s": None, "killed_by_script_after_s": None}
                    self.tracked[key] = t
                    new.append(t)
        return new

    def reap_old(self, limit_s: float | None = None) -> None:
        limit = self.limit_s if limit_s is None else limit_s
        now = time.monotonic()
        with self.lock:
            for (pid, start), t in self.tracked.items():
                if t["gone_after_s"] is None and now - t["t_kill"] > limit:
                    st = _stat(pid)
                    if st is not None and st[1] == start:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            t["killed_by_script_after_s"] = round(now - t["t_kill"], 1)
                        except ProcessLookupError:
                            pass

    def settle(self) -> None:
        """Wait until every leftover is gone or past the limit (then kill it by pid)."""
        while True:
            with self.lock:
                alive = [t for t in self.tracked.values() if t["gone_after_s"] is None and t["killed_by_script_after_s"] is None]
            if not alive:
                return
            if all(time.monotonic() - t["t_kill"] > self.limit_s for t in alive):
                self.reap_old()
                time.sleep(0.3)
                continue
            time.sleep(0.5)

    def of(self, label: str) -> list[dict[str, Any]]:
        with self.lock:
            return [{k: v for k, v in t.items() if k != "t_kill"} for t in self.tracked.values() if t["kill"] == label]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# ------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, spec_path: Path, work: Path, env: dict[str, str], token: str) -> None:
        self.spec_path, self.work, self.env, self.token = spec_path, work, env, token

    def cmd(self, executor: str, tag: str) -> list[str]:
        c = [sys.executable, "-m", "gauntlet.cli", "audit", str(self.spec_path), "--out", str(self.work / f"out-{tag}"),
             "--store", f"sqlite:///{self.work / f'{tag}.db'}", "--json"]
        return c + (["--executor", "ray", "--workers", "2"] if executor == "ray" else [])

    def run_to_end(self, executor: str, tag: str) -> tuple[dict[str, Any], dict[str, Any], float]:
        t0 = time.perf_counter()
        p = subprocess.run(self.cmd(executor, tag), env=self.env, capture_output=True, text=True, timeout=1800, check=False)
        seconds = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"bench_audit_kill: {executor} {tag}: exit {p.returncode}\n{p.stderr[-3000:]}")
        out = json.loads(p.stdout)
        report = json.loads((self.work / f"out-{tag}" / "report.json").read_text())
        return out, report, seconds


def _summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process name: how many outlived their kill, and how long they lived on."""
    out: dict[str, Any] = {}
    for t in items:
        c = out.setdefault(t["comm"], {"count": 0, "gone_after_s": [], "killed_by_script": 0})
        c["count"] += 1
        if t["gone_after_s"] is not None:
            c["gone_after_s"].append(t["gone_after_s"])
        if t["killed_by_script_after_s"] is not None:
            c["killed_by_script"] += 1
    for c in out.values():
        g = sorted(c.pop("gone_after_s"))
        c["gone_after_s_min_median_max"] = [g[0], g[len(g) // 2], g[-1]] if g else None
    return out


def kill_phase(bench: Bench, executor: str, kills: int, rng: random.Random, reference: dict[str, Any],
               local_reference: dict[str, Any], leftovers: Leftovers) -> dict[str, Any]:
    t_start = time.perf_counter()
    events: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    duplicates = lost = 0
    round_no, landed, completed_early = 0, 0, 0
    total_units = None

    def close_round(tag: str, out: dict[str, Any], report: dict[str, Any], seen: list[int]) -> dict[str, Any]:
        st = db_state(bench.work / f"{tag}.db")
        units = report["manifest"]["plan"]["units"]
        r = {
            "tag": tag,
            "kills": len(seen),
            "rows_after_each_kill": seen,
            "final_resumed": out["resumed"],
            "final_units_reused": out["units_reused"],
            "final_rows": st["rows"],
            "final_distinct": st["distinct"],
            "audits_in_store": st["audits"],
            "audit_status": st["status"],
            "units": units,
            "equal_to_reference": comparable(report) == reference,
            "equal_to_local_reference": comparable(report) == local_reference,
        }
        ok = (st["rows"] == st["distinct"] == units and st["audits"] == 1 and st["status"] == "done"
              and r["equal_to_reference"] and r["equal_to_local_reference"]
              and (not seen or (out["resumed"] and out["units_reused"] == seen[-1])))
        r["ok"] = ok
        return r

    while landed < kills:
        tag = f"{executor}-killed-{round_no}"
        db = bench.work / f"{tag}.db"
        seen: list[int] = []
        finished = False
        while landed < kills:
            before = db_count(db)
            t_proc = time.perf_counter()
            proc = subprocess.Popen(bench.cmd(executor, tag), env=bench.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 600
            while db_count(db) <= before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            first_commit_s = time.perf_counter() - t_proc
            running = sorted(p["comm"] for p in marked_processes(bench.token))  # what the kill is about to hit
            delay = rng.uniform(0.0, 0.3)
            time.sleep(delay)
            if proc.poll() is not None:  # finished (or failed) before the signal could land
                out, err = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"bench_audit_kill: {tag} exited {proc.returncode} before a kill:\n{err[-3000:]}")
                completed_early += 1
                report = json.loads((bench.work / f"out-{tag}" / "report.json").read_text())
                rounds.append(close_round(tag, json.loads(out), report, seen))
                leftovers.after_kill(f"{tag}-exit", time.monotonic())
                print(f"  {tag}: the audit finished before kill {landed + 1} could land; fresh store", flush=True)
                finished = True
                break
            at_signal = db_count(db)
            t_kill = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=120)
            alive_s = time.perf_counter() - t_proc
            if proc.returncode != -signal.SIGKILL:
                raise SystemExit(f"bench_audit_kill: {tag}: exit {proc.returncode} instead of SIGKILL:\n{err[-3000:]}")
            landed += 1
            label = f"{executor}-kill-{landed}"
            new = leftovers.after_kill(label, t_kill)
            st = db_state(db)
            dup = st["rows"] - st["distinct"]
            lost_here = max(0, at_signal - st["rows"], (seen[-1] if seen else 0) - st["rows"])
            duplicates += dup
            lost += lost_here
            events.append({
                "kill": landed,
                "label": label,
                "store": tag,
                "rows_before_start": before,
                "rows_at_signal": at_signal,
                "rows_after": st["rows"],
                "distinct_after": st["distinct"],
                "new_units_this_process": st["rows"] - before,
                "audits_in_store": st["audits"],
                "first_new_commit_s": round(first_commit_s, 2),
                "delay_s": round(delay, 3),
                "process_alive_s": round(alive_s, 2),
                "duplicates": dup,
                "lost": lost_here,
                "processes_before_kill": running,
                "left_right_after_kill": sorted(t["comm"] for t in new),
            })
            seen.append(st["rows"])
            print(
                f"  kill {landed:2d}: units {before:3d} -> {st['rows']:3d} (at signal {at_signal}), distinct {st['distinct']}, "
                f"first new commit after {first_commit_s:5.1f} s, +{delay:.2f} s; still alive after the kill: "
                f"{sorted(t['comm'] for t in new) or 'none'}",
                flush=True,
            )
            if dup or lost_here or st["audits"] != 1:
                print(f"  !! kill {landed}: duplicates {dup}, lost {lost_here}, audits {st['audits']}", flush=True)
        if not finished:
            out, report, seconds = bench.run_to_end(executor, tag)
            leftovers.after_kill(f"{tag}-exit", time.monotonic())  # after a clean exit nothing may stay either
            total_units = report["manifest"]["plan"]["units"]
            r = close_round(tag, out, report, seen)
            r["final_run_seconds"] = round(seconds, 1)
            rounds.append(r)
        round_no += 1

    leftovers.settle()  # every leftover gone by itself, or killed by pid past the limit
    for e in events:
        e["leftovers"] = leftovers.of(e["label"])
    after_kills = [t for e in events for t in e["leftovers"]]
    after_exits = [t for r in rounds for t in leftovers.of(f"{r['tag']}-exit")]
    for r in rounds:
        r["left_after_clean_exit"] = leftovers.of(f"{r['tag']}-exit")
    return {
        "executor": executor,
        "kills_landed": landed,
        "completed_before_a_kill_landed": completed_early,
        "units": total_units,
        "units_at_each_kill": [e["rows_after"] for e in events],
        "new_units_per_killed_process": [e["new_units_this_process"] for e in events],
        "duplicates": duplicates,
        "lost": lost,
        "all_rounds_ok": all(r["ok"] for r in rounds),
        "final_equal_to_reference": all(r["equal_to_reference"] for r in rounds),
        "final_equal_to_local_reference": all(r["equal_to_local_reference"] for r in rounds),
        "processes_at_a_kill": sorted({n for e in events for n in e["processes_before_kill"]}),
        "kills_followed_by_leftovers": sum(1 for e in events if e["leftovers"]),
        "leftovers_after_kills": _summary(after_kills),
        "leftovers_after_clean_exits": _summary(after_exits),
        "cleanup_by_script_needed": any(t["killed_by_script_after_s"] is not None for t in after_kills + after_exits),
        "rounds": rounds,
        "events": events,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs that must land per executor (default 20)")
    ap.add_argument("--executors", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: from the clock)")
    args = ap.parse_args()

    shared = shared_dir()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    token = secrets.token_hex(8)
    work = Path(tempfile.mkdtemp(prefix="gauntlet-bench-kill-"))
    ray_tmp = tempfile.mkdtemp(prefix="gbk-")  # short: Ray's socket paths live below it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
           MARKER: token, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_for(shared, args.n, args.batch_size)))
    bench = Bench(spec_path, work, env, token)
    leftovers = Leftovers(token, LINGER_LIMIT_S)
    t0 = time.perf_counter()
    phases: dict[str, Any] = {}
    references: dict[str, Any] = {}
    try:
        # the local reference always: the Ray runs must equal it too
        for executor in ["local"] + [e for e in args.executors if e != "local"]:
            _, report, seconds = bench.run_to_end(executor, f"{executor}-ref")
            leftovers.after_kill(f"{executor}-ref-exit", time.monotonic())
            references[executor] = {"report": comparable(report), "seconds": round(seconds, 1),
                                    "units": report["manifest"]["plan"]["units"]}
            print(f"{executor} reference: {references[executor]['units']} units, {seconds:.1f} s uninterrupted", flush=True)
        ref_equal = references.get("ray", references["local"])["report"] == references["local"]["report"]
        for executor in args.executors:
            print(f"{executor}: {args.kills} × kill -9", flush=True)
            ph = kill_phase(bench, executor, args.kills, rng, references[executor]["report"], references["local"]["report"],
                            leftovers)
            phases[executor] = ph
            left = ph["leftovers_after_kills"]
            print(
                f"{executor}: {ph['kills_landed']} kills landed ({ph['completed_before_a_kill_landed']} runs finished first), "
                f"duplicates {ph['duplicates']}, lost {ph['lost']}, final report == uninterrupted {executor} run: "
                f"{ph['final_equal_to_reference']}, == local reference: {ph['final_equal_to_local_reference']}, "
                f"{ph['seconds']:.0f} s",
                flush=True,
            )
            print(f"  processes of the audit at a kill: {ph['processes_at_a_kill']}")
            print(f"  outlived the kill ({ph['kills_followed_by_leftovers']} of {ph['kills_landed']} kills): "
                  + (", ".join(f"{n} ×{c['count']} (gone after min/median/max {c['gone_after_s_min_median_max']} s"
                               + (f", {c['killed_by_script']} killed by the script" if c["killed_by_script"] else "") + ")"
                               for n, c in left.items()) or "nothing"))
            print(f"  left after a clean exit: {ph['leftovers_after_clean_exits'] or 'nothing'}; "
                  f"cleanup by the script needed: {ph['cleanup_by_script_needed']}", flush=True)
        for executor, ref in references.items():
            ref["left_after_clean_exit"] = leftovers.of(f"{executor}-ref-exit")
    finally:
        leftovers.close()
        for p in marked_processes(token):  # never leave anything of ours behind
            try:
                os.kill(p["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    total = time.perf_counter() - t0
    ok = ref_equal and all(
        ph["kills_landed"] >= args.kills and ph["duplicates"] == 0 and ph["lost"] == 0 and ph["all_rounds_ok"]
        for ph in phases.values()
    )
    doc = {
        "benchmark": "audit_kill",
        "what": "kill -9 at random moments of one gauntlet audit (CLI subprocesses), local executor and Ray with 2 workers",
        "machine": {**_common.environment(), "platform": platform.platform()},
        "spec": spec_for(Path("../shared"), args.n, args.batch_size),
        "seed": seed,
        "kill_rule": "after the process committed >= 1 new unit (polled every 5 ms), sleep uniform(0, 0.3) s, SIGKILL",
        "leftover_kill_limit_s": LINGER_LIMIT_S,
        "references": {k: {kk: vv for kk, vv in v.items() if kk != "report"} for k, v in references.items()},
        "ray_reference_equal_to_local_reference": ref_equal,
        "phases": phases,
        "ok": ok,
        "total_seconds": round(total, 1),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_audit_kill.py", *sys.argv[1:]]),
    }
    path = _common.write_json("audit_kill.json", doc)
    print(f"{'OK' if ok else 'FAILED'}: seed {seed}, total {total:.0f} s; results in {path}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
