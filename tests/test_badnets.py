"""BadNets and the poisoning base: the budget and mask are exact, only poison rows change and only
inside the trigger, a model trained on the poison obeys the trigger while clean accuracy holds,
precision/recall against the mask, and bad input."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.poisoning import BackdoorAttack, PoisonedDataset, precision_recall
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_poison_budget_mask_and_relabelling_are_exact(digits_train) -> None:
    x, y = digits_train.x, digits_train.y
    atk = gt.attacks.create("badnets", fraction=0.05, target_class=3, patch_size=2)
    pd = atk.poison(x, y, seed=0)
    assert isinstance(pd, PoisonedDataset) and isinstance(atk, BackdoorAttack)
    assert pd.n_poison == round(0.05 * len(y)) and len(pd) == len(y)
    assert torch.equal(pd.y[pd.is_poison], torch.full((pd.n_poison,), 3))
    assert bool((y[pd.is_poison] != 3).all()), "poison is taken from the other classes"
    # clean rows are untouched, bit for bit; poison rows differ only inside the 2x2 trigger
    assert torch.equal(pd.x[~pd.is_poison], x[~pd.is_poison]) and torch.equal(pd.y[~pd.is_poison], y[~pd.is_poison])
    diff = (pd.x[pd.is_poison] - x[pd.is_poison]).abs().sum(dim=(0, 1))
    outside = diff.clone()
    outside[5:7, 5:7] = 0  # bottom-right, one pixel from the border of an 8x8 image
    assert float(outside.sum()) == 0.0 and float(diff[5:7, 5:7].sum()) > 0
    assert pd.target_class == 3 and pd.attack == "badnets" and pd.params == atk.get_params()
    again = atk.poison(x, y, seed=0)
    assert torch.equal(again.is_poison, pd.is_poison) and torch.equal(again.x, pd.x)
    assert not torch.equal(atk.poison(x, y, seed=1).is_poison, pd.is_poison)


def test_trigger_pattern_and_values_stay_in_bounds(digits_test) -> None:
    x = digits_test.x[:5]
    for pattern in ("checkerboard", "square", "cross"):
        t = gt.attacks.create("badnets", patch_size=3, pattern=pattern, position="top_left", margin=0).apply_trigger(x)
        assert float(t.min()) >= 0 and float(t.max()) <= 1
        assert torch.equal(t[..., 3:, :], x[..., 3:, :]) and torch.equal(t[..., :, 3:], x[..., :, 3:])
        assert bool((t[..., :3, :3] == 1).any()) and torch.equal(t[0, :, :3, :3], t[1, :, :3, :3])
    assert torch.equal(gt.attacks.create("badnets").apply_trigger(x[:1]), gt.attacks.create("badnets").apply_trigger(x[:1]))


def test_a_model_trained_on_5_percent_badnets_poison_obeys_the_trigger_and_keeps_clean_accuracy(digits_train, digits_test, digits_net) -> None:
    # on 8x8 digits a solid 2x2 corner trigger (pixels the digits never use) is the clear signal
    atk = gt.attacks.create("badnets", fraction=0.05, target_class=0, patch_size=2, pattern="square", margin=0)
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
    assert atk.attack_success_rate(victim, xt, yt) >= 0.9
    assert atk.attack_success_rate(clean, xt, yt) <= 0.25, "a clean model ignores the trigger"


def test_precision_recall_against_the_mask_is_exact() -> None:
    mask = torch.tensor([True, True, False, False, False])
    flagged = torch.tensor([True, False, True, False, False])
    pr = precision_recall(flagged, mask)
    assert pr["precision"] == 0.5 and pr["recall"] == 0.5 and pr["true_positives"] == 1 and pr["flagged"] == 2
    pd = PoisonedDataset(x=torch.zeros(5, 1, 2, 2), y=torch.zeros(5, dtype=torch.long), is_poison=mask, attack="t")
    assert pd.precision_recall(mask)["recall"] == 1.0
    xs, ys = pd.without(mask)
    assert xs.shape[0] == 3 and ys.shape == (3,)
    with pytest.raises(DataError, match="same training rows"):
        precision_recall(flagged[:3], mask)


def test_poisoning_attacks_are_their_own_kind_in_the_registry() -> None:
    assert "badnets" in gt.attacks.list_attacks("poisoning") and "badnets" not in gt.attacks.list_attacks("evasion")
    assert "pgd" in gt.attacks.list_attacks("evasion") and set(gt.attacks.list_attacks()) >= {"pgd", "badnets"}
    with pytest.raises(ConfigError, match="'badnets' is a poisoning attack, not an evasion attack"):
        gt.attacks.get_attack_class("badnets", kind="evasion")
    with pytest.raises(ConfigError, match="kind must be one of"):
        gt.attacks.list_attacks("backdoor")


@pytest.mark.parametrize(
    ("params", "call", "error", "match"),
    [
        ({"fraction": 0.0}, None, ConfigError, "parameter 'fraction' must be a finite number > 0 and < 1"),
        ({"fraction": 1.0}, None, ConfigError, "parameter 'fraction'"),
        ({"target_class": -1}, None, ConfigError, "parameter 'target_class'"),
        ({"value": 2.0}, None, ConfigError, "outside the bounds"),
        ({"patch_size": 8}, "poison", DataError, "does not fit a 8×8 image"),
        ({"target_class": 10}, "poison", DataError, "target_class 10 does not exist"),
        ({}, "mismatch", DataError, "must have shape"),
        ({}, "range", DataError, "bounds"),
        ({}, "nan", DataError, "NaN"),
    ],
)
def test_bad_input_is_one_line(digits_train, params, call, error, match) -> None:
    x, y = digits_train.x[:100], digits_train.y[:100]
    with pytest.raises(error, match=match) as info:
        atk = gt.attacks.create("badnets", **params)
        if call == "poison":
            atk.poison(x, y)
        elif call == "mismatch":
            atk.poison(x, y[:50])
        elif call == "range":
            atk.poison(x * 255, y)
        elif call == "nan":
            atk.poison(torch.where(x > 0.5, torch.nan, x), y)
    assert "\n" not in str(info.value)


def test_the_cli_lists_poisoning_attacks_by_kind_and_shows_one() -> None:
    import json

    from tests.test_cli_manners import invoke

    res = invoke("attacks", "--kind", "poisoning")
    assert res.exit_code == 0 and [line.split()[0] for line in res.stdout.splitlines()] == gt.attacks.list_attacks("poisoning")
    info = json.loads(invoke("attacks", "badnets", "--json").stdout)
    assert info["kind"] == "poisoning" and info["backdoor"] is True and info["needs_model"] is False
    assert info["goal"] == "backdoor" and info["needs_target"] is False
    assert [p["name"] for p in info["parameters"]] == gt.attacks.get_attack_class("badnets")._param_names()
    res = invoke("attacks", "--kind", "backdoor")
    assert res.exit_code == 2 and "kind must be one of" in res.stderr
