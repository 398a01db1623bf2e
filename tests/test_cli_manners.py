"""CLI manners: boolean options are flags, ``attacks NAME`` / ``defenses NAME`` detail views with
did-you-mean errors, and ``train --help`` lists the registered training methods."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import gauntlet as gt
from gauntlet.cli import app
from tests.attack_params import budget_params

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """Text with every run of whitespace (line wrapping included) as one space."""
    return " ".join(text.split())


COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_is_checked() -> None:
    assert {"attacks", "defenses", "studies", "audit", "demo", "history", "compare", "train"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_boolean_options_are_flags_in_help(command: str | None) -> None:
    res = invoke(*([command] if command else []), "--help")
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.stdout and "BOOLEAN" not in res.stdout
    group = typer.main.get_command(app)
    cmd = group.commands[command] if command else group  # type: ignore[attr-defined]
    callback = cmd.callback
    bools = [p.name for p in inspect.signature(callback).parameters.values() if p.annotation in ("bool", bool)]
    options = {p.name: p for p in cmd.params}
    for name in bools:
        opt = options[name]
        assert opt.is_flag, f"{command} {opt.opts}: a bool option must be a flag"
        assert any(o in res.stdout for o in opt.opts), f"{opt.opts} missing from {command} --help"


def test_attacks_pgd_shows_parameters_defaults_norms_needs_and_the_paper() -> None:
    res = invoke("attacks", "pgd")
    assert res.exit_code == 0, res.output
    out = flat(res.stdout)
    cls = gt.attacks.get_attack_class("pgd")
    steps = inspect.signature(cls.__init__).parameters["steps"].default
    assert f"steps: int = {steps!r}" in out and "[an int >= 1]" in out
    assert "iterations per restart" in out  # its docstring
    assert cls.reference and flat(cls.reference) in out and "arxiv.org/abs/1706.06083" in out
    assert cls.description in out
    assert "norms linf, l2, l1" in out and "needs gradients" in out
    assert "eps: float | list[float] | None (required)" in out


@pytest.mark.parametrize("name", gt.attacks.list_attacks("evasion"))
def test_attacks_name_json_lists_every_parameter_with_its_default(name: str) -> None:
    res = invoke("attacks", name, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    cls = gt.attacks.get_attack_class(name)
    assert info["name"] == name and info["description"] == cls.description
    assert info["norms"] == list(cls.norms) and info["requires"] == sorted(cls.requires)
    assert info["reference"] == (cls.reference or None)
    assert [p["name"] for p in info["parameters"]] == cls._param_names()
    sig = inspect.signature(cls.__init__).parameters
    for p in info["parameters"]:
        default = sig[p["name"]].default
        if default is inspect.Parameter.empty:  # (the transfer attack's surrogate)
            assert p["required"] and p["default"] is None
            continue
        assert p["default"] == (list(default) if isinstance(default, tuple) else default)
        assert p["type"]
    # the attack the detail view describes can be built from what it shows
    given = budget_params(name)
    defaults = {p["name"]: p["default"] for p in info["parameters"] if p["name"] not in given and not p["required"]}
    attack = gt.attacks.create(name, **defaults, **given)
    assert attack.name == name


@pytest.mark.parametrize(("args", "expected"), [
    (["attacks", "pgdd"], "error: unknown attack 'pgdd'; did you mean 'pgd'"),
    (["defenses", "trdes"], "error: unknown defense 'trdes'; did you mean 'trades'"),
])
def test_unknown_name_is_one_line_with_did_you_mean_and_exit_2(args: list[str], expected: str) -> None:
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.output
    assert res.stderr.startswith(expected), res.stderr
    res = invoke(*args, "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["exit_code"] == 2
    assert expected.removeprefix("error: ") in json.loads(res.stdout)["error"]


def test_the_lists_without_a_name_are_unchanged() -> None:
    res = invoke("attacks")
    assert res.exit_code == 0
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert names == gt.attacks.list_attacks()
    assert json.loads(invoke("attacks", "--json").stdout) == gt.attacks.describe_attacks()
    res = invoke("defenses", "--kind", "training")
    assert res.exit_code == 0
    assert [line.split()[0] for line in res.stdout.splitlines()] == gt.defenses.list_defenses("training")


def test_defenses_name_shows_kind_use_parameters_and_paper() -> None:
    res = invoke("defenses", "trades")
    assert res.exit_code == 0, res.output
    out = flat(res.stdout)
    cls = gt.defenses.get_defense_class("trades")
    assert out.startswith(f"trades (training): {cls.description}")
    assert flat(cls.reference) in out and "gauntlet train --method" in out
    assert "beta: float = 6.0" in out and "epochs: int = 10" in out  # own and inherited (Trainer) parameters
    res = invoke("defenses", "jpeg_compression")
    out = flat(res.stdout)
    assert res.exit_code == 0 and "quality: int = 75 [an int >= 1 and <= 95]" in out and "BPDA" in out


@pytest.mark.parametrize("name", gt.defenses.list_defenses())
def test_defenses_name_json_for_every_defense(name: str) -> None:
    res = invoke("defenses", name, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    cls = gt.defenses.get_defense_class(name)
    assert info["name"] == name and info["kind"] == cls.kind and info["description"] == cls.description
    assert [p["name"] for p in info["parameters"]] == cls._param_names()
    params: dict[str, Any] = {p["name"]: (tuple(p["default"]) if isinstance(p["default"], list) else p["default"])
                              for p in info["parameters"] if not p["required"]}
    assert gt.defenses.create(name, **params).name == name


def test_defenses_name_with_a_different_kind_is_an_error() -> None:
    res = invoke("defenses", "mahalanobis", "--kind", "training")
    assert res.exit_code == 2 and "is a detector defense, not training" in res.stderr


def test_train_help_lists_every_registered_training_method() -> None:
    res = invoke("train", "--help")
    assert res.exit_code == 0, res.output
    out = flat(res.stdout)
    methods = gt.defenses.list_defenses("training")
    assert {"pgd_at", "trades", "ibp_training", "gaussian_augmentation"} <= set(methods)
    assert f"Training method: {', '.join(methods)}" in out
    from gauntlet.models.zoo import ARCHITECTURES

    assert all(a in out for a in ARCHITECTURES)
