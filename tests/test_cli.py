"""The CLI: audit / history / compare / demo / attacks, exit codes 0/1/2, one-line errors, --json."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import gauntlet as gt
from gauntlet.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def write_spec(tmp_path: Path, model_file: Path, name: str = "spec.yaml", **over: Any) -> Path:
    spec: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits-cnn", "version": "1", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 64, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.05, 0.2]}],
        "attacks": ["fgsm", {"name": "pgd", "steps": 5}],
        "thresholds": [{"attack": "pgd", "norm": "linf", "eps": 0.05, "min_robust_accuracy": 0.5}],
        "batch_size": 32,
    }
    spec.update(over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def audits_in(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT a.id, a.status, (SELECT count(*) FROM units u WHERE u.audit_id = a.id) FROM audits a").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("command", ["audit", "history", "compare", "demo", "attacks"])
def test_every_command_has_help_and_a_json_mode(command: str) -> None:
    res = invoke(command, "--help")
    assert res.exit_code == 0 and "--json" in res.stdout


def test_attacks_lists_the_registry_as_json() -> None:
    res = invoke("attacks", "--json")
    assert res.exit_code == 0 and {"fgsm", "pgd", "autoattack"} <= set(json.loads(res.stdout))


def test_defenses_lists_the_registry_by_kind_and_refuses_an_unknown_kind() -> None:
    res = invoke("defenses", "--json")
    assert res.exit_code == 0
    table = json.loads(res.stdout)
    assert table["jpeg_compression"]["kind"] == "preprocessing" and table["randomized_smoothing"]["kind"] == "certification"
    only = json.loads(invoke("defenses", "--kind", "training", "--json").stdout)
    assert {"fast_at", "pgd_at", "trades"} <= set(only) and {v["kind"] for v in only.values()} == {"training"}
    bad = invoke("defenses", "--kind", "shield")
    assert bad.exit_code == 2 and "--kind must be one of" in bad.output


def test_audit_passes_fails_the_gate_and_prints_a_summary_line_last(model_file: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, model_file)
    db = tmp_path / "g.db"
    res = invoke("audit", spec, "--out", tmp_path / "out", "--store", f"sqlite:///{db}")
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith("PASS digits-cnn v1: clean") and lines[-1].endswith(f"report {tmp_path / 'out' / 'report.html'}")
    assert any(re.match(r"worst_case +linf", line) for line in lines)
    assert res.stderr == ""  # not a terminal: no progress bar
    assert (tmp_path / "out" / "report.json").exists() and (tmp_path / "out" / "report.html").exists()

    res = invoke("audit", spec, "--out", tmp_path / "out2", "--store", f"sqlite:///{db}", "--fail-under", "pgd:linf:0.2=0.9", "--json")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["exit_code"] == 1 and out["gate"]["passed"] is False
    assert out["gate"]["violations"] == [
        f"pgd linf ε=0.2: robust accuracy {100 * next(r['robust_accuracy'] for r in out['results'] if r['attack'] == 'pgd' and r['eps'] == 0.2):.1f}% < required 90.0%"
    ]
    assert res.stderr.strip().splitlines()[-1].startswith("FAIL digits-cnn v1: pgd linf ε=0.2: robust accuracy")
    assert [a[1] for a in audits_in(db)] == ["done", "done"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bad_spec", r"^error: threats\[0\]\.eps\[1\]: must be a finite number > 0, got -0\.2 \(spec\.yaml, line \d+\)$"),
        ("unknown_attack", r"^error: attacks\[1\]: unknown attack 'pdg'; did you mean 'pgd'\?"),
        ("missing_spec", r"^error: spec file .* does not exist"),
        ("unreadable_model", r"^error: model: cannot tell the format of"),
        ("pickle_model", r"^error: model: .*trust"),
        ("wrong_shape", r"^error: data: x has per-sample shape \(1, 6, 6\) but the model expects \(1, 8, 8\)"),
        ("wrong_shape_torchscript", r"^error: data: the model cannot take inputs of shape \(1, 6, 6\)"),
        ("sqlite_nowhere", r"^error: cannot open store sqlite:////nonexistent/dir/x\.db: folder '/nonexistent/dir' does not exist"),
        ("postgres_nohost", r"^error: cannot (open|reach) store postgresql://nohost/db"),
        ("bad_fail_under", r"^error: --fail-under 'pgdd:linf:0\.05=0\.5'\.attack: no attack labelled 'pgdd'"),
        ("bad_regression", r"^error: --max-regression 'lots'"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_leave_the_store_untouched(
    case: str, expected: str, model_file: Path, tmp_path: Path, digits_net: torch.nn.Module
) -> None:
    db = tmp_path / "g.db"
    good = write_spec(tmp_path, model_file, name="good.yaml", attacks=["fgsm"], thresholds=[])
    assert invoke("audit", good, "--out", tmp_path / "first", "--store", f"sqlite:///{db}").exit_code == 0
    before = audits_in(db)
    store = f"sqlite:///{db}"
    extra: list[str] = []
    spec = good
    if case == "bad_spec":
        spec = write_spec(tmp_path, model_file, threats=[{"norm": "linf", "eps": [0.05, -0.2]}], thresholds=[])
    elif case == "unknown_attack":
        spec = write_spec(tmp_path, model_file, attacks=["fgsm", "pdg"])
    elif case == "missing_spec":
        spec = tmp_path / "nope.yaml"
    elif case == "unreadable_model":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"\x00\x01garbage" * 50)
        spec = write_spec(tmp_path, bad, thresholds=[])
    elif case == "pickle_model":
        import pickle

        bad = tmp_path / "net.pkl"
        bad.write_bytes(pickle.dumps({"a": 1}))
        spec = write_spec(tmp_path, bad, model={"path": str(bad)}, thresholds=[])
    elif case in ("wrong_shape", "wrong_shape_torchscript"):
        npz = tmp_path / "small.npz"
        np.savez(npz, x=np.random.default_rng(0).random((10, 1, 6, 6), dtype=np.float32), y=np.arange(10))
        model = {"path": str(model_file), "arch": "digits_cnn"}
        if case == "wrong_shape_torchscript":
            ts = tmp_path / "net.ts"
            with warnings.catch_warnings():  # torch.jit.trace is deprecated upstream; the archive is still valid
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.trace(digits_net.eval(), torch.zeros(1, 1, 8, 8)).save(str(ts))
            model = {"path": str(ts)}
        spec = write_spec(tmp_path, model_file, model=model, data={"path": str(npz)}, thresholds=[])
    elif case == "sqlite_nowhere":
        store = "sqlite:////nonexistent/dir/x.db"
    elif case == "postgres_nohost":
        store = "postgresql://nohost/db"
    elif case == "bad_fail_under":
        extra = ["--fail-under", "pgdd:linf:0.05=0.5"]
    elif case == "bad_regression":
        extra = ["--max-regression", "lots"]
    res = invoke("audit", spec, "--out", tmp_path / "out", "--store", store, *extra)
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.output
    assert re.search(expected, res.stderr.strip()), res.stderr
    assert audits_in(db) == before
    assert not (tmp_path / "out").exists()
    res = invoke("audit", spec, "--out", tmp_path / "out", "--store", store, *extra, "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["exit_code"] == 2


def test_history_and_compare_show_audits_and_mark_regressions(model_file: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    weak = write_spec(tmp_path, model_file, name="weak.yaml", thresholds=[],
                      attacks=[{"name": "pgd", "steps": 1, "step_size": 0.001, "random_start": False}])
    strong = write_spec(tmp_path, model_file, name="strong.yaml", attacks=[{"name": "pgd", "steps": 10}], thresholds=[])
    assert invoke("audit", weak, "--out", tmp_path / "a", "--store", db).exit_code == 0
    res = invoke("audit", strong, "--out", tmp_path / "b", "--store", db, "--max-regression", "0pp")
    assert res.exit_code == 1 and "since audit #1" in res.stdout.strip().splitlines()[-1]

    res = invoke("history", "--store", db)
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["id", "created"] and lines[1].split()[0] == "2" and lines[2].split()[0] == "1"
    assert "FAIL" in lines[1] and lines[2].split()[-1] == "-"  # the first audit had no gate configured
    hist = json.loads(invoke("history", "--store", db, "--json").stdout)
    assert [h["id"] for h in hist] == [2, 1] and hist[0]["gate"]["passed"] is False and hist[1]["units"] == {"done": 4, "total": 4}  # 2 + 2 of the Square cross-check

    res = invoke("compare", "1", "2", "--store", db)
    assert res.exit_code == 0
    assert any(line.startswith("pgd") and line.endswith("REGRESSION") for line in res.stdout.splitlines())
    assert res.stdout.strip().splitlines()[-1].startswith("audit #2 vs #1:") and "regression" in res.stdout.splitlines()[-1]
    cmp = json.loads(invoke("compare", "1", "2", "--store", db, "--json").stdout)
    assert cmp["regressions"] >= 1 and all(r["delta"] <= 1e-12 for r in cmp["rows"])
    assert json.loads(invoke("compare", "1", "2", "--store", db, "--json", "--max-regression", "100pp").stdout)["regressions"] == 0

    res = invoke("compare", "1", "7", "--store", db)
    assert res.exit_code == 2 and "has no audit 7" in res.stderr
    res = invoke("history", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert res.exit_code == 2 and "does not exist" in res.stderr and not (tmp_path / "none.db").exists()


def test_demo_audits_the_cached_digits_model_and_prints_the_report_path(
    digits_net: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gauntlet.demo import digits_model_path

    monkeypatch.setenv("GAUNTLET_CACHE", str(tmp_path / "cache"))
    cached = digits_model_path(0)
    cached.parent.mkdir(parents=True)
    torch.save(digits_net.state_dict(), cached)  # a warm cache: no training in the test
    out = tmp_path / "report"
    res = invoke("demo", "--out", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1].endswith(f"report {out / 'report.html'}")
    rep = json.loads((out / "report.json").read_text())
    # the quick preset, and the Square cross-check every gradient-only evaluation gets
    assert rep["data"]["n"] == 450 and {r["attack"] for r in rep["results"]} == {"fgsm", "pgd", "square (cross-check)"}
    assert {r["norm"] for r in rep["worst_case"]} == {"linf", "l2"}
    assert rep["model"]["name"] == "digits-cnn-demo" and rep["gallery"]
    assert (out / "report.html").stat().st_size > 10_000 and (out / "gauntlet.db").exists()
    res = invoke("demo", "--out", out, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["report_html"] == str(out / "report.html")


def test_version_short_help_and_a_light_import() -> None:
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"gauntlet {gt.__version__}"
    res = invoke("-h")
    assert res.exit_code == 0 and "Usage:" in res.stdout and "audit" in res.stdout
    # import gauntlet (and so gauntlet --help) does not load PyTorch until a subpackage is used
    code = "import sys, gauntlet; print('torch' in sys.modules); gauntlet.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.split() == ["False", "True"]
