"""Boundary Attack: labels only, per-sample query budget, early stop, strength, targeting,
determinism, the closed-form distance on an affine classifier, bad parameters."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion import hopskipjump as hsj_module
from gauntlet.attacks.evasion.boundary import Boundary
from gauntlet.errors import ConfigError
from tests.test_hopskipjump import LabelsOnly, PerSampleBudget

pytestmark = pytest.mark.usefixtures("one_thread")


def test_boundary_needs_labels_only_and_gives_the_same_result_as_on_a_white_box(digits_net, digits_model, digits_batch):
    assert Boundary.requires == frozenset({"labels"})
    x, y = digits_batch
    attack = gt.attacks.create("boundary", max_queries=300)
    a = attack.run(LabelsOnly(digits_net), x, y, seed=0)
    b = attack.run(digits_model, x, y, seed=0)  # scores available, used only through labels
    assert a.grad_evals == 0 and b.grad_evals == 0
    assert torch.equal(a.x_adv, b.x_adv) and a.queries == b.queries


def test_boundary_never_queries_a_sample_past_max_queries(digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:10], y[:10]
    budget = 120
    model = PerSampleBudget(digits_net, x, budget)
    res = gt.attacks.create("boundary", max_queries=budget, batch_size=1).run(model, x, y, seed=0)
    assert res.info["queries_per_sample"].tolist() == model.counts
    assert max(model.counts) <= budget and res.queries == sum(model.counts)


def test_boundary_per_sample_ledger_in_a_batch_matches_every_model_call(digits_net, digits_batch, monkeypatch):
    x, y = digits_batch
    budget = 150
    model = LabelsOnly(digits_net)
    charged = torch.zeros(x.shape[0], dtype=torch.int64)
    real = hsj_module.LabelOracle.labels

    def spy(self, rows, owner):
        before = len(model.rows)
        out = real(self, rows, owner)
        assert sum(r.shape[0] for r in model.rows[before:]) == owner.numel() == rows.shape[0]
        charged.add_(torch.bincount(owner, minlength=x.shape[0]).cpu())
        assert int(charged.max()) <= budget
        return out

    monkeypatch.setattr(hsj_module.LabelOracle, "labels", spy)
    res = gt.attacks.create("boundary", max_queries=budget).run(model, x, y, seed=0)
    qs = res.info["queries_per_sample"]
    assert torch.equal(qs, charged) and int(qs.sum()) == res.queries == model.queries
    # without eps every clean-correct point spends its whole budget, a clean mistake one query
    assert bool((qs[res.clean_correct] == budget).all()) and bool((qs[~res.clean_correct] == 1).all())


def test_boundary_stops_a_sample_once_its_perturbation_is_within_eps(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    free = gt.attacks.create("boundary", max_queries=400).run(model, x, y, seed=0)
    capped = gt.attacks.create("boundary", max_queries=400, eps=1.0).run(model, x, y, seed=0)
    qs = capped.info["queries_per_sample"]
    assert int(capped.success.sum()) >= 8
    assert int(qs[capped.success & capped.clean_correct].max()) < 400
    assert capped.queries < free.queries
    assert float(N.norm(capped.x_adv - x, "l2").max()) <= 1.0 + 1e-5


def test_boundary_median_l2_falls_with_the_budget(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    med = [gt.attacks.create("boundary", max_queries=q).run(model, x, y, seed=0).median_norm() for q in (50, 300, 1200)]
    assert med[0] > med[1] > med[2]  # measured 1.3, 0.77, 0.63


def test_boundary_fools_the_digits_cnn_at_a_generous_eps(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("boundary", eps=1.5, max_queries=400).run(LabelsOnly(digits_net), x, y, seed=0)
    assert res.success_rate >= 0.95
    assert float(N.norm(res.x_adv - x, "l2").max()) <= 1.5 * (1 + 1e-5)


def test_boundary_only_ever_moves_closer_and_stays_adversarial(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    short = gt.attacks.create("boundary", max_queries=100).run(model, x, y, seed=0)
    assert bool(short.success.all())  # every point has a start: the batch holds other classes
    long = gt.attacks.create("boundary", max_queries=400).run(model, x, y, seed=0)
    assert bool(long.success.all())
    assert float(long.norms.sum()) < float(short.norms.sum())


def test_boundary_targeted_reaches_the_target(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    target = (y + 3) % 10
    res = gt.attacks.create("boundary", targeted=True, max_queries=600).run(model, x, y, seed=0, target=target)
    pred = model.predict(res.x_adv, count=False)
    assert torch.equal(res.success, pred == target)
    assert res.success_rate >= 0.9


def test_boundary_gets_close_to_the_minimal_l2_distance_of_an_affine_classifier(linear_net):
    model = LabelsOnly(linear_net, shape=(20,), bounds=(-100.0, 100.0))
    model._num_classes = 3
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = linear_net(x)
    y = z.argmax(1)
    w = linear_net.fc.weight.detach()
    gaps = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).norm(dim=-1).clamp_min(1e-12)
    closest = gaps.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), float("inf")).amin(1)
    res = gt.attacks.create("boundary", max_queries=1500).run(model, x, y, seed=0)
    assert bool(res.success.all())
    assert bool((res.norms >= closest * (1 - 1e-4)).all())
    assert float((res.norms / closest).median()) < 1.1


def test_boundary_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    attack = gt.attacks.create("boundary", max_queries=150, init="noise")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = attack.run(model, x, y, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = attack.run(model, x, y, seed=3)
    c = attack.run(model, x, y, seed=4)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.info["queries_per_sample"], b.info["queries_per_sample"])
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"max_queries": 0}, "parameter 'max_queries' must be an int >= 1, got 0"),
        ({"norm": "linf"}, "norm"),
        ({"spherical_step": 0.0}, "spherical_step"),
        ({"source_step": 1.0}, "source_step"),
        ({"step_adaptation": 1.0}, "step_adaptation"),
        ({"stats_every": 0}, "stats_every"),
        ({"init": "blend"}, "init"),
        ({"eps": 0}, "eps"),
    ],
)
def test_boundary_rejects_bad_hyperparameters(params, match):
    with pytest.raises(ConfigError, match=match) as info:
        gt.attacks.create("boundary", **params)
    assert "\n" not in str(info.value)
