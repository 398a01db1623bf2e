"""Square Attack: score-only access, strict success, query budget, acceptance rule, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion.square import Square, _eta, _fit_l2, p_schedule
from gauntlet.attacks.losses import margin
from gauntlet.errors import CapabilityError, ConfigError
from gauntlet.models.base import InputSpec, Model


class ScoresOnly(Model):
    """A black box: logits out, no gradients (the digits net behind a query interface)."""

    capabilities = frozenset({"scores", "labels"})
    output = "logits"

    def __init__(
        self, net: nn.Module, shape: tuple[int, ...] = (1, 8, 8), bounds: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        self.net = net
        self.input_spec = InputSpec(shape, torch.float32, bounds)
        self._num_classes = None
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.net(x)
        self.calls.append((x.detach().clone(), out.clone()))
        return out


class LabelsOnly(ScoresOnly):
    capabilities = frozenset({"labels"})


def _margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j (the loss Square minimises)."""
    return -margin(z, y)


# ---------------------------------------------------------------------------------------------
def test_square_declares_scores_only_and_runs_on_a_black_box(digits_net, digits_batch):
    assert Square.requires == frozenset({"scores"})
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    res = gt.attacks.create("square", eps=0.2, max_queries=20).run(model, x, y, seed=0)
    assert res.grad_evals == 0
    assert res.x_adv.shape == x.shape


def test_square_refuses_a_labels_only_model(digits_net, digits_batch):
    x, y = digits_batch
    with pytest.raises(CapabilityError, match="square needs scores"):
        gt.attacks.create("square", eps=0.2).run(LabelsOnly(digits_net), x, y)


def test_square_linf_drives_undefended_digits_accuracy_below_7_percent(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("square", norm="linf", eps=0.2, max_queries=1000).run(ScoresOnly(digits_net), x, y, seed=0)
    assert float(res.clean_correct.float().mean()) > 0.9
    # measured: 1/32 robust (2% on 200 test digits); PGD-20 at this ε leaves 3-5%
    assert res.robust_accuracy < 0.07
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.2 + 1e-6
    # most points fall within a few dozen queries (measured mean ≈ 30)
    assert res.info["mean_queries_successful"] < 100


def test_square_l2_drives_undefended_digits_accuracy_below_16_percent(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("square", norm="l2", eps=1.0, max_queries=1000).run(ScoresOnly(digits_net), x, y, seed=0)
    # measured: 3/32 robust (12% on 200 test digits)
    assert res.robust_accuracy < 0.16
    assert float(N.norm(res.x_adv - x, "l2").max()) <= 1.0 + 1e-5


def test_square_targeted_reaches_the_target_class(digits_net, digits_batch):
    x, y = digits_batch
    attack = gt.attacks.create("square", eps=0.3, max_queries=1000, targeted=True)
    res = attack.run(ScoresOnly(digits_net), x, y, seed=0)
    assert bool((res.target != y).all())
    assert res.success_rate >= 0.8  # measured 0.88-0.97 over seeds


def test_square_query_count_is_exactly_one_clean_query_plus_the_budget_when_nothing_falls(digits_net, digits_batch):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    res = gt.attacks.create("square", eps=0.001, max_queries=40).run(model, x, y, seed=0)
    n_correct = int(res.clean_correct.sum())
    assert n_correct < x.shape[0]  # a clean mistake is never queried after the clean check
    assert not bool(res.success[res.clean_correct].any())
    assert res.queries == x.shape[0] + 40 * n_correct
    assert model.queries == res.queries


@pytest.mark.parametrize("norm,eps,restarts", [("linf", 0.15, 1), ("l2", 0.8, 3)])
def test_square_never_exceeds_max_queries_per_sample(digits_net, digits_batch, norm, eps, restarts):
    x, y = digits_batch
    q = 60
    res = gt.attacks.create("square", norm=norm, eps=eps, max_queries=q, restarts=restarts).run(
        ScoresOnly(digits_net), x, y, seed=0
    )
    assert res.queries <= x.shape[0] * (q + 1)
    assert 0 < res.info["mean_queries_successful"] <= q


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.7)])
def test_square_queries_only_points_inside_the_eps_ball_and_bounds(digits_net, digits_batch, norm, eps):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    gt.attacks.create("square", norm=norm, eps=eps, max_queries=60).run(model, x, y, seed=0)
    queried = torch.cat([c[0] for c in model.calls[1:]])  # calls[0] is the uncounted class-count probe
    assert queried.min() >= 0.0 and queried.max() <= 1.0
    # each query belongs to the clean digit nearest to it (digits are far apart in these norms)
    diff = (queried[:, None] - x[None]).flatten(2)
    dist = (diff.abs().amax(-1) if norm == "linf" else diff.norm(dim=-1)).amin(dim=1)
    assert float(dist.max()) <= eps * (1 + 1e-5)


