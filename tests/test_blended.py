"""Blended backdoor (Chen et al. 2017): the budget and mask are exact, poison rows are exactly the
blend of the image and the pattern, the trigger is fixed by pattern_seed (not by poison), a model
trained on 10% poison obeys the blended trigger while clean accuracy holds, and bad input."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.poisoning import BackdoorAttack
from gauntlet.attacks.poisoning.blended import blend_pattern
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_poison_budget_mask_and_blend_are_exact(digits_train) -> None:
    x, y = digits_train.x, digits_train.y
    atk = gt.attacks.create("blended", fraction=0.1, target_class=4, alpha=0.2)
    pd = atk.poison(x, y, seed=0)
    assert isinstance(atk, BackdoorAttack) and atk.goal == "backdoor"
    assert pd.n_poison == round(0.1 * len(y)) and len(pd) == len(y)
    assert torch.equal(pd.y[pd.is_poison], torch.full((pd.n_poison,), 4))
    assert bool((y[pd.is_poison] != 4).all()), "poison is taken from the other classes"
    assert torch.equal(pd.x[~pd.is_poison], x[~pd.is_poison]) and torch.equal(pd.y[~pd.is_poison], y[~pd.is_poison])
    pattern = pd.info["pattern"]
    assert pattern.shape == x.shape[1:] and float(pattern.min()) >= 0 and float(pattern.max()) <= 1
    expected = 0.8 * x[pd.is_poison] + 0.2 * pattern
    assert torch.allclose(pd.x[pd.is_poison], expected, atol=1e-6)
    # every pixel of a poison row moves (a full-image trigger), by at most alpha
    moved = (pd.x[pd.is_poison] - x[pd.is_poison]).abs()
    assert float(moved.max()) <= 0.2 + 1e-6 and float((moved.flatten(1) > 0).double().mean()) > 0.9
    assert pd.target_class == 4 and pd.attack == "blended" and pd.params == atk.get_params()


def test_poison_is_deterministic_per_seed(digits_train) -> None:
    x, y = digits_train.x, digits_train.y
    atk = gt.attacks.create("blended", fraction=0.05)
    a, b = atk.poison(x, y, seed=3), atk.poison(x, y, seed=3)
    assert torch.equal(a.is_poison, b.is_poison) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = atk.poison(x, y, seed=4)
    assert not torch.equal(c.is_poison, a.is_poison)
    # the seed picks rows, never the trigger: the pattern is the same for every seed
    assert torch.equal(c.info["pattern"], a.info["pattern"])


def test_the_trigger_comes_from_pattern_seed_not_from_poison(digits_test) -> None:
    x = digits_test.x[:6]
    before = x.clone()
    fresh = gt.attacks.create("blended", pattern_seed=7).apply_trigger(x)
    assert torch.equal(x, before), "x is not modified"
    used = gt.attacks.create("blended", pattern_seed=7)
    used.poison(digits_test.x, digits_test.y, seed=5)
    assert torch.equal(used.apply_trigger(x), fresh), "apply_trigger must not depend on poison having run"
    assert not torch.equal(gt.attacks.create("blended", pattern_seed=8).apply_trigger(x), fresh)
    # the same pattern goes into every image
    assert torch.allclose(fresh - 0.8 * x, 0.2 * blend_pattern((1, 8, 8), "random", seed=7).expand_as(x), atol=1e-6)


def test_test_alpha_blends_harder_at_test_time(digits_test) -> None:
    x = digits_test.x[:4]
    pat = blend_pattern((1, 8, 8), "random", seed=0)
    weak = gt.attacks.create("blended", alpha=0.2).apply_trigger(x)
    strong = gt.attacks.create("blended", alpha=0.2, test_alpha=0.5).apply_trigger(x)
    assert torch.allclose(weak, 0.8 * x + 0.2 * pat, atol=1e-6)
    assert torch.allclose(strong, 0.5 * x + 0.5 * pat, atol=1e-6)
    assert torch.allclose(gt.attacks.create("blended", alpha=1.0).apply_trigger(x), pat.expand_as(x), atol=1e-6), "alpha 1 replaces the image"


@pytest.mark.parametrize("pattern", ["random", "stripes", "checkerboard"])
def test_patterns_are_full_size_deterministic_and_inside_the_bounds(pattern) -> None:
    p = blend_pattern((3, 6, 5), pattern, seed=1, bounds=(-1.0, 2.0))
    assert p.shape == (3, 6, 5) and float(p.min()) >= -1 and float(p.max()) <= 2
    assert torch.equal(p, blend_pattern((3, 6, 5), pattern, seed=1, bounds=(-1.0, 2.0)))
    if pattern == "stripes":
        assert torch.equal(p[0, 0], torch.tensor([2.0, -1.0, 2.0, -1.0, 2.0])) and torch.equal(p[:, 0], p[:, 3])
    elif pattern == "checkerboard":
        assert float(p[0, 0, 0]) == 2.0 and float(p[0, 0, 1]) == -1.0 and float(p[0, 1, 0]) == -1.0 and float(p[0, 1, 1]) == 2.0
    else:
        assert len(p.unique()) > 50, "uniform noise, drawn per pixel and channel"
    # a non-image input shape only takes the random pattern
    if pattern == "random":
        assert blend_pattern((20,), pattern).shape == (20,)
    else:
        with pytest.raises(DataError, match="needs images"):
            blend_pattern((20,), pattern)


def test_a_model_trained_on_10_percent_blended_poison_obeys_the_trigger_and_keeps_clean_accuracy(digits_train, digits_test, digits_net) -> None:
    # measured on these digits (seed 0): ASR 0.96 at test alpha 0.2, 1.0 at 0.3; accuracy 0.964 vs 0.973 clean
    atk = gt.attacks.create("blended", fraction=0.1, target_class=0, pattern="random", alpha=0.2)
    pd = atk.poison(digits_train.x, digits_train.y, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN()
    victim = gt.models.TorchModel(train_classifier(net, pd.x, pd.y, epochs=15, seed=0), num_classes=10, input_shape=(1, 8, 8))
    clean = gt.models.TorchModel(digits_net, num_classes=10, input_shape=(1, 8, 8))
    xt, yt = digits_test.x, digits_test.y
    acc = float((victim.predict(xt, count=False) == yt).double().mean())
    acc_clean = float((clean.predict(xt, count=False) == yt).double().mean())
    assert acc >= acc_clean - 0.03, (acc, acc_clean)
    assert atk.attack_success_rate(victim, xt, yt) >= 0.8
    stronger = gt.attacks.create("blended", fraction=0.1, target_class=0, alpha=0.2, test_alpha=0.3)
    assert stronger.attack_success_rate(victim, xt, yt) >= 0.9
    assert atk.attack_success_rate(clean, xt, yt) <= 0.1, "a clean model ignores the blended pattern"
    assert atk.success_rate(victim, xt, yt, pd) == atk.attack_success_rate(victim, xt, yt)


@pytest.mark.parametrize(
    ("params", "call", "error", "match"),
    [
        ({"fraction": 0.0}, None, ConfigError, "parameter 'fraction'"),
        ({"fraction": 1.0}, None, ConfigError, "parameter 'fraction'"),
        ({"alpha": 0.0}, None, ConfigError, "parameter 'alpha' must be a finite number > 0 and <= 1"),
        ({"alpha": 1.5}, None, ConfigError, "parameter 'alpha'"),
        ({"alpha": float("nan")}, None, ConfigError, "parameter 'alpha'"),
        ({"test_alpha": 0.0}, None, ConfigError, "parameter 'test_alpha'"),
        ({"pattern": "hello_kitty"}, None, ConfigError, "parameter 'pattern'"),
        ({"pattern_seed": -1}, None, ConfigError, "parameter 'pattern_seed'"),
        ({"target_class": 10}, "poison", DataError, "target_class 10 does not exist"),
        ({}, "mismatch", DataError, "must have shape"),
        ({}, "range", DataError, "bounds"),
        ({}, "nan", DataError, "NaN"),
        ({}, "trigger", DataError, "float torch.Tensor"),
    ],
)
def test_bad_input_is_one_line(digits_train, params, call, error, match) -> None:
    x, y = digits_train.x[:100], digits_train.y[:100]
    with pytest.raises(error, match=match) as info:
        atk = gt.attacks.create("blended", **params)
        if call == "poison":
            atk.poison(x, y)
        elif call == "mismatch":
            atk.poison(x, y[:50])
        elif call == "range":
            atk.poison(x * 255, y)
        elif call == "nan":
            atk.poison(torch.where(x > 0.5, torch.nan, x), y)
        elif call == "trigger":
            atk.apply_trigger((x * 255).to(torch.uint8))
    assert "\n" not in str(info.value)


def test_blended_is_a_registered_poisoning_attack() -> None:
    assert "blended" in gt.attacks.list_attacks("poisoning") and "blended" not in gt.attacks.list_attacks("evasion")
    cls = gt.attacks.get_attack_class("blended")
    assert cls.needs_model is False and cls.goal == "backdoor"
    assert cls._param_names() == ["fraction", "target_class", "pattern", "pattern_seed", "alpha", "test_alpha", "bounds"]
