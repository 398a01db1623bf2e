"""The ``poisoning`` audit block: the audited architecture retrained on a poisoned training set with
the spec's recipe, attack success beside the clean baseline, gate rules, resuming an interrupted
study mid-training, the transfer (finetune_last) setting, ``gauntlet poison``, and place-named
errors for bad blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.gate import evaluate_gate, parse_threshold
from gauntlet.audit.html import render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.studies.poisoning import PoisoningStudy, PoisoningThreshold, default_cache_dir
from gauntlet.defenses.training._base import Trainer
from gauntlet.errors import ConfigError, DataError, GauntletError

pytestmark = pytest.mark.usefixtures("one_thread")

# a solid 2x2 corner trigger: on 8x8 digits the pixels it sets are ones the digits never use
BADNETS = {"name": "badnets", "fraction": 0.05, "target_class": 0, "patch_size": 2, "pattern": "square", "margin": 0}


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("poisoning") / "target.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def make_spec(model_file: Path, cache: Path, **over: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "train": {"name": "digits", "split": "train"},
        "training": {"method": "standard", "epochs": 15},
        "attacks": [BADNETS, {"name": "badnets", "label": "tiny", "fraction": 0.002, "target_class": 0, "patch_size": 2, "pattern": "square", "margin": 0}],
        "cache_dir": str(cache),
    }
    block.update(over.pop("poisoning", {}))
    spec: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 200, "seed": 0},
        "poisoning": block,
        "seed": 0,
    }
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def report(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("cache")
    return run_audit(load_spec(make_spec(model_file, cache)), store=None).report  # type: ignore[no-any-return]


def test_the_section_has_one_entry_per_attack_with_the_clean_baseline_beside_it(report) -> None:
    validate_report(report)
    entries = report["poisoning"]
    assert [t["name"] for t in entries] == ["badnets", "tiny"]
    full, tiny = entries
    assert full["goal"] == "backdoor" and full["n_poison"] == round(0.05 * 1347) and full["n"] == 200
    assert tiny["n_poison"] == round(0.002 * 1347)
    assert full["training"] == {"method": "standard", "epochs": 15} and full["init"] == "scratch" and full["defenses"] == []
    # the trigger takes over a model trained on 5% poison while a clean model ignores it ...
    assert full["success_rate"] >= 0.9 and full["baseline_success_rate"] <= 0.1
    # ... and clean accuracy holds (within a few test samples of the clean retraining)
    assert abs(full["clean_accuracy"] - full["baseline_clean_accuracy"]) <= 0.04
    # three poisoned rows are not enough to plant it
    assert tiny["success_rate"] < full["success_rate"] - 0.3
    assert full["baseline_success_rate"] == tiny["baseline_success_rate"]


def test_a_defense_stage_flags_on_the_poisoned_model_and_retraining_without_its_rows_lowers_the_success(
    model_file: Path, tmp_path: Path
) -> None:
    spec = make_spec(model_file, tmp_path, poisoning={
        "attacks": [BADNETS], "defenses": [{"name": "clustering", "space": "features", "score": "spread", "expected_fraction": 0.05}],
    })
    rep = run_audit(load_spec(spec), store=None).report
    validate_report(rep)
    (t,) = rep["poisoning"]
    (d,) = t["defenses"]
    assert d["defense"] == "clustering" and d["params"] == {"space": "features", "score": "spread", "expected_fraction": 0.05}
    # it flags 1.5x the expected share; the rows it removes are mostly poison
    assert d["removed"] == pytest.approx(1.5 * 0.05 * 1347, abs=10) and d["removed_per_poison"] == pytest.approx(d["removed"] / t["n_poison"])
    # measured 0.70 / 0.47 (chance precision is the poison share, 0.05)
    assert d["recall"] >= 0.55 and d["precision"] >= 0.35
    assert d["success_rate"] < t["success_rate"] - 0.3, "retraining without the flagged rows must weaken the backdoor"
    assert abs(d["clean_accuracy"] - t["baseline_clean_accuracy"]) <= 0.05
    metrics = {(m.name, m.labels["defense"]): m.value for m in PoisoningStudy.metrics(rep)}
    assert metrics[("poisoning_success_rate", "clustering")] == d["success_rate"]
    gate = evaluate_gate(rep, [PoisoningThreshold(poisoning="badnets", defense="clustering", max_success_rate=d["success_rate"] + 0.01)])
    assert gate["passed"] is True
    assert "clustering" in render_html(rep)


def test_report_renders_the_table_text_and_summary(report) -> None:
    html = render_html(report)
    assert "<section id='poisoning'>" in html and "badnets" in html
    lines = PoisoningStudy.text(report)
    assert len(lines) == 2 and lines[0].startswith("poisoning badnets (backdoor, 67 poison rows)")
    assert PoisoningStudy.summary(report)[0].startswith("poisoning badnets success")


def test_gate_rule_on_attack_success_fails_a_model_the_backdoor_takes_over(report, model_file: Path, tmp_path: Path) -> None:
    ok = PoisoningThreshold(poisoning="tiny", max_success_rate=0.9)
    bad = PoisoningThreshold(poisoning="badnets", max_success_rate=0.1)
    gate = evaluate_gate(report, [ok, bad])
    assert gate["passed"] is False
    assert len(gate["violations"]) == 1 and "badnets" in gate["violations"][0]
    assert ok.describe() == "poisoning:tiny:none=0.9"
    # the --fail-under syntax is a maximum, like detect's: with or without the defense
    assert parse_threshold("poisoning:badnets=10%") == bad
    assert parse_threshold(" poisoning : tiny : none = 0.9 ") == ok
    assert parse_threshold("poisoning:badnets:clustering=5%") == PoisoningThreshold(poisoning="badnets", defense="clustering", max_success_rate=0.05)
    with pytest.raises(ConfigError, match="max_success_rate"):
        parse_threshold("poisoning:badnets=150%")
    spec = make_spec(model_file, tmp_path, thresholds=[{"poisoning": "nope", "max_success_rate": 0.1}])
    with pytest.raises(ConfigError, match=r"thresholds\[0\]\.poisoning: no poisoning attack is labelled 'nope'"):
        load_spec(spec)
    spec = make_spec(model_file, tmp_path, thresholds=[{"poisoning": "badnets", "defense": "strip", "max_success_rate": 0.1}])
    with pytest.raises(ConfigError, match="has no defense 'strip'"):
        load_spec(spec)


def test_an_interrupted_study_resumes_mid_training_and_equals_an_uninterrupted_run(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report
) -> None:
    spec = load_spec(make_spec(model_file, tmp_path / "cache"))
    store = f"sqlite:///{tmp_path / 'g.db'}"
    saves: list[int] = []
    real_save = Trainer._save_checkpoint

    def save_then_stop(self, *a: Any, **k: Any) -> None:
        real_save(self, *a, **k)
        saves.append(1)
        if len(saves) == 15 + 4:  # the clean baseline's 15 epochs, then 4 epochs into the first attack
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, out_dir=None, store=store)
    monkeypatch.setattr(Trainer, "_save_checkpoint", real_save)
    resumed_at: list[int] = []
    real_load = Trainer._load_checkpoint

    def spy_load(self, *a: Any, **k: Any) -> Any:
        out = real_load(self, *a, **k)
        resumed_at.append(out[0])
        return out

    monkeypatch.setattr(Trainer, "_load_checkpoint", spy_load)
    run = run_audit(spec, out_dir=None, store=store)
    assert run.resumed and run.reused_units == 1  # the clean baseline is not retrained
    assert resumed_at == [4], "the attack's training continues from its last finished epoch"
    for mine, ref in zip(run.report["poisoning"], report["poisoning"]):
        for k in ("success_rate", "clean_accuracy", "baseline_success_rate", "baseline_clean_accuracy", "n_poison"):
            assert mine[k] == pytest.approx(ref[k], abs=1e-9), k


def test_finetune_last_retrains_only_the_last_layer_on_the_audited_features(model_file: Path, digits_net: nn.Module, tmp_path: Path) -> None:
    spec = load_spec(make_spec(model_file, tmp_path, poisoning={"init": "finetune_last", "attacks": [BADNETS], "training": {"method": "standard", "epochs": 3}}))
    study = next(s for s in spec.studies if isinstance(s, PoisoningStudy))
    from gauntlet.audit.studies.base import AuditEnv
    from gauntlet.models import TorchModel

    base = TorchModel(digits_net, num_classes=10, input_shape=(1, 8, 8))
    env = AuditEnv(model=base, x=torch.zeros(4, 1, 8, 8), y=torch.arange(4), batch_size=4, seed=0)
    study.check(env)
    module = study._fresh(env, seed=0)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable == ["inner.fc2.weight", "inner.fc2.bias"]
    frozen = dict(module.named_parameters())
    for name, p in digits_net.named_parameters():
        if f"inner.{name}" not in trainable:
            assert torch.equal(frozen[f"inner.{name}"], p), name
    rep = run_audit(spec, store=None).report
    assert rep["poisoning"][0]["init"] == "finetune_last" and 0.0 <= rep["poisoning"][0]["success_rate"] <= 1.0


def test_the_cache_dir_defaults_to_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GAUNTLET_CACHE", str(tmp_path / "gc"))
    assert default_cache_dir() == tmp_path / "gc" / "poisoning"
    monkeypatch.delenv("GAUNTLET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gauntlet" / "poisoning"


@pytest.mark.parametrize(
    ("over", "error", "match"),
    [
        ({"attacks": [{"name": "pgd"}]}, ConfigError, r"poisoning\.attacks\[0\]: 'pgd' is an evasion attack"),
        ({"attacks": [{"name": "badnetz"}]}, ConfigError, r"poisoning\.attacks\[0\]: unknown attack 'badnetz'"),
        ({"attacks": [{"name": "badnets", "fraction": 2.0}]}, ConfigError, r"poisoning\.attacks\[0\]: .*'fraction'"),
        ({"attacks": [BADNETS, BADNETS]}, ConfigError, "two attacks are labelled 'badnets'"),
        ({"training": {"method": "median_filter"}}, ConfigError, r"poisoning\.training: 'median_filter' is a preprocessing defense"),
        ({"training": {"method": "standard", "epochz": 3}}, ConfigError, r"poisoning\.training: .*unknown parameter 'epochz'"),
        ({"defenses": ["median_filter"]}, ConfigError, r"poisoning\.defenses\[0\]: 'median_filter' is a preprocessing defense"),
        ({"init": "pretrained"}, ConfigError, r"poisoning\.init"),
    ],
)
def test_bad_blocks_are_one_line_errors_naming_the_place(model_file: Path, tmp_path: Path, over, error, match) -> None:
    with pytest.raises(error, match=match) as info:
        load_spec(make_spec(model_file, tmp_path, poisoning=over))
    assert "\n" not in str(info.value)


def test_training_data_that_does_not_fit_the_model_fails_before_anything_is_stored(model_file: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.pt"
    torch.save({"x": torch.rand(20, 1, 9, 9), "y": torch.arange(20) % 10}, big)
    spec = load_spec(make_spec(model_file, tmp_path, poisoning={"train": {"path": str(big), "split": "train"}}))
    with pytest.raises(GauntletError) as info:
        run_audit(spec, store=None)
    assert "poisoning.train" in str(info.value) and "\n" not in str(info.value)
    spec = load_spec(make_spec(model_file, tmp_path, poisoning={"attacks": [{**BADNETS, "patch_size": 9}]}))
    with pytest.raises(DataError, match=r"poisoning\.attacks\[0\]: badnets: a 9×9 trigger .* does not fit a 8×8 image"):
        run_audit(spec, store=None)


def test_gauntlet_poison_runs_the_study_from_the_command_line(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli_manners import invoke

    monkeypatch.setenv("GAUNTLET_CACHE", str(tmp_path / "cache"))
    args = ["poison", str(model_file), "--arch", "digits_cnn", "--attack", "badnets", "--n", "100", "--train-param", "epochs=3"]
    for p in ("fraction=0.05", "patch_size=2", "pattern=square", "margin=0"):
        args += ["--param", p]
    res = invoke(*args, "--store", f"sqlite:///{tmp_path / 'g.db'}", "--out", str(tmp_path / "rep"), "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["poisoning"][0]["name"] == "badnets" and out["poisoning"][0]["training"] == {"method": "standard", "epochs": 3}
    success = out["poisoning"][0]["success_rate"]
    # the same run (its stages reused from the store) gated on a maximum below and above what it reached
    gated = invoke(*args, "--store", f"sqlite:///{tmp_path / 'g.db'}", "--out", str(tmp_path / "rep"), "--json",
                   "--fail-under", f"poisoning:badnets={max(0.0, success - 0.01):.4f}")
    assert gated.exit_code == 1 and json.loads(gated.stdout)["gate"]["passed"] is False
    passed = invoke(*args, "--store", f"sqlite:///{tmp_path / 'g.db'}", "--out", str(tmp_path / "rep"), "--json",
                    "--fail-under", f"poisoning:badnets={min(1.0, success + 0.01):.4f}")
    assert passed.exit_code == 0 and json.loads(passed.stdout)["gate"]["passed"] is True
    assert (tmp_path / "rep" / "report.html").exists() and any((tmp_path / "cache" / "poisoning").iterdir())
    res = invoke("poison", str(model_file), "--arch", "digits_cnn", "--attack", "fgsm", "--store", f"sqlite:///{tmp_path / 'g.db'}")
    assert res.exit_code == 2 and "'fgsm' is an evasion attack" in res.stderr
