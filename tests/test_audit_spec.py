"""The audit spec: the documented shape parses, every error names its place (and line), presets expand."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gauntlet.audit.spec import AuditSpec, load_spec, spec_hash
from gauntlet.audit.studies.evasion import PRESETS, make_plan, resolve_attacks, unit_seed
from gauntlet.errors import ConfigError

BASE: dict[str, Any] = {
    "model": {"path": "model.pt", "name": "digits-cnn", "version": "3"},
    "data": {"name": "digits", "n": 200, "seed": 0},
    "threats": [{"norm": "linf", "eps": [0.05, 0.1, 0.2]}],
    "attacks": ["fgsm", {"name": "pgd", "steps": 20}],
    "thresholds": [{"attack": "pgd", "norm": "linf", "eps": 0.1, "min_robust_accuracy": 0.5}],
}

ISSUE_YAML = """\
model: {path: model.pt, name: digits-cnn, version: "3"}     # TorchScript here
data: {name: digits, n: 200, seed: 0}
threats:
  - {norm: linf, eps: [0.05, 0.1, 0.2]}
attacks: [fgsm, {name: pgd, steps: 20}]
thresholds:
  - {attack: pgd, norm: linf, eps: 0.1, min_robust_accuracy: 0.5}
"""


def spec_with(change) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    change(d)
    return d


def error_of(d: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_spec(d)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_the_issue_example_parses_with_defaults_and_resolves_paths_against_the_spec_folder(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "spec.yaml"
    f.parent.mkdir()
    f.write_text(ISSUE_YAML)
    spec = load_spec(f)
    assert isinstance(spec, AuditSpec)
    assert spec.model.version == "3" and spec.model.trust is False and spec.model.bounds == (0.0, 1.0)
    assert spec.batch_size == 250 and spec.seed == 0 and spec.data.split == "test"
    assert spec.model_path() == f.parent / "model.pt"
    assert [(a.label, a.name, a.params) for a in resolve_attacks(spec)] == [("fgsm", "fgsm", {}), ("pgd", "pgd", {"steps": 20})]
    assert spec.thresholds[0].min_robust_accuracy == 0.5


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d["threats"].append({"norm": "l2", "eps": [0.5, -0.1]}), "threats[1].eps[1]: must be a finite number > 0, got -0.1"),
        (lambda d: d["attacks"].append("pdg"), "attacks[2]: unknown attack 'pdg'; did you mean 'pgd'?"),
        (lambda d: d["attacks"].append({"name": "pgd", "stepz": 3, "label": "p2"}), "attacks[2].stepz: pgd has no parameter 'stepz'; did you mean 'steps'?"),
        (lambda d: d["attacks"].__setitem__(1, {"name": "pgd", "steps": 0}), "attacks[1].steps: must be an int >= 1, got 0"),
        (lambda d: d["attacks"].append({"name": "pgd", "steps": 5}), "attacks[2]: attack label 'pgd' is already used by attacks[1]"),
        (lambda d: d["attacks"].append({"name": "pgd", "eps": 0.3, "label": "p2"}), "attacks[2].eps: pgd takes the threat's ε list"),
        (lambda d: d["attacks"].append("cw_l2"), "attacks[2]: cw_l2 does not support norm 'linf' of threats[0]; it supports l2"),
        (lambda d: d["attacks"].append("quick"), "for the preset write {preset: quick}"),
        (lambda d: d["attacks"].append(3), "attacks[2]: must be an attack name or a mapping"),
        (lambda d: d["model"].update(pth="x"), "model.pth: unknown field; did you mean 'path'?"),
        (lambda d: d["model"].update(bounds=[1, 0]), "model.bounds: must be [low, high] with low < high, got [1.0, 0.0]"),
        (lambda d: d.pop("threats"), "spec: missing required field 'threats'"),
        (lambda d: d["data"].update(path="x.npz"), "data: give exactly one of name"),
        (lambda d: d["data"].update(n=0), "data.n: must be >= 1, got 0"),
        (lambda d: d["threats"][0].update(norm="l3"), "threats[0].norm: must be 'linf', 'l2' or 'l1', got 'l3'"),
        (lambda d: d["threats"][0].update(eps=[]), "threats[0].eps: must not be empty"),
        (lambda d: d["threats"][0].update(eps=["0.1"]), "threats[0].eps[0]: must be a valid number, got '0.1'"),
        (lambda d: d["threats"].append({"norm": "linf", "eps": 0.1, "targeted": True}), "threats[1].eps[0]: linf ε=0.1 already appears at threats[0].eps[1]"),
        (lambda d: d["thresholds"][0].update(attack="pgdd"), "thresholds[0].attack: no attack labelled 'pgdd' in attacks; did you mean 'pgd'?"),
        (lambda d: d["thresholds"][0].update(eps=0.3), "thresholds[0].eps: linf ε=0.3 is not evaluated; the linf budgets are 0.05, 0.1, 0.2"),
        (lambda d: d["thresholds"][0].update(norm="l2"), "thresholds[0].norm: pgd runs on no threat with norm 'l2'"),
        (lambda d: d["thresholds"][0].update(min_robust_accuracy=50), "thresholds[0].min_robust_accuracy: must be in [0, 1]"),
        (lambda d: d.update(batch_size=True), "batch_size: must be a valid integer, got True"),
        (lambda d: d.update(seed=-1), "seed: must be >= 0, got -1"),
        (lambda d: d["model"].update(trust="yes"), "model.trust: must be a valid boolean, got 'yes'"),
        (lambda d: d.update(attacks=[{"preset": "standard"}], thresholds=[], threats=[{"norm": "l1", "eps": 1.0}]),
         "attacks[0]: preset 'standard' has no attack for the threats' norms (l1)"),
        (lambda d: d["threats"].__setitem__(0, {"norm": "linf", "eps": [0.1], "targeted": True}) or d.update(attacks=["deepfool"], thresholds=[]),
         "attacks[0]: deepfool has no targeted mode but threats[0] is targeted"),
    ],
)
def test_every_spec_error_is_one_line_that_starts_with_its_place(change, expected: str) -> None:
    msg = error_of(spec_with(change))
    assert expected in msg, msg
    place = expected.split(":")[0]
    if "[" in place or "." in place:
        assert msg.startswith(place)


def test_yaml_errors_name_the_place_and_the_line(tmp_path: Path) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(ISSUE_YAML.replace("[0.05, 0.1, 0.2]", "[0.05, -0.1, 0.2]"))
    with pytest.raises(ConfigError, match=r"^threats\[0\]\.eps\[1\]: must be a finite number > 0, got -0\.1 \(spec\.yaml, line 4\)$"):
        load_spec(f)
    f.write_text(ISSUE_YAML.replace("steps: 20", "stepz: 20"))
    with pytest.raises(ConfigError, match=r"^attacks\[1\]\.stepz: .*\(spec\.yaml, line 5\)$"):
        load_spec(f)
    f.write_text("model: {path: m.pt\ndata: [")
    with pytest.raises(ConfigError, match=r"^spec\.yaml: line \d+, column \d+: invalid YAML"):
        load_spec(f)
    f.write_text(ISSUE_YAML + "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"^seed: duplicate key 'seed' \(spec\.yaml, line 9\)"):
        load_spec(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_spec(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_presets_expand_and_drop_attacks_that_do_not_support_a_threat() -> None:
    spec = load_spec(spec_with(lambda d: d.update(
        attacks={"preset": "thorough"}, thresholds=[],
        threats=[{"norm": "linf", "eps": [0.1]}, {"norm": "l1", "eps": [5.0]}],
    )))
    got = {a.label: a.threats for a in resolve_attacks(spec)}
    assert list(got) == [name for name, _ in PRESETS["thorough"]]
    assert got["pgd"] == (0, 1)  # pgd does L1
    assert got["apgd_ce"] == got["autoattack"] == (0,)  # they do not
    quick = load_spec(spec_with(lambda d: d.update(attacks=[{"preset": "quick"}], thresholds=[])))
    assert [(a.name, a.params) for a in resolve_attacks(quick)] == [("fgsm", {}), ("pgd", {"steps": 20, "early_stop": True})]
    default = load_spec(spec_with(lambda d: (d.pop("attacks"), d.update(thresholds=[]))))
    assert [a.name for a in resolve_attacks(default)] == ["autoattack"]


def test_spec_hash_ignores_names_paths_and_thresholds_but_not_what_changes_results() -> None:
    h = spec_hash(load_spec(BASE))
    assert h == spec_hash(load_spec(spec_with(lambda d: d["model"].update(path="other/place.pt", name="x", version="9"))))
    assert h == spec_hash(load_spec(spec_with(lambda d: d.update(thresholds=[]))))
    for change in (
        lambda d: d.update(seed=1),
        lambda d: d.update(batch_size=100),
        lambda d: d["attacks"][1].update(steps=21),
        lambda d: d["threats"][0].update(eps=[0.05, 0.1, 0.3]),
        lambda d: d["model"].update(bounds=[0, 255]),
    ):
        d = spec_with(change)
        d["thresholds"] = []
        assert spec_hash(load_spec(d)) != h


def test_plan_covers_every_sample_once_per_attack_and_threat_with_stable_keys_and_seeds() -> None:
    spec = load_spec(spec_with(lambda d: d.update(batch_size=200, threats=[{"norm": "linf", "eps": [0.1]}, {"norm": "l2", "eps": [0.5, 1.0]}], thresholds=[])))
    units = make_plan(spec, 450)
    assert len(units) == 2 * 2 * 3  # threats × attacks × batches
    assert [(u.start, u.stop) for u in units[:3]] == [(0, 200), (200, 400), (400, 450)]
    assert len({u.key for u in units}) == len(units)
    again = make_plan(load_spec(spec.model_dump(mode="json")), 450)
    assert [(u.key, u.seed) for u in units] == [(u.key, u.seed) for u in again]
    assert units[0].seed == unit_seed(spec.seed, units[0].key) and len({u.seed for u in units}) == len(units)
    other = make_plan(load_spec({**spec.model_dump(mode="json"), "seed": 7}), 450)
    assert not {u.seed for u in units} & {u.seed for u in other}
    atk = units[-1].create_attack()
    assert atk.name == "pgd" and atk.norm == "l2" and atk.eps == [0.5, 1.0] and atk.steps == 20


def test_attack_items_accept_a_params_mapping_labels_and_a_single_eps() -> None:
    spec = load_spec(spec_with(lambda d: d.update(
        attacks=[{"name": "pgd", "label": "pgd_long", "params": {"steps": 50}}, {"name": "pgd", "steps": 5}],
        threats=[{"norm": "linf", "eps": 0.1}],
        thresholds=[{"attack": "pgd_long", "norm": "linf", "eps": 0.1, "min_robust_accuracy": 0.2}],
    )))
    assert spec.threats[0].eps == [0.1]
    assert [(a.label, a.params) for a in resolve_attacks(spec)] == [("pgd_long", {"steps": 50}), ("pgd", {"steps": 5})]


def test_yaml_version_numbers_become_strings(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(textwrap.dedent(ISSUE_YAML).replace('version: "3"', "version: 3"))
    assert load_spec(f).model.version == "3"
