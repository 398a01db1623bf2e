"""The gate's verdict: no gate configured is its own state, the regression baseline is the last audit
that did not fail its gate on the same data, and bad models, budgets and folders are never accepted
silently (each found before anything is stored)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

import gauntlet.audit.runner as runner_mod
from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.gate import summary_line
from gauntlet.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def spec(model_file: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits-cnn", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 40, "seed": 0},
        "threats": [{"norm": "linf", "eps": 0.1}],
        "attacks": [{"name": "fgsm", "label": "a"}],
        "batch_size": 40,
    }
    s.update(over)
    return s


def audits(db: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, status FROM audits ORDER BY id").fetchall()
    finally:
        con.close()


def test_an_audit_without_thresholds_or_max_regression_has_no_gate_and_exits_0(model_file: Path) -> None:
    run = run_audit(load_spec(spec(model_file)), store=None)
    assert run.report["gate"] == {"passed": None, "violations": []}
    assert run.exit_code == 0 and run.passed
    assert summary_line(run.report).startswith("NO GATE digits-cnn: no threshold or --max-regression configured")


def test_rerunning_a_failed_regression_gate_fails_again(model_file: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'g.db'}"
    # a one-step PGD with a tiny step fools almost nothing: the baseline looks robust
    barely = [{"name": "pgd", "steps": 1, "step_size": 0.001, "random_start": False, "label": "a"}]
    # (the Square cross-check sees through such an attack: the baseline accepts that flag)
    accept = [{"flag": "black_box_beats_white_box", "reason": "a deliberately weak baseline"}]
    first = run_audit(load_spec(spec(model_file, attacks=barely, accept_flags=accept)), store=store, max_regression=0.0)
    assert first.report["gate"]["passed"] is True and first.report["gate"]["baseline_audit_id"] is None
    # the same label, a real attack: robust accuracy of "a" falls, far beyond noise
    weaker = spec(model_file, attacks=[{"name": "pgd", "steps": 10, "label": "a"}])
    second = run_audit(load_spec(weaker), store=store, max_regression=0.0)
    assert second.exit_code == 1 and second.report["gate"]["baseline_audit_id"] == first.audit_id
    third = run_audit(load_spec(weaker), store=store, max_regression=0.0)
    # the failed second audit is no baseline: the rerun is compared with the first and fails too
    assert third.audit_id == second.audit_id + 1
    assert third.exit_code == 1 and third.report["gate"]["baseline_audit_id"] == first.audit_id
    assert third.report["gate"]["violations"][0].startswith("a linf ε=0.1: robust accuracy fell")


def test_a_baseline_on_other_data_is_refused_before_anything_runs_unless_named(model_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    first = run_audit(load_spec(spec(model_file)), store=f"sqlite:///{db}")
    other = load_spec(spec(model_file, data={"name": "digits", "n": 40, "seed": 1}))
    with pytest.raises(ConfigError, match=rf"^--max-regression: no earlier audit of 'digits-cnn' that passed its gate "
                                          rf"used this data; the last one, #{first.audit_id}, audited other data") as info:
        run_audit(other, store=f"sqlite:///{db}", max_regression=0.02)
    assert f"pass --baseline {first.audit_id}" in str(info.value) and "\n" not in str(info.value)
    assert audits(db) == [(first.audit_id, "done")]  # nothing was written
    named = run_audit(other, store=f"sqlite:///{db}", max_regression=1.0, baseline=first.audit_id)
    assert named.report["gate"]["baseline_audit_id"] == first.audit_id and named.exit_code == 0
    with pytest.raises(ConfigError, match=r"^--baseline must be an audit id >= 1"):
        run_audit(other, store=f"sqlite:///{db}", baseline=0)


def test_a_model_with_nan_scores_on_clean_data_is_refused_and_nothing_is_written(
    digits_net: torch.nn.Module, tmp_path: Path
) -> None:
    state = {k: v.clone() for k, v in digits_net.state_dict().items()}
    last_bias = [k for k in state if k.endswith("bias")][-1]
    state[last_bias][3] = float("nan")  # class 3's logit is NaN for every input
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    db = tmp_path / "g.db"
    with pytest.raises(DataError, match=r"^model: its scores are NaN or infinite on 40 of the 40 clean samples \(first: sample 0\)"):
        run_audit(load_spec(spec(path)), out_dir=tmp_path / "out", store=f"sqlite:///{db}")
    assert not db.exists() and not (tmp_path / "out").exists()


def test_an_linf_budget_covering_the_input_range_raises_a_flag(model_file: Path) -> None:
    rep = run_audit(load_spec(spec(model_file, threats=[{"norm": "linf", "eps": [0.1, 1.0, 8.0]}])), store=None).report
    flag = next(f for f in rep["flags"] if f["id"] == "eps_covers_input_range")
    assert flag["severity"] == "warning" and flag["evidence"] == {"eps": [1.0, 8.0], "bounds": [0.0, 1.0]}
    assert "8/255" in flag["explanation"]
    fine = run_audit(load_spec(spec(model_file)), store=None).report
    assert "eps_covers_input_range" not in [f["id"] for f in fine["flags"]]


def test_an_unwritable_out_folder_is_found_before_the_first_unit_and_no_audit_is_left_running(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "g.db"

    def refuse(*a: Any, **k: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runner_mod.tempfile, "mkstemp", refuse)  # a read-only folder, even for root
    with pytest.raises(ConfigError, match=r"is not writable \(Permission denied\); pass a writable folder$"):
        run_audit(load_spec(spec(model_file)), out_dir=tmp_path / "out", store=f"sqlite:///{db}")
    assert not db.exists()
    monkeypatch.undo()

    # a report that cannot be written at the end leaves the audit failed (resumable), not running
    def broken(report: Any, out_dir: Any) -> Any:
        raise ConfigError("--out: cannot write the report (disk full); pass a writable folder")

    monkeypatch.setattr(runner_mod, "write_reports", broken)
    with pytest.raises(ConfigError, match="disk full"):
        run_audit(load_spec(spec(model_file)), out_dir=tmp_path / "out", store=f"sqlite:///{db}")
    assert [s for _, s in audits(db)] == ["failed"]
    monkeypatch.undo()
    again = run_audit(load_spec(spec(model_file)), out_dir=tmp_path / "out", store=f"sqlite:///{db}")
    assert again.resumed and again.reused_units == 2 and [s for _, s in audits(db)] == ["done"]  # fgsm, Square cross-check


# ------------------------------------------------------------------------------------------------
# a regression is a drop beyond noise
def _report(robust: int, n: int = 450, clean: int = 430) -> dict[str, Any]:
    return {
        "clean_accuracy": clean / n,
        "data": {"n": n, "sha256": "d"},
        "results": [{"attack": "pgd", "norm": "linf", "eps": 0.1, "robust_accuracy": robust / n, "robust_count": robust, "n": n}],
        "worst_case": [],
    }


def _outcomes(robust_idx: set[int], n: int = 450, clean: int = 430) -> dict[Any, list[bool | None]]:
    key = ("robust_accuracy", (("attack", "pgd"), ("eps", 0.1), ("norm", "linf")))
    return {key: [i in robust_idx for i in range(n)], ("clean_accuracy", ()): [i < clean for i in range(n)]}


def test_a_seed_only_move_does_not_trip_1pp_and_a_real_5pp_drop_on_450_points_does() -> None:
    from gauntlet.audit.gate import compare_reports, evaluate_gate

    base = set(range(200))
    noisy = (base - {0, 1, 2, 3, 4, 5}) | {300}  # 6 lost, 1 gained: -1.1 pp, McNemar p = 8/128
    real = base - set(range(23))  # 23 lost: -5.1 pp, p = 2^-23
    a, b_noise, b_real = _report(200), _report(len(noisy)), _report(len(real))
    (row,) = compare_reports(a, b_noise, 0.01)["rows"]
    assert row["regression"] is True  # the move alone exceeds 1 pp ...
    (row,) = compare_reports(a, b_noise, 0.01, alpha=0.05, outcomes_a=_outcomes(base), outcomes_b=_outcomes(noisy))["rows"]
    assert row["significant"] is False and row["regression"] is False  # ... but it is noise
    gate = evaluate_gate(b_real, [], a, 0.01, alpha=0.05, outcomes_previous=_outcomes(base), outcomes=_outcomes(real))
    assert gate["passed"] is False and gate["violations"][0].startswith("pgd linf ε=0.1: robust accuracy fell 5.1 pp")
    # without per-sample outcomes (other data), the two proportions decide: 5 pp on 450 vs 450 is not beyond noise
    (row,) = compare_reports(a, b_real, 0.01, alpha=0.05)["rows"]
    assert row["significant"] is False and row["regression"] is False
    (row,) = compare_reports(_report(300), _report(200), 0.01, alpha=0.05)["rows"]
    assert row["significant"] is True and row["regression"] is True


def test_wilson_and_mcnemar_match_their_closed_forms() -> None:
    from gauntlet.audit.stats import mcnemar_drop_p, newcombe_drop_lower, wilson

    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (10 + 1.96 ** 2), abs=1e-3)  # z²/(n + z²) at k = 0
    lo, hi = wilson(225, 450)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo) and hi - lo == pytest.approx(2 * 1.96 * 0.5 / 450 ** 0.5, rel=0.01)
    assert mcnemar_drop_p([True] * 3 + [False], [False] * 3 + [True]) == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 1/2)
    assert mcnemar_drop_p([True, False], [True, False]) == 1.0
    assert newcombe_drop_lower(300, 450, 200, 450) > 0 > newcombe_drop_lower(200, 450, 195, 450)


def test_alpha_is_validated_with_a_one_line_error() -> None:
    from gauntlet.audit.gate import parse_alpha

    assert parse_alpha("0.01") == 0.01 and parse_alpha(None) is None
    for bad in ("0", "0.7", "nan", "five"):
        with pytest.raises(ConfigError, match=rf"^--alpha '{bad}': "):
            parse_alpha(bad)


# ------------------------------------------------------------------------------------------------
# a masked evaluation cannot pass quietly
def _flagged(fid: str = "zero_gradients") -> dict[str, Any]:
    rep = _report(400)
    rep["flags"] = [{"id": fid, "severity": "warning", "title": "Zero or vanishing input gradients", "explanation": "e", "evidence": {}}]
    return rep


def test_an_unreliability_flag_fails_a_gated_audit_unless_the_spec_accepts_it() -> None:
    from gauntlet.audit.gate import evaluate_gate
    from gauntlet.audit.studies.evasion import ThresholdSpec

    th = [ThresholdSpec(attack="pgd", norm="linf", eps=0.1, min_robust_accuracy=0.5)]
    gate = evaluate_gate(_flagged(), th)
    assert gate["passed"] is False
    assert gate["violations"] == [
        "hygiene flag zero_gradients: Zero or vanishing input gradients; the numbers are not reliable until the "
        "evaluation is fixed, or accept it in the spec (accept_flags: [{flag: zero_gradients, reason: ...}])"
    ]
    assert evaluate_gate(_flagged(), th, accepted_flags={"zero_gradients": "a known quantized model"})["passed"] is True
    assert evaluate_gate(_flagged(), [])["passed"] is None  # no gate: the flag is reported, nothing is required
    assert evaluate_gate(_flagged("non_monotonic_eps"), th)["passed"] is True  # informative, not blocking


def test_accept_flags_names_a_known_check_and_is_shown_in_the_report(model_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"^accept_flags\[0\]\.flag: no hygiene check is named 'zero_gradient'; did you mean 'zero_gradients'\?"):
        load_spec(spec(model_file, accept_flags=[{"flag": "zero_gradient", "reason": "x"}]))
    with pytest.raises(ConfigError, match=r"^accept_flags\[0\]: missing required field 'reason'"):
        load_spec(spec(model_file, accept_flags=[{"flag": "zero_gradients"}]))
    huge = spec(model_file, threats=[{"norm": "linf", "eps": [0.1, 1.0]}],
                accept_flags=[{"flag": "eps_covers_input_range", "reason": "a sanity point at the full range"}])
    rep = run_audit(load_spec(huge), store=None).report
    flag = next(f for f in rep["flags"] if f["id"] == "eps_covers_input_range")
    assert flag["accepted"] == "a sanity point at the full range"
    from gauntlet.audit.html import render_html
    from gauntlet.audit.report import validate_report

    validate_report(rep)
    assert "Accepted by the spec:</b> a sanity point at the full range" in render_html(rep)


def test_the_report_says_which_attacks_ran_and_flags_an_evaluation_without_an_ensemble(model_file: Path) -> None:
    from gauntlet.audit.html import render_html

    rep = run_audit(load_spec(spec(model_file)), store=None).report
    assert rep["evaluation_strength"] == {
        "attacks": [{"label": "a", "name": "fgsm"}, {"label": "square (cross-check)", "name": "square"}], "ensemble": False,
    }
    flag = next(f for f in rep["flags"] if f["id"] == "no_ensemble")
    assert flag["severity"] == "warning" and "upper bound" in flag["explanation"]
    assert "no AutoAttack-grade ensemble ran: these robust accuracies are upper bounds" in render_html(rep)
    strong = load_spec(spec(model_file, attacks=["fgsm", {"preset": "standard"}])).study("evasion")
    assert strong.strength()["ensemble"] is True  # the standard preset is the AutoAttack ensemble: no flag
