"""HopSkipJumpAttack: labels only, per-sample query budget, early stop, strength, targeting,
determinism, the closed-form distance on an affine classifier, bad parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion import hopskipjump as hsj_module
from gauntlet.attacks.evasion.hopskipjump import HopSkipJump
from gauntlet.errors import ConfigError
from gauntlet.models.base import InputSpec, Model

pytestmark = pytest.mark.usefixtures("one_thread")


class LabelsOnly(Model):
    """A decision-based black box: the digits net behind a labels-only interface."""

    capabilities = frozenset({"labels"})
    output = "labels"

    def __init__(
        self, net: nn.Module, shape: tuple[int, ...] = (1, 8, 8), bounds: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        self.net = net
        self.input_spec = InputSpec(shape, torch.float32, bounds)
        self._num_classes = 10
        self.rows: list[torch.Tensor] = []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.detach().clone())
        with torch.no_grad():
            return self.net(x).argmax(dim=1)


class PerSampleBudget(LabelsOnly):
    """Counts the queries of each sample of ``x`` and raises once one exceeds ``budget``.

    Run with ``batch_size=1``: the base class attacks one sample after the other, and each
    sample's first query is its own clean input (bit for bit), which tells the model that the
    next sample has started.  Independent of the attack's own bookkeeping.
    """

    def __init__(self, net: nn.Module, x: torch.Tensor, budget: int) -> None:
        super().__init__(net)
        self.x, self.budget = x, budget
        self.owner = -1
        self.counts = [0] * x.shape[0]

    def predict(self, x: torch.Tensor, *, count: bool = True) -> torch.Tensor:
        if count:  # the base class's own clean and final checks are uncounted
            for row in x:
                nxt = self.owner + 1
                if nxt < self.x.shape[0] and torch.equal(row, self.x[nxt]):
                    self.owner = nxt
                self.counts[self.owner] += 1
                if self.counts[self.owner] > self.budget:
                    raise AssertionError(f"sample {self.owner} queried {self.counts[self.owner]} > {self.budget} times")
        return super().predict(x, count=count)


# ---------------------------------------------------------------------------------------------
def test_hopskipjump_needs_labels_only_and_gives_the_same_result_as_on_a_white_box(digits_net, digits_model, digits_batch):
    assert HopSkipJump.requires == frozenset({"labels"})
    x, y = digits_batch
    attack = gt.attacks.create("hopskipjump", norm="l2", max_queries=300)
    black = LabelsOnly(digits_net)
    a = attack.run(black, x, y, seed=0)
    b = attack.run(digits_model, x, y, seed=0)  # scores available, used only through labels
    assert a.grad_evals == 0 and b.grad_evals == 0
    assert torch.equal(a.x_adv, b.x_adv) and a.queries == b.queries
    assert all(r.dim() == 4 for r in black.rows)  # every query is a batch of inputs


def test_hopskipjump_never_calls_scores_on_a_model_that_has_them(digits_net, digits_batch):
    class NoScores(gt.models.TorchModel):
        def scores(self, x, *, count=True):  # type: ignore[override]
            raise AssertionError("a decision-based attack asked for scores")

    x, y = digits_batch
    model = NoScores(digits_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    res = gt.attacks.create("hopskipjump", max_queries=200).run(model, x[:8], y[:8], seed=0)
    assert res.queries > 0


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hopskipjump_never_queries_a_sample_past_max_queries(digits_net, digits_batch, norm):
    x, y = digits_batch
    x, y = x[:12], y[:12]
    budget = 150
    model = PerSampleBudget(digits_net, x, budget)
    res = gt.attacks.create("hopskipjump", norm=norm, max_queries=budget, batch_size=1).run(model, x, y, seed=0)
    qs = res.info["queries_per_sample"]
    assert qs.tolist() == model.counts  # the attack's ledger matches the model's own count
    assert max(model.counts) <= budget and res.queries == sum(model.counts)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hopskipjump_per_sample_ledger_in_a_batch_matches_every_model_call(digits_net, digits_batch, monkeypatch, norm):
    """All samples at once: every model call is charged to samples in the ledger, row for row,
    and no sample's charge ever passes the budget (checked at each call, not only at the end)."""
    x, y = digits_batch
    budget = 180
    model = LabelsOnly(digits_net)
    charged = torch.zeros(x.shape[0], dtype=torch.int64)
    real = hsj_module.LabelOracle.labels

    def spy(self, rows, owner):
        before = len(model.rows)
        out = real(self, rows, owner)
        seen = sum(r.shape[0] for r in model.rows[before:])
        assert seen == owner.numel() == rows.shape[0]
        charged.add_(torch.bincount(owner, minlength=x.shape[0]).cpu())
        assert int(charged.max()) <= budget
        return out

    monkeypatch.setattr(hsj_module.LabelOracle, "labels", spy)
    res = gt.attacks.create("hopskipjump", norm=norm, max_queries=budget).run(model, x, y, seed=0)
    qs = res.info["queries_per_sample"]
    assert qs.shape == (x.shape[0],) and torch.equal(qs, charged)
    assert int(qs.sum()) == res.queries == model.queries
    # without eps the whole budget is spent minimising (up to one unaffordable iteration)
    correct = res.clean_correct
    assert bool((qs[~correct] == 1).all())
    assert int(qs[correct].min()) >= budget - 30


