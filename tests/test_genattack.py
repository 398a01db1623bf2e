"""GenAttack: the L∞ ball, per-sample query ledger, early stop, elitism, the adaptive schedule, strength."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion.genattack import GenAttack, adaptive_rates, count_plateaus, log_odds
from gauntlet.errors import CapabilityError, ConfigError, DataError
from tests.test_nes_spsa import LabelsOnly, ScoresOnly, fit_forest, one_line
from tests.test_one_pixel import Ledger


def by_linf(eps: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Owner = the clean sample within ``eps`` (L∞) of the query; exactly one must be."""

    def attribute(q: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(q, clean, p=float("inf"))
        two = d.topk(2, dim=1, largest=False).values
        assert float(two[:, 0].max()) <= eps + 1e-6 < float(two[:, 1].min()), "ambiguous query"
        return d.argmin(dim=1)

    return attribute


class FitnessLedger(Ledger):
    """A :class:`Ledger` that also keeps, per sample, the best untargeted GenAttack fitness queried."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.best = torch.full((self.x_clean.shape[0],), -math.inf, dtype=torch.float64)

    def scores(self, x: torch.Tensor, *, count: bool = True) -> torch.Tensor:
        out = super().scores(x, count=count)
        if count:
            owner = self.attribute(x.detach().flatten(1), self.x_clean)
            fit = -log_odds(torch.log_softmax(out.double(), dim=1), self.y[owner])
            self.best = self.best.scatter_reduce(0, owner, fit, reduce="amax")
        return out

    __call__ = scores


def test_fools_the_undefended_digits_cnn_within_eps(digits_model, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("genattack", eps=0.25, max_queries=1000).run(digits_model, x, y, seed=0)
    assert res.norm == "linf" and res.grad_evals == 0
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.25 + 1e-6
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert torch.equal(res.success, digits_model.predict(res.x_adv, count=False) != y)
    assert res.success_rate >= 0.9  # measured 0.97-1.0 (seeds 0, 1, 2)
    assert res.queries == digits_model.queries == int(res.info["queries_per_sample"].sum())
    assert res.info["median_queries_successful"] < 300  # measured 47-62


@pytest.mark.parametrize(("eps", "budget"), [(0.1, 57), (0.1, 55), (0.1, 4), (0.1, 1), (0.2, 400)])
def test_no_sample_is_queried_past_max_queries_nor_after_it_is_fooled(eps, budget, digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    model = Ledger(digits_net, x, y, budget, by_linf(eps), 10)
    res = gt.attacks.create("genattack", eps=eps, max_queries=budget).run(model, x, y, seed=0)
    qps = res.info["queries_per_sample"]
    assert torch.equal(qps, model.per_sample), "queries_per_sample must be what each sample really cost"
    assert int(qps.max()) <= budget and int(qps.sum()) == res.queries == model.queries
    assert model.queried_after_success == 0, "a sample was queried again after a generation fooled it"
    assert bool((qps[~res.clean_correct] == 1).all())
    standing = res.clean_correct & ~res.success
    assert bool((qps[standing] == budget).all())  # the initial population and last generation are cut to fit
    # a fooled sample stopped after the generation that fooled it: 1 + 6 + 5 · generations
    won = res.clean_correct & res.success
    assert bool((((qps[won] - 7) % 5 == 0) | (qps[won] == budget)).all())
    if budget == 400:
        assert bool((qps[won] < budget).any()) and res.success_rate > 0.5
    assert sum(model.inference) == len(model.inference)  # every counted query under inference_mode


def test_calls_are_chunked(digits_net, digits_batch):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    res = gt.attacks.create("genattack", eps=0.1, max_queries=100, max_batch_size=16).run(model, x, y, seed=0)
    # the base class's uncounted clean and final predictions see the whole batch; every query at most 16
    assert model.call_sizes[0] == model.call_sizes[-1] == 32
    assert max(model.call_sizes[1:-1]) <= 16 and res.queries == model.queries


def test_elitism_returns_the_fittest_point_ever_queried(digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    model = FitnessLedger(digits_net, x, y, 200, by_linf(0.03), 10)
    res = gt.attacks.create("genattack", eps=0.03, max_queries=200).run(model, x, y, seed=0)
    failed = res.clean_correct & ~res.success
    assert int(failed.sum()) >= 8  # a small ball: most points stand
    fit = -log_odds(torch.log_softmax(digits_net(res.x_adv).double(), dim=1), y)
    # the elite is carried forward unevaluated, so the last elite is the best member ever evaluated
    assert torch.allclose(fit[failed], model.best[failed], atol=1e-5)


def test_targeted_reaches_the_target(digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    target = (y + 3) % 10
    res = gt.attacks.create("genattack", eps=0.3, max_queries=1500, targeted=True).run(
        ScoresOnly(digits_net), x, y, seed=0, target=target
    )
    assert res.targeted and torch.equal(res.target, target)
    assert res.success_rate >= 0.6  # measured 0.81-0.97 on 32 digits with random targets
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.3 + 1e-6


def test_attacks_a_random_forest_through_the_sklearn_adapter(digits_train, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    model = gt.models.SklearnModel(fit_forest(digits_train), input_shape=(1, 8, 8))
    res = gt.attacks.create("genattack", eps=0.3, max_queries=1000).run(model, x, y, seed=0)
    assert res.success_rate >= 0.8  # measured 1.0 (seeds 0, 1, 2): piecewise-constant scores need no gradient
    assert int(res.info["queries_per_sample"].max()) <= 1000


def test_dimensionality_reduction_searches_a_smooth_low_resolution_perturbation(digits_model, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    res = gt.attacks.create("genattack", eps=0.3, max_queries=500, resize=4).run(digits_model, x, y, seed=0)
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.3 + 1e-6
    assert res.success_rate >= 0.5  # measured 1.0
    # where the bounds did not clip it, the 8x8 perturbation is a bilinear upsampling of a 4x4 one:
    # it lies in the 16-dimensional image of the upsampling map (a full-resolution search would not)
    basis = torch.nn.functional.interpolate(torch.eye(16).view(16, 1, 4, 4), size=(8, 8), mode="bilinear")
    up = basis.view(16, 64).T.double()  # (64, 16)
    checked = 0
    for i in res.success.nonzero().flatten().tolist():
        delta = (res.x_adv[i] - x[i]).flatten().double()
        inside = ((res.x_adv[i] > 0) & (res.x_adv[i] < 1)).flatten()
        if int(inside.sum()) < 32:
            continue
        sol = torch.linalg.pinv(up[inside]) @ delta[inside, None]
        assert float((up[inside] @ sol - delta[inside, None]).abs().max()) < 1e-5
        checked += 1
    assert checked >= 5
    full = gt.attacks.create("genattack", eps=0.3, max_queries=200).run(digits_model, x[:4], y[:4], seed=0)
    delta = (full.x_adv[0] - x[0]).flatten().double()
    inside = ((full.x_adv[0] > 0) & (full.x_adv[0] < 1)).flatten()
    sol = torch.linalg.pinv(up[inside]) @ delta[inside, None]
    assert float((up[inside] @ sol - delta[inside, None]).abs().max()) > 0.01


def test_resize_needs_image_inputs():
    model = gt.models.CallableModel(lambda z: torch.stack([z.sum(1), -z.sum(1)], 1), num_classes=2, input_shape=(20,))
    x, y = torch.full((2, 20), 0.5), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(DataError) as e:
        gt.attacks.create("genattack", eps=0.1, resize=4).run(model, x, y)
    assert one_line(e) == "genattack: resize=4 needs image inputs (N, C, H, W) or (N, H, W), got shape (2, 20); pass resize=None"


@pytest.mark.parametrize("options", [{}, {"adaptive": False, "mutation_rate": 0.3, "alpha": 0.5}, {"resize": 4}])
def test_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone(options, digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:8], y[:8]
    attack = gt.attacks.create("genattack", eps=0.05, max_queries=100, **options)
    state = torch.get_rng_state()
    a = attack.run(ScoresOnly(digits_net), x, y, seed=5)
    b = attack.run(ScoresOnly(digits_net), x, y, seed=5)
    c = attack.run(ScoresOnly(digits_net), x, y, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_fitness_is_the_papers_log_odds():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    goal = torch.tensor([0, 2])
    expected = torch.tensor([math.log(0.5) - math.log(0.5), math.log(0.3) - math.log(0.7)], dtype=torch.float64)
    assert torch.allclose(log_odds(p.log(), goal), expected)


def test_adaptive_schedule_decays_with_plateaus_down_to_the_floors():
    rho, alpha = adaptive_rates(torch.tensor([0, 1, 10, 100]), 0.1, 0.15)
    assert torch.allclose(rho, torch.tensor([0.5, 0.45, max(0.1, 0.5 * 0.9**10), 0.1], dtype=torch.float64))
    assert torch.allclose(alpha, torch.tensor([0.4, 0.36, 0.15, 0.15], dtype=torch.float64))


def test_a_plateau_is_patience_generations_without_improvement():
    best, stale, plateaus = torch.tensor([0.0]), torch.tensor([0]), torch.tensor([0])
    seen = []
    for now in [1.0, 1.0, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0]:
        best, stale, plateaus = count_plateaus(best, stale, plateaus, torch.tensor([now]), patience=3)
        seen.append(int(plateaus))
    assert seen == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert float(best) == 3.0 and int(stale) == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_queries": 0}, "genattack: parameter 'max_queries' must be an int >= 1, got 0"),
        ({"population": 1}, "genattack: parameter 'population' must be an int >= 2, got 1"),
        ({"temperature": 0.0}, "genattack: parameter 'temperature' must be a finite number > 0, got 0.0"),
        ({"mutation_rate": 1.5}, "genattack: parameter 'mutation_rate' must be a finite number > 0 and <= 1, got 1.5"),
        ({"norm": "l2"}, "genattack: parameter 'norm' must be one of 'linf', got 'l2'"),
        ({"resize": 0}, "genattack: parameter 'resize' must be an int >= 1 or None, got 0"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, message):
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("genattack", **{"eps": 0.1, **params})
    assert one_line(e) == message


def test_needs_eps():
    with pytest.raises(ConfigError, match="genattack: eps is required"):
        gt.attacks.create("genattack", max_queries=1000)


def test_a_labels_only_model_is_refused_naming_hopskipjump(digits_net, digits_batch):
    x, y = digits_batch
    with pytest.raises(CapabilityError) as e:
        gt.attacks.create("genattack", eps=0.2).run(LabelsOnly(digits_net), x, y)
    msg = one_line(e)
    assert msg.startswith("genattack needs scores") and "hopskipjump" in msg.lower()


def test_registered_as_genattack_with_the_papers_population():
    cls = gt.attacks.get_attack_class("genattack")
    assert cls is GenAttack and cls.requires == frozenset({"scores"}) and cls.norms == ("linf",)
    params = gt.attacks.create("genattack", eps=0.1).get_params()
    assert params["population"] == 6 and params["adaptive"] is True and params["temperature"] == 0.1
