"""The answer above the fold: the verdict sentence (passed, failed, no gate), the headline ε, the
thresholds table, the attacks × ε matrix and the model's history — in report.json and report.html,
recomputed here from the report's own rows."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.gate import compare_reports
from gauntlet.audit.html import render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.verdict import build_verdict
from gauntlet.errors import ConfigError
from tests.test_audit_html import chromium, needs_chromium


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def spec(model_file: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits-cnn", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 40, "seed": 0},
        # at ε = 0.5 (half the input range) every point falls: never a headline by default
        "threats": [{"norm": "linf", "eps": [0.05, 0.1, 0.5]}],
        "attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 10}],
        "batch_size": 40,
    }
    s.update(over)
    return s


def row(rows: list[dict[str, Any]], eps: float, **match: Any) -> dict[str, Any]:
    return next(r for r in rows if math.isclose(r["eps"], eps) and all(r.get(k) == v for k, v in match.items()))


@pytest.fixture(scope="module")
def ungated(model_file: Path) -> dict[str, Any]:
    return run_audit(load_spec(spec(model_file)), store=None).report


@pytest.fixture(scope="module")
def failed(model_file: Path) -> dict[str, Any]:
    th = [{"attack": "worst_case", "norm": "linf", "eps": 0.1, "min_robust_accuracy": 0.99}]
    run = run_audit(load_spec(spec(model_file, thresholds=th)), store=None)
    assert run.exit_code == 1
    return run.report


def test_a_failed_gate_states_the_drop_at_the_gated_eps_with_its_interval_and_the_requirement(failed: dict[str, Any]) -> None:
    validate_report(failed)
    v = failed["verdict"]
    w = row(failed["worst_case"], 0.1)
    lo, hi = w["robust_accuracy_ci"]
    assert v["state"] == "failed" and failed["headline_eps"] == 0.1 and v["headline"]["source"] == "gate"
    assert v["sentence"].startswith("FAIL: at L∞ ε=0.1 (inputs in [0, 1]), ")
    assert (
        f"takes accuracy from {100 * failed['clean_accuracy']:.1f}% to {100 * w['robust_accuracy']:.1f}% "
        f"(95% CI {100 * lo:.0f}–{100 * hi:.0f}%); required 99.0%"
    ) in v["sentence"]
    # the thresholds table: actual, required and margin of the rule, recomputed from the worst-case row
    (rule,) = failed["gate"]["rules"]
    assert rule["actual"] == w["robust_accuracy"] and rule["margin"] == pytest.approx(w["robust_accuracy"] - 0.99)
    assert rule["passed"] is False and rule["ci"] == pytest.approx(w["robust_accuracy_ci"])
    page = render_html(failed)
    assert "data-state='failed'" in page and "class='verdict v-bad'" in page and "<tr class='rule'>" in page
    assert page.index("id='verdict'") < page.index("class='cards'")  # above the fold: before everything else


def test_no_gate_is_its_own_grey_state_and_never_says_passed(ungated: dict[str, Any]) -> None:
    v = ungated["verdict"]
    assert ungated["gate"]["passed"] is None and v["state"] == "no_gate"
    assert v["sentence"].startswith("NO GATE: at L∞ ε=0.1 (inputs in [0, 1]), ")
    assert v["sentence"].endswith("; no gate configured (no threshold or --max-regression), so nothing was required")
    page = render_html(ungated)
    verdict = re.search(r"<section id='verdict'[^>]*>(.*?)</section>", page)
    assert verdict is not None and "v-none" in verdict.group(0) and "PASS" not in verdict.group(1)
    assert "b-ok'>PASSED" not in page


def test_the_default_headline_eps_is_the_largest_with_survivors_not_one_where_everything_is_zero(ungated: dict[str, Any]) -> None:
    assert row(ungated["worst_case"], 0.5)["robust_accuracy"] == 0.0  # everything falls at half the input range
    standing = [r["eps"] for r in ungated["worst_case"] if r["robust_count"] > 0]
    assert ungated["headline_eps"] == max(standing) == 0.1
    assert ungated["verdict"]["headline"]["source"] == "default"
    # the headline names the strongest attack when it alone reaches the worst case
    h = ungated["verdict"]["headline"]
    strongest = min((r for r in ungated["results"] if r["eps"] == 0.1), key=lambda r: r["robust_count"])
    assert h["strongest_attack"] == strongest["attack"]


def test_headline_eps_from_the_spec_leads_and_an_unevaluated_one_is_a_one_line_error(model_file: Path) -> None:
    rep = run_audit(load_spec(spec(model_file, headline_eps={"norm": "linf", "eps": 0.05})), store=None).report
    assert rep["headline_eps"] == 0.05 and rep["verdict"]["headline"]["source"] == "spec"
    assert rep["verdict"]["sentence"].startswith("NO GATE: at L∞ ε=0.05 ")
    with pytest.raises(ConfigError) as info:
        run_audit(load_spec(spec(model_file, headline_eps=0.2)), store=None)
    assert str(info.value) == "headline_eps: ε=0.2 is not evaluated by any threat; choose one of the budgets (linf: 0.05, 0.1, 0.5)"
    with pytest.raises(ConfigError, match=r"^headline_eps: l2 ε=0.1 is not evaluated by any threat; choose one of the "
                                          r"budgets \(no threat has norm 'l2'\)$"):
        run_audit(load_spec(spec(model_file, headline_eps={"norm": "l2", "eps": 0.1})), store=None)
    with pytest.raises(ConfigError, match=r"^headline_eps"):
        load_spec(spec(model_file, headline_eps="big"))


def test_the_matrix_stars_the_strongest_attack_per_eps_and_credits_every_broken_point_once(ungated: dict[str, Any]) -> None:
    clean_count = round(ungated["clean_accuracy"] * ungated["data"]["n"])
    for w in ungated["worst_case"]:
        credited = {b["attack"]: b["count"] for b in w["broken_by"]}
        # every correctly classified point that fell is credited to exactly one attack: the first to break it
        assert sum(credited.values()) == clean_count - w["robust_count"]
        first = row(ungated["results"], w["eps"], attack="fgsm")
        assert credited["fgsm"] == clean_count - first["robust_count"]
    page = render_html(ungated)
    matrix = re.search(r"<table class='matrix' data-norm='linf'>(.*?)</table>", page)
    assert matrix is not None
    header = re.findall(r"<th class='num[^']*'>ε=([0-9.]+)", matrix.group(1))
    assert header == ["0.05", "0.1", "0.5"] and "ε=0.1 ◆" in matrix.group(1)  # the headline ε is marked
    for eps, cell in zip((0.05, 0.1, 0.5), range(3)):
        best = min(r["robust_count"] for r in ungated["results"] if r["eps"] == eps)
        starred = [r["attack"] for r in ungated["results"] if r["eps"] == eps and r["robust_count"] == best]
        rows = re.findall(r"<tr><td>([^<]+)</td>(.*?)</tr>", matrix.group(1))
        marked = [a for a, tds in rows if "best" in re.findall(r"<td class='num([^']*)'", tds)[cell]]
        assert marked == starred


def test_a_second_audit_shows_its_baseline_deltas_as_compare_does_and_a_trend(model_file: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'h.db'}"
    first = run_audit(load_spec(spec(model_file)), store=store)
    assert "history" not in first.report or first.report["history"] is None  # nothing earlier
    second = run_audit(load_spec(spec(model_file, attacks=[{"name": "fgsm"}])), store=store)
    h = second.report["history"]
    validate_report(second.report)
    assert h["baseline_audit_id"] == first.audit_id
    cmp = compare_reports(first.report, second.report, 0.0, alpha=0.05)
    assert [(r["what"], r["a"], r["b"], r["delta"]) for r in h["rows"]] == [
        (r["what"], r["a"], r["b"], r["delta"]) for r in cmp["rows"]
    ]
    clean = next(t for t in h["trend"] if t["metric"] == "clean_accuracy")
    assert [p["audit_id"] for p in clean["points"]] == [first.audit_id, second.audit_id]
    worst = next(t for t in h["trend"] if t["labels"] == {"attack": "worst_case", "norm": "linf", "eps": 0.1})
    assert [p["value"] for p in worst["points"]] == [
        row(first.report["worst_case"], 0.1)["robust_accuracy"], row(second.report["worst_case"], 0.1)["robust_accuracy"]
    ]
    page = render_html(second.report)
    assert "<section id='history'>" in page and f"baseline #{first.audit_id}" in page and "<svg class='spark'" in page


def test_a_report_without_a_verdict_renders_the_gate_state_alone() -> None:
    old = {"schema_version": "2.0", "model": {"name": "m"}, "data": {"name": "d", "n": 10}, "clean_accuracy": 0.9,
           "flags": [], "gate": {"passed": True, "violations": []}, "manifest": {}}
    assert build_verdict(old) == {
        "state": "passed", "sentence": "PASS: clean accuracy 90.0% on 10 samples; the gate passed", "headline": None,
    }
    assert "PASS: clean accuracy 90.0% on 10 samples" in render_html(old)


# ------------------------------------------------------------------------------------------------
# headless Chromium: what a reader sees (the Chromium harness of test_audit_html)


def _measure(page: str, tmp_path: Path, width: int) -> tuple[int, int]:
    """The page's scroll width and viewport width in a ``width`` px wide frame (headless Chromium's
    window is never narrower than 500 px, a phone-wide iframe is).  A probe added to a copy of the
    page (its CSP lifted for the probe only) posts both numbers to the frame's parent."""
    probe = (
        "<script>window.addEventListener('load', () => parent.postMessage("
        "document.documentElement.scrollWidth + 'x' + window.innerWidth, '*'));</script>"
    )
    text = re.sub(r"<meta http-equiv='Content-Security-Policy'[^>]*>", "", page).replace("</body>", probe + "</body>")
    (tmp_path / "page.html").write_text(text, encoding="utf-8")
    outer = tmp_path / "frame.html"
    outer.write_text(
        f"<!DOCTYPE html><html><body style='margin:0'><iframe src='page.html' width='{width}' height='900' "
        "style='border:0'></iframe><script>window.addEventListener('message', (m) => {"
        " const d = document.createElement('div'); d.id = 'probe'; d.textContent = m.data; document.body.appendChild(d); });"
        "</script></body></html>",
        encoding="utf-8",
    )
    dom = chromium(tmp_path, "--window-size=800,1000", "--allow-file-access-from-files", "--dump-dom", outer.as_uri()).stdout
    m = re.search(r'<div id="probe">(\d+)x(\d+)</div>', dom)
    assert m is not None, dom[-500:]
    return int(m.group(1)), int(m.group(2))


