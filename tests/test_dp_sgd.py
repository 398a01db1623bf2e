"""``dp_sgd``: DP-SGD on Opacus inside Trainer's loop: it learns, the accountant's ε stays within
the target and falls with more noise, runs are seeded and resume to the same weights and ε, the
module must be Opacus-compatible, and bad budgets are one-line errors."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

import gauntlet as gt
from gauntlet.defenses import create
from gauntlet.defenses.training import accuracy, load_checkpoint
from gauntlet.errors import ConfigError

pytest.importorskip("opacus")

# 1347 training digits, expected Poisson batch 64: 22 steps per epoch
RECIPE: dict[str, Any] = {"batch_size": 64, "lr": 0.5, "optimizer": "sgd", "momentum": 0.0}


def mlp(seed: int = 0, norm: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, 48)]
        if norm:
            layers.append(nn.BatchNorm1d(48))
        return nn.Sequential(*layers, nn.ReLU(), nn.Linear(48, 10))


def fit(x: Tensor, y: Tensor, seed: int = 0, *, net: nn.Module | None = None, **kw: Any) -> Any:
    fit_kw = {k: kw.pop(k) for k in list(kw) if k in ("checkpoint", "resume", "callback", "x_val", "y_val")}
    params = {**RECIPE, "epochs": 2, **kw}
    if "target_epsilon" not in params and "noise_multiplier" not in params:
        params["noise_multiplier"] = 1.0
    return create("dp_sgd", **params).fit(net if net is not None else mlp(), x, y, seed=seed, progress=False, **fit_kw)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reaches_well_above_chance_within_the_target_epsilon(
    digits_train: gt.data.Dataset, digits_test: gt.data.Dataset
) -> None:
    from opacus.accountants import RDPAccountant

    res = fit(digits_train.x, digits_train.y, target_epsilon=3.0, epochs=3)
    info = res.info
    assert accuracy(res.module, digits_test.x, digits_test.y) > 0.75  # chance is 0.10
    assert 2.5 < info["epsilon"] <= 3.0 + 1e-3  # the calibrated noise spends (almost) all of the target
    assert info["delta"] == 1e-5 and info["accountant"] == "rdp" and info["max_grad_norm"] == 1.0
    assert info["sample_rate"] == pytest.approx(1 / 22) and info["steps"] == 3 * 22
    assert info["noise_multiplier"] > 0.5
    # the reported ε is Opacus's accountant's for the steps taken
    acc = RDPAccountant()
    acc.history = [(info["noise_multiplier"], info["sample_rate"], info["steps"])]
    assert info["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    eps = [r.epsilon for r in res.history]
    assert all(0 < a < b for a, b in itertools.pairwise(eps)) and eps[-1] == pytest.approx(info["epsilon"])
    assert res.to_dict()["history"][-1]["epsilon"] == pytest.approx(info["epsilon"])


def test_the_prv_accountant_also_calibrates_to_the_target(digits_train: gt.data.Dataset) -> None:
    res = fit(digits_train.x[:400], digits_train.y[:400], target_epsilon=3.0, epochs=1, accountant="prv")
    assert res.info["accountant"] == "prv" and 2.5 < res.info["epsilon"] <= 3.0 + 1e-3


def test_with_neither_target_nor_noise_the_default_target_is_epsilon_3(digits_train: gt.data.Dataset) -> None:
    from gauntlet.defenses.training.dp_sgd import DEFAULT_EPSILON

    trainer = gt.defenses.create("dp_sgd", epochs=1, batch_size=64)  # what `gauntlet defenses dp_sgd` defaults give
    net = mlp()
    res = trainer.fit(net, digits_train.x[:400], digits_train.y[:400], seed=0, progress=False)
    assert DEFAULT_EPSILON == 3.0 and 2.5 < res.info["epsilon"] <= 3.0 + 1e-3


def test_more_noise_spends_less_epsilon(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x[:400], digits_train.y[:400]
    eps = [fit(x, y, epochs=1, noise_multiplier=s).info["epsilon"] for s in (0.7, 1.0, 2.0)]
    assert eps[0] > eps[1] > eps[2] > 0


def test_same_seed_same_weights_other_seed_other_weights_and_a_clean_module(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x[:300], digits_train.y[:300]
    before = torch.get_rng_state()
    a = fit(x, y, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    b = fit(x, y, seed=1)
    c = fit(x, y, seed=2)
    assert same_weights(a.module, b.module) and [r.loss for r in a.history] == [r.loss for r in b.history]
    assert not same_weights(a.module, c.module)
    # Opacus's hooks and per-sample attributes are gone: a plain module again
    net = a.module
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    assert all(not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad") for p in net.parameters())
    assert not hasattr(net, "autograd_grad_sample_hooks") and not net.training


def test_an_interrupted_run_resumes_to_the_same_weights_and_epsilon(digits_train: gt.data.Dataset, tmp_path: Path) -> None:
    x, y = digits_train.x[:400], digits_train.y[:400]
    whole = fit(x, y, seed=3, epochs=3)

    class Stop(Exception):
        pass

    def stop(record: Any) -> None:
        if record.epoch == 1:
            raise Stop

    ckpt = tmp_path / "dp.ckpt"
    with pytest.raises(Stop):
        fit(x, y, seed=3, epochs=3, checkpoint=ckpt, callback=stop)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1 and len(state["dp"]["accountant"]["history"]) >= 1
    resumed = fit(x, y, seed=3, epochs=3, checkpoint=ckpt)
    assert resumed.resumed_from == 1 and same_weights(whole.module, resumed.module)
    assert resumed.info["epsilon"] == whole.info["epsilon"] and resumed.info["steps"] == whole.info["steps"]
    assert [r.epsilon for r in resumed.history] == [r.epsilon for r in whole.history]
    # a finished checkpoint: nothing to train, same weights and the same ε from the restored accountant
    again = fit(x, y, seed=3, epochs=3, checkpoint=ckpt)
    assert again.resumed_from == 3 and same_weights(whole.module, again.module)
    assert again.info["epsilon"] == whole.info["epsilon"]


def test_batchnorm_is_refused_in_one_line_and_fixed_in_place_with_fix_module(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x[:300], digits_train.y[:300]
    with pytest.raises(ConfigError) as err:
        fit(x, y, net=mlp(norm=True), epochs=1)
    msg = str(err.value)
    assert "\n" not in msg and "2 (BatchNorm1d)" in msg and "fix_module=True" in msg and "GroupNorm" in msg
    net = mlp(norm=True)
    res = fit(x, y, net=net, epochs=1, fix_module=True)
    assert res.module is net and isinstance(net[2], nn.GroupNorm)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules()) and res.info["epsilon"] > 0


def test_empty_poisson_batches_still_take_noisy_steps(digits_train: gt.data.Dataset) -> None:
    # 40 samples, expected batch 1: about a third of the 40 steps see no sample at all
    x, y = digits_train.x[:40], digits_train.y[:40]
    net = mlp()
    w0 = net[1].weight.detach().clone()
    res = fit(x, y, net=net, epochs=1, batch_size=1, lr=0.05)
    assert res.info["steps"] == 40 and 0 < res.info["epsilon"] < float("inf")
    assert torch.isfinite(net[1].weight).all() and not torch.equal(net[1].weight, w0)


def test_an_unreachable_target_epsilon_is_a_one_line_config_error(digits_train: gt.data.Dataset) -> None:
    with pytest.raises(ConfigError, match=r"target_epsilon=0\.01 cannot be reached .* raise target_epsilon") as err:
        fit(digits_train.x[:200], digits_train.y[:200], target_epsilon=0.01, epochs=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"target_epsilon": 3.0, "noise_multiplier": 1.0}, "exactly one of target_epsilon .* got both"),
        ({"target_epsilon": 0.0}, r"parameter 'target_epsilon' must be a finite number > 0 or None"),
        ({"noise_multiplier": -1.0}, r"parameter 'noise_multiplier' must be"),
        ({"target_epsilon": 3.0, "delta": 1.0}, r"parameter 'delta' must be a finite number > 0 and < 1"),
        ({"target_epsilon": 3.0, "max_grad_norm": 0}, r"parameter 'max_grad_norm' must be"),
        ({"target_epsilon": 3.0, "accountant": "gdp"}, r"parameter 'accountant' must be one of 'prv', 'rdp'"),
        ({"target_epsilon": 3.0, "fix_module": 1}, r"parameter 'fix_module' must be a bool"),
    ],
)
def test_bad_hyperparameters_are_config_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create("dp_sgd", **params)


def test_hyperparameters_are_stored_unchanged() -> None:
    t = create("dp_sgd", target_epsilon=3, delta=1e-6, max_grad_norm=0.5, accountant="prv", epochs=7)
    p = t.get_params()
    assert p["target_epsilon"] == 3 and isinstance(p["target_epsilon"], int) and p["noise_multiplier"] is None
    assert (p["delta"], p["max_grad_norm"], p["accountant"], p["epochs"], p["fix_module"]) == (1e-6, 0.5, "prv", 7, False)


def test_missing_opacus_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus now raises ImportError
    with pytest.raises(ConfigError, match=r'needs the opacus package.*pip install "gauntlet\[privacy\]"'):
        create("dp_sgd", target_epsilon=3.0)


# ------------------------------------------------------------------------------------------------
# gauntlet train --method dp_sgd
runner = CliRunner()


@pytest.fixture()
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("_restore_threads")
def test_cli_trains_with_a_target_epsilon_and_reports_the_epsilon_spent(tmp_path: Path) -> None:
    from safetensors import safe_open

    from gauntlet.cli import app

    out = tmp_path / "dp.safetensors"
    args = ["train", "--method", "dp_sgd", "--target-epsilon", "3", "--delta", "1e-5", "--epochs", "1",
            "-p", "batch_size=64", "-p", "optimizer=sgd", "-p", "lr=0.5", "--threads", "1", "--out", str(out)]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    eps = report["privacy"]["epsilon"]
    assert 0 < eps <= 3.0 + 1e-3 and report["privacy"]["delta"] == 1e-5
    assert report["params"]["target_epsilon"] == 3 and report["history"][0]["epsilon"] == pytest.approx(eps)
    assert report["clean_accuracy"] > 0.3 and f"DP ε={eps:.3f} spent at δ=1e-05 (rdp accountant)" in report["summary"]
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["gauntlet.method"] == "dp_sgd" and json.loads(meta["gauntlet.privacy"])["epsilon"] == pytest.approx(eps)
    assert isinstance(gt.models.load(out, arch="digits_cnn"), gt.models.TorchModel)
    text = runner.invoke(app, args)
    assert text.exit_code == 0 and "DP ε=" in text.stdout.strip().splitlines()[-1]


@pytest.mark.usefixtures("_restore_threads")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "standard", "--target-epsilon", "3"], r"--target-epsilon is only for --method dp_sgd"),
        (["--method", "pgd_at", "--delta", "1e-5"], r"--delta is only for --method dp_sgd"),
        (["--method", "dp_sgd", "--target-epsilon", "3", "-p", "target_epsilon=2"], r"give target_epsilon once"),
        (["--method", "dp_sgd", "--target-epsilon", "3", "-p", "noise_multiplier=1.0"], r"exactly one of target_epsilon .* got both"),
    ],
)
def test_cli_privacy_options_are_refused_in_one_line_where_they_do_not_apply(
    args: list[str], message: str, tmp_path: Path
) -> None:
    from gauntlet.cli import app

    res = runner.invoke(app, ["train", *args, "--threads", "1", "--out", str(tmp_path / "m.safetensors")])
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.output
    assert re.search(message, res.stderr), res.stderr