def test_square_keeps_a_candidate_only_when_it_lowers_the_margin(digits_net, digits_batch):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    model._num_classes = 10
    with torch.no_grad():
        i = int(_margin(model.net(x), y).argmax())  # the most confidently correct digit
    xi, yi = x[i : i + 1], y[i : i + 1]
    res = gt.attacks.create("square", eps=0.05, max_queries=150).run(model, xi, yi, seed=0)
    assert not bool(res.success.any())
    inputs = torch.cat([c[0] for c in model.calls])
    margins = _margin(torch.cat([c[1] for c in model.calls]), yi.expand(inputs.shape[0]))
    # calls: the base's clean prediction (uncounted), the clean check, the init, 149 candidates,
    # then the base's success check
    search_inputs, search_margins = inputs[2:-1], margins[2:-1]
    assert search_inputs.shape[0] == 150
    best = int(search_margins.argmin())
    assert torch.equal(res.x_adv[0], search_inputs[best])
    assert float(search_margins.min()) < float(search_margins[0])  # the search improved on the init


def test_square_attacks_flat_tabular_inputs(linear_net):
    model = ScoresOnly(linear_net, shape=(20,), bounds=(-100.0, 100.0))
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = linear_net(x)
    y = z.argmax(1)
    w = linear_net.fc.weight.detach()
    # closed-form minimal L∞ distance of an affine classifier
    gaps = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(-1).clamp_min(1e-12)
    dist = gaps.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), float("inf")).amin(1)
    eps = 0.3
    res = gt.attacks.create("square", eps=eps, max_queries=300).run(model, x, y, seed=0)
    easy = dist < eps / 1.2
    assert int(easy.sum()) >= 20
    assert bool(res.success[easy].all())
    assert not bool(res.success[dist > eps].any())


def test_square_is_deterministic_given_the_seed(digits_net, digits_batch):
    x, y = digits_batch
    for norm, eps in [("linf", 0.1), ("l2", 0.6)]:
        attack = gt.attacks.create("square", norm=norm, eps=eps, max_queries=50)
        a = attack.run(ScoresOnly(digits_net), x, y, seed=3)
        b = attack.run(ScoresOnly(digits_net), x, y, seed=3)
        c = attack.run(ScoresOnly(digits_net), x, y, seed=4)
        assert torch.equal(a.x_adv, b.x_adv) and a.queries == b.queries
        assert not torch.equal(a.x_adv, c.x_adv)


def test_square_does_not_touch_the_global_rng(digits_net, digits_batch):
    x, y = digits_batch
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    gt.attacks.create("square", eps=0.1, max_queries=20).run(ScoresOnly(digits_net), x, y, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_square_p_schedule_halves_on_the_papers_iterations_rescaled_to_the_budget():
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 201, 10000) == 0.1
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 512
    # a 1000-query run reaches each stage ten times sooner
    assert p_schedule(0.8, 2, 1000) == 0.4
    assert p_schedule(0.8, 999, 1000) == 0.8 / 512


