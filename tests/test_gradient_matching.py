"""Witches' Brew gradient matching: clean-label poisons within eps of their bases whose training
gradient aligns with the target's adversarial gradient, deterministic by seed, and bad input is
one line."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.poisoning.gradient_matching import alignment
from gauntlet.errors import CapabilityError, ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("params", ["last", "all"])
def test_poisons_stay_within_eps_keep_their_labels_and_align_their_gradient_with_the_target(
    digits_train, digits_test, digits_model, params
) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[digits_test.y == 3][:2]
    eps = 16 / 255
    atk = gt.attacks.create("gradient_matching", n_poisons=8, target_class=5, steps=40, restarts=2, params=params)
    pd = atk.poison(x, y, seed=0, model=digits_model, x_target=xt)
    rows = pd.info["rows"]
    assert rows.shape == (2, 8) and pd.n_poison == 16 and torch.equal(pd.y, y)
    assert bool((y[rows.flatten()] == 5).all()), "the poisons are training images of target_class"
    assert torch.equal(pd.x[~pd.is_poison], x[~pd.is_poison])
    assert float((pd.x - x).abs().max()) <= eps + 1e-6 and float(pd.x.min()) >= 0 and float(pd.x.max()) <= 1
    before, after = pd.info["alignment_loss_initial"], pd.info["alignment_loss"]
    assert bool((after < 0.6 * before).all()), (before, after)
    for t in range(2):
        r = rows[t]
        cos0 = alignment(digits_model, xt[t : t + 1], 5, x[r], y[r], params=params)
        cos1 = alignment(digits_model, xt[t : t + 1], 5, pd.x[r], pd.y[r], params=params)
        assert abs(cos1 - (1 - float(after[t]))) < 1e-3 and abs(cos0 - (1 - float(before[t]))) < 1e-3
        assert cos1 > cos0 + 0.2, (cos0, cos1)


def test_more_restarts_never_end_worse_and_the_same_seed_brews_the_same_poison(digits_train, digits_test, digits_model) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[:1]
    kw = {"n_poisons": 4, "target_class": 2, "steps": 15, "params": "last"}
    one = gt.attacks.create("gradient_matching", restarts=1, **kw).poison(x, y, seed=3, model=digits_model, x_target=xt)
    again = gt.attacks.create("gradient_matching", restarts=1, **kw).poison(x, y, seed=3, model=digits_model, x_target=xt)
    assert torch.equal(one.x, again.x) and torch.equal(one.is_poison, again.is_poison)
    three = gt.attacks.create("gradient_matching", restarts=3, **kw).poison(x, y, seed=3, model=digits_model, x_target=xt)
    # the first restart draws the same start from the same generator state, so three restarts keep the best of it and two more
    assert float(three.info["alignment_loss"][0]) <= float(one.info["alignment_loss"][0]) + 1e-6
    other = gt.attacks.create("gradient_matching", restarts=1, **kw).poison(x, y, seed=4, model=digits_model, x_target=xt)
    assert not torch.equal(other.is_poison, one.is_poison)
    add = gt.attacks.create("gradient_matching", restarts=1, mode="add", **kw).poison(x, y, seed=3, model=digits_model, x_target=xt)
    assert len(add) == len(y) + 4 and torch.equal(add.x[len(y) :], one.x[one.info["rows"].flatten()])


@pytest.mark.parametrize(
    ("params", "call", "error", "match"),
    [
        ({"eps": 0.0}, None, ConfigError, "parameter 'eps'"),
        ({"params": "first"}, None, ConfigError, "parameter 'params'"),
        ({"restarts": 0}, None, ConfigError, "parameter 'restarts'"),
        ({}, "no_target", ConfigError, "needs the attacker's target inputs"),
        ({}, "no_model", ConfigError, "needs the victim's or a surrogate model"),
        ({}, "shape", DataError, "x_target has per-sample shape"),
        ({}, "range", DataError, "outside the bounds"),
        ({}, "not_torch", CapabilityError, "must be a gauntlet TorchModel"),
        ({"n_poisons": 500}, "poison", DataError, "need 500 training images of target_class 0"),
    ],
)
def test_bad_input_is_one_line(digits_train, digits_test, digits_model, params, call, error, match) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[:1]
    with pytest.raises(error, match=match) as info:
        atk = gt.attacks.create("gradient_matching", **{"steps": 1, "restarts": 1, **params})
        if call == "poison":
            atk.poison(x, y, model=digits_model, x_target=xt)
        elif call == "no_target":
            atk.poison(x, y, model=digits_model)
        elif call == "no_model":
            atk.poison(x, y, x_target=xt)
        elif call == "shape":
            atk.poison(x, y, model=digits_model, x_target=xt[:, :, :4])
        elif call == "range":
            atk.poison(x, y, model=digits_model, x_target=xt * 255)
        elif call == "not_torch":
            atk.poison(x, y, model=digits_model.module, x_target=xt)
    assert "\n" not in str(info.value)
