"""Executors: the Ray executor gives the local executor's report, retries dead workers, names a unit
that keeps failing, and refuses a missing Ray or an unreachable cluster before anything is written."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit import layout
from gauntlet.audit.executors import AutoExecutor, LocalExecutor, RayExecutor, Task, make_executor
from gauntlet.audit.report import comparable
from gauntlet.cli import app
from gauntlet.errors import ConfigError, ExecutorError

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'gauntlet[ray]' to test the Ray executor")


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cluster() -> Any:
    """One local Ray cluster (2 CPUs) for the module; executors use it without owning it."""
    before = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS", "RAY_ENABLE_UV_RUN_RUNTIME_ENV")}
    RayExecutor(workers=2).start()
    # the workers got the driver's import path; the caller's environment is as it was
    assert {k: os.environ.get(k) for k in before} == before
    yield ray
    ray.shutdown()


def spec_48_units(model_file: Path) -> dict[str, Any]:
    """2 threats x 2 attacks x 8 batches = 32 units, and the Square cross-check (fgsm and pgd are gradient-only)
    at each threat over the same 8 batches: 48 units."""
    return {
        "model": {"path": str(model_file), "name": "digits-cnn", "version": "1", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 96, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.05, 0.1, 0.2]}, {"norm": "l2", "eps": [0.5, 1.0]}],
        "attacks": ["fgsm", {"name": "pgd", "steps": 5}],
        "batch_size": 12,
        "seed": 0,
    }


def test_a_ray_audit_on_two_workers_equals_the_local_audit_and_stores_every_unit_once(
    model_file: Path, tmp_path: Path, cluster: Any
) -> None:
    spec = load_spec(spec_48_units(model_file))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray workers run one torch thread each: compare like with like
    try:
        local = run_audit(spec, store=None, executor="local").report
        db = tmp_path / "g.db"
        run = run_audit(spec, store=f"sqlite:///{db}", executor=RayExecutor(workers=2))
    finally:
        torch.set_num_threads(previous)
    assert run.report["manifest"]["plan"]["units"] == 48
    assert run.report["manifest"]["executor"]["name"] == "ray"
    assert comparable(run.report) == comparable(local)  # results, worst case, flags, gallery: all equal
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT key) FROM records WHERE study != 'core'").fetchone() == (48, 48)
    finally:
        con.close()


class _Flaky:
    """A stand-in study: unit ``"crash"`` kills its worker on the first try (a marker file
    remembers the try), unit ``"always"`` on every try, unit ``"raise"`` raises."""

    name = "flaky"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def run(self, env: Any, unit: Any) -> dict[str, Any]:
        if unit.key == "crash" and not os.path.exists(self.marker):
            Path(self.marker).write_text("tried")
            os._exit(1)
        if unit.key == "always":
            os._exit(1)
        if unit.key == "raise":
            raise ValueError("a bug in the study")
        return {"key": unit.key, "value": env * 2}


class _Unit:
    def __init__(self, key: str) -> None:
        self.key = key

    def describe(self) -> str:
        return f"unit {self.key}"


def test_a_dead_worker_is_retried_and_a_unit_that_always_kills_it_ends_the_audit_naming_it(
    tmp_path: Path, cluster: Any
) -> None:
    study = _Flaky(str(tmp_path / "marker"))
    done: dict[str, Any] = {}
    ex = RayExecutor(max_retries=2)
    tasks = [Task(study, _Unit(k), i) for i, k in enumerate(["a", "crash", "b"])]
    ex.run(21, tasks, lambda t, rec: done.update({t.key: rec}))
    assert done == {k: {"key": k, "value": 42} for k in ("a", "crash", "b")}  # "crash" ran twice, once to the end

    done.clear()
    with pytest.raises(ExecutorError, match=r"^unit 'unit always' \(flaky\): its worker died on each of 3 tries") as info:
        ex.run(21, [Task(study, _Unit("always"), 0)], lambda t, rec: done.update({t.key: rec}))
    assert "\n" not in str(info.value)
    with pytest.raises(ExecutorError, match=r"^unit 'unit raise' \(flaky\) failed: ValueError: a bug in the study"):
        ex.run(21, [Task(study, _Unit("raise"), 0)], lambda t, rec: None)


def test_local_executor_runs_in_plan_order_given_and_validates_its_names() -> None:
    seen: list[str] = []

    class Study:
        name = "s"

        def run(self, env: Any, unit: Any) -> dict[str, Any]:
            return {"k": unit.key}

    LocalExecutor().run(None, [Task(Study(), _Unit(k), i) for i, k in enumerate("xyz")], lambda t, r: seen.append(r["k"]))
    assert seen == ["x", "y", "z"]
    with pytest.raises(ConfigError, match="--executor 'dask': unknown executor; use one of local, auto, ray"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        make_executor("local", address="127.0.0.1:6379")


def test_an_unreachable_ray_address_is_one_line_exit_2_and_nothing_is_written(model_file: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_48_units(model_file)))
    db = tmp_path / "g.db"
    res = CliRunner().invoke(app, [
        "audit", str(spec), "--out", str(tmp_path / "out"), "--store", f"sqlite:///{db}",
        "--executor", "ray", "--ray-address", "127.0.0.1:1",
    ])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--ray-address: nothing answers at the given Ray address" in lines[0]
    assert not db.exists() and not (tmp_path / "out").exists()


def test_executor_ray_without_ray_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ModuleNotFoundError
    with pytest.raises(ExecutorError, match=r"pip install 'gauntlet\[ray\]'"):
        RayExecutor().start()


def test_the_json_output_of_a_cli_audit_names_the_executor(model_file: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    small = {**spec_48_units(model_file), "threats": [{"norm": "linf", "eps": 0.1}], "attacks": ["fgsm"], "batch_size": 96}
    spec.write_text(yaml.safe_dump(small))
    res = CliRunner().invoke(app, ["audit", str(spec), "--out", str(tmp_path / "out"), "--store",
                                   f"sqlite:///{tmp_path / 'g.db'}", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["manifest"]["executor"] == {"name": "local"}


def _ray_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make auto measure even a small audit and find Ray faster: inter-op 2.0x against intra-op
    1.67x one thread, Ray's start and per-unit overhead waived."""
    monkeypatch.setattr(layout, "MEASURE_MIN_S", 0.0)
    monkeypatch.setattr(layout, "RAY_FIXED_S", 0.0)
    monkeypatch.setattr(layout, "RAY_UNIT_S", 0.0)
    monkeypatch.setattr(layout, "RAY_MARGIN", 0.0)
    monkeypatch.setattr(
        layout, "measure_layouts",
        lambda net, x, cores, **kw: layout.LayoutTimes(cores=cores, one=1.0, intra=0.6, inter=1.0, batch=len(x), passes=1),
    )


