"""A masked evaluation cannot pass quietly: a Square cross-check beside gradient-only attacks, a
large-ε probe that counts survivors, and Square in place of gradient attacks that cannot run."""

from __future__ import annotations

import json
import pickle
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import gauntlet as gt
from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.flags import compute_flags
from gauntlet.audit.runner import prepare
from gauntlet.audit.studies.evasion import CROSS_CHECK_LABEL, NO_GRADIENTS_LABEL, EvasionStudy
from gauntlet.cli import app
from gauntlet.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread_module")

N = 60


class Shattered(nn.Module):
    """Mild gradient shattering: a high-frequency wobble of 0.005 on the input.  The forward pass
    barely changes; the input gradient is dominated by the wobble's derivative (±5), so FGSM and
    PGD follow noise."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.005 * torch.sin(1000 * x))


class Thermometer(nn.Module):
    """Thermometer encoding (Buckman et al. 2018) collapsed to one channel: each value becomes the
    share of 16 levels it exceeds.  Comparisons have no gradient: autograd finds no path at all."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("levels", torch.linspace(0.03, 0.97, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.unsqueeze(-1) > self.levels).float().mean(-1))


class Memorised(nn.Module):
    """A lookup in front of the network, as a deployed cache of known inputs would be: an input
    within L∞ 0.55 of a stored one gets the stored label with an overwhelming logit.  Half the input
    range (ε = 0.5) never leaves that box, so these inputs keep their answer under any perturbation,
    while every other input is the honest network's."""

    def __init__(self, net: nn.Module, keys: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("keys", keys.clone())
        self.register_buffer("bonus", 1000.0 * nn.functional.one_hot(labels, 10).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x.unsqueeze(1) - self.keys.unsqueeze(0)).abs().flatten(2).amax(dim=2)
        return self.net(x) + (dist <= 0.55).float() @ self.bonus


def scripted(module: nn.Module, path: Path) -> Path:
    """A TorchScript file of ``module`` (what a user would ship; loaded without --trust)."""
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; the files are still valid
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(module.eval(), torch.rand(2, 1, 8, 8), check_trace=False).save(str(path))
    return path


@pytest.fixture(scope="module")
def files(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("masking")
    return {
        "honest": scripted(digits_net, d / "honest.pt"),
        "shattered": scripted(Shattered(digits_net), d / "shattered.pt"),
        "thermometer": scripted(Thermometer(digits_net), d / "thermometer.pt"),
    }


def spec(path: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": {"path": str(path), "name": path.stem, "num_classes": 10, "input_shape": [1, 8, 8]},
        "data": {"name": "digits", "n": N, "seed": 0},
        "threats": [{"norm": "linf", "eps": 0.1}],
        "attacks": {"preset": "quick"},
        "batch_size": 40,
    }
    s.update(over)
    return s


def audit(tmp_path: Path, s: dict[str, Any], *extra: str) -> tuple[int, str, dict[str, Any]]:
    """``gauntlet audit`` on ``s``: exit code, output and report.json."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(s))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["audit", str(f), "--out", str(out), "--store", f"sqlite:///{tmp_path / 'g.db'}", *extra])
    return res.exit_code, res.output, json.loads((out / "report.json").read_text())


def flag(report: dict[str, Any], fid: str) -> dict[str, Any] | None:
    return next((f for f in report["flags"] if f["id"] == fid), None)


def test_shattered_gradients_under_the_quick_preset_are_caught_by_the_cross_check_and_fail_the_gate(
    files: dict[str, Path], tmp_path: Path
) -> None:
    code, output, rep = audit(tmp_path, spec(files["shattered"]), "--fail-under", "worst_case:linf:0.1=0%")
    assert code == 1 and "hygiene flag black_box_beats_white_box" in output
    assert [r["attack"] for r in rep["results"]] == ["fgsm", "pgd", CROSS_CHECK_LABEL]
    cross = rep["results"][2]
    f = flag(rep, "black_box_beats_white_box")
    assert f is not None and f["severity"] == "warning"
    (case,) = f["evidence"]["cases"]
    assert case["black_box"] == CROSS_CHECK_LABEL and case["white_box"] == ["fgsm", "pgd"] and case["samples"] == cross["n"]
    # PGD-20 keeps ~80% robust, Square (300 queries) brings the same points to ~60%
    assert case["white_box_robust_accuracy"] - case["black_box_robust_accuracy"] >= 0.1 and case["p_value"] < 0.05
    # what Square broke is broken: the worst case includes it
    (worst,) = rep["worst_case"]
    assert CROSS_CHECK_LABEL in worst["attacks"]
    pgd = rep["results"][1]
    assert worst["robust_count"] <= pgd["robust_count"] - case["broken_only_by_black_box"]
    assert {"label": CROSS_CHECK_LABEL, "name": "square"} in rep["evaluation_strength"]["attacks"]
    # the cross-check's units are records like any other: 2 batches each of fgsm, pgd and Square
    con = sqlite3.connect(tmp_path / "g.db")
    try:
        (stored,) = con.execute("SELECT count(*) FROM records WHERE study = 'evasion'").fetchone()
    finally:
        con.close()
    assert stored == 6
    # not gated: the same flag is shown and the exit code is 0
    code, output, _ = audit(tmp_path / "ungated", spec(files["shattered"]))
    assert code == 0 and "black_box_beats_white_box" in output


def test_an_honest_model_passes_the_cross_check_which_counts_towards_the_worst_case_but_never_regresses(
    files: dict[str, Path],
) -> None:
    rep = run_audit(load_spec(spec(files["honest"])), store=None).report
    assert flag(rep, "black_box_beats_white_box") is None and flag(rep, "no_full_break_at_large_eps") is None
    cross = next(r for r in rep["results"] if r["attack"] == CROSS_CHECK_LABEL)
    assert cross["eps"] == 0.1 and cross["n"] <= N
    metric = next(m for m in EvasionStudy.metrics(rep) if m.labels["attack"] == CROSS_CHECK_LABEL)
    assert metric.regression is False


def test_the_cross_check_runs_once_per_gradient_only_threat_at_the_headline_or_largest_eps(files: dict[str, Path]) -> None:
    def cross_units(**over: Any) -> list[Any]:
        prep = prepare(load_spec(spec(files["honest"], **over)))
        return [u for u in prep.units if getattr(u, "attack_label", None) == CROSS_CHECK_LABEL]

    threats = [{"norm": "linf", "eps": [0.05, 0.1, 0.2, 0.6]}, {"norm": "l2", "eps": [0.5, 1.0]}, {"norm": "l1", "eps": [2.0]}]
    units = cross_units(threats=threats)
    # the largest ε below half the input range (0.6 is not), no Square for L1; batches of 40 samples
    assert sorted({(u.norm, u.eps) for u in units}) == [("l2", (1.0,)), ("linf", (0.2,))]
    linf = [(u.start, u.stop) for u in units if u.norm == "linf"]
    assert linf[0] == (0, 40) and linf[1][0] == 40 and len(linf) == 2
    assert all(u.params == {"max_queries": 300} and u.stop <= N for u in units)
    again = cross_units(threats=threats)
    assert [(u.key, u.seed) for u in units] == [(u.key, u.seed) for u in again]
    assert {u.eps for u in cross_units(threats=threats[:1], headline_eps=0.1)} == {(0.1,)}
    # a score-based attack (Square, or AutoAttack which ends with it) already runs: no cross-check
    assert cross_units(attacks=["pgd", {"name": "square", "max_queries": 50}]) == []
    assert cross_units(attacks=[{"name": "autoattack", "steps": 2}]) == []


def test_the_large_eps_probe_counts_survivors_and_flags_a_model_that_keeps_a_few_percent(
    digits_net: nn.Module, digits_test: gt.data.Dataset
) -> None:
    x, y = digits_test.x[:N].clone(), digits_test.y[:N].clone()

    def wrap(m: nn.Module) -> gt.models.TorchModel:
        return gt.models.TorchModel(m, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))

    honest = wrap(digits_net)
    assert flag({"flags": compute_flags(honest, x, y, [], [True] * N)}, "no_full_break_at_large_eps") is None
    correct = (honest.predict(x) == y).nonzero().flatten()
    keep = correct[[3, 17]]  # 2 of 60 (3.3%) keep their answer whatever the perturbation
    f = flag({"flags": compute_flags(wrap(Memorised(digits_net, x[keep], y[keep])), x, y, [], [True] * N)},
             "no_full_break_at_large_eps")
    assert f is not None
    (case,) = f["evidence"]["cases"]
    assert case["norm"] == "linf" and case["eps"] == 0.5 and case["samples"] == int(correct.numel())
    assert case["survivors"] == 2 and case["fallback_survivors"] == 2 and case["allowed"] == 1
    assert "broke none of them either" in f["explanation"]
    # one survivor is within the tolerance
    one = compute_flags(wrap(Memorised(digits_net, x[keep[:1]], y[keep[:1]])), x, y, [], [True] * N)
    assert flag({"flags": one}, "no_full_break_at_large_eps") is None


def test_a_model_without_a_gradient_path_is_audited_with_square_and_flagged(files: dict[str, Path], tmp_path: Path) -> None:
    s = spec(files["thermometer"], threats=[{"norm": "linf", "eps": 0.1}, {"norm": "l1", "eps": 2.0}])
    code, output, rep = audit(tmp_path, s)
    assert code == 0 and "no_gradient_path" in output
    assert [(r["attack"], r["norm"]) for r in rep["results"]] == [(NO_GRADIENTS_LABEL, "linf")]
    assert 0.0 < rep["results"][0]["robust_accuracy"] < rep["clean_accuracy"]
    f = flag(rep, "no_gradient_path")
    assert f is not None and f["severity"] == "warning"
    assert f["evidence"]["replaced"] == ["fgsm", "pgd"] and f["evidence"]["not_evaluated"] == ["threats[1] (l1)"]
    assert f["evidence"]["substitutes"] == [{"label": NO_GRADIENTS_LABEL, "queries": 1000, "threat": "linf ε=0.1"}]
    assert "does not depend differentiably" in f["evidence"]["reason"] and flag(rep, "zero_gradients") is None
    assert rep["evaluation_strength"]["attacks"] == [{"label": NO_GRADIENTS_LABEL, "name": "square"}]
    code, output, _ = audit(tmp_path / "gated", spec(files["thermometer"]), "--fail-under", "worst_case:linf:0.1=0%")
    assert code == 1 and "hygiene flag no_gradient_path" in output


def test_a_scores_only_model_gets_square_in_place_of_gradient_attacks(digits_train: gt.data.Dataset, tmp_path: Path) -> None:
    from sklearn.linear_model import RidgeClassifier  # type: ignore[import-untyped]

    ridge = RidgeClassifier(alpha=1.0).fit(digits_train.x.reshape(len(digits_train.x), -1).numpy(), digits_train.y.numpy())
    path = tmp_path / "ridge.pkl"
    path.write_bytes(pickle.dumps(ridge))
    s = spec(path)
    s["model"]["trust"] = True
    rep = run_audit(load_spec(s), store=None, fail_under=[EvasionStudy.parse_threshold("worst_case:linf:0.1=0%")]).report
    assert [r["attack"] for r in rep["results"]] == [NO_GRADIENTS_LABEL]
    f = flag(rep, "no_gradient_path")
    assert f is not None and f["evidence"]["reason"].startswith("the model offers no input gradients")
    assert rep["gate"]["passed"] is False and rep["gate"]["violations"][0].startswith("hygiene flag no_gradient_path")


def test_reserved_labels_are_refused_before_anything_is_written(files: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with pytest.raises(ConfigError, match=r"^attacks\[0\]\.label: labels ending in '\(cross-check\)'"):
        run_audit(load_spec(spec(files["honest"], attacks=[{"name": "pgd", "label": CROSS_CHECK_LABEL}])),
                  store=f"sqlite:///{db}", out_dir=tmp_path / "out")
    assert not db.exists() and not (tmp_path / "out").exists()
