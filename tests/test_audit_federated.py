"""The ``federated`` audit block: the audited architecture trained on Flower with malicious clients
under each strategy, its report section (per-round curves, rejections, baseline beside each
attack), the gate, a rerun that trains nothing, and place-named errors for bad blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.gate import evaluate_gate, parse_threshold
from gauntlet.audit.html import render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.studies.federated import FederatedStudy, FederatedThreshold
from gauntlet.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("flwr", reason="Flower is the federated extra (pip install 'gauntlet[federated]')")


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("federated") / "target.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def make_spec(model_file: Path, cache: Path, **block: Any) -> dict[str, Any]:
    fed: dict[str, Any] = {
        "train": {"name": "digits", "split": "train", "n": 600},
        "clients": 5, "rounds": 2, "malicious": 0.2, "num_cpus": 1,
        "strategies": [{"name": "krum", "f": 1}],
        "attacks": [{"name": "scaling", "flip": True, "label": "flipped"}],
        "local": {"lr": 0.05},
        "cache_dir": str(cache),
    }
    fed.update(block)
    return {
        "model": {"path": str(model_file), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 150, "seed": 0},
        "federated": fed,
        "seed": 0,
    }


def test_the_federated_block_reports_each_strategy_under_each_attack_beside_its_baseline(model_file, tmp_path) -> None:
    spec = load_spec(make_spec(model_file, tmp_path / "cache"))
    report = run_audit(spec, store=f"sqlite:///{tmp_path / 'audits.db'}").report
    validate_report(report)
    base, attacked = report["federated"]
    assert (base["strategy"], base["attack"]) == ("krum", "none") and (attacked["strategy"], attacked["attack"]) == ("krum", "flipped")
    assert [r["round"] for r in attacked["rounds"]] == [1, 2] and len(attacked["malicious"]) == 1
    # Krum leaves the boosted, flipped update out every round
    assert attacked["malicious_rejected_share"] == 1.0 and base["malicious"] == []
    assert attacked["baseline_accuracy"] == base["accuracy"]
    assert attacked["accuracy"] > attacked["initial_accuracy"]
    html = render_html(report)
    assert "<section id='federated'>" in html and "<svg class='curve'" in html and "attack: flipped" in html
    assert FederatedStudy.text(report)[1].startswith("federated krum under flipped: accuracy ")
    metrics = {(m.labels["strategy"], m.labels["attack"]): m.value for m in FederatedStudy.metrics(report)}
    assert metrics[("krum", "flipped")] == attacked["accuracy"]
    ok = evaluate_gate(report, [FederatedThreshold(federated="krum", attack="flipped", min_accuracy=attacked["accuracy"] - 0.01)])
    bad = evaluate_gate(report, [parse_threshold(f"federated:krum:flipped={100 * attacked['accuracy'] + 1:.1f}%")])
    assert ok["passed"] and not bad["passed"]
    # the same spec again: every unit is in the store, nothing is trained
    again = run_audit(spec, store=f"sqlite:///{tmp_path / 'audits.db'}").report
    assert again["federated"][1]["accuracy"] == attacked["accuracy"]


def test_bad_federated_blocks_are_place_named(model_file, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"federated.strategies\[0\]: .*5 clients are too few for Krum with f=2"):
        load_spec(make_spec(model_file, tmp_path, strategies=[{"name": "krum", "f": 2}]))
    with pytest.raises(ConfigError, match=r"federated.attacks\[0\]: .*did you mean 'alie'"):
        load_spec(make_spec(model_file, tmp_path, attacks=["alei"]))
    with pytest.raises(ConfigError, match=r"federated.malicious"):
        load_spec(make_spec(model_file, tmp_path, malicious=1.0))
    spec = load_spec(make_spec(model_file, tmp_path))
    with pytest.raises(ConfigError, match=r"no strategy is labelled 'median'"):
        FederatedStudy.resolve(spec, {}).check_threshold(FederatedThreshold(federated="median", min_accuracy=0.5), "thresholds[0]")


def test_gauntlet_federated_runs_the_study_from_the_command_line(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from tests.test_cli_manners import invoke

    monkeypatch.setenv("GAUNTLET_CACHE", str(tmp_path / "cache"))
    args = ["federated", str(model_file), "--arch", "digits_cnn", "--strategy", "median", "--attack", "ipm:eps=0.5",
            "--clients", "4", "--rounds", "1", "--malicious", "0.25", "--n", "100", "--lr", "0.05",
            "--store", f"sqlite:///{tmp_path / 'g.db'}", "--out", str(tmp_path / "rep"), "--json"]
    res = invoke(*args)
    assert res.exit_code == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert [(t["strategy"], t["attack"]) for t in out["federated"]] == [("median", "none"), ("median", "ipm")]
    acc = out["federated"][1]["accuracy"]
    gated = invoke(*args, "--fail-under", f"federated:median:ipm={min(1.0, acc + 0.01):.4f}")
    assert gated.exit_code == 1 and json.loads(gated.stdout)["gate"]["passed"] is False
    assert (tmp_path / "rep" / "report.html").exists() and any((tmp_path / "cache" / "federated").iterdir())
    res = invoke("federated", str(model_file), "--arch", "digits_cnn", "--strategy", ":f=2", "--store", f"sqlite:///{tmp_path / 'g.db'}")
    assert res.exit_code == 2 and "--strategy ':f=2': give a name" in res.stderr
    res = invoke("federated", str(model_file), "--arch", "digits_cnn", "--attack", "badnets", "--store", f"sqlite:///{tmp_path / 'g.db'}")
    assert res.exit_code == 2 and "'badnets' is a poisoning attack, not a federated one" in res.stderr
