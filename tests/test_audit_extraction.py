"""The ``extraction`` audit block: model-stealing attacks per query budget against the audited
model, the copy's fidelity on the audit's data, a query monitor's alarm point, gate rules, and
place-named errors for bad blocks."""

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
from gauntlet.audit.studies.extraction import ExtractionStudy, ExtractionThreshold
from gauntlet.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("extraction") / "target.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def make_spec(model_file: Path, **over: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "query_set": {"name": "digits", "split": "train"},
        "budgets": [100, 300],
        "attacks": [{"name": "knockoff", "epochs": 15}, {"name": "copycat", "epochs": 15}],
        "monitor": {"name": "prada", "min_queries": 50},
    }
    block.update(over.pop("extraction", {}))
    spec: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 200, "seed": 0},
        "extraction": block,
        "seed": 0,
    }
    spec.update(over)
    return spec


def test_the_extraction_block_reports_fidelity_per_budget_and_the_monitor(model_file) -> None:
    report = run_audit(load_spec(make_spec(model_file)), store=None).report
    validate_report(report)
    knockoff, copycat = report["extraction"]
    for t in (knockoff, copycat):
        assert [r["budget"] for r in t["runs"]] == [100, 300]
        assert all(r["queries"] <= r["budget"] for r in t["runs"])
        assert all("monitor_fired_at" in r for r in t["runs"]) and t["monitor"] == "prada"
        assert t["max_fidelity"] == max(r["fidelity"] for r in t["runs"])
    # more queries, a more faithful copy (natural digits, 15 epochs: far above chance at 300)
    assert knockoff["runs"][1]["fidelity"] > 0.6
    html = render_html(report)
    assert "<section id='extraction'>" in html and "prada alarm at query" in html
    assert ExtractionStudy.text(report)[0].startswith("extraction knockoff: 100 queries: fidelity ")
    (m,) = [m for m in ExtractionStudy.metrics(report) if m.labels["attack"] == "knockoff"]
    assert m.value == knockoff["max_fidelity"] and m.higher_is_better is False
    ok = evaluate_gate(report, [ExtractionThreshold(extraction="knockoff", max_fidelity=min(1.0, knockoff["max_fidelity"] + 0.01))])
    bad = evaluate_gate(report, [ExtractionThreshold(extraction="knockoff", max_fidelity=max(0.0, knockoff["max_fidelity"] - 0.01))])
    assert ok["passed"] is True and bad["passed"] is False


def test_extraction_gate_rules_parse_from_the_command_line() -> None:
    assert parse_threshold("extraction:knockoff=90%") == ExtractionThreshold(extraction="knockoff", max_fidelity=0.9)
    assert ExtractionThreshold(extraction="knockoff", max_fidelity=0.9).describe() == "extraction:knockoff=0.9"


def test_bad_extraction_blocks_are_refused_with_the_place(model_file) -> None:
    with pytest.raises(ConfigError, match=r"extraction\.attacks\[0\]"):
        load_spec(make_spec(model_file, extraction={"attacks": ["pgd"]}))
    with pytest.raises(ConfigError, match=r"extraction\.attacks\[0\].*query_set"):
        load_spec(make_spec(model_file, extraction={"query_set": None, "attacks": ["knockoff"]}))
    with pytest.raises(ConfigError, match="extraction.monitor"):
        load_spec(make_spec(model_file, extraction={"monitor": {"name": "top_k"}}))
    with pytest.raises(ConfigError, match="listed twice"):
        load_spec(make_spec(model_file, extraction={"budgets": [100, 100]}))
    with pytest.raises(ConfigError, match="no extraction attack is labelled 'nope'"):
        load_spec(make_spec(model_file, thresholds=[{"extraction": "nope", "max_fidelity": 0.9}]))
