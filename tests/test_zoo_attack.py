"""ZOO: coordinate-wise zeroth-order ADAM from scores, ε-constrained, per-sample query budgets."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion.zoo_attack import ZOO, cw_log_loss
from gauntlet.attacks.losses import margin
from gauntlet.errors import CapabilityError, ConfigError
from tests.test_nes_spsa import Budgeted, LabelsOnly, ScoresOnly, fit_forest, one_line


@pytest.fixture(scope="module")
def digits_forest(digits_train):
    return fit_forest(digits_train)


class Recording(ScoresOnly):
    def __init__(self, net) -> None:
        super().__init__(net)
        self.calls: list[torch.Tensor] = []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.detach().clone())
        return super()._forward(x)


def test_zoo_entry_point_fools_the_undefended_digits_cnn(digits_net, digits_batch):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    res = gt.attacks.create("zoo", eps=0.2, max_queries=10_000).run(model, x, y, seed=0)
    assert res.grad_evals == 0 and res.norm == "linf"
    assert float(res.clean_correct.float().mean()) > 0.9
    # measured 32/32 (98% on 128 test digits), most within a few hundred queries
    assert res.success_rate >= 0.9
    assert res.info["median_queries_successful"] < 1000
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.2 + 1e-6


def test_zoo_l2_variant_stays_in_the_ball_and_succeeds(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("zoo", norm="l2", eps=1.5, max_queries=3000).run(ScoresOnly(digits_net), x, y, seed=0)
    assert float(N.norm(res.x_adv - x, "l2").max()) <= 1.5 * (1 + 1e-5)
    assert res.success_rate >= 0.7


@pytest.mark.parametrize(("norm", "eps", "budget", "coordinates"), [("linf", 0.1, 90, 16), ("l2", 0.3, 61, 64), ("linf", 0.1, 4, 8)])
def test_no_sample_is_ever_queried_past_max_queries(norm, eps, budget, coordinates, digits_net, digits_batch):
    x, y = digits_batch
    model = Budgeted(digits_net, x, budget, norm)
    attack = gt.attacks.create("zoo", norm=norm, eps=eps, max_queries=budget, coordinates=coordinates, max_batch_size=100)
    res = attack.run(model, x, y, seed=0)  # raises BudgetExceeded past the budget
    qps = res.info["queries_per_sample"]
    assert torch.equal(qps, model.per_sample)
    assert int(qps.max()) <= budget and int(qps.sum()) == res.queries == model.queries
    assert bool((qps[~res.success] >= budget - 1).all())  # the last iteration uses what is left
    assert bool((qps[~res.clean_correct] == 1).all())
    assert max(model.call_sizes) <= 100


def test_each_estimate_moves_one_coordinate_by_h(digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:2], y[:2]
    model = Recording(digits_net)
    gt.attacks.create("zoo", eps=0.05, max_queries=1 + 2 * 10 + 1, coordinates=10).run(model, x, y, seed=0)
    # calls: the base's clean prediction, the clean check, 2 × 10 probes per point, the step's check,
    # the base's success check
    probes = model.calls[2].flatten(1)
    assert probes.shape[0] == 2 * 2 * 10
    base = x.flatten(1).repeat_interleave(20, dim=0)
    changed = (probes - base).abs()
    assert bool(((changed > 0).sum(dim=1) <= 1).all())
    assert float(changed.max()) <= 1e-4 + 1e-7
    step = model.calls[3].flatten(1) - x.flatten(1)
    assert int((step != 0).sum(dim=1).max()) <= 10  # only the estimated coordinates moved


def test_cw_log_loss_is_the_logit_margin_for_logits_and_log_ratio_for_probabilities():
    z = torch.tensor([[3.0, 1.0, -2.0], [0.0, 2.0, 1.5]])
    y = torch.tensor([0, 0])
    assert torch.allclose(cw_log_loss(z, y, None, "logits"), -margin(z, y), atol=1e-6)
    p = z.softmax(1)
    assert torch.allclose(cw_log_loss(p, y, None, "probabilities"), -margin(z, y), atol=1e-5)
    t = torch.tensor([2, 1])
    assert torch.allclose(cw_log_loss(z, y, t, "logits"), margin(z, t), atol=1e-6)


def test_zoo_attacks_a_random_forest(digits_forest, digits_batch):
    x, y = digits_batch
    model = gt.models.SklearnModel(digits_forest, input_shape=(1, 8, 8))
    # piecewise-constant scores: the finite-difference step must cross the trees' thresholds
    res = gt.attacks.create("zoo", eps=0.2, max_queries=3000, h=0.1, learning_rate=0.1).run(model, x, y, seed=0)
    assert res.success_rate >= 0.6  # measured 0.88
    assert int(res.info["queries_per_sample"].max()) <= 3000


def test_zoo_targeted(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("zoo", eps=0.3, max_queries=3000, targeted=True).run(ScoresOnly(digits_net), x, y, seed=0)
    assert res.success_rate >= 0.6


def test_zoo_is_deterministic_given_the_seed(digits_net, digits_batch):
    x, y = digits_batch
    attack = gt.attacks.create("zoo", eps=0.1, max_queries=200, coordinates=16)
    a = attack.run(ScoresOnly(digits_net), x, y, seed=5)
    b = attack.run(ScoresOnly(digits_net), x, y, seed=5)
    c = attack.run(ScoresOnly(digits_net), x, y, seed=6)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"coordinates": 0}, "zoo: parameter 'coordinates' must be an int >= 1, got 0"),
        ({"h": 0.0}, "zoo: parameter 'h' must be a finite number > 0, got 0.0"),
        ({"max_queries": 2.5}, "zoo: parameter 'max_queries' must be an int >= 1, got 2.5"),
        ({"norm": "l1"}, "zoo: parameter 'norm' must be one of 'l2', 'linf', got 'l1'"),
        ({"max_batch_size": 1}, "zoo: parameter 'max_batch_size' must be an int >= 2, got 1"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, message):
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("zoo", eps=0.1, **params)
    assert one_line(e) == message


def test_zoo_needs_eps():
    with pytest.raises(ConfigError, match="zoo: eps is required"):
        gt.attacks.create("zoo", max_queries=10_000)


def test_a_labels_only_model_is_refused_naming_hopskipjump(digits_net, digits_batch):
    x, y = digits_batch
    with pytest.raises(CapabilityError) as e:
        gt.attacks.create("zoo", eps=0.2).run(LabelsOnly(digits_net), x, y)
    msg = one_line(e)
    assert msg.startswith("zoo needs scores") and "hopskipjump" in msg.lower()


def test_registered_as_zoo():
    assert gt.attacks.get_attack_class("zoo") is ZOO and ZOO.requires == frozenset({"scores"})
