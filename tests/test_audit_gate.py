"""The gate: thresholds and regressions decide pass/fail; parsing of --fail-under / --max-regression."""

from __future__ import annotations

from typing import Any

import pytest

from gauntlet.audit.gate import compare_reports, evaluate_gate, parse_regression, parse_threshold, summary_line
from gauntlet.audit.studies.evasion import ThresholdSpec
from gauntlet.errors import ConfigError


def report(pgd: float = 0.5, fgsm: float = 0.6, worst: float = 0.45, clean: float = 0.97, audit_id: int = 1) -> dict[str, Any]:
    return {
        "audit_id": audit_id,
        "model": {"name": "net", "version": "2", "sha256": "ab"},
        "data": {"name": "digits", "n": 100, "sha256": "cd"},
        "clean_accuracy": clean,
        "results": [
            {"attack": "fgsm", "norm": "linf", "eps": 0.1, "robust_accuracy": fgsm},
            {"attack": "pgd", "norm": "linf", "eps": 0.1, "robust_accuracy": pgd},
        ],
        "worst_case": [{"norm": "linf", "eps": 0.1, "robust_accuracy": worst}],
        "flags": [],
        "gate": {"passed": True, "violations": []},
    }


def test_parse_threshold_accepts_fractions_and_percent_and_rejects_garbage() -> None:
    th = parse_threshold("pgd:linf:0.1=0.5")
    assert (th.attack, th.norm, th.eps, th.min_robust_accuracy) == ("pgd", "linf", 0.1, 0.5)
    assert parse_threshold("worst_case:l2:0.5=40%").min_robust_accuracy == pytest.approx(0.4)
    assert parse_threshold("autoattack:linf:0.3=0.85").attack == "autoattack"
    for bad, match in [
        ("pgd:linf:0.1", "expected attack:norm:eps=min_robust_accuracy"),
        ("pgd:linf:abc=0.5", "must be numbers"),
        ("pgd:l3:0.1=0.5", "norm must be 'linf', 'l2' or 'l1'"),
        ("pgd:linf:0.1=1.5", "must be in \\[0, 1\\]"),
        ("pgd:linf:-0.1=0.5", "must be a finite number > 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_threshold(bad)


def test_parse_regression_reads_percentage_points() -> None:
    assert parse_regression("2pp") == pytest.approx(0.02)
    assert parse_regression("2%") == pytest.approx(0.02)
    assert parse_regression("0.02") == pytest.approx(0.02)
    assert parse_regression(None) is None
    for bad in ("two", "-2pp", "200pp"):
        with pytest.raises(ConfigError, match="--max-regression"):
            parse_regression(bad)


def test_thresholds_pass_at_equality_and_fail_just_below() -> None:
    th = [ThresholdSpec(attack="pgd", norm="linf", eps=0.1, min_robust_accuracy=0.5)]
    at = evaluate_gate(report(pgd=0.5), th)
    assert (at["passed"], at["violations"]) == (True, [])
    # the thresholds table: the rule, its actual value, the requirement and the margin (0 at equality)
    (rule,) = at["rules"]
    assert rule["rule"] == "pgd:linf:0.1=0.5" and rule["kind"] == "min" and rule["passed"] is True
    assert rule["actual"] == pytest.approx(0.5) and rule["required"] == 0.5 and rule["margin"] == pytest.approx(0.0, abs=1e-12)
    g = evaluate_gate(report(pgd=0.49), th)
    assert g["passed"] is False
    assert g["violations"] == ["pgd linf ε=0.1: robust accuracy 49.0% < required 50.0%"]
    assert g["rules"][0]["passed"] is False and g["rules"][0]["margin"] == pytest.approx(-0.01)
    worst = [ThresholdSpec(attack="worst_case", norm="linf", eps=0.1, min_robust_accuracy=0.46)]
    assert evaluate_gate(report(worst=0.45), worst)["violations"] == ["worst_case linf ε=0.1: robust accuracy 45.0% < required 46.0%"]
    missing = [ThresholdSpec(attack="pgd", norm="linf", eps=0.2, min_robust_accuracy=0.1)]
    assert "no result in the report" in evaluate_gate(report(), missing)["violations"][0]


def test_max_regression_fails_only_on_drops_beyond_the_allowance() -> None:
    prev = report(pgd=0.50, worst=0.45, clean=0.97, audit_id=4)
    assert evaluate_gate(report(pgd=0.49, worst=0.44), [], prev, 0.02)["passed"] is True  # -1 pp
    g = evaluate_gate(report(pgd=0.47, worst=0.45), [], prev, 0.02)  # -3 pp on pgd only
    assert g["passed"] is False and len(g["violations"]) == 1
    assert g["violations"][0].startswith("pgd linf ε=0.1: robust accuracy fell 3.0 pp (50.0% → 47.0%) since audit #4")
    g = evaluate_gate(report(clean=0.90), [], prev, 0.02)
    assert g["violations"] and g["violations"][0].startswith("clean accuracy fell 7.0 pp")
    assert evaluate_gate(report(pgd=0.1), [], None, 0.02)["passed"] is True  # no baseline: nothing to regress from
    assert evaluate_gate(report(pgd=0.9), [], prev, 0.0)["passed"] is True  # improvements never fail


def test_compare_marks_regressions_and_rows_only_one_side_has() -> None:
    a = report(pgd=0.5, fgsm=0.6, worst=0.45)
    b = report(pgd=0.4, fgsm=0.61, worst=0.40)
    b["results"].append({"attack": "square", "norm": "linf", "eps": 0.1, "robust_accuracy": 0.7})
    cmp = compare_reports(a, b, max_regression=0.0)
    rows = {(r["attack"], r["norm"], r["eps"]): r for r in cmp["rows"]}
    assert rows[("pgd", "linf", 0.1)]["delta"] == pytest.approx(-0.1) and rows[("pgd", "linf", 0.1)]["regression"]
    assert not rows[("fgsm", "linf", 0.1)]["regression"]
    assert rows[("worst_case", "linf", 0.1)]["regression"]
    assert rows[("square", "linf", 0.1)]["a"] is None and rows[("square", "linf", 0.1)]["delta"] is None
    assert cmp["regressions"] == 2 and cmp["same_data"]
    assert compare_reports(a, b, max_regression=0.2)["regressions"] == 0


def test_summary_line_is_one_line_and_says_pass_or_fail() -> None:
    r = report()
    line = summary_line(r, "out/report.html")
    assert line.startswith("PASS net v2: clean 97.0%, worst case linf ε=0.1 45.0%") and line.endswith("report out/report.html")
    r["gate"] = {"passed": False, "violations": ["a", "b"]}
    line = summary_line(r)
    assert line.startswith("FAIL net v2: a (+1 more)") and "\n" not in line
