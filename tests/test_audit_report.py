"""report.json assembly: aggregates checked against hand-computed values, schema and validation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from pydantic import BaseModel

from gauntlet.audit.records import AuditOutcome
from gauntlet.audit.report import REPORT_SCHEMA, SCHEMA_VERSION, build_report, report_schema, validate_report
from gauntlet.audit.studies.evasion import EvasionStudy, UnitRecord, aggregate, sections_of
from gauntlet.errors import DataError

# 6 samples; sample 4 is misclassified on clean inputs.
CLEAN = [True, True, True, True, False, True]


def units() -> list[UnitRecord]:
    return [
        UnitRecord("pgd", "pgd", {"steps": 10}, "linf", (0.1, 0.2), 0, 4,
                   [[False, True, False, False], [True, True, False, False]],
                   [[0.05, 0.1, 0.02, 0.0], [0.2, 0.15, 0.1, 0.1]], 41, 40, 2.0),
        UnitRecord("pgd", "pgd", {"steps": 10}, "linf", (0.1, 0.2), 4, 6,
                   [[True, False], [True, True]], [[0.1, 0.0], [0.2, 0.18]], 20, 20, 1.0),
        UnitRecord("square", "square", {}, "linf", (0.2,), 0, 6,
                   [[False, False, True, False, True, False]], [[0.2] * 6], 600, 0, 3.0),
    ]


class Spec(BaseModel):
    seed: int = 0
    attacks: list[str] = ["pgd", "square"]


def outcome(records: list[UnitRecord] | None = None, gallery: list | None = None, **kw) -> AuditOutcome:
    """An outcome whose evasion sections come from ``records`` (default: the hand-made units above)."""
    sections = sections_of(units() if records is None else records, CLEAN)
    sections["gallery"] = gallery if gallery is not None else [
        {"index": 0, "label": 3, "pred_clean": 3, "pred_adv": 5, "attack": "pgd", "eps": 0.2,
         "x": torch.zeros(1, 2, 2), "x_adv": torch.full((1, 2, 2), 0.2)}]
    base = {
        "spec": Spec(),
        "model_info": {"name": "digits-cnn", "version": "3", "sha256": "a" * 64, "path": "m.pt",
                    "capabilities": frozenset({"scores", "gradients"}), "num_classes": 10, "bounds": (0.0, 1.0)},
        "data_info": {"name": "digits", "n": 6, "sha256": "b" * 64, "shape": (1, 8, 8)},
        "clean_correct": CLEAN,
        "sections": sections,
        "flags": [{"id": "non_monotonic_eps", "severity": "warning", "title": "t", "explanation": "e", "evidence": {"x": 1}}],
        "manifest": {"seed": 0, "command": "gauntlet audit spec.yaml"},
        "store_audit_id": 7,
    }
    base.update(kw)
    return AuditOutcome(**base)


def test_result_rows_match_hand_computed_aggregates():
    rows = build_report(outcome())["results"]
    assert [(r["attack"], r["norm"], r["eps"]) for r in rows] == [("pgd", "linf", 0.1), ("pgd", "linf", 0.2), ("square", "linf", 0.2)]
    pgd1, pgd2, sq = rows
    # pgd ε=0.1: fooled {1, 4}; 4 was wrong anyway -> robust {0, 2, 3, 5}; 1 of 5 correct fooled
    assert pgd1["robust_accuracy"] == pytest.approx(4 / 6) and pgd1["robust_count"] == 4 and pgd1["n"] == 6
    assert pgd1["success_rate"] == pytest.approx(1 / 5)
    assert pgd1["median_perturbation"] == pytest.approx(0.1)
    # cost of a unit shared among its ε: 41 -> 21 + 20, 20 -> 10 + 10; seconds 2/2 + 1/2
    assert (pgd1["queries"], pgd1["grad_evals"], pgd1["seconds"]) == (31, 30, pytest.approx(1.5))
    assert (pgd2["queries"], pgd2["grad_evals"], pgd2["seconds"]) == (30, 30, pytest.approx(1.5))
    # pgd ε=0.2: fooled correct {0, 1, 5} with norms 0.2, 0.15, 0.18
    assert pgd2["robust_accuracy"] == pytest.approx(2 / 6) and pgd2["success_rate"] == pytest.approx(3 / 5)
    assert pgd2["median_perturbation"] == pytest.approx(0.18)
    # square ε=0.2: fooled correct {2}
    assert sq["robust_accuracy"] == pytest.approx(4 / 6) and sq["success_rate"] == pytest.approx(1 / 5)
    assert (sq["queries"], sq["grad_evals"], sq["seconds"]) == (600, 0, 3.0)


def test_worst_case_is_per_sample_over_all_attacks():
    worst = build_report(outcome())["worst_case"]
    assert [(w["norm"], w["eps"], w["attacks"]) for w in worst] == [("linf", 0.1, ["pgd"]), ("linf", 0.2, ["pgd", "square"])]
    assert worst[0]["robust_accuracy"] == pytest.approx(4 / 6)
    # ε=0.2: pgd fools {0,1,5}, square fools {2}: only sample 3 stands
    assert worst[1]["robust_accuracy"] == pytest.approx(1 / 6) and worst[1]["robust_count"] == 1
    assert worst[1]["success_rate"] == pytest.approx(4 / 5)
    # smallest fooling perturbation per sample: 0.2, 0.15, 0.2 (square), 0.18 -> median 0.19
    assert worst[1]["median_perturbation"] == pytest.approx(0.19)


def test_clean_accuracy_cost_model_data_and_gate_default():
    rep = build_report(outcome())
    assert rep["schema_version"] == SCHEMA_VERSION == "2.1"
    assert rep["clean_accuracy"] == pytest.approx(5 / 6)
    assert rep["cost"] == [
        {"attack": "pgd", "attack_name": "pgd", "units": 2, "samples": 6, "queries": 61, "grad_evals": 60,
         "seconds": 3.0, "queries_per_sample": pytest.approx(61 / 6)},
        {"attack": "square", "attack_name": "square", "units": 1, "samples": 6, "queries": 600, "grad_evals": 0,
         "seconds": 3.0, "queries_per_sample": 100.0},
    ]
    assert rep["model"] == {"name": "digits-cnn", "version": "3", "sha256": "a" * 64, "path": "m.pt",
                            "capabilities": ["gradients", "scores"], "num_classes": 10, "bounds": [0.0, 1.0]}
    assert rep["data"] == {"name": "digits", "n": 6, "sha256": "b" * 64, "shape": [1, 8, 8]}
    assert rep["gate"] == {"passed": None, "violations": []}
    assert rep["audit_id"] == 7
    assert rep["manifest"]["spec"] == {"seed": 0, "attacks": ["pgd", "square"]}  # added from the spec
    assert rep["gallery"][0]["x_adv"] == [[[pytest.approx(0.2)] * 2] * 2]


def test_report_is_plain_json_and_survives_a_round_trip():
    rep = build_report(outcome(), gate={"passed": False, "violations": ["pgd:linf:0.2 robust 33.3% < 50%"]})
    text = json.dumps(rep, allow_nan=False)
    back = json.loads(text)
    assert back == rep
    validate_report(back)
    assert back["gate"]["passed"] is False


def test_no_success_gives_null_median_and_zero_success_rate():
    u = [UnitRecord("fgsm", "fgsm", {}, "l2", (0.5,), 0, 3, [[False] * 3], [[0.5] * 3], 3, 3, 0.1)]
    (row,) = aggregate(u, [True, True, False]).results
    assert row["median_perturbation"] is None
    assert row["success_rate"] == 0.0 and row["robust_accuracy"] == pytest.approx(2 / 3)


def test_all_clean_mistakes_give_null_success_rate_and_zero_robust_accuracy():
    u = [UnitRecord("fgsm", "fgsm", {}, "linf", (0.1,), 0, 2, [[True, True]], [[0.1, 0.1]], 2, 2, 0.1)]
    (row,) = aggregate(u, [False, False]).results
    assert row["success_rate"] is None and row["robust_accuracy"] == 0.0 and row["median_perturbation"] is None


def test_rows_follow_attack_then_norm_order_and_sort_eps():
    u = [
        UnitRecord("pgd", "pgd", {}, "l2", (1.0, 0.5), 0, 1, [[True], [False]], [[0.9], [0.5]], 1, 1, 0.1),
        UnitRecord("fgsm", "fgsm", {}, "linf", (0.3,), 0, 1, [[True]], [[0.3]], 1, 1, 0.1),
        UnitRecord("pgd", "pgd", {}, "linf", (0.3,), 0, 1, [[False]], [[0.3]], 1, 1, 0.1),
    ]
    agg = aggregate(u, [True])
    assert [(r["attack"], r["norm"], r["eps"]) for r in agg.results] == [
        ("pgd", "l2", 0.5), ("pgd", "l2", 1.0), ("pgd", "linf", 0.3), ("fgsm", "linf", 0.3)]
    assert [(w["norm"], w["eps"], w["robust_accuracy"]) for w in agg.worst_case] == [
        ("l2", 0.5, 1.0), ("l2", 1.0, 0.0), ("linf", 0.3, 0.0)]


def test_overlapping_units_count_a_sample_as_fooled_if_any_unit_fooled_it():
    u = [
        UnitRecord("pgd", "pgd", {}, "linf", (0.1, 0.2), 0, 2, [[False, False], [True, False]], [[0.1] * 2, [0.2, 0.2]], 4, 4, 1.0),
        UnitRecord("pgd", "pgd", {}, "linf", (0.2, 0.3), 0, 2, [[False, True], [True, True]], [[0.2, 0.15], [0.3, 0.3]], 4, 4, 1.0),
    ]
    rows = {r["eps"]: r for r in aggregate(u, [True, True]).results}
    assert rows[0.2]["robust_accuracy"] == 0.0  # sample 0 fooled by the first, sample 1 by the second
    assert rows[0.2]["median_perturbation"] == pytest.approx((0.2 + 0.15) / 2)
    assert rows[0.2]["queries"] == 4  # 2 from each unit


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (UnitRecord("pgd", "pgd", {}, "linf", (0.1,), 4, 8, [[True] * 4], [[0.1] * 4], 1, 1, 0.1), r"samples must lie in 0:6"),
        (UnitRecord("pgd", "pgd", {}, "linf", (0.1, 0.2), 0, 2, [[True] * 2], [[0.1] * 2], 1, 1, 0.1), r"one row per ε \(2\)"),
        (UnitRecord("pgd", "pgd", {}, "linf", (0.1,), 0, 2, [[True] * 3], [[0.1] * 3], 1, 1, 0.1), r"needs 2 values, got 3"),
    ],
)
def test_units_that_do_not_fit_the_data_are_rejected_with_the_unit_named(bad, message):
    with pytest.raises(DataError, match=message) as exc:
        build_report(outcome(records=[*units(), bad]))
    assert "unit 3 (pgd, linf" in str(exc.value)


def test_validate_report_accepts_a_built_report_and_names_the_first_bad_place():
    rep = build_report(outcome())
    validate_report(rep)
    cases = [
        (lambda r: r.pop("worst_case"), "report: missing required key 'worst_case'"),
        (lambda r: r["results"][1].update(robust_accuracy=1.5), "report.results[1].robust_accuracy: must be <= 1"),
        (lambda r: r["results"][0].update(queries=2.5), "report.results[0].queries: expected integer"),
        (lambda r: r["model"].update(sha256=5), "report.model.sha256: expected string or null"),
        (lambda r: r.update(schema_version="0.9"), "report.schema_version: must be one of ['1.0', '1.1', '2.0', '2.1']"),
        (lambda r: r["gate"].update(passed="yes"), "report.gate.passed: expected boolean or null"),
        (lambda r: r["flags"][0].update(severity="fatal"), "report.flags[0].severity: must be one of"),
        (lambda r: r["results"][0].update(seconds=float("nan")), "report.results[0].seconds: expected number"),
        (lambda r: r["worst_case"][0].update(eps=True), "report.worst_case[0].eps: expected number"),
    ]
    for mutate, message in cases:
        broken = copy.deepcopy(rep)
        mutate(broken)
        with pytest.raises(DataError) as exc:
            validate_report(broken)
        assert str(exc.value).startswith(message), str(exc.value)


def test_schema_lists_every_key_the_issue_requires():
    assert set(REPORT_SCHEMA["required"]) >= {"schema_version", "model", "data", "clean_accuracy", "flags", "gate", "manifest"}
    # the evasion sections go together in 2.0 and were always there in 1.x
    assert set(EvasionStudy.required_sections) >= {"results", "worst_case", "cost", "gallery"}
    assert set(report_schema("1.1")["required"]) >= {"results", "worst_case", "cost", "gallery"}
    row = REPORT_SCHEMA["properties"]["results"]["items"]["required"]
    assert set(row) >= {"attack", "norm", "eps", "robust_accuracy", "success_rate", "median_perturbation", "queries", "seconds"}
    assert REPORT_SCHEMA["properties"]["model"]["required"] == ["name", "version", "sha256"]
    assert REPORT_SCHEMA["properties"]["data"]["required"] == ["name", "n", "sha256"]


def test_every_robust_accuracy_carries_its_wilson_interval():
    from gauntlet.audit.stats import wilson

    rep = build_report(outcome())
    for row in rep["results"] + rep["worst_case"]:
        lo, hi = row["robust_accuracy_ci"]
        assert lo <= row["robust_accuracy"] <= hi
        assert (lo, hi) == pytest.approx(wilson(row["robust_count"], row["n"]))
    validate_report(rep)
    broken = copy.deepcopy(rep)
    broken["results"][0]["robust_accuracy_ci"] = [0.1, 1.5]
    with pytest.raises(DataError, match=r"^report.results\[0\].robust_accuracy_ci\[1\]: must be <= 1"):
        validate_report(broken)