def test_hopskipjump_stops_a_sample_once_its_perturbation_is_within_eps(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    free = gt.attacks.create("hopskipjump", max_queries=600).run(model, x, y, seed=0)
    capped = gt.attacks.create("hopskipjump", max_queries=600, eps=[0.8, 1.5]).run(model, x, y, seed=0)
    qs = capped.info["queries_per_sample"]
    assert capped.success.shape == (2, x.shape[0])
    stopped = capped.at(0).success  # within the smallest ε
    assert int(stopped.sum()) >= 8
    assert int(qs[stopped & capped.clean_correct].max()) < 600
    assert capped.queries < free.queries
    assert float(N.norm(capped.at(0).x_adv - x, "l2").max()) <= 0.8 + 1e-5


def test_hopskipjump_median_l2_falls_with_the_budget(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    med = [
        gt.attacks.create("hopskipjump", max_queries=q).run(model, x, y, seed=0).median_norm()
        for q in (60, 300, 1500)
    ]
    assert med[0] > med[1] > med[2]  # measured 1.0, 0.71, 0.61


@pytest.mark.parametrize("norm,eps", [("l2", 1.5), ("linf", 0.3)])
def test_hopskipjump_fools_the_digits_cnn_at_a_generous_eps(digits_net, digits_batch, norm, eps):
    x, y = digits_batch
    res = gt.attacks.create("hopskipjump", norm=norm, eps=eps, max_queries=500).run(LabelsOnly(digits_net), x, y, seed=0)
    assert float(res.clean_correct.float().mean()) > 0.9
    assert res.success_rate >= 0.95
    assert float(N.norm(res.x_adv - x, norm).max()) <= eps * (1 + 1e-5)


def test_hopskipjump_linf_finds_smaller_linf_perturbations_than_l2(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    l2 = gt.attacks.create("hopskipjump", norm="l2", max_queries=800).run(model, x, y, seed=0)
    li = gt.attacks.create("hopskipjump", norm="linf", max_queries=800).run(model, x, y, seed=0)
    assert float(N.norm(li.x_adv - x, "linf").median()) < float(N.norm(l2.x_adv - x, "linf").median())


def test_hopskipjump_targeted_reaches_the_target(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    target = (y + 1) % 10
    res = gt.attacks.create("hopskipjump", targeted=True, max_queries=800).run(model, x, y, seed=0, target=target)
    assert torch.equal(res.target, target)
    pred = model.predict(res.x_adv, count=False)
    assert torch.equal(res.success, pred == target)
    assert res.success_rate >= 0.9


def test_hopskipjump_starts_from_noise_when_asked_and_fails_cleanly_without_a_start(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    res = gt.attacks.create("hopskipjump", init="noise", max_queries=400).run(model, x, y, seed=0)
    assert res.success_rate >= 0.95
    none = gt.attacks.create("hopskipjump", init="noise", init_tries=0, max_queries=400).run(model, x, y, seed=0)
    assert torch.equal(none.success, ~none.clean_correct)  # only the clean mistakes
    assert torch.equal(none.x_adv, x)
    assert bool((none.info["queries_per_sample"] == 1).all())


def test_hopskipjump_gets_close_to_the_minimal_l2_distance_of_an_affine_classifier(linear_net):
    model = LabelsOnly(linear_net, shape=(20,), bounds=(-100.0, 100.0))
    model._num_classes = 3
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = linear_net(x)
    y = z.argmax(1)
    w = linear_net.fc.weight.detach()
    gaps = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).norm(dim=-1).clamp_min(1e-12)
    closest = gaps.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), float("inf")).amin(1)
    res = gt.attacks.create("hopskipjump", max_queries=1500).run(model, x, y, seed=0)
    assert bool(res.success.all())
    assert bool((res.norms >= closest * (1 - 1e-4)).all())  # nothing beats the closed form
    assert float((res.norms / closest).median()) < 1.05


def test_hopskipjump_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone(digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    for norm in ("l2", "linf"):
        attack = gt.attacks.create("hopskipjump", norm=norm, max_queries=250, init="noise")
        torch.manual_seed(123)
        before = torch.random.get_rng_state()
        a = attack.run(model, x, y, seed=3)
        assert torch.equal(torch.random.get_rng_state(), before)
        b = attack.run(model, x, y, seed=3)
        c = attack.run(model, x, y, seed=4)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.info["queries_per_sample"], b.info["queries_per_sample"])
        assert not torch.equal(a.x_adv, c.x_adv)


def test_hopskipjump_works_without_finite_bounds(linear_net):
    fn = lambda v: linear_net(v).argmax(1)
    model = gt.models.CallableModel(fn, output="labels", bounds=(float("-inf"), float("inf")), num_classes=3)
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(2))
    y = fn(x).detach()
    res = gt.attacks.create("hopskipjump", init="noise", max_queries=300).run(model, x, y, seed=0)
    assert bool(res.success.all()) and bool(torch.isfinite(res.x_adv).all())


@pytest.mark.parametrize(
    "params,match",
    [
        ({"max_queries": 0}, "parameter 'max_queries' must be an int >= 1, got 0"),
        ({"max_queries": -5}, "max_queries"),
        ({"max_queries": 10.5}, "max_queries"),
        ({"norm": "l1"}, "norm"),
        ({"gamma": 0.0}, "gamma"),
        ({"init_evals": 0}, "init_evals"),
        ({"init": "blend"}, "init"),
        ({"init_tries": -1}, "init_tries"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_hopskipjump_rejects_bad_hyperparameters(params, match):
    with pytest.raises(ConfigError, match=match) as info:
        gt.attacks.create("hopskipjump", **params)
    assert "\n" not in str(info.value)
