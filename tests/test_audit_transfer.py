"""The ``transfer`` audit block: surrogates loaded like the model, one entry per transfer attack with
the audited model's robust accuracy beside the transfer and surrogate success, gate rules, the
``transfer_beats_white_box`` flag, and place-named errors for bad blocks."""

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
from gauntlet.audit.studies.transfer import FLAG, TransferStudy
from gauntlet.errors import ConfigError, GauntletError, ModelLoadError
from gauntlet.models.zoo import DigitsCNN, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(digits_net: nn.Module, digits_train: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("transfer")
    torch.save(digits_net.state_dict(), d / "target.pt")
    with torch.random.fork_rng():
        torch.manual_seed(21)
        net = DigitsCNN()
    surrogate = train_classifier(net, digits_train.x, digits_train.y, epochs=8, seed=21)
    torch.save(surrogate.state_dict(), d / "surrogate.pt")
    return {"target": d / "target.pt", "surrogate": d / "surrogate.pt"}


def make_spec(files: dict[str, Path], **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"path": str(files["target"]), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 48, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.3]}],
        "attacks": [{"name": "pgd", "steps": 10}],
        "transfer": {"surrogates": [{"path": str(files["surrogate"]), "arch": "digits_cnn", "name": "own-cnn"}], "eps": [0.1, 0.3], "steps": 10},
        "batch_size": 24,
        "seed": 0,
    }
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def report(files: dict[str, Path]) -> dict[str, Any]:
    return run_audit(load_spec(make_spec(files)), store=None).report  # type: ignore[no-any-return]


def test_transfer_section_has_one_entry_per_default_attack_with_rows_per_eps(report) -> None:
    validate_report(report)
    entries = report["transfer"]
    assert [t["name"] for t in entries] == ["pgd", "mifgsm", "mifgsm+di"]
    for t in entries:
        assert t["surrogates"] == ["own-cnn"] and t["norm"] == "linf" and t["chunks"] == 2
        assert [r["eps"] for r in t["rows"]] == [0.1, 0.3]
        for r in t["rows"]:
            assert r["n"] == 48 and r["robust_accuracy"] == r["survived"] / 48
            assert r["robust_accuracy"] <= report["clean_accuracy"] + 1e-12
            assert r["attacked"] == round(report["clean_accuracy"] * 48)
            assert r["survived"] + round(r["transfer_success_rate"] * r["attacked"]) == r["attacked"]


def test_transfer_from_an_independent_surrogate_costs_accuracy_and_white_box_costs_more(report) -> None:
    pgd = next(t for t in report["transfer"] if t["name"] == "pgd")
    at3 = next(r for r in pgd["rows"] if r["eps"] == 0.3)
    assert at3["transfer_success_rate"] >= 0.5
    assert at3["surrogate_success_rate"] >= 0.9
    white = next(w for w in report["worst_case"] if w["eps"] == 0.3)["robust_accuracy"]
    assert white <= at3["robust_accuracy"] + 0.05  # white-box PGD is at least about as strong
    assert not any(f["id"] == FLAG for f in report["flags"])


def test_transfer_metrics_gate_and_text_and_html(report) -> None:
    ok = evaluate_gate(report, [parse_threshold("transfer:mifgsm:0.1=1%")])
    assert ok["passed"] is True
    bad = evaluate_gate(report, [parse_threshold("transfer:mifgsm+di:0.3=100%")])
    assert bad["passed"] is False and any("transfer mifgsm+di" in v for v in bad["violations"])
    html = render_html(report)
    assert "<section id='transfer'>" in html and "own-cnn" in html and "white-box worst case" in html
    lines = TransferStudy.text(report)
    assert len(lines) == 3 and lines[0].startswith("transfer pgd (linf) from own-cnn: ε=0.1:")


def test_a_gate_rule_must_name_a_transfer_attack_and_eps_of_the_block(files) -> None:
    with pytest.raises(ConfigError, match="no transfer attack is labelled 'fgsm'"):
        run_audit(load_spec(make_spec(files, thresholds=[{"transfer": "fgsm", "eps": 0.3, "min_robust_accuracy": 0.5}])), store=None)
    with pytest.raises(ConfigError, match="add 0.2 to transfer.eps"):
        run_audit(load_spec(make_spec(files, thresholds=[{"transfer": "pgd", "eps": 0.2, "min_robust_accuracy": 0.5}])), store=None)


def test_transfer_beats_white_box_flag_needs_a_gap_beyond_noise() -> None:
    study = TransferStudy.__new__(TransferStudy)
    sections = {
        "worst_case": [{"norm": "linf", "eps": 0.3, "robust_accuracy": 0.60}],
        "transfer": [{"name": "mifgsm", "norm": "linf", "rows": [{"eps": 0.3, "robust_accuracy": 0.40, "n": 100}]}],
    }
    flags = study.cross_flags(sections)
    assert [f["id"] for f in flags] == [FLAG] and flags[0]["evidence"]["cases"][0]["white_box"] == 0.60
    sections["transfer"][0]["rows"][0]["robust_accuracy"] = 0.59  # within 2 pp: noise
    assert study.cross_flags(sections) == []
    del sections["worst_case"]  # no white-box study: nothing to compare
    sections["transfer"][0]["rows"][0]["robust_accuracy"] = 0.1
    assert study.cross_flags(sections) == []
    assert FLAG in TransferStudy.blocking_flags


@pytest.mark.parametrize(
    ("block", "error", "match"),
    [
        ({"surrogates": ["missing.pt"], "eps": 0.1}, ModelLoadError, r"transfer\.surrogates\[0\]"),
        ({"surrogates": [{"path": "SURR", "arch": "lenet5"}], "eps": 0.1}, GauntletError, r"transfer\.surrogates\[0\]"),
        ({"surrogates": ["SURR"], "eps": 0.1, "attacks": ["square"]}, ConfigError, r"transfer\.attacks\[0\]: attack 'square' is not an eps-bounded"),
        ({"surrogates": ["SURR"], "eps": 0.1, "attacks": [{"name": "mifgsm", "ti_kernel": 2}]}, ConfigError, r"transfer\.attacks\[0\]: parameter 'ti_kernel'"),
        ({"surrogates": ["SURR"], "eps": 0.1, "attacks": [{"name": "pgd", "eps": 0.2}]}, ConfigError, r"transfer\.attacks\[0\]: 'eps' is set by the transfer block"),
        ({"surrogates": ["SURR"], "eps": 0.1, "attacks": ["pgd", "pgd"]}, ConfigError, "labelled 'pgd'"),
        ({"eps": 0.1}, ConfigError, "surrogates"),
    ],
)
def test_bad_transfer_blocks_are_one_line_errors_naming_the_place(files, block, error, match) -> None:
    surr = str(files["surrogate"])
    if "surrogates" in block:
        block = {**block, "surrogates": [
            (surr if s == "SURR" else s) if isinstance(s, str) else {**s, "path": surr if s["path"] == "SURR" else s["path"]}
            for s in block["surrogates"]
        ]}
    with pytest.raises(error, match=match) as info:
        run_audit(load_spec(make_spec(files, transfer=block)), store=None)
    assert "\n" not in str(info.value)
