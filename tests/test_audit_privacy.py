"""The ``privacy`` audit block: membership inference against the audited model with the truth
known, its report section (AUC, TPR at low FPR, log-log ROC), gate rules, reference models kept in
the cache across a rerun, and place-named errors for bad blocks."""

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
from gauntlet.audit.studies.privacy import PrivacyStudy, PrivacyThreshold
from gauntlet.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

LIRA = {"name": "lira", "reference_models": 2, "train": {"method": "standard", "epochs": 3}}


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("privacy") / "target.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def make_spec(model_file: Path, cache: Path, **over: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "members": {"name": "digits", "split": "train", "n": 120},
        "attacks": ["loss_threshold", LIRA],
        "cache_dir": str(cache),
    }
    block.update(over.pop("privacy", {}))
    spec: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 100, "seed": 0},
        "privacy": block,
        "seed": 0,
    }
    spec.update(over)
    return spec


def test_the_privacy_block_reports_auc_low_fpr_tpr_and_a_log_log_roc(model_file, tmp_path) -> None:
    spec = load_spec(make_spec(model_file, tmp_path / "cache"))
    report = run_audit(spec, store=None).report
    validate_report(report)
    loss, lira = report["privacy"]
    assert loss["name"] == "loss_threshold" and lira["name"] == "lira"
    for t in (loss, lira):
        assert t["members"] == t["nonmembers"] == 100  # balanced: the smaller side (the audited data) sets n
        assert 0 <= t["auc"] <= 1 and 0.5 <= t["balanced_accuracy"] <= 1
        fprs = [p[0] for p in t["roc"]]
        assert fprs[0] == pytest.approx(1e-4) and fprs[-1] == pytest.approx(1.0)
        assert all(b[1] >= a[1] for a, b in zip(t["roc"], t["roc"][1:], strict=False))  # TPR non-decreasing in FPR
    assert loss["queries"] == 200 and lira["info"]["reference_models"] == 2
    assert loss["dp"] is None  # the model says nothing about differential privacy
    assert len(list((tmp_path / "cache").rglob("ref_*.pt"))) == 2  # reference models kept for the next run
    html = render_html(report)
    assert "<section id='privacy'>" in html and "<svg class='roc'" in html and "lira" in html
    lines = PrivacyStudy.text(report)
    assert lines[0].startswith("privacy loss_threshold: AUC ")
    assert PrivacyStudy.summary(report)[0].startswith("membership ")
    metrics = {(m.name, m.labels["attack"]): m.value for m in PrivacyStudy.metrics(report)}
    assert metrics[("privacy_auc", "lira")] == lira["auc"]
    assert metrics[("privacy_tpr_at_1pct_fpr", "loss_threshold")] == loss["tpr_at_1%_fpr"]
    ok = evaluate_gate(report, [PrivacyThreshold(privacy="lira", max_auc=min(1.0, lira["auc"] + 0.01))])
    bad = evaluate_gate(report, [PrivacyThreshold(privacy="lira", max_auc=max(0.0, lira["auc"] - 0.01))])
    assert ok["passed"] is True and bad["passed"] is False


def test_privacy_gate_rules_parse_from_the_command_line() -> None:
    assert parse_threshold("privacy:lira=0.6") == PrivacyThreshold(privacy="lira", max_auc=0.6)
    assert parse_threshold(" privacy : lira = 60% ") == PrivacyThreshold(privacy="lira", max_auc=0.6)
    assert PrivacyThreshold(privacy="lira", max_auc=0.6).describe() == "privacy:lira=0.6"
    with pytest.raises(ConfigError, match="max_auc"):
        parse_threshold("privacy:lira=1.5")


def test_bad_privacy_blocks_are_refused_with_the_place(model_file, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"privacy\.attacks\[0\]"):
        load_spec(make_spec(model_file, tmp_path, privacy={"attacks": ["pgd"]}))
    with pytest.raises(ConfigError, match="not a membership-inference attack"):
        load_spec(make_spec(model_file, tmp_path, privacy={"attacks": ["model_inversion"]}))
    with pytest.raises(ConfigError, match=r"privacy\.attacks\[0\].*population"):
        load_spec(make_spec(model_file, tmp_path, privacy={"attacks": [{"name": "rmia"}]}))
    with pytest.raises(ConfigError, match=r"privacy\.attacks\[0\].*even"):
        load_spec(make_spec(model_file, tmp_path, privacy={"attacks": [{"name": "lira", "reference_models": 3}]}))
    with pytest.raises(ConfigError, match="labelled 'loss_threshold'"):
        load_spec(make_spec(model_file, tmp_path, privacy={"attacks": ["loss_threshold", "loss_threshold"]}))
    with pytest.raises(ConfigError, match="no membership attack is labelled 'nope'"):
        load_spec(make_spec(model_file, tmp_path, thresholds=[{"privacy": "nope", "max_auc": 0.6}]))


def test_a_model_trained_with_dp_sgd_has_its_epsilon_in_the_privacy_report(tmp_path) -> None:
    pytest.importorskip("opacus")
    from typer.testing import CliRunner

    from gauntlet.cli import app

    out = tmp_path / "dp.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "dp_sgd", "--target-epsilon", "3", "--epochs", "1", "--threads", "1",
                                   "--eval-eps", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    spec = make_spec(out, tmp_path / "cache", privacy={"attacks": ["loss_threshold"]})
    report = run_audit(load_spec(spec), store=None).report
    validate_report(report)
    (t,) = report["privacy"]
    assert 0 < t["dp"]["epsilon"] <= 3.0 + 1e-3 and t["dp"]["delta"] == 1e-5
    assert "trained with DP-SGD" in render_html(report)
    assert PrivacyStudy.text(report)[0].startswith("privacy: the model was trained with DP-SGD, epsilon ")


def test_a_reference_attack_significantly_below_chance_raises_the_hygiene_flag(model_file, tmp_path) -> None:
    from gauntlet.audit.studies.privacy import FLAG

    spec = load_spec(make_spec(model_file, tmp_path))
    study = PrivacyStudy.resolve(spec, {})
    entry = {"members": 200, "nonmembers": 200}
    # the AUC's standard error with no signal is sqrt(401 / (12 * 200 * 200)) = 0.0289
    flags = study._flags([{**entry, "auc": 0.30}, {**entry, "auc": 0.30}])
    assert [f["id"] for f in flags] == [FLAG]  # lira only: loss_threshold has no reference models to blame
    assert flags[0]["title"] == "privacy lira: AUC 0.300 is significantly below chance"
    assert study._flags([{**entry, "auc": 0.5}, {**entry, "auc": 0.46}]) == []  # 1.4 standard errors: noise
    assert FLAG in PrivacyStudy.hygiene_checks()
