"""Knockoff Nets (Orekondy et al. 2019): surrogate training on the target's probability vectors
under a query budget, on sklearn's 8x8 digits with the session's DigitsCNN as the target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gauntlet as gt
from gauntlet.attacks.extraction.knockoff import MLP, default_surrogate
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, LeNet5


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def knockoff(**kw):
    kw.setdefault("epochs", 20)
    return gt.attacks.create("knockoff", **kw)


# ------------------------------------------------------------------------------------------------
# the budget
@pytest.mark.parametrize(
    "kw",
    [
        {"query_strategy": "natural"},
        {"query_strategy": "natural", "selection": "adaptive", "rounds": 3},
        {"query_strategy": "random", "rounds": 2},
        {"query_strategy": "jacobian", "rounds": 3},
        {"query_strategy": "jacobian", "rounds": 3, "selection": "adaptive"},
        {"query_strategy": "jacobian", "rounds": 2, "query_set": None},
    ],
)
def test_every_strategy_spends_exactly_the_budget_and_the_target_counts_every_query(digits_model, digits_train, kw) -> None:
    params = {"query_set": digits_train.x, "max_queries": 101, "epochs": 1, **kw}
    res = knockoff(**params).run(digits_model, seed=0)
    assert res.queries == digits_model.queries == 101
    hist = res.info["history"]
    assert [h["queries"] for h in hist] == sorted(h["queries"] for h in hist)  # cumulative
    assert sum(h["new_queries"] for h in hist) == 101 == res.info["transfer_set_size"]
    assert hist[-1]["queries"] == 101
    assert len(hist) == params.get("rounds", 1)


def test_jacobian_augmentation_doubles_the_set_each_round_from_a_seed_set(digits_model, digits_train) -> None:
    res = knockoff(query_set=digits_train.x, max_queries=80, query_strategy="jacobian", rounds=4, epochs=1).run(
        digits_model, seed=0
    )
    assert [h["new_queries"] for h in res.info["history"]] == [10, 10, 20, 40]
    assert res.info["pool_indices"].numel() == 10  # only the seed set comes from the pool


def test_a_pool_smaller_than_the_budget_is_queried_once_per_row(digits_model, digits_train) -> None:
    res = knockoff(query_set=digits_train.x[:50], max_queries=500, epochs=1).run(digits_model, seed=0)
    assert res.queries == digits_model.queries == 50
    assert sorted(res.info["pool_indices"].tolist()) == list(range(50))


def test_a_budget_smaller_than_the_rounds_is_still_spent(digits_model, digits_train) -> None:
    res = knockoff(query_set=digits_train.x, max_queries=2, rounds=3, epochs=1).run(digits_model, seed=0)
    assert res.queries == digits_model.queries == 2
    assert [h["new_queries"] for h in res.info["history"]] == [1, 1]


def test_a_target_that_declares_no_classes_is_read_from_its_answers_without_a_free_query(digits_net, digits_train) -> None:
    anonymous = gt.models.CallableModel(digits_net, output="logits", input_shape=(1, 8, 8))
    res = knockoff(query_set=digits_train.x, max_queries=30, epochs=1).run(anonymous, seed=0)
    assert res.model.num_classes == 10 and res.queries == anonymous.queries == 30


def test_rounds_split_the_budget_evenly_and_never_query_a_pool_row_twice(digits_model, digits_train) -> None:
    res = knockoff(query_set=digits_train.x, max_queries=100, rounds=3, selection="adaptive", epochs=1).run(
        digits_model, seed=0
    )
    assert [h["new_queries"] for h in res.info["history"]] == [33, 33, 34]
    rows = res.info["pool_indices"]
    assert rows.numel() == 100 and rows.unique().numel() == 100


# ------------------------------------------------------------------------------------------------
# what the copy is worth
def test_three_hundred_queries_give_a_copy_that_agrees_with_the_target_on_held_out_digits(
    digits_model, digits_train, digits_test
) -> None:
    res = knockoff(query_set=digits_train.x, max_queries=300).run(digits_model, seed=0)
    # measured 0.89-0.94 over seeds 0-4 (chance: 0.1)
    assert res.fidelity(digits_test.x) >= 0.8
    assert res.accuracy(digits_test.x, digits_test.y) >= 0.8
    assert res.info["history"][0]["train_agreement"] >= 0.85
    assert res.info["soft_labels"] is True and res.info["surrogate"] == "DigitsCNN"


def test_the_copy_is_a_torch_model_with_gradients_whose_adversarial_examples_transfer(
    digits_model, digits_train, digits_test
) -> None:
    res = knockoff(query_set=digits_train.x, max_queries=300).run(digits_model, seed=0)
    copy = res.model
    assert isinstance(copy, gt.models.TorchModel) and copy.has("gradients")
    assert copy.bounds == digits_model.bounds and copy.num_classes == 10 and copy.input_spec.shape == (1, 8, 8)
    x, y = digits_test.x[:200], digits_test.y[:200]
    before = digits_model.queries
    adv = gt.attacks.create("pgd", eps=0.2, steps=10).run(copy, x, y, seed=0)
    assert digits_model.queries == before  # crafting on the copy costs the target nothing
    ok = digits_model.predict(x, count=False) == y
    transfer = float((digits_model.predict(adv.x_adv, count=False) != y)[ok].float().mean())
    sign = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()
    noise = float((digits_model.predict((x + 0.2 * sign).clamp(0, 1), count=False) != y)[ok].float().mean())
    # measured: transfer 0.69, random-sign noise of the same size 0.08
    assert transfer >= 0.4 and transfer >= 3 * noise


def test_a_probabilities_target_is_learnt_as_is_not_softmaxed_twice(digits_net, digits_train) -> None:
    logits = gt.models.TorchModel(digits_net, num_classes=10, input_shape=(1, 8, 8))
    probs = gt.models.CallableModel(
        lambda x: F.softmax(digits_net(x), dim=1), output="probabilities", num_classes=10, input_shape=(1, 8, 8)
    )
    a = knockoff(query_set=digits_train.x, max_queries=200).run(logits, seed=0)
    b = knockoff(query_set=digits_train.x, max_queries=200).run(probs, seed=0)
    # softmax(probabilities) would be nearly uniform targets: a training loss near log(10) = 2.3
    assert b.info["history"][0]["loss"] == pytest.approx(a.info["history"][0]["loss"], rel=1e-3)
    assert b.info["history"][0]["loss"] < 1.0  # measured 0.48


def test_hard_labels_train_on_the_targets_argmax(digits_model, digits_train, digits_test) -> None:
    res = knockoff(query_set=digits_train.x, max_queries=300, soft_labels=False).run(digits_model, seed=0)
    assert res.info["soft_labels"] is False
    assert res.fidelity(digits_test.x) >= 0.8


# ------------------------------------------------------------------------------------------------
# determinism
def test_the_same_seed_gives_the_same_copy_and_another_seed_other_queries(digits_model, digits_train, digits_test) -> None:
    attack = knockoff(query_set=digits_train.x, max_queries=150, epochs=3)
    a, b, c = (attack.run(digits_model, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.info["pool_indices"], b.info["pool_indices"])
    assert torch.equal(a.model.predict(digits_test.x), b.model.predict(digits_test.x))
    for pa, pb in zip(a.model.module.parameters(), b.model.module.parameters()):  # type: ignore[attr-defined]
        assert torch.equal(pa, pb)
    assert not torch.equal(a.info["pool_indices"], c.info["pool_indices"])


def test_adaptive_selection_starts_like_random_and_then_picks_other_rows(digits_model, digits_train) -> None:
    kw = {"query_set": digits_train.x, "max_queries": 120, "rounds": 2, "epochs": 3}
    rnd = knockoff(selection="random", **kw).run(digits_model, seed=0).info["pool_indices"]
    ada = knockoff(selection="adaptive", **kw).run(digits_model, seed=0).info["pool_indices"]
    assert torch.equal(rnd[:60], ada[:60])  # round 1 has no copy to ask
    assert not torch.equal(rnd[60:], ada[60:])


def test_the_given_surrogate_is_copied_and_reinitialised_not_trained_in_place(digits_model, digits_train) -> None:
    net = DigitsCNN()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = knockoff(query_set=digits_train.x, max_queries=60, epochs=1, surrogate=net).run(digits_model, seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert res.model.module is not net  # type: ignore[attr-defined]


def test_the_default_surrogate_fits_the_input_shape() -> None:
    assert isinstance(default_surrogate((1, 8, 8), 10), DigitsCNN)
    assert isinstance(default_surrogate((1, 28, 28), 10), LeNet5)
    mlp = default_surrogate((5,), 3)
    assert isinstance(mlp, MLP) and mlp(torch.zeros(2, 5)).shape == (2, 3)


def test_a_tabular_target_gets_an_mlp_copy_from_random_queries() -> None:
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    target = gt.models.CallableModel(lambda x: x @ w, output="logits", num_classes=3, input_shape=(4,), bounds=(-1.0, 1.0))
    res = knockoff(max_queries=400, query_strategy="random", epochs=30).run(target, seed=0)
    assert res.info["surrogate"] == "MLP" and res.queries == 400
    x = torch.rand(500, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert res.fidelity(x) >= 0.8


# ------------------------------------------------------------------------------------------------
# bad input: one line each, of the documented class
def test_a_labels_only_target_is_refused_with_copycat_named(digits_net, digits_train) -> None:
    labels_only = gt.models.CallableModel(lambda x: digits_net(x).argmax(1), output="labels", num_classes=10)
    with pytest.raises(CapabilityError) as e:
        knockoff(query_set=digits_train.x, max_queries=10).run(labels_only, seed=0)
    assert "'copycat'" in one_line(e)
    assert labels_only.queries == 0


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, None])
def test_a_budget_that_is_not_a_positive_int_is_a_config_error(bad, digits_train) -> None:
    with pytest.raises(ConfigError) as e:
        knockoff(query_set=digits_train.x, max_queries=bad)
    assert one_line(e).startswith("knockoff: parameter 'max_queries' must be an int >= 1")


def test_natural_queries_without_a_query_set_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        knockoff(max_queries=10)
    assert "query_set" in one_line(e) and "'random' or 'jacobian'" in one_line(e)


def test_a_query_set_of_the_wrong_shape_is_a_data_error(digits_model) -> None:
    with pytest.raises(DataError) as e:
        knockoff(query_set=torch.rand(20, 1, 28, 28), max_queries=10).run(digits_model, seed=0)
    assert one_line(e) == (
        "knockoff: query_set has per-sample shape (1, 28, 28) but the target takes (1, 8, 8); "
        "reshape or resize the query set"
    )
    assert digits_model.queries == 0


def test_a_query_set_outside_the_bounds_is_a_data_error(digits_model, digits_train) -> None:
    with pytest.raises(DataError) as e:
        knockoff(query_set=digits_train.x * 255, max_queries=10).run(digits_model, seed=0)
    assert "rescale" in one_line(e)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"query_set": torch.zeros(0, 1, 8, 8)}, "query_set"),
        ({"query_set": torch.zeros(5, 1, 8, 8, dtype=torch.int64)}, "query_set"),
        ({"query_strategy": "jacobian", "rounds": 1}, "rounds must be >= 2"),
        ({"query_strategy": "random", "selection": "adaptive"}, "selection 'adaptive'"),
        ({"query_strategy": "greedy"}, "query_strategy"),
        ({"surrogate": "lenet"}, "surrogate"),
        ({"soft_labels": 1}, "soft_labels"),
        ({"jacobian_step": 0.0}, "jacobian_step"),
    ],
)
def test_bad_hyperparameters_are_one_line_config_errors(kw, needle, digits_train) -> None:
    params = {"query_set": digits_train.x, "max_queries": 10, **kw}
    with pytest.raises(ConfigError) as e:
        knockoff(**params)
    assert needle in one_line(e)


def test_a_surrogate_with_the_wrong_number_of_outputs_is_a_config_error(digits_model, digits_train) -> None:
    with pytest.raises(ConfigError) as e:
        knockoff(query_set=digits_train.x, max_queries=10, surrogate=DigitsCNN(num_classes=3)).run(digits_model, seed=0)
    assert one_line(e) == "knockoff: the surrogate must return logits of shape (N, 10), got (2, 3)"


def test_a_surrogate_for_another_input_shape_is_a_config_error(digits_model, digits_train) -> None:
    with pytest.raises(ConfigError) as e:
        knockoff(query_set=digits_train.x, max_queries=10, surrogate=nn.Linear(784, 10)).run(digits_model, seed=0)
    assert "the surrogate fails on inputs of per-sample shape (1, 8, 8)" in one_line(e)
