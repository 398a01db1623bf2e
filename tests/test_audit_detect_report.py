"""What the detection and certification sections say: the model they ran on (in the section header
and in report.json), a verdict per detector from the worst case over plain and detector-aware
attacks, and the ``detector_fpr_exceeds_target`` hygiene flag (a clean false-positive rate above the
target beyond sampling noise), which blocks a gated audit."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.html import e, render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.studies.base import StudyOutput
from gauntlet.audit.studies.certify import CertifyStudy
from gauntlet.audit.studies.detect import (
    EVADED_AT,
    FPR_ALPHA,
    FPR_FLAG,
    HOLDS_AT,
    DetectStudy,
    assess,
    binomial_tail,
    fpr_check,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


#: a feature-squeezing detector whose threshold is the largest of 5 clean scores, asked for a 1%
#: false-positive rate: a threshold set on 5 scores has an expected FPR of 1/6, far above 1%
TOO_SMALL_CALIBRATION = {"name": "feature_squeezing_detector", "bits": 1, "median_size": None, "calibration": 5, "fpr": 0.01}
#: the same detector calibrated on half the samples at 5%: its clean FPR is within noise of the target
WELL_CALIBRATED = {"name": "feature_squeezing_detector", "bits": 1, "median_size": None}


def make_spec(path: Path, *, defense: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"path": str(path), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 40, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.3]}],
        "attacks": ["fgsm"],
        "detect": [TOO_SMALL_CALIBRATION, WELL_CALIBRATED],
        "batch_size": 40,
        "seed": 0,
    }
    if defense is not None:
        spec["model"]["defense"] = defense
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def plain_report(model_file: Path) -> dict[str, Any]:
    """An audit of the model without ``model.defense``: detection and (tiny) randomized smoothing."""
    spec = make_spec(model_file, certify={"name": "randomized_smoothing", "sigma": 0.25, "n0": 5, "n": 20})
    return run_audit(load_spec(spec), store=None).report  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def defended_report(model_file: Path) -> dict[str, Any]:
    spec = make_spec(
        model_file, defense={"name": "bit_depth_reduction", "bits": 1},
        certify={"name": "randomized_smoothing", "sigma": 0.25, "n0": 5, "n": 20},
    )
    return run_audit(load_spec(spec), store=None).report  # type: ignore[no-any-return]


def section(html: str, sid: str) -> str:
    m = re.search(rf"<section id='{sid}'>.*?</section>", html, re.DOTALL)
    assert m, f"no {sid} section"
    return m.group(0)


def h2(html: str, sid: str) -> str:
    m = re.search(r"<h2>(.*?)</h2>", section(html, sid), re.DOTALL)
    assert m
    return m.group(1)


# ------------------------------------------------------------------------------------------------
# which model
def test_without_a_defense_the_headers_and_sections_name_the_audited_model(plain_report: dict[str, Any]) -> None:
    rep = plain_report
    validate_report(rep)
    ran_on = {"model": "digits", "defense": None, "view": "audited"}
    assert [d["ran_on"] for d in rep["detection"]] == [ran_on, ran_on]
    assert [c["ran_on"] for c in rep["certification"]] == [ran_on]
    html = render_html(rep)
    for sid in ("detection", "certification"):
        assert "on the audited model <b>digits</b>" in h2(html, sid)
        assert "undefended" not in section(html, sid)  # no footnote saying otherwise
    assert DetectStudy.text(rep)[0] == "detection on the audited model digits"
    assert CertifyStudy.text(rep)[0] == "certification on the audited model digits"


def test_with_a_defense_the_headers_and_sections_say_they_ran_on_the_undefended_model(
    defended_report: dict[str, Any],
) -> None:
    rep = defended_report
    validate_report(rep)
    ran_on = {"model": "digits", "defense": "bit_depth_reduction", "view": "undefended"}
    assert [d["ran_on"] for d in rep["detection"]] == [ran_on, ran_on]
    assert [c["ran_on"] for c in rep["certification"]] == [ran_on]
    html = render_html(rep)
    for sid in ("detection", "certification"):
        head = h2(html, sid)
        assert "on the undefended model <b>digits</b>" in head and "<b>bit_depth_reduction</b>" in head
    line = "on the undefended model digits (without model.defense bit_depth_reduction)"
    assert DetectStudy.text(rep)[0] == f"detection {line}"
    assert CertifyStudy.text(rep)[0] == f"certification {line}"


def test_reports_written_before_the_new_fields_still_validate_and_their_headers_name_the_model(
    defended_report: dict[str, Any],
) -> None:
    old = copy.deepcopy(defended_report)
    new_keys = ("ran_on", "worst_case", "worst_undetected_success_rate", "verdict", "verdict_text", "fpr_check")
    for d in old["detection"]:
        for k in new_keys:
            d.pop(k)
    for c in old["certification"]:
        c.pop("ran_on")
    validate_report(old)
    html = render_html(old)
    for sid in ("detection", "certification"):  # from the report's model.name and its defense section
        head = h2(html, sid)
        assert "on the undefended model <b>digits</b>" in head and "<b>bit_depth_reduction</b>" in head
    # the verdict is computed from the rows: the same sentence as the one the audit stored
    for d, stored in zip(old["detection"], defended_report["detection"]):
        assert e(stored["verdict_text"]) in html
        assert assess(d)["verdict_text"] == stored["verdict_text"]


# ------------------------------------------------------------------------------------------------
# worst case and verdict
def test_the_worst_case_is_the_largest_undetected_success_over_plain_and_detector_aware_rows(
    plain_report: dict[str, Any],
) -> None:
    for d in plain_report["detection"]:
        rows = d["rows"]
        assert {r["adaptive"] for r in rows} == {False, True}
        assert [(w["norm"], w["eps"]) for w in d["worst_case"]] == [("linf", 0.1), ("linf", 0.3)]
        for w in d["worst_case"]:
            at = [r for r in rows if r["eps"] == w["eps"]]
            assert w["undetected_success_rate"] == max(r["undetected_success_rate"] for r in at)
            source = [r for r in at if r["attack"] == w["attack"] and r["adaptive"] == w["adaptive"]]
            assert source[0]["undetected_success_rate"] == w["undetected_success_rate"]
        assert d["worst_undetected_success_rate"] == max(r["undetected_success_rate"] for r in rows)


def test_the_verdict_sentence_is_in_report_json_the_html_the_text_and_the_summary(plain_report: dict[str, Any]) -> None:
    rep = json.loads(json.dumps(plain_report))
    html = section(render_html(rep), "detection")
    text = DetectStudy.text(rep)
    summary = DetectStudy.summary(rep)
    for d in rep["detection"]:
        worst = d["worst_undetected_success_rate"]
        expected = "evaded" if worst >= EVADED_AT else "holds" if worst <= HOLDS_AT else "partial"
        assert d["verdict"] == expected
        sentence = d["verdict_text"]
        assert sentence.startswith(f"{d['detector']}: ") and f"{100 * worst:.1f}%" in sentence
        assert e(sentence) in html and f"data-verdict='{expected}'" in html
        assert f"detect {sentence}" in text
        assert f"{d['detector']} {expected} (worst undetected {100 * worst:.1f}%)" in summary
    # the worst case per ε is in the table and the text too
    assert html.count("<tr class='det worst'>") == 2 * len(rep["detection"])
    d = rep["detection"][0]
    assert f"detect {d['detector']} worst case (plain + detector-aware) linf ε=0.3: undetected success " \
        f"{100 * d['worst_case'][1]['undetected_success_rate']:.1f}%" in text


def _row(attack: str, adaptive: bool, eps: float, undetected: float, success: float = 1.0) -> dict[str, Any]:
    return {"attack": attack, "adaptive": adaptive, "eps": eps, "norm": "l2", "n": 40, "n_correct": 20,
            "success_rate": success, "undetected_success_rate": undetected}


@pytest.mark.parametrize(
    ("rows", "verdict", "words"),
    [
        ([_row("pgd", False, 0.5, 0.1), _row("pgd", True, 0.5, 0.78)], "evaded",
         ("an adaptive attacker evades it on 78.0% of 20 points (pgd, detector-aware, l2 ε=0.5; undetected success); "
         "it does not stop an attacker who knows it")),
        ([_row("pgd", False, 0.5, 0.6), _row("pgd", True, 0.5, 0.3)], "evaded",
         "even a plain attacker evades it on 60.0% of 20 points (pgd, plain, l2 ε=0.5"),
        ([_row("pgd", False, 0.5, 0.05), _row("pgd", True, 0.5, 0.25)], "partial",
         "partial — an adaptive attacker evades it on 25.0% of 20 points"),
        ([_row("pgd", False, 0.5, 0.05), _row("pgd", True, 0.5, 0.1)], "holds",
         ("holds — worst undetected success 10.0% of 20 points (pgd, detector-aware, l2 ε=0.5) over plain and "
         "detector-aware attacks")),
        ([_row("pgd", False, 0.5, 0.05)], "holds", "over plain attacks only; not tested against an attacker who knows it"),
        ([_row("pgd", False, 0.5, 0.0, success=0.05), _row("pgd", True, 0.5, 0.05, success=0.05)], "holds",
         "the attacks fool the classifier on at most 5.0% of points, so this says little about the detector"),
    ],
)
def test_the_verdict_rule(rows: list[dict[str, Any]], verdict: str, words: str) -> None:
    a = assess({"detector": "feature_squeezing", "rows": rows})
    assert a["verdict"] == verdict
    assert words in a["verdict_text"]
    assert a["worst_undetected_success_rate"] == max(r["undetected_success_rate"] for r in rows)


def test_the_worst_case_is_per_norm_and_eps_and_ignores_rows_without_a_rate() -> None:
    rows = [_row("pgd", False, 0.5, 0.2), _row("cw", True, 0.5, 0.4), _row("pgd", True, 1.0, 0.3),
            {**_row("pgd", False, 2.0, 0.0), "undetected_success_rate": None}]
    a = assess({"detector": "mahalanobis", "rows": rows})
    assert [(w["eps"], w["undetected_success_rate"], w.get("attack"), w.get("adaptive")) for w in a["worst_case"]] == [
        (0.5, 0.4, "cw", True), (1.0, 0.3, "pgd", True), (2.0, None, None, None)
    ]
    assert a["worst_undetected_success_rate"] == 0.4
    none = assess({"detector": "mahalanobis", "rows": rows[3:]})
    assert none["verdict"] is None and "no verdict" in none["verdict_text"]


# ------------------------------------------------------------------------------------------------
# the false-positive-rate flag
def test_binomial_tail_is_the_exact_upper_tail() -> None:
    for k, n, p in [(15, 100, 0.05), (5, 30, 0.05), (0, 10, 0.1), (3, 7, 0.2), (8, 8, 0.5)]:
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9)
    assert binomial_tail(11, 10, 0.5) == 0.0


def _entry(flagged: int, n: int, target: float) -> dict[str, Any]:
    return {"detector": "feature_squeezing_detector", "params": {}, "threshold": 0.1, "target_fpr": target, "n": n,
            "clean_accuracy": 0.9, "clean_fpr": flagged / n, "calibration_samples": n, "fit_samples": n,
            "rows": [_row("pgd", False, 0.5, 0.3)], "notes": []}


@pytest.mark.parametrize(
    ("flagged", "n", "fires"),
    [
        (15, 100, True),   # 15% against a 5% target on 100 samples: p = 0.00014
        (9, 60, True),     # 15% on 60: p = 0.0028
        (5, 30, False),    # 16.7% on 30: p = 0.016, within what 30 samples can show at alpha = 0.01
        (3, 30, False),    # 10% on 30: p = 0.19
        (5, 100, False),   # exactly on target
    ],
)
def test_the_fpr_flag_fires_only_beyond_sampling_noise(flagged: int, n: int, fires: bool) -> None:
    study = DetectStudy([], batch_size=10, seed=0, items=[])
    out: StudyOutput = study.merge(None, [_entry(flagged, n, 0.05)], [])
    check = out.sections["detection"][0]["fpr_check"]
    assert check["flagged"] == flagged and check["n"] == n
    assert check["p_value"] == pytest.approx(binomial_tail(flagged, n, 0.05))
    assert check["exceeds_target"] is fires is (check["p_value"] < FPR_ALPHA)
    assert [f["id"] for f in out.flags] == ([FPR_FLAG] if fires else [])
    assert fpr_check(_entry(flagged, n, 0.05)) == check


def test_a_detector_calibrated_on_too_few_samples_raises_the_flag_and_a_well_calibrated_one_does_not(
    plain_report: dict[str, Any],
) -> None:
    small, ok = plain_report["detection"]
    assert small["target_fpr"] == 0.01 and small["calibration_samples"] == 5
    assert small["clean_fpr"] > 0.08 and small["fpr_check"]["exceeds_target"] is True
    assert ok["target_fpr"] == 0.05 and ok["fpr_check"]["exceeds_target"] is False
    flags = [f for f in plain_report["flags"] if f["id"] == FPR_FLAG]
    assert len(flags) == 1
    f = flags[0]
    assert f["severity"] == "warning" and f["title"].startswith("detect[0] feature_squeezing_detector: clean false-positive rate")
    ev = f["evidence"]
    assert (ev["detect"], ev["detector"], ev["target_fpr"], ev["n"]) == ("detect[0]", "feature_squeezing_detector", 0.01, 35)
    assert ev["clean_fpr"] == small["clean_fpr"] and ev["flagged"] == round(small["clean_fpr"] * 35)
    assert ev["p_value"] < FPR_ALPHA and ev["threshold_samples"] == 5
    assert ev["expected_fpr_of_threshold"] == pytest.approx(1 / 6)
    html = render_html(plain_report)
    assert f"data-flag='{FPR_FLAG}'" in html and "above the target beyond sampling noise" in section(html, "detection")


def test_the_fpr_flag_blocks_a_gated_audit_unless_the_spec_accepts_it(model_file: Path) -> None:
    gate = [{"detector": "feature_squeezing_detector", "attack": "fgsm", "max_undetected_success_rate": 1.0}]
    assert FPR_FLAG in DetectStudy.blocking_flags and FPR_FLAG in DetectStudy.hygiene_checks()
    spec = make_spec(model_file, data={"name": "digits", "n": 30, "seed": 0}, threats=[{"norm": "linf", "eps": 0.1}],
                     detect=[{**TOO_SMALL_CALIBRATION, "adaptive": False}], thresholds=gate)
    rep = run_audit(load_spec(spec), store=None).report
    assert rep["gate"]["passed"] is False
    assert [v for v in rep["gate"]["violations"] if FPR_FLAG in v]
    spec["accept_flags"] = [{"flag": FPR_FLAG, "reason": "calibrated on purpose on 5 samples"}]
    rep = run_audit(load_spec(spec), store=None).report
    assert not [v for v in rep["gate"]["violations"] if FPR_FLAG in v]
