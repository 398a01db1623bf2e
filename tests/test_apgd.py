"""Auto-PGD (apgd_ce, apgd_dlr, apgd_t): schedule, strength, counting, options, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.attacks.base import loss_and_grad
from gauntlet.attacks.evasion.apgd import checkpoints, halving
from gauntlet.attacks.losses import dlr
from gauntlet.errors import ConfigError
from tests.conftest import Linear


# ------------------------------------------------------------------------------------------
# the step-size schedule
def _paper_checkpoints(n: int) -> list[int]:
    """w_j = ceil(p_j n), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), p_j <= 1."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    ws = sorted({math.ceil(q * n) for q in p[1:] if q <= 1})
    return [w for w in ws if w >= 1]


def test_checkpoints_for_100_steps_are_the_papers() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 20, 33, 50, 99, 100, 101, 150, 250, 1000])
def test_checkpoints_follow_the_paper_formula_exactly(n: int) -> None:
    ws = checkpoints(n)
    assert ws == _paper_checkpoints(n)
    assert ws == sorted(set(ws)) and 1 <= ws[0] and ws[-1] <= n


def test_checkpoints_avoid_float_rounding_at_exact_multiples() -> None:
    # 0.22 * 100 = 22.000000000000004 in floating point; a naive ceil would give 23
    assert checkpoints(100)[0] == 22 and checkpoints(50)[0] == 11 and checkpoints(200)[0] == 44


def test_halving_rule_conditions_a_and_b() -> None:
    window, rho = 20, 0.75  # (a) fires below 15 increasing steps
    n_up = torch.tensor([14.0, 15.0, 15.0, 20.0, 20.0])
    halved_before = torch.tensor([True, True, False, False, True])
    best_before = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    best = torch.tensor([2.0, 2.0, 1.0, 1.5, 1.0])
    got = halving(n_up, window, rho, halved_before, best, best_before)
    # 0: (a) 14 < 15; 1: 15 is not < 15 and (b) off; 2: (b) no improvement, not halved last time;
    # 3: improved; 4: no improvement but it halved at the last checkpoint
    assert got.tolist() == [True, False, True, False, False]


class _Bump(nn.Module):
    """Two logits (a, 0.01) with a = -(x - c)^2: cross-entropy towards class 1 is maximal at x = c,
    inside the ball, and no point is ever misclassified, so APGD must oscillate around c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = -((x - self.c) ** 2).sum(dim=1)
        return torch.stack([a, torch.full_like(a, 0.01)], dim=1)


def test_step_halving_lets_apgd_converge_to_an_interior_maximum() -> None:
    # the first step (2 eps) overshoots c; only the halvings at the 8 checkpoints (2 eps / 256 at
    # the end) can bring the best point close to c
    model = gt.models.TorchModel(_Bump(0.3), bounds=(-5.0, 5.0), num_classes=2)
    x = torch.zeros(16, 1)
    y = torch.ones(16, dtype=torch.int64)
    res = gt.attacks.create("apgd_ce", eps=1.0, steps=100).run(model, x, y, seed=0)
    err = (res.x_adv[:, 0] - 0.3).abs()
    assert float(err.max()) < 0.02
    short = gt.attacks.create("apgd_ce", eps=1.0, steps=5).run(model, x, y, seed=0)
    assert float((short.x_adv[:, 0] - 0.3).abs().max()) > float(err.max())


# ------------------------------------------------------------------------------------------
# cost: one forward+backward per step, only on points still standing
def test_one_pass_per_step_and_only_clean_correct_points_are_attacked(digits_model, digits_test) -> None:
    x, y = digits_test.x[:64], digits_test.y[:64]
    correct = int((digits_model.predict(x, count=False) == y).sum())
    steps = 7
    res = gt.attacks.create("apgd_ce", eps=0.05, steps=steps).run(digits_model, x, y, seed=0)
    # one clean pass for all, then steps + 1 evaluations (the last without backward) per attacked point
    assert res.queries == 64 + correct * (steps + 1)
    assert res.grad_evals == correct * steps


# ------------------------------------------------------------------------------------------
# strength on the undefended digits model (clean accuracy ~96%)
@pytest.fixture()
def digits200(digits_test):
    return digits_test.x[:200], digits_test.y[:200]


def test_apgd_ce_linf_breaks_the_undefended_model(digits_model, digits200) -> None:
    x, y = digits200
    res = gt.attacks.create("apgd_ce", eps=0.2, steps=50).run(digits_model, x, y, seed=0)
    assert res.robust_accuracy < 0.04
    assert float(res.norms.max()) <= 0.2 + 1e-6


def test_apgd_ce_is_at_least_as_strong_as_pgd_at_the_same_cost(digits_model, digits200) -> None:
    x, y = digits200
    pgd = gt.attacks.create("pgd", eps=0.15, steps=20).run(digits_model, x, y, seed=0)
    apgd = gt.attacks.create("apgd_ce", eps=0.15, steps=20).run(digits_model, x, y, seed=0)
    assert apgd.robust_accuracy <= pgd.robust_accuracy
    assert apgd.robust_accuracy < 0.24
    assert apgd.grad_evals <= pgd.grad_evals


def test_apgd_t_breaks_every_point_at_eps_0_2(digits_model, digits200) -> None:
    x, y = digits200
    res = gt.attacks.create("apgd_t", eps=0.2, steps=20, n_target_classes=3).run(digits_model, x, y, seed=0)
    assert res.robust_accuracy < 0.01
    assert not res.targeted and res.target is None


def test_apgd_t_is_stronger_than_apgd_ce_at_eps_0_15(digits_model, digits200) -> None:
    x, y = digits200
    ce = gt.attacks.create("apgd_ce", eps=0.15, steps=20).run(digits_model, x, y, seed=0)
    t = gt.attacks.create("apgd_t", eps=0.15, steps=20, n_target_classes=3).run(digits_model, x, y, seed=0)
    assert t.robust_accuracy <= ce.robust_accuracy
    assert t.robust_accuracy < 0.23


def test_apgd_dlr_breaks_the_undefended_model(digits_model, digits200) -> None:
    x, y = digits200
    res = gt.attacks.create("apgd_dlr", eps=0.2, steps=20).run(digits_model, x, y, seed=0)
    assert res.robust_accuracy < 0.10


def _diverged(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Per sample: the two adversarial batches differ by more than ``tol`` in some pixel."""
    return (a - b).flatten(1).abs().amax(dim=1) > tol


