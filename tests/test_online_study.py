"""The ``online`` audit block: runs of the built-in online spam filter under an attack and a defense,
its report section (per-round curves, an SVG chart, refusals), the gate ``online:LABEL=MAX``, a
rerun that streams nothing (every run is in the store), and place-named errors for bad blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.gate import evaluate_gate, parse_threshold
from gauntlet.audit.html import render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.studies.online import OnlineStudy, OnlineThreshold
from gauntlet.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the study does not use the audited model, but every audit spec names one: an untrained net will do
    from gauntlet.models.zoo import DigitsCNN

    path = tmp_path_factory.mktemp("online") / "target.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(DigitsCNN().state_dict(), path)
    return path


def make_spec(model_file: Path, **block: Any) -> dict[str, Any]:
    online: dict[str, Any] = {
        "rounds": 4, "per_round": 60, "warmup_rounds": 3, "eval_size": 100, "trusted_size": 60,
        "runs": [
            {"attack": {"name": "boiling_frog", "share": 0.3, "step": 0.25}, "label": "frog"},
            {"attack": {"name": "boiling_frog", "share": 0.3, "step": 0.25}, "defense": "drift_detection", "label": "frog+dd"},
            {"defense": "drift_detection", "drift": 0.02},
        ],
    }
    online.update(block)
    return {
        "model": {"path": str(model_file), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 20, "seed": 0},
        "online": online,
        "seed": 0,
    }


def test_the_online_block_reports_per_round_curves_for_each_run_and_gates_on_peak_acceptance(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(make_spec(model_file))
    store = f"sqlite:///{tmp_path / 'audits.db'}"
    report = run_audit(spec, store=store).report
    validate_report(report)
    frog, defended, benign = report["online"]
    assert [t["run"] for t in report["online"]] == ["frog", "frog+dd", "no attack / drift_detection"]
    assert [r["round"] for r in frog["rounds"]] == [0, 1, 2, 3, 4]
    # the same seed streams the same mail: the runs start from the same warmed-up filter
    assert frog["initial_acceptance"] == defended["initial_acceptance"]
    assert frog["max_acceptance"] == max(r["acceptance"] for r in frog["rounds"])
    assert [r["attacker_spam_fraction"] for r in frog["rounds"]] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert frog["defense"] is None and benign["attack"] is None and benign["drift"] == 0.02
    assert defended["refused_share"] == sum(r["refused"] for r in defended["rounds"][1:]) / 4
    assert 0 <= benign["refused_share"] <= 1 and not frog["rounds"][0]["refused"]
    html = render_html(report)
    assert "<section id='online'>" in html and "<svg class='curve'" in html and "updates refused so far" in html
    assert OnlineStudy.text(report)[0].startswith("online frog: held-out spam accepted ")
    metrics = {(m.name, m.labels["run"]): m.value for m in OnlineStudy.metrics(report)}
    assert metrics[("online_acceptance", "frog")] == frog["max_acceptance"]
    assert ("online_refused", "frog") not in metrics and metrics[("online_refused", "frog+dd")] == defended["refused_share"]
    ok = evaluate_gate(report, [OnlineThreshold(online="frog", max_acceptance=frog["max_acceptance"] + 0.01)])
    bad = evaluate_gate(report, [parse_threshold(f"online:frog={100 * frog['max_acceptance'] - 0.5:.1f}%")])
    assert ok["passed"] and not bad["passed"]
    # interrupted after the first run, the same call resumes it and streams only the two missing runs
    import gauntlet.audit.runner as runner_mod
    from gauntlet.learning import spam

    def interrupt(ev: runner_mod.ProgressEvent) -> None:
        if ev.phase == "units" and ev.done - ev.reused >= 1:
            raise KeyboardInterrupt

    other = f"sqlite:///{tmp_path / 'resumed.db'}"
    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, store=other, progress=interrupt)
    calls: list[int] = []
    real = spam.run_stream
    monkeypatch.setattr(spam, "run_stream", lambda **kw: calls.append(1) or real(**kw))
    resumed = run_audit(spec, store=other)
    assert resumed.resumed and resumed.reused_units == 1 and len(calls) == 2

    def curves(rep: dict[str, Any]) -> list[Any]:
        return [{k: v for k, v in t.items() if k != "seconds"} for t in rep["online"]]

    assert curves(resumed.report) == curves(report)


def test_the_online_threshold_reads_a_label_and_a_percentage() -> None:
    th = OnlineStudy.parse_threshold("online:frog+dd=10%")
    assert th == OnlineThreshold(online="frog+dd", max_acceptance=0.1) and th.describe() == "online:frog+dd=0.1"
    assert OnlineStudy.parse_threshold("extraction:knockoff=10%") is None
    with pytest.raises(ConfigError, match=r"--fail-under 'online:frog=x': the maximum acceptance must be a number"):
        OnlineStudy.parse_threshold("online:frog=x")


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([{"attack": "boiling_frg"}], r"online.runs\[0\].attack: .*did you mean 'boiling_frog'"),
        ([{"attack": "label_flip"}], r"online.runs\[0\].attack: 'label_flip' is a poisoning attack, not an online one"),
        ([{"defense": "krum"}], r"online.runs\[0\].defense: 'krum' is a aggregation defense, not an online one"),
        ([{"attack": {"name": "boiling_frog", "share": 0.9}}], r"online.runs\[0\].attack: share 0.9 leaves no room"),
        ([{"defense": {"name": "drift_detection", "alpha": 2.0}}], r"online.runs\[0\].defense: .*alpha"),
        ([{"attack": "boiling_frog"}, {"attack": "boiling_frog"}], r"two runs are labelled 'boiling_frog / undefended'"),
        ([{"drift": 1.5}], r"online.runs\[0\].drift: must be < 1"),
    ],
)
def test_bad_online_blocks_are_place_named(model_file: Path, runs: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(make_spec(model_file, runs=runs))


def test_a_threshold_on_a_run_the_spec_does_not_have_is_refused(model_file: Path) -> None:
    spec = load_spec(make_spec(model_file))
    with pytest.raises(ConfigError, match=r"no run is labelled 'nope'; the spec has 'frog', 'frog\+dd'"):
        OnlineStudy.resolve(spec, {}).check_threshold(OnlineThreshold(online="nope", max_acceptance=0.1), "thresholds[0]")