def test_square_l2_update_shape_is_a_unit_bump_pair_of_opposite_signs():
    for h, w in [(5, 5), (4, 7), (1, 9)]:
        e = _eta(h, w, torch.device("cpu"), torch.float64)
        assert e.shape == (h, w)
        assert abs(float(e.norm()) - 1.0) < 1e-12
        assert float(e.max()) > 0 > float(e.min())
        assert abs(float(e.sum())) < 0.5  # the halves roughly cancel


@pytest.mark.parametrize(
    "params,match",
    [
        ({"eps": 0.1, "norm": "l1"}, "norm"),
        ({"eps": 0.1, "p_init": 0.0}, "p_init"),
        ({"eps": 0.1, "p_init": 1.5}, "p_init"),
        ({"eps": 0.1, "max_queries": 0}, "max_queries"),
        ({"eps": 0.1, "restarts": 0}, "restarts"),
        ({"eps": 0.1, "loss": "dlr"}, "loss"),
        ({"eps": 0.1, "l2_bounds": "project"}, "l2_bounds"),
        ({}, "eps is required"),
    ],
)
def test_square_rejects_bad_hyperparameters(params, match):
    with pytest.raises(ConfigError, match=match):
        gt.attacks.create("square", **params)


def test_square_l2_fit_puts_the_clipped_perturbation_on_the_eps_sphere():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 1, 6, 6, generator=gen) > 0.5).double() * torch.rand(40, 1, 6, 6, generator=gen, dtype=torch.float64)
    d = torch.randn(40, 1, 6, 6, generator=gen, dtype=torch.float64)
    d[0] = 0.0
    for eps in (0.3, 1.5):
        out = _fit_l2(x, d, eps, 0.0, 1.0)
        assert out.min() >= 0.0 and out.max() <= 1.0
        dist = (out - x).flatten(1).norm(dim=1)
        assert torch.allclose(dist[1:], torch.full_like(dist[1:], eps), rtol=1e-9)
        assert float(dist[0]) == 0.0  # no direction, no move
        # the same direction: every coordinate moves with the sign of d, none against it
        moved = out - x
        assert bool((moved * d >= 0).all())
    # where nothing is clipped it is the paper's point x + ε·d/‖d‖
    xm = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    dm = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    dm = 0.2 * dm / dm.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(_fit_l2(xm, dm, 0.2, 0.0, 1.0), xm + dm)
    # an ε the bounds cannot reach: every moving coordinate goes to its bound
    far = _fit_l2(x, d, 100.0, 0.0, 1.0)
    assert torch.allclose(far[1:], torch.where(d[1:] > 0, 1.0, torch.where(d[1:] < 0, 0.0, x[1:])))


@pytest.mark.parametrize("l2_bounds", ["rescale", "clip"])
def test_square_l2_bounds_rescale_queries_on_the_sphere_clip_inside_it(digits_net, digits_batch, l2_bounds):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    eps = 1.5
    gt.attacks.create("square", norm="l2", eps=eps, max_queries=30, l2_bounds=l2_bounds).run(model, x, y, seed=0)
    queried = torch.cat([c[0] for c in model.calls])
    dist = (queried[:, None] - x[None]).flatten(2).norm(dim=-1).amin(dim=1)
    assert queried.min() >= 0.0 and queried.max() <= 1.0
    dist = dist[dist > 0]  # the search's queries (not the clean inputs the base class and the attack check)
    assert float(dist.max()) <= eps * (1 + 1e-5)
    if l2_bounds == "rescale":
        # each candidate uses the whole budget, unless the bounds leave less in its direction
        on_sphere = (dist >= eps * (1 - 1e-4)).double().mean()
        assert float(on_sphere) > 0.9
    else:
        assert float(dist.mean()) < eps * 0.98  # the clip loses part of it on these digits
