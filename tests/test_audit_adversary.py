"""The adversary drives the audit: what the attacker knows (gradients, scores, labels) picks what a
preset runs and refuses what it may not use; black-box rows carry queries per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.html import render_html
from gauntlet.audit.report import validate_report
from gauntlet.audit.studies.evasion import resolve_attacks
from gauntlet.errors import ConfigError


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def spec(model_file: Path, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": {"path": str(model_file), "name": "digits-cnn", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 16, "seed": 0},
        "threats": [{"norm": "l2", "eps": [1.0, 2.0]}],
        "attacks": {"preset": "standard"},
        "batch_size": 16,
    }
    s.update(over)
    return s


@pytest.mark.parametrize(
    ("knowledge", "preset", "expected"),
    [
        ("white", "standard", [("autoattack", None)]),
        ("scores", "quick", [("square", 300)]),
        ("scores", "standard", [("square", 300), ("nes", 300)]),
        ("scores", "thorough", [("square", 300), ("nes", 300), ("zoo", 300)]),
        ("labels", "standard", [("hopskipjump", 300)]),
        ("labels", "thorough", [("hopskipjump", 300), ("boundary", 300)]),
    ],
)
def test_the_knowledge_picks_what_a_preset_runs_with_the_adversarys_query_budget(
    model_file: Path, knowledge: str, preset: str, expected: list[tuple[str, int | None]]
) -> None:
    s = load_spec(spec(model_file, attacks={"preset": preset}, adversary={"knowledge": knowledge, "max_queries": 300}))
    assert [(a.name, a.params.get("max_queries")) for a in resolve_attacks(s)] == expected


def test_an_attack_beyond_the_adversarys_knowledge_is_a_one_line_error(model_file: Path) -> None:
    with pytest.raises(ConfigError) as info:  # found when the spec is read
        load_spec(spec(model_file, attacks=["square"], adversary={"knowledge": "labels"}))
    assert str(info.value) == (
        "attacks[0]: square needs scores but adversary.knowledge is 'labels'; use an attack that sees only labels, "
        "e.g. boundary, hopskipjump"
    )
    with pytest.raises(ConfigError, match=r"^attacks\[0\]: pgd needs gradients but adversary.knowledge is 'scores'"):
        load_spec(spec(model_file, attacks=["pgd"], adversary={"knowledge": "scores"}))
    with pytest.raises(ConfigError, match=r"^threats\[0\]: adversary.goal is 'targeted' but this threat is untargeted"):
        load_spec(spec(model_file, adversary={"goal": "targeted"}))
    with pytest.raises(ConfigError, match=r"adversary.max_queries"):
        load_spec(spec(model_file, adversary={"max_queries": 0}))


@pytest.mark.parametrize(("knowledge", "attack", "extra"), [("labels", "hopskipjump", 0), ("scores", "square", 1)])
def test_a_black_box_adversary_audit_reports_success_against_queries_within_the_budget(
    model_file: Path, knowledge: str, attack: str, extra: int
) -> None:
    budget = 120
    run = run_audit(load_spec(spec(model_file, attacks={"preset": "quick"}, adversary={"knowledge": knowledge, "max_queries": budget})), store=None)
    rep = run.report
    validate_report(rep)
    assert rep["evaluation_strength"]["adversary"] == {"knowledge": knowledge, "max_queries": budget}
    assert "no_ensemble" not in [f["id"] for f in rep["flags"]]
    for r in rep["results"]:
        assert r["attack"] == attack
        curve = r["success_vs_queries"]
        # the curve climbs to the success rate, within the per-sample budget (Square: + its clean check)
        assert [q for q, _ in curve] == sorted(q for q, _ in curve) and all(0 < q <= budget + extra for q, _ in curve)
        assert [v for _, v in curve] == sorted(v for _, v in curve)
        if curve:
            assert curve[-1][1] == pytest.approx(r["success_rate"])
            assert 0 < r["median_queries_per_success"] <= budget + extra
    page = render_html(rep)
    assert "<section id='queries'>" in page and f"sees only the model's <b>{knowledge}</b>" in page
