"""Label flipping: the budget is exact and only labels change, each strategy flips only where it
says (random: any row to another label; targeted: source rows to the target; greedy: rows of the
attacker's training split), determinism, greedy flips beat random ones on the held-out loss they
maximise, targeted success is measured on the source class, and bad input is one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gauntlet as gt
from gauntlet.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _flat(x: torch.Tensor):
    return x.reshape(x.shape[0], -1).double().numpy()


def _fit_lr(x, y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(_flat(x), y.numpy())


@pytest.fixture(scope="module")
def digits_lr(digits_train):
    return gt.models.SklearnModel(_fit_lr(digits_train.x, digits_train.y), input_shape=(1, 8, 8))


def test_random_flips_change_exactly_the_budget_of_labels_and_nothing_else(digits_train) -> None:
    x, y = digits_train.x, digits_train.y
    atk = gt.attacks.create("label_flip", fraction=0.05)
    pd = atk.poison(x, y, seed=0)
    k = round(0.05 * len(y))
    assert pd.n_poison == k and len(pd) == len(y) and torch.equal(pd.x, x)
    assert torch.equal(pd.is_poison, pd.y != y) and torch.equal(pd.y[~pd.is_poison], y[~pd.is_poison])
    assert int(pd.y.min()) >= 0 and int(pd.y.max()) <= 9
    assert len(set(pd.y[pd.is_poison].tolist())) > 5, "other labels are drawn among all classes"
    again = atk.poison(x, y, seed=0)
    assert torch.equal(again.y, pd.y)
    assert not torch.equal(atk.poison(x, y, seed=1).y, pd.y)
    assert atk.goal == "availability" and pd.target_class is None


def test_targeted_flips_only_source_rows_to_the_target_and_measures_source_to_target(digits_train, digits_test) -> None:
    x, y = digits_train.x, digits_train.y
    n_src = int((y == 3).sum())
    atk = gt.attacks.create("label_flip", fraction=0.08, strategy="targeted", source_class=3, target_class=8)
    pd = atk.poison(x, y, seed=0)
    assert pd.n_poison == round(0.08 * len(y)) <= n_src
    assert bool((y[pd.is_poison] == 3).all()) and bool((pd.y[pd.is_poison] == 8).all())
    assert pd.target_class == 8
    victim = gt.models.SklearnModel(_fit_lr(pd.x, pd.y), input_shape=(1, 8, 8))
    clean = gt.models.SklearnModel(_fit_lr(x, y), input_shape=(1, 8, 8))
    xt, yt = digits_test.x, digits_test.y
    # 80% of the 3s are labelled 8: the model sends most test 3s to 8, a clean one almost none
    assert atk.success_rate(victim, xt, yt, pd) >= 0.5
    assert atk.success_rate(clean, xt, yt, pd) <= 0.05
    rand = gt.attacks.create("label_flip", fraction=0.05)
    assert rand.success_rate(clean, xt, yt, pd) == pytest.approx(1 - float((clean.predict(xt, count=False) == yt).double().mean()))


def test_greedy_flips_beat_random_flips_on_the_held_out_loss_they_maximise(digits_train, digits_test, digits_lr) -> None:
    x, y = digits_train.x, digits_train.y
    atk = gt.attacks.create("label_flip", fraction=0.05, strategy="greedy", rounds=2)
    greedy = atk.poison(x, y, seed=0, model=digits_lr)
    rand = gt.attacks.create("label_flip", fraction=0.05).poison(x, y, seed=0)
    assert greedy.n_poison == rand.n_poison == round(0.05 * len(y))
    assert torch.equal(greedy.is_poison, greedy.y != y) and torch.equal(greedy.x, x)
    val = greedy.info["val_rows"]
    assert not bool(greedy.is_poison[val].any()), "the attacker's validation rows are never flipped"
    assert torch.equal(atk.poison(x, y, seed=0, model=digits_lr).y, greedy.y)

    def held_out_loss(pd, xs, ys) -> float:
        p = torch.as_tensor(_fit_lr(pd.x, pd.y).predict_proba(_flat(xs)))
        return float(F.nll_loss(p.clamp_min(1e-12).log(), ys))

    # measured: validation CE 0.20 (random) vs 0.34 (greedy); test CE 0.24 vs 0.30
    assert held_out_loss(greedy, x[val], y[val]) >= held_out_loss(rand, x[val], y[val]) + 0.08
    assert held_out_loss(greedy, digits_test.x, digits_test.y) >= held_out_loss(rand, digits_test.x, digits_test.y) + 0.03
    assert greedy.info["val_loss"][-1] > 2 * greedy.info["val_loss"][0]


@pytest.mark.parametrize(
    ("params", "model", "error", "match"),
    [
        ({"strategy": "majority"}, None, ConfigError, "parameter 'strategy' must be one of 'greedy', 'random', 'targeted'"),
        ({"strategy": "targeted", "source_class": 3, "target_class": 3}, None, ConfigError, "both 3; pick two different classes"),
        ({"strategy": "targeted", "source_class": 3}, None, ConfigError, "needs source_class and target_class"),
        ({"target_class": 1}, None, ConfigError, "are for strategy 'targeted'; drop them"),
        ({"strategy": "greedy"}, None, ConfigError, "strategy 'greedy' needs a model"),
        ({"strategy": "greedy"}, "tree", ConfigError, "needs a LogisticRegression or squared-hinge LinearSVC"),
        ({"strategy": "targeted", "source_class": 12, "target_class": 1}, None, DataError, "no training row has the source_class 12"),
        ({"strategy": "targeted", "source_class": 3, "target_class": 11}, None, DataError, "target_class 11 does not exist"),
        ({"strategy": "targeted", "source_class": 3, "target_class": 1, "fraction": 0.5}, None, DataError, "lower fraction to at most"),
        ({"fraction": 1.5}, None, ConfigError, "parameter 'fraction'"),
    ],
)
def test_bad_input_is_one_line(digits_train, params, model, error, match) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y = digits_train.x[:200], digits_train.y[:200]
    models = {None: None, "tree": gt.models.SklearnModel(DecisionTreeClassifier(random_state=0).fit(_flat(x), y.numpy()))}
    with pytest.raises(error, match=match) as info:
        gt.attacks.create("label_flip", **params).poison(x, y, model=models[model])
    assert "\n" not in str(info.value)