def test_apgd_dlr_is_invariant_to_rescaling_the_logits(digits_net, digits200) -> None:
    # DLR is scale-invariant: logits scaled by 1/1000 give the same loss and input gradient, so the
    # same search.  The scale is deliberately not a power of two: it rounds differently, as another
    # CPU would, so this pins the invariance up to rounding, never bit patterns.  Rounding may turn
    # a sign step of the odd iterate; a loss that depends on the scale (cross-entropy) moves nearly all.
    x, y = digits200
    x, y = x[:48], y[:48]
    base = gt.models.TorchModel(digits_net, num_classes=10)
    tiny = gt.models.TorchModel(nn.Sequential(digits_net, _Scale(1e-3)), num_classes=10)
    loss_a, grad_a, _ = loss_and_grad(base, x, lambda z: dlr(z, y))
    loss_b, grad_b, _ = loss_and_grad(tiny, x, lambda z: dlr(z, y))
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5 * float(grad_a.abs().max()))

    a = gt.attacks.create("apgd_dlr", eps=0.15, steps=10).run(base, x, y, seed=0)
    b = gt.attacks.create("apgd_dlr", eps=0.15, steps=10).run(tiny, x, y, seed=0)
    assert a.success.any()
    apart = _diverged(a.x_adv, b.x_adv)
    assert int(apart.sum()) <= 8, int(apart.sum())  # 0 of 48 on the reference machine
    assert not bool(((a.success ^ b.success) & ~apart).any())  # same outcome wherever the searches agree

    ce_a = gt.attacks.create("apgd_ce", eps=0.15, steps=10).run(base, x, y, seed=0)
    ce_b = gt.attacks.create("apgd_ce", eps=0.15, steps=10).run(tiny, x, y, seed=0)
    assert int(_diverged(ce_a.x_adv, ce_b.x_adv).sum()) >= 24  # 45 of 48: the check can tell


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.s


@pytest.mark.parametrize(("name", "ceiling"), [("apgd_ce", 0.05), ("apgd_t", 0.03)])
def test_l2_variant_breaks_the_model_and_stays_in_the_ball(name, ceiling, digits_model, digits200) -> None:
    x, y = digits200
    params = {"n_target_classes": 3} if name == "apgd_t" else {}
    res = gt.attacks.create(name, norm="l2", eps=1.0, steps=20, **params).run(digits_model, x, y, seed=0)
    assert res.robust_accuracy < ceiling
    assert float(res.norms.max()) <= 1.0 + 1e-5


def test_targeted_apgd_ce_reaches_the_given_targets(digits_model, digits200) -> None:
    x, y = digits200
    x, y = x[:64], y[:64]
    target = (y + 1) % 10
    res = gt.attacks.create("apgd_ce", eps=0.3, steps=30, targeted=True).run(digits_model, x, y, seed=0, target=target)
    assert res.targeted and torch.equal(res.target, target)
    assert res.success_rate > 0.9
    pred = digits_model.predict(res.x_adv, count=False)
    assert torch.equal(res.success, pred == target)


