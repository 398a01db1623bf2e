"""FGSM / BIM / PGD / MI-FGSM: closed forms, strict success, options."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from tests.conftest import Linear


def test_fgsm_equals_its_closed_form_on_a_linear_model(linear_net) -> None:
    # for z = Wx + b and cross-entropy, FGSM is x + eps * sign(grad) computed by hand
    model = gt.models.TorchModel(linear_net, bounds=(-10.0, 10.0), num_classes=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 20, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    eps = 0.25
    res = gt.attacks.create("fgsm", eps=eps).run(model, x, y)
    W = linear_net.fc.weight.detach()
    p = torch.softmax(linear_net(x).detach(), dim=1)
    grad = (p - torch.nn.functional.one_hot(y, 3).float()) @ W  # d CE / dx
    assert torch.allclose(res.x_adv, x + eps * grad.sign(), atol=1e-6)
    assert res.grad_evals == 16


def test_fgsm_l2_step_has_norm_eps(linear_net) -> None:
    model = gt.models.TorchModel(linear_net, bounds=(-10.0, 10.0), num_classes=3)
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(8, dtype=torch.int64)
    res = gt.attacks.create("fgsm", norm="l2", eps=0.5).run(model, x, y)
    assert torch.allclose(res.norms, torch.full((8,), 0.5), atol=1e-5)


def test_pgd_linf_drives_undefended_digits_accuracy_below_5_percent(digits_model, digits_test) -> None:
    # ε = 0.2 on 17-level 8×8 digits: smaller than MNIST's customary 0.3
    x, y = digits_test.x, digits_test.y
    clean = float((digits_model.predict(x) == y).float().mean())
    assert clean > 0.95
    res = gt.attacks.create("pgd", eps=0.2, steps=20).run(digits_model, x, y, seed=0)
    assert res.robust_accuracy < 0.05
    assert float(res.norms.max()) <= 0.2 + 1e-6


@pytest.mark.parametrize(("norm", "eps", "ceiling"), [("l2", 1.0, 0.05), ("l1", 4.0, 0.05)])
def test_pgd_l2_and_l1_break_the_undefended_model(norm, eps, ceiling, digits_model, digits_test) -> None:
    x, y = digits_test.x[:200], digits_test.y[:200]
    res = gt.attacks.create("pgd", norm=norm, eps=eps, steps=40).run(digits_model, x, y, seed=0)
    assert res.robust_accuracy < ceiling
    assert float(res.norms.max()) <= eps * (1 + 1e-5)


def test_pgd_beats_fgsm_and_robust_accuracy_falls_with_eps(digits_model, digits_test) -> None:
    x, y = digits_test.x[:200], digits_test.y[:200]
    eps = [0.02, 0.05, 0.1]
    pgd = gt.attacks.create("pgd", eps=eps, steps=20).run(digits_model, x, y, seed=0)
    fgsm = gt.attacks.create("fgsm", eps=eps).run(digits_model, x, y, seed=0)
    ra = pgd.robust_accuracy
    assert ra[0] > ra[1] > ra[2]
    assert bool((pgd.robust_accuracy <= fgsm.robust_accuracy).all())
    assert float(pgd.robust_accuracy[-1]) < float(fgsm.robust_accuracy[-1]) - 0.05


def test_early_stop_reaches_the_same_robust_accuracy_with_fewer_gradients(digits_model, digits_test) -> None:
    x, y = digits_test.x[:200], digits_test.y[:200]
    full = gt.attacks.create("pgd", eps=0.2, steps=20).run(digits_model, x, y, seed=0)
    fast = gt.attacks.create("pgd", eps=0.2, steps=20, early_stop=True).run(digits_model, x, y, seed=0)
    assert fast.robust_accuracy <= full.robust_accuracy + 0.01
    assert fast.grad_evals < 0.6 * full.grad_evals


def test_restarts_never_hurt_and_only_attack_points_still_standing(digits_model, digits_test) -> None:
    x, y = digits_test.x[:200], digits_test.y[:200]
    one = gt.attacks.create("pgd", eps=0.05, steps=10).run(digits_model, x, y, seed=0)
    three = gt.attacks.create("pgd", eps=0.05, steps=10, restarts=3).run(digits_model, x, y, seed=0)
    assert three.robust_accuracy <= one.robust_accuracy
    # restarts 2 and 3 run only on survivors of restart 1
    assert three.grad_evals < 3 * one.grad_evals


def test_targeted_pgd_reaches_the_requested_class(digits_model, digits_test) -> None:
    x, y = digits_test.x[:64], digits_test.y[:64]
    target = (y + 1) % 10
    res = gt.attacks.create("pgd", eps=0.3, steps=40, targeted=True).run(digits_model, x, y, target=target)
    assert res.targeted and torch.equal(res.target, target)
    assert res.success_rate > 0.9
    assert torch.equal(res.success, digits_model.predict(res.x_adv, count=False) == target)


def test_targeted_without_target_draws_a_reproducible_class_other_than_y(digits_model, digits_batch) -> None:
    x, y = digits_batch
    a = gt.attacks.create("bim", eps=0.1, steps=3, targeted=True)
    r1, r2 = a.run(digits_model, x, y, seed=5), a.run(digits_model, x, y, seed=5)
    assert torch.equal(r1.target, r2.target) and bool((r1.target != y).all())


def test_mifgsm_and_bim_break_the_undefended_model(digits_model, digits_test) -> None:
    x, y = digits_test.x[:200], digits_test.y[:200]
    for name in ("bim", "mifgsm"):
        res = gt.attacks.create(name, eps=0.2, steps=10).run(digits_model, x, y)
        assert res.robust_accuracy < 0.10, name


def test_batch_size_does_not_change_deterministic_attacks(digits_model, digits_batch) -> None:
    x, y = digits_batch
    whole = gt.attacks.create("bim", eps=0.1, steps=5).run(digits_model, x, y)
    split = gt.attacks.create("bim", eps=0.1, steps=5, batch_size=7).run(digits_model, x, y)
    assert torch.allclose(whole.x_adv, split.x_adv, atol=1e-6)


def test_l1_projection_matches_a_brute_force_solution() -> None:
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 6, generator=g, dtype=torch.float64) * 2
    eps = torch.tensor([1.0, 0.5, 100.0], dtype=torch.float64)
    p = N.project(v, "l1", eps)
    for i in range(3):
        cons = {"type": "ineq", "fun": lambda z, e=float(eps[i]): e - abs(z).sum()}
        best = minimize(lambda z, t=v[i].numpy(): ((z - t) ** 2).sum(), x0=[0.0] * 6, constraints=[cons], method="SLSQP")
        assert torch.allclose(p[i], torch.tensor(best.x), atol=1e-4)
    assert torch.equal(p[2], v[2])  # already inside: unchanged


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_stays_inside_the_ball(norm) -> None:
    x = torch.zeros(100, 3, 4)
    d = N.random_in_ball(x, norm, 0.7, torch.Generator().manual_seed(0))
    assert float(N.norm(d, norm).max()) <= 0.7 + 1e-6
    assert float(N.norm(d, norm).min()) > 0.0


def test_linear_model_fixture_is_deterministic() -> None:
    assert torch.equal(Linear().fc.weight, Linear().fc.weight)


def test_clean_pred_given_by_the_caller_replaces_the_clean_forward_and_changes_nothing_else(digits_model, digits_batch) -> None:
    x, y = digits_batch
    atk = gt.attacks.create("pgd", norm="linf", eps=0.1, steps=5, step_size=0.03)
    plain = atk.run(digits_model, x, y, seed=3)
    given = atk.run(digits_model, x, y, seed=3, clean_pred=digits_model.predict(x, count=False))
    assert torch.equal(plain.x_adv, given.x_adv) and torch.equal(plain.success, given.success)
    assert torch.equal(plain.clean_correct, given.clean_correct)
    # the labels given are the ones used (an audit shares one clean pass across attacks)
    wrong = atk.run(digits_model, x, y, seed=3, clean_pred=(y + 1) % 10)
    assert not bool(wrong.clean_correct.any())
