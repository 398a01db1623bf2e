"""Copycat CNN (Correia-Silva et al. 2018): surrogate training on the target's hard labels, which
works on labels-only targets; on sklearn's 8x8 digits with the session's DigitsCNN as the target."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.extraction.copycat import Copycat
from gauntlet.attacks.extraction.knockoff import SurrogateExtraction
from gauntlet.errors import ConfigError, DataError


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def copycat(**kw):
    kw.setdefault("epochs", 20)
    return gt.attacks.create("copycat", **kw)


@pytest.fixture()
def labels_only(digits_net) -> gt.models.CallableModel:
    """The digits network behind an API that answers with the predicted class only."""
    return gt.models.CallableModel(
        lambda x: digits_net(x).argmax(1), output="labels", num_classes=10, input_shape=(1, 8, 8)
    )


def test_copycat_is_registered_as_a_labels_attack_sharing_knockoffs_machinery() -> None:
    cls = gt.attacks.get_attack_class("copycat", kind="extraction")
    assert cls is Copycat and issubclass(cls, SurrogateExtraction) and cls.needs == "labels"
    assert "soft_labels" not in cls._param_names()


def test_a_labels_only_target_is_copied_far_above_chance_within_the_budget(labels_only, digits_train, digits_test) -> None:
    res = copycat(query_set=digits_train.x, max_queries=300).run(labels_only, seed=0)
    assert res.queries == labels_only.queries == 300
    # measured 0.88-0.94 over seeds 0-4 (chance: 0.1)
    assert res.fidelity(digits_test.x) >= 0.8
    assert res.info["soft_labels"] is False
    assert isinstance(res.model, gt.models.TorchModel) and res.model.has("gradients")


def test_out_of_domain_queries_still_carry_knowledge(labels_only, digits_train, digits_test) -> None:
    # the paper's point: unlabelled images of another problem, here mirrored digits
    res = copycat(query_set=digits_train.x.flip(-1), max_queries=300).run(labels_only, seed=0)
    # measured 0.41-0.52 over seeds 0-4 (chance: 0.1; in-domain queries: ~0.9)
    assert res.fidelity(digits_test.x) >= 0.25


def test_copycat_on_a_scores_target_equals_knockoff_with_hard_labels(digits_model, digits_train, digits_test) -> None:
    kw = {"query_set": digits_train.x, "max_queries": 150, "epochs": 3}
    a = copycat(**kw).run(digits_model, seed=0)
    b = gt.attacks.create("knockoff", soft_labels=False, **kw).run(digits_model, seed=0)
    assert torch.equal(a.info["pool_indices"], b.info["pool_indices"])
    assert a.info["history"][0]["loss"] == pytest.approx(b.info["history"][0]["loss"], rel=1e-4)
    assert (a.model.predict(digits_test.x) == b.model.predict(digits_test.x)).float().mean() >= 0.99


@pytest.mark.parametrize(
    "kw",
    [
        {"query_strategy": "jacobian", "rounds": 3},
        {"query_strategy": "random"},
        {"selection": "adaptive", "rounds": 2},
    ],
)
def test_every_strategy_respects_the_budget_on_a_labels_only_target(labels_only, digits_train, kw) -> None:
    res = copycat(query_set=digits_train.x, max_queries=64, epochs=1, **kw).run(labels_only, seed=0)
    assert res.queries == labels_only.queries == 64
    assert len(res.info["history"]) == kw.get("rounds", 1)


def test_jacobian_augmentation_from_labels_improves_on_its_seed_set(labels_only, digits_train, digits_test) -> None:
    seed_only = copycat(query_set=digits_train.x, max_queries=40).run(labels_only, seed=0)
    grown = copycat(query_set=digits_train.x, max_queries=160, query_strategy="jacobian", rounds=3).run(labels_only, seed=0)
    assert grown.info["history"][0]["new_queries"] == 40 and grown.queries == 160
    assert grown.fidelity(digits_test.x) > seed_only.fidelity(digits_test.x)


def test_the_same_seed_gives_the_same_copy(labels_only, digits_train, digits_test) -> None:
    attack = copycat(query_set=digits_train.x, max_queries=100, epochs=2)
    a, b, c = (attack.run(labels_only, seed=s) for s in (0, 0, 3))
    assert torch.equal(a.model.predict(digits_test.x), b.model.predict(digits_test.x))
    assert not torch.equal(a.info["pool_indices"], c.info["pool_indices"])


def test_a_scores_target_without_num_classes_gets_its_width_read_from_the_counted_answers(digits_net, digits_train) -> None:
    anonymous = gt.models.CallableModel(digits_net, output="logits", input_shape=(1, 8, 8))
    res = copycat(query_set=digits_train.x, max_queries=30, epochs=1).run(anonymous, seed=0)
    assert res.model.num_classes == 10 and res.queries == anonymous.queries == 30


# ------------------------------------------------------------------------------------------------
# bad input
def test_a_labels_only_target_without_num_classes_is_a_config_error(digits_net, digits_train) -> None:
    anonymous = gt.models.CallableModel(lambda x: digits_net(x).argmax(1), output="labels", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError) as e:
        copycat(query_set=digits_train.x, max_queries=10).run(anonymous, seed=0)
    assert "num_classes" in one_line(e)
    assert anonymous.queries == 0


def test_bad_budgets_and_query_sets_are_one_line_errors(labels_only, digits_train) -> None:
    with pytest.raises(ConfigError) as e:
        copycat(query_set=digits_train.x, max_queries=0)
    assert one_line(e) == "copycat: parameter 'max_queries' must be an int >= 1, got 0"
    with pytest.raises(ConfigError) as e:
        copycat(max_queries=10)
    assert "query_set" in one_line(e)
    with pytest.raises(DataError) as e:
        copycat(query_set=torch.rand(5, 64), max_queries=10).run(labels_only, seed=0)
    assert "per-sample shape (64,)" in one_line(e)
    with pytest.raises(ConfigError) as e:
        copycat(query_set=torch.rand(5, 1, 8, 8), max_queries=10, soft_labels=True)
    assert "unknown parameter 'soft_labels'" in one_line(e)