# ------------------------------------------------------------------------------------------
# options
def test_early_stop_keeps_robust_accuracy_with_far_fewer_gradients(digits_model, digits200) -> None:
    x, y = digits200
    full = gt.attacks.create("apgd_ce", eps=0.15, steps=50).run(digits_model, x, y, seed=0)
    fast = gt.attacks.create("apgd_ce", eps=0.15, steps=50, early_stop=True).run(digits_model, x, y, seed=0)
    assert fast.robust_accuracy <= full.robust_accuracy
    assert fast.grad_evals < 0.5 * full.grad_evals


def test_same_seed_same_output_and_another_seed_another_start(digits_model, digits200) -> None:
    x, y = digits200
    x, y = x[:32], y[:32]
    attack = gt.attacks.create("apgd_t", eps=0.1, steps=10, n_target_classes=2)
    r1 = attack.run(digits_model, x, y, seed=5)
    r2 = attack.run(digits_model, x, y, seed=5)
    r3 = attack.run(digits_model, x, y, seed=6)
    assert torch.equal(r1.x_adv, r2.x_adv)
    assert not torch.equal(r1.x_adv, r3.x_adv)


def test_global_rng_is_untouched(digits_model, digits200) -> None:
    x, y = digits200
    state = torch.random.get_rng_state()
    gt.attacks.create("apgd_ce", eps=0.1, steps=5).run(digits_model, x[:8], y[:8], seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_restarts_only_attack_points_still_standing(digits_model, digits200) -> None:
    x, y = digits200
    one = gt.attacks.create("apgd_ce", eps=0.1, steps=10).run(digits_model, x, y, seed=0)
    three = gt.attacks.create("apgd_ce", eps=0.1, steps=10, restarts=3).run(digits_model, x, y, seed=0)
    assert three.robust_accuracy <= one.robust_accuracy
    standing = int((~one.success).sum())
    assert three.grad_evals <= one.grad_evals + 2 * standing * 10


def test_several_eps_fall_monotonically(digits_model, digits200) -> None:
    x, y = digits200
    res = gt.attacks.create("apgd_ce", eps=[0.05, 0.1, 0.2], steps=10).run(digits_model, x, y, seed=0)
    ra = res.robust_accuracy
    assert ra[0] > ra[1] > ra[2] and float(ra[2]) < 0.05


# ------------------------------------------------------------------------------------------
# errors
def test_apgd_t_on_a_two_class_model_says_what_to_do() -> None:
    model = gt.models.TorchModel(Linear(d=20, k=2), bounds=(-10.0, 10.0), num_classes=2)
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.int64)
    msg = r"apgd_t: the targeted DLR loss needs a model with at least 4 classes but this one has 2; use loss='ce'"
    with pytest.raises(ConfigError, match=msg):
        gt.attacks.create("apgd_t", eps=0.1, steps=5).run(model, x, y)
    with pytest.raises(ConfigError, match=r"apgd_dlr: the DLR loss needs .* at least 3 classes"):
        gt.attacks.create("apgd_dlr", eps=0.1, steps=5).run(model, x, y)
    # cross-entropy works on two classes, also towards a target
    gt.attacks.create("apgd_t", eps=0.1, steps=5, loss="ce").run(model, x, y)


def test_targeted_dlr_needs_four_classes(linear_net) -> None:
    model = gt.models.TorchModel(linear_net, bounds=(-10.0, 10.0), num_classes=3)  # 3 classes
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.int64)
    gt.attacks.create("apgd_dlr", eps=0.1, steps=5).run(model, x, y)  # untargeted DLR: fine
    with pytest.raises(ConfigError, match="at least 4 classes"):
        gt.attacks.create("apgd_dlr", eps=0.1, steps=5, targeted=True).run(model, x, y)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("apgd_ce", {"steps": 0}, "'steps' must be an int >= 1"),
        ("apgd_ce", {"rho": 1.5}, "'rho' must be"),
        ("apgd_ce", {"norm": "l1"}, "'norm' must be one of"),
        ("apgd_dlr", {"loss": "hinge"}, "'loss' must be one of"),
        ("apgd_t", {"n_target_classes": 0}, "'n_target_classes' must be an int >= 1"),
        ("apgd_t", {"restarts": 0}, "'restarts' must be an int >= 1"),
        ("apgd_ce", {"early_stop": 1}, "'early_stop' must be a bool"),
    ],
)
def test_bad_hyperparameters_are_rejected(name, params, match) -> None:
    with pytest.raises(ConfigError, match=match):
        gt.attacks.create(name, eps=0.1, **params)


def test_apgd_t_has_no_targeted_option() -> None:
    with pytest.raises(ConfigError, match=r"^apgd_t: unknown parameter 'targeted'; apgd_t takes norm, eps, "):
        gt.attacks.create("apgd_t", eps=0.1, targeted=True)
