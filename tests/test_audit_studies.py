"""Studies as plug-ins: a new kind of audit block is one class, and the spec, runner, store, report,
HTML page, gate and compare take it without a change; certify and detect gate rules; block errors."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
import torch
from pydantic import Field

import gauntlet.audit.runner as runner_mod
from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.gate import compare_reports, evaluate_gate, parse_threshold
from gauntlet.audit.html import render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.spec import Fraction, Strict, Text
from gauntlet.audit.studies import (
    AuditEnv,
    Metric,
    Study,
    StudyOutput,
    Threshold,
    list_studies,
    register_study,
    unregister_study,
    work_key,
    work_seed,
)
from gauntlet.audit.studies.certify import CertifyThreshold
from gauntlet.audit.studies.detect import DetectThreshold
from gauntlet.errors import ConfigError


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def base(model_file: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits-cnn", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 40, "seed": 0},
        "batch_size": 10,
    }
    spec.update(over)
    return spec


# ------------------------------------------------------------------------------------------------
# a toy study, written as a plug-in author would: the share of correctly classified samples per chunk
class ToyItem(Strict):
    chunks: Annotated[int, Field(strict=True, ge=1)] = 2


class ToyBlock(Strict):
    toy: ToyItem | None = None


class ToyThreshold(Threshold):
    """Gate: the toy accuracy must be at least ``min_toy_accuracy``."""

    toy: Text
    min_toy_accuracy: Fraction

    def metric(self) -> tuple[str, dict[str, Any]]:
        return "toy_accuracy", {"name": self.toy}

    def bound(self) -> tuple[str, float]:
        return "min", self.min_toy_accuracy

    def describe(self) -> str:
        return f"toy:{self.toy}={self.min_toy_accuracy:g}"


class ToyUnit:
    def __init__(self, key: str, seed: int, start: int, stop: int) -> None:
        self.key, self.seed, self.start, self.stop = key, seed, start, stop

    def describe(self) -> str:
        return f"toy [{self.start}:{self.stop}]"


class ToyStudy(Study):
    name = "toy"
    title = "a toy study"
    Block = ToyBlock
    Threshold = ToyThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {
        "toy": {"type": "object", "required": ["accuracy", "chunks"],
                "properties": {"accuracy": {"type": "number", "minimum": 0, "maximum": 1}}},
    }
    required_sections = ("toy",)

    def __init__(self, chunks: int, seed: int) -> None:
        self.chunks, self.seed = chunks, seed

    @classmethod
    def resolve(cls, spec: Any, resolved: Mapping[str, Study]) -> ToyStudy:
        return cls(spec.toy.chunks, spec.seed)

    def check_threshold(self, th: Any, place: str) -> None:
        if th.toy != "toy":
            raise ConfigError(f"{place}.toy: the toy metric is named 'toy', got {th.toy!r}")

    def plan(self, env: AuditEnv, spec_digest: str) -> list[ToyUnit]:
        n = int(env.x.shape[0])
        bounds = [round(i * n / self.chunks) for i in range(self.chunks + 1)]
        out = []
        for a, b in zip(bounds, bounds[1:]):
            key = work_key(spec_digest, "toy", a, b)
            out.append(ToyUnit(key, work_seed(self.seed, key), a, b))
        return out

    def run(self, env: AuditEnv, unit: ToyUnit) -> dict[str, Any]:
        with torch.no_grad():
            pred = env.model.predict(env.x[unit.start:unit.stop], count=False)
        return {"start": unit.start, "correct": int((pred == env.y[unit.start:unit.stop]).sum())}

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        correct = sum(r["correct"] for r in records)
        return StudyOutput(sections={"toy": {"accuracy": correct / len(clean_correct), "chunks": len(records)}})

    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        return [Metric("toy", "toy_accuracy", {"name": "toy"}, report["toy"]["accuracy"], "toy", "toy accuracy")]

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return f"<section id='toy'><h2>Toy</h2>{report['toy']['accuracy']:.3f}</section>"

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        return [f"toy {100 * report['toy']['accuracy']:.1f}%"]


@pytest.fixture()
def toy() -> Iterator[type[ToyStudy]]:
    register_study(ToyStudy)
    yield ToyStudy
    unregister_study("toy")


def test_a_new_study_is_one_registered_class_and_flows_through_spec_runner_store_report_html_and_gate(
    model_file: Path, tmp_path: Path, toy: type[ToyStudy]
) -> None:
    assert list_studies()[-1] == "toy"
    spec = load_spec(base(model_file, toy={"chunks": 4}, thresholds=[{"toy": "toy", "min_toy_accuracy": 0.99}]))
    assert [s.name for s in spec.studies] == ["toy"]  # no threats: the evasion study is absent
    store = f"sqlite:///{tmp_path / 'g.db'}"

    def stop_after_two(ev: runner_mod.ProgressEvent) -> None:
        if ev.phase == "units" and ev.done - ev.reused >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, store=store, progress=stop_after_two)
    run = run_audit(spec, out_dir=tmp_path / "out", store=store)
    assert run.resumed and run.reused_units == 2
    rep = run.report
    validate_report(rep)
    assert rep["toy"]["chunks"] == 4 and rep["toy"]["accuracy"] == pytest.approx(rep["clean_accuracy"])
    assert "results" not in rep and rep["flags"] == []
    assert run.exit_code == 1 and rep["gate"]["violations"][0].startswith("toy: toy accuracy")
    assert "<section id='toy'>" in render_html(rep)
    bad = copy.deepcopy(rep)
    bad["toy"]["accuracy"] = 2.0
    with pytest.raises(Exception, match=r"report.toy.accuracy: must be <= 1"):
        validate_report(bad)
    worse = copy.deepcopy(rep)
    worse["toy"]["accuracy"] -= 0.1
    (row,) = compare_reports(rep, worse)["rows"]
    assert row["study"] == "toy" and row["regression"] is True
    assert parse_threshold("pgd:linf:0.1=0.5").attack == "pgd"  # the built-in syntaxes still parse


def test_an_unknown_block_names_the_registered_studies_with_a_did_you_mean(model_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec(base(model_file, threats=[{"norm": "linf", "eps": 0.1}], certfy=[{"name": "ibp"}]))
    msg = str(info.value)
    assert msg.startswith("certfy: unknown block; did you mean 'certify'?")
    assert "evasion: threats, attacks" in msg and "detect: detect" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"^spec: nothing to audit; add a study block: threats \(evasion\)"):
        load_spec(base(model_file))
    with pytest.raises(ConfigError, match=r"^detect: detectors are evaluated against the spec's attacks"):
        load_spec(base(model_file, detect=[{"name": "mahalanobis"}]))
    with pytest.raises(ConfigError, match=r"^thresholds\[0\]: not a gate rule; write one of \{attack, norm, eps, min_robust_accuracy\}"):
        load_spec(base(model_file, threats=[{"norm": "linf", "eps": 0.1}], thresholds=[{"foo": 1}]))
    with pytest.raises(ConfigError, match=r"^thresholds\[0\]: a certify rule, but the spec has no certify block"):
        load_spec(base(model_file, threats=[{"norm": "linf", "eps": 0.1}],
                       thresholds=[{"certify": "ibp", "radius": 0.1, "min_certified_accuracy": 0.5}]))
    with pytest.raises(ConfigError, match=r"^thresholds\[0\]\.radius: must be a finite number >= 0, got -1"):
        load_spec(base(model_file, certify=[{"name": "ibp", "eps": 0.1}],
                       thresholds=[{"certify": "ibp", "radius": -1.0, "min_certified_accuracy": 0.5}]))


def test_a_spec_with_only_certify_runs_without_threats_and_its_gate_rule_reads_the_curve(model_file: Path) -> None:
    spec = load_spec(base(
        model_file,
        certify=[{"name": "randomized_smoothing", "sigma": 0.25, "n0": 10, "n": 30, "alpha": 0.01, "radii": [0.1]}],
        thresholds=[{"certify": "randomized_smoothing", "radius": 0.1, "min_certified_accuracy": 0.0}],
    ))
    rep = run_audit(spec, store=None).report
    validate_report(rep)
    assert "results" not in rep and [c["method"] for c in rep["certification"]] == ["randomized_smoothing"]
    assert (rep["gate"]["passed"], rep["gate"]["violations"]) == (True, [])
    assert [r["rule"] for r in rep["gate"]["rules"]] == ["certify:randomized_smoothing:0.1=0"]
    (curve,) = [c["curve"] for c in rep["certification"]]
    at = dict((r, a) for r, a in curve)[0.1]
    strict = CertifyThreshold(certify="randomized_smoothing", radius=0.1, min_certified_accuracy=min(1.0, at + 0.01))
    assert evaluate_gate(rep, [strict])["violations"] == [
        f"certify randomized_smoothing l2 radius 0.1: certified accuracy {100 * at:.1f}% < required {100 * strict.min_certified_accuracy:.1f}%"
    ]
    with pytest.raises(ConfigError, match=r"radii 0, 0.1; add 0.2 to certify\[0\].radii"):
        load_spec(base(model_file, certify=[{"name": "randomized_smoothing", "radii": [0.1]}],
                       thresholds=[{"certify": "randomized_smoothing", "radius": 0.2, "min_certified_accuracy": 0.5}]))


def test_fail_under_reads_certify_and_detect_rules_and_the_gate_bounds_undetected_success_from_above() -> None:
    c = parse_threshold("certify:ibp:0.01=50%")
    assert isinstance(c, CertifyThreshold) and (c.certify, c.radius, c.min_certified_accuracy) == ("ibp", 0.01, 0.5)
    d = parse_threshold("detect:mahalanobis:pgd=10%")
    assert isinstance(d, DetectThreshold) and (d.detector, d.attack, d.max_undetected_success_rate) == ("mahalanobis", "pgd", 0.1)
    with pytest.raises(ConfigError, match=r"^--fail-under 'nonsense'"):
        parse_threshold("nonsense")
    report = {
        "clean_accuracy": 0.9,
        "detection": [{"detector": "mahalanobis", "rows": [
            {"attack": "pgd", "adaptive": False, "undetected_success_rate": 0.05},
            {"attack": "pgd", "adaptive": True, "undetected_success_rate": 0.30},  # the worst row counts
        ]}],
    }
    assert evaluate_gate(report, [d])["violations"] == [
        "detect mahalanobis vs pgd: undetected success rate 30.0% > allowed 10.0%"
    ]
    lower = copy.deepcopy(report)
    lower["detection"][0]["rows"][1]["undetected_success_rate"] = 0.08
    assert evaluate_gate(lower, [d])["passed"] is True
    # for a lower-is-better metric a rise is the regression
    (row,) = compare_reports(lower, report, 0.02)["rows"]
    assert row["regression"] is True and row["delta"] == pytest.approx(0.22)
    assert compare_reports(report, lower, 0.02)["regressions"] == 0


def test_split_rule_reads_labels_and_a_number_or_percentage() -> None:
    from gauntlet.audit.studies.base import split_rule
    from gauntlet.errors import ConfigError

    assert split_rule("privacy:lira=0.6", "privacy", 1) == (["lira"], 0.6)
    assert split_rule(" poisoning : badnets : clustering = 10% ", "poisoning", 1, 1) == (["badnets", "clustering"], pytest.approx(0.1))
    assert split_rule("poisoning:badnets=5%", "poisoning", 1, 1) == (["badnets", None], pytest.approx(0.05))
    assert split_rule("privacy:lira:extra=0.6", "privacy", 1) is None   # too many labels: not this syntax
    assert split_rule("pgd:linf:0.1=50%", "privacy", 1) is None          # another study's rule
    with pytest.raises(ConfigError, match="the maximum AUC must be a number"):
        split_rule("privacy:lira=high", "privacy", 1, what="maximum AUC")