@needs_chromium
def test_chromium_shows_the_verdict_and_the_grey_no_gate_state(failed: dict[str, Any], ungated: dict[str, Any], tmp_path: Path) -> None:
    for rep, state in ((failed, "failed"), (ungated, "no_gate")):
        path = tmp_path / f"{state}.html"
        path.write_text(render_html(rep), encoding="utf-8")
        dom = chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
        section = re.search(r'<section id="verdict" class="verdict (v-\w+)" data-state="(\w+)"><p>(.*?)</p>', dom)
        assert section is not None, dom[:500]
        assert section.group(2) == state and section.group(1) == {"failed": "v-bad", "no_gate": "v-none"}[state]
        assert section.group(3) == rep["verdict"]["sentence"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@needs_chromium
def test_chromium_at_390_px_wide_never_scrolls_the_page_sideways(failed: dict[str, Any], tmp_path: Path) -> None:
    page = render_html(failed)
    width, viewport = _measure(page, tmp_path, 390)
    assert viewport == 390 and width <= viewport  # wide tables scroll inside their own box
    # the probe can fail: a page with a fixed-width element wider than the phone scrolls sideways
    wide, _ = _measure(page.replace("</main>", "<div style='width:700px'>x</div></main>"), tmp_path, 390)
    assert wide > 390