def test_an_auto_audit_that_picks_ray_runs_the_rest_on_the_cluster_and_equals_the_local_audit(
    model_file: Path, tmp_path: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(spec_48_units(model_file))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # auto's first unit and Ray's workers run one thread: compare like with like
    try:
        local = run_audit(spec, store=None, executor="local").report
    finally:
        torch.set_num_threads(previous)
    _ray_wins(monkeypatch)
    db = tmp_path / "g.db"
    with AutoExecutor(workers=2) as auto:
        run = run_audit(spec, store=f"sqlite:///{db}", executor=auto)
    ex = run.report["manifest"]["executor"]
    assert (ex["name"], ex["layout"], ex["threads"]) == ("auto", "ray", 1) and "saved on 47 units" in ex["why"]
    assert comparable(run.report) == comparable(local)
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT key) FROM records WHERE study != 'core'").fetchone() == (48, 48)
    finally:
        con.close()
    assert ray.is_initialized()  # the module's cluster was used, not started (nor stopped) by auto
    assert torch.get_num_threads() == previous


def test_auto_runs_in_process_with_one_log_line_when_ray_does_not_start(
    model_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    small = {**spec_48_units(model_file), "threats": [{"norm": "linf", "eps": 0.1}], "attacks": ["fgsm"], "batch_size": 48}
    spec = load_spec(small)
    _ray_wins(monkeypatch)

    def refuse(self: RayExecutor) -> None:
        raise ExecutorError("--executor ray: cannot connect to a local Ray cluster (test)")

    monkeypatch.setattr(RayExecutor, "start", refuse)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # auto runs its first unit, and falls back, on one thread
    try:
        local = run_audit(spec, store=None, executor="local").report
        with caplog.at_level("WARNING", logger="gauntlet.audit.executors"):
            with AutoExecutor(workers=2) as auto:
                run = run_audit(spec, store=None, executor=auto)
    finally:
        torch.set_num_threads(previous)
    ex = run.report["manifest"]["executor"]
    assert (ex["layout"], ex["threads"]) == ("local", 1) and ex["why"].startswith("Ray did not start")
    assert [r.message for r in caplog.records if "Ray did not start" in r.message]
    assert comparable(run.report) == comparable(local)
