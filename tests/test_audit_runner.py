"""The runner: end to end, resumable after Ctrl-C / crash / kill -9, same report as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import gauntlet.audit.executors as executors_mod
import gauntlet.audit.runner as runner_mod
from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.report import comparable, validate_report
from gauntlet.errors import DataError, ModelLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def make_spec(model_file: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits-cnn", "version": "1", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 96, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.05, 0.1, 0.2]}],
        "attacks": ["fgsm", {"name": "pgd", "steps": 10}],
        "thresholds": [{"attack": "pgd", "norm": "linf", "eps": 0.05, "min_robust_accuracy": 0.5}],
        "batch_size": 16,
        "seed": 0,
    }
    spec.update(over)
    return spec


def unit_rows(db: Path) -> tuple[int, int]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*), count(DISTINCT audit_id || '/' || key) FROM records WHERE study != 'core'").fetchone()
    finally:
        con.close()


def test_an_audit_writes_both_reports_records_the_audit_and_breaks_the_undefended_model(model_file: Path, tmp_path: Path) -> None:
    events = []
    run = run_audit(load_spec(make_spec(model_file)), out_dir=tmp_path / "out", store=f"sqlite:///{tmp_path / 'g.db'}",
                    progress=events.append, command="test")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    validate_report(rep)
    assert (tmp_path / "out" / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert rep == json.loads(json.dumps(run.report))
    assert rep["schema_version"] == "2.1" and rep["data"]["n"] == 96 and len(rep["data"]["sha256"]) == 64
    assert len(rep["model"]["sha256"]) == 64 and rep["model"]["name"] == "digits-cnn"
    # the Square cross-check runs at the largest ε of the gradient-only threat
    assert [(r["attack"], r["eps"]) for r in rep["results"]] == [(a, e) for a in ("fgsm", "pgd") for e in (0.05, 0.1, 0.2)] + [
        ("square (cross-check)", 0.2)
    ]
    pgd = {r["eps"]: r for r in rep["results"] if r["attack"] == "pgd"}
    assert rep["clean_accuracy"] > 0.9 and pgd[0.2]["robust_accuracy"] < 0.1
    assert pgd[0.2]["grad_evals"] > 0 and pgd[0.2]["queries"] > 0
    assert (rep["gate"]["passed"], rep["gate"]["violations"]) == (True, []) and run.exit_code == 0
    assert rep["manifest"]["spec"]["seed"] == 0 and "torch" in rep["manifest"]["packages"]
    # the fast paths were built once before the first unit, and their cost is on record
    execution = rep["manifest"]["execution"]
    assert (execution["forward"], execution["gradient"]) == ("frozen", "channels_last") and execution["build_seconds"] > 0
    assert "fast_path_refused" not in [f["id"] for f in rep["flags"]]
    assert [e.done for e in events if e.phase == "units"] == list(range(19))  # 18 units: (2 attacks + cross-check) x 6 batches
    assert events[-1].phase == "done"
    assert unit_rows(tmp_path / "g.db") == (18, 18)
    gal = rep["gallery"]
    assert 1 <= len(gal) <= 6 and all(g["pred_adv"] != g["label"] for g in gal)
    assert all(torch.tensor(g["x_adv"]).sub(torch.tensor(g["x"])).abs().max() <= g["eps"] + 1e-4 for g in gal)


def test_ctrl_c_then_the_same_call_resumes_computes_only_missing_units_and_equals_an_uninterrupted_run(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(make_spec(model_file))
    reference = run_audit(spec, out_dir=None, store=None).report

    store = f"sqlite:///{tmp_path / 'g.db'}"

    def interrupt_after(k: int):
        def cb(ev: runner_mod.ProgressEvent) -> None:
            if ev.phase == "units" and ev.done - ev.reused >= k:
                raise KeyboardInterrupt
        return cb

    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, out_dir=tmp_path / "out", store=store, progress=interrupt_after(5))
    assert unit_rows(tmp_path / "g.db") == (5, 5)
    assert not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, out_dir=tmp_path / "out", store=store, progress=interrupt_after(3))
    assert unit_rows(tmp_path / "g.db") == (8, 8)

    calls = []
    real = executors_mod.run_task
    monkeypatch.setattr(executors_mod, "run_task", lambda env, task: calls.append(task.key) or real(env, task))
    run = run_audit(spec, out_dir=tmp_path / "out", store=store)
    assert run.resumed and run.reused_units == 8 and len(calls) == 10
    assert unit_rows(tmp_path / "g.db") == (18, 18)
    assert comparable(run.report) == comparable({**reference, "audit_id": run.audit_id})
    assert json.loads((tmp_path / "out" / "report.json").read_text())["manifest"]["units_reused"] == 8


def test_a_crash_marks_the_audit_failed_and_the_rerun_resumes_it(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(make_spec(model_file, attacks=["fgsm"], thresholds=[]))
    store = f"sqlite:///{tmp_path / 'g.db'}"
    real = executors_mod.run_task
    n = []

    def flaky(*a: Any):
        n.append(1)
        if len(n) == 4:
            raise RuntimeError("disk on fire")
        return real(*a)

    monkeypatch.setattr(executors_mod, "run_task", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_audit(spec, store=store)
    con = sqlite3.connect(tmp_path / "g.db")
    assert con.execute("SELECT status FROM audits").fetchall() == [("failed",)]
    con.close()
    monkeypatch.setattr(executors_mod, "run_task", real)
    run = run_audit(spec, store=store)
    assert run.resumed and run.reused_units == 3 and unit_rows(tmp_path / "g.db") == (12, 12)  # 6 fgsm + 6 cross-check


def test_a_new_audit_starts_when_the_previous_one_finished_and_the_gate_sees_regressions(model_file: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'g.db'}"
    first = run_audit(load_spec(make_spec(model_file, attacks=["fgsm"], thresholds=[])), store=store)
    # the "new version" is attacked harder: pgd rows are new, fgsm rows unchanged -> no regression
    second = run_audit(load_spec(make_spec(model_file, attacks=["fgsm"], thresholds=[])), store=store, max_regression=0.0)
    assert second.audit_id == first.audit_id + 1 and not second.resumed
    assert second.report["gate"]["passed"] is True and second.report["gate"]["baseline_audit_id"] == first.audit_id
    # a stricter spec threshold fails the gate: exit code 1
    th = [{"attack": "worst_case", "norm": "linf", "eps": 0.2, "min_robust_accuracy": 0.9}]
    third = run_audit(load_spec(make_spec(model_file, attacks=["fgsm"], thresholds=th)), store=store)
    assert third.exit_code == 1 and third.report["gate"]["violations"][0].startswith("worst_case linf ε=0.2: robust accuracy")


def test_bad_model_or_data_fail_before_anything_is_written(model_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(ModelLoadError, match=r"^model: cannot tell the format"):
        run_audit(load_spec(make_spec(bad)), out_dir=tmp_path / "out", store=f"sqlite:///{db}")
    npz = tmp_path / "small.npz"
    import numpy as np

    np.savez(npz, x=np.random.default_rng(0).random((10, 1, 6, 6), dtype=np.float32), y=np.arange(10) % 10)
    with pytest.raises(DataError, match=r"^data: x has per-sample shape \(1, 6, 6\) but the model expects \(1, 8, 8\)"):
        run_audit(load_spec(make_spec(model_file, data={"path": str(npz)})), out_dir=tmp_path / "out", store=f"sqlite:///{db}")
    assert not db.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# kill -9 at random moments, in a real subprocess
def _db_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT count(*) FROM records WHERE study != 'core'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_kill_9_at_random_moments_loses_and_duplicates_no_unit_and_the_final_report_equals_an_uninterrupted_run(
    model_file: Path, tmp_path: Path
) -> None:
    # the same 96 digits as an .npz, so that the subprocesses need not import scikit-learn
    import numpy as np

    from gauntlet.data import load as load_data

    ds = load_data("digits", n=96, seed=0)
    np.savez(tmp_path / "digits96.npz", x=ds.x.numpy(), y=ds.y.numpy())
    spec_path = tmp_path / "spec.yaml"
    # PGD units of 1000 steps take ~0.5 s each, so a signal sent after a kill point always lands
    # while units remain, even on a quiet, fast machine
    spec_path.write_text(yaml.safe_dump(make_spec(
        model_file, data={"path": "digits96.npz"}, attacks=["fgsm", {"name": "pgd", "steps": 1000}]
    )))
    total = 18  # (fgsm, pgd, Square cross-check) x 6 batches
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}

    def cmd(tag: str) -> list[str]:
        return [sys.executable, "-m", "gauntlet.cli", "audit", str(spec_path), "--out", str(tmp_path / f"out-{tag}"),
                "--store", f"sqlite:///{tmp_path / f'{tag}.db'}", "--json"]

    reference = subprocess.Popen(cmd("ref"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seed = int(time.time())
    rng = random.Random(seed)
    db = tmp_path / "killed.db"
    targets = sorted(rng.sample(range(1, total - 3), 3))  # leave units after each kill point
    seen = []
    for i, target in enumerate(targets):
        proc = subprocess.Popen(cmd("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # wait until this process has itself finished a unit, so the signal never lands in start-up
        goal = max(target, _db_count(db) + 1)
        deadline = time.monotonic() + 60
        while _db_count(db) < goal and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))  # land anywhere: mid-unit, mid-commit, between units
        use_sigint = i == 1
        finished_first = proc.poll() is not None
        if not finished_first:
            proc.send_signal(signal.SIGINT if use_sigint else signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
        if finished_first:  # the audit completed before the signal could land (a very fast machine)
            assert proc.returncode == 0, (seed, proc.returncode, err)
        elif use_sigint:
            assert proc.returncode == 130 and "run the same command again to resume" in err, (seed, err)
        else:
            assert proc.returncode == -signal.SIGKILL, (seed, proc.returncode, err)
        rows, distinct = unit_rows(db)
        assert rows == distinct <= total, (seed, rows, distinct)
        seen.append(rows)
    assert seen == sorted(seen) and seen[-1] >= targets[-1], (seed, seen, targets)

    final = subprocess.run(cmd("killed"), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, (seed, final.stderr)
    out = json.loads(final.stdout)
    assert out["resumed"] is True and out["units_reused"] == seen[-1], (seed, out["units_reused"], seen)
    assert final.stderr.strip().splitlines()[-1].startswith("PASS digits-cnn v1")
    assert unit_rows(db) == (total, total)
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*), min(status), max(status) FROM audits").fetchone() == (1, "done", "done")
    con.close()

    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err
    killed_report = json.loads((tmp_path / "out-killed" / "report.json").read_text())
    ref_report = json.loads((tmp_path / "out-ref" / "report.json").read_text())
    assert killed_report["manifest"]["units_reused"] == seen[-1]
    assert comparable(killed_report) == comparable(ref_report), seed
