"""Every registered extraction attack under one contract: the query budget holds and is what the
target counted, a labels-only target is refused by score-based attacks with the attack to use,
the same seed steals the same copy, and the copy is a gauntlet Model that agrees with the target
far above chance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.extraction import QueryBudget
from gauntlet.errors import BudgetExceeded, CapabilityError

NAMES = gt.attacks.list_attacks("extraction")


def _lr_target(digits_train) -> gt.models.Model:
    from sklearn.linear_model import LogisticRegression

    x = digits_train.x.reshape(len(digits_train.y), -1).double().numpy()
    est = LogisticRegression(max_iter=500).fit(x, digits_train.y.numpy())
    return gt.models.SklearnModel(est, input_shape=(1, 8, 8))


def _tree_target(digits_train) -> gt.models.Model:
    from sklearn.tree import DecisionTreeClassifier

    x = digits_train.x.reshape(len(digits_train.y), -1).double().numpy()
    est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, digits_train.y.numpy())
    return gt.models.SklearnModel(est, input_shape=(1, 8, 8))


# name -> (hyperparameters, target factory): small budgets so the suite stays fast
CASES: dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[..., gt.models.Model]]] = {
    "equation_solving": (lambda d: {"max_queries": 200}, lambda d, m: _lr_target(d)),
    "tree_path_finding": (lambda d: {"max_queries": 3000}, lambda d, m: _tree_target(d)),
    "knockoff": (lambda d: {"max_queries": 300, "query_set": d.x[:400], "epochs": 20}, lambda d, m: m),
    "copycat": (lambda d: {"max_queries": 300, "query_set": d.x[:400], "epochs": 20}, lambda d, m: m),
}


def test_every_extraction_attack_has_a_contract_case() -> None:
    assert set(NAMES) == set(CASES), "add the new attack's small case to CASES"


@pytest.mark.parametrize("name", NAMES)
def test_the_budget_holds_and_is_what_the_target_counted(name, digits_train, digits_test, digits_model) -> None:
    params, make = CASES[name]
    p = params(digits_train)
    target = make(digits_train, digits_model)
    before = target.queries
    res = gt.attacks.create(name, **p).run(target, seed=0)
    assert res.queries == target.queries - before <= p["max_queries"]
    assert isinstance(res.model, gt.models.Model)
    # the copy agrees with the target far above chance (10 classes) on held-out inputs
    assert res.fidelity(digits_test.x[:200]) > 0.5
    assert target.queries - before == res.queries  # measuring fidelity is not attacking


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_steals_the_same_copy(name, digits_train, digits_test, digits_model) -> None:
    params, make = CASES[name]
    target = make(digits_train, digits_model)
    a = gt.attacks.create(name, **params(digits_train)).run(target, seed=1)
    b = gt.attacks.create(name, **params(digits_train)).run(target, seed=1)
    x = digits_test.x[:100]
    assert torch.equal(a.model.predict(x, count=False), b.model.predict(x, count=False))
    assert a.queries == b.queries


@pytest.mark.parametrize("name", NAMES)
def test_a_labels_only_target_is_refused_by_score_based_attacks_naming_one_that_works(name, digits_train, digits_model) -> None:
    klass = gt.attacks.get_attack_class(name)
    if klass.needs != "scores":
        pytest.skip(f"{name} works from labels")
    params, make = CASES[name]
    target = gt.defenses.create("labels_only").wrap(make(digits_train, digits_model))
    with pytest.raises(CapabilityError, match=repr(klass.labels_alternative)):
        gt.attacks.create(name, **params(digits_train)).run(target)


def test_the_query_budget_counts_every_way_in_and_refuses_past_the_budget(digits_model, digits_test) -> None:
    budget = QueryBudget(digits_model, 10)
    budget.scores(digits_test.x[:4], count=False)  # an attacker has no free queries
    budget.predict(digits_test.x[:4])
    assert budget.used == 8 and budget.left == 2 and digits_model.queries == 8
    with pytest.raises(BudgetExceeded):
        budget.scores(digits_test.x[:3])
    assert digits_model.queries == 8  # the refused query never reached the target
