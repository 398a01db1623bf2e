"""DeepFool: closed-form distances on an affine model, strict success and near-minimality on digits."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.errors import ConfigError


def _affine_case(linear_net, n: int = 32):
    """Points of the affine oracle, labelled by the model, and their exact boundary distances."""
    model = gt.models.TorchModel(linear_net, bounds=(-100.0, 100.0), num_classes=3)
    x = 0.5 * torch.randn(n, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = linear_net(x)
    y = z.argmax(1)
    W = linear_net.fc.weight.detach()
    gap = z.gather(1, y[:, None]) - z  # z_y − z_j, (n, 3)
    dw = W[y][:, None, :] - W[None, :, :]  # w_y − w_j, (n, 3, 20)
    own = torch.nn.functional.one_hot(y, 3).bool()
    d2 = (gap / dw.norm(dim=2).clamp_min(1e-12)).masked_fill(own, float("inf")).amin(1)
    d1 = (gap / dw.abs().sum(dim=2).clamp_min(1e-12)).masked_fill(own, float("inf")).amin(1)
    return model, x, y, d2, d1


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_finds_the_exact_boundary_distance_of_an_affine_classifier(norm, linear_net) -> None:
    # closed form: min_{j≠y} (z_y − z_j) / ||w_y − w_j||_q, q = 2 for L2 and q = 1 (dual) for L∞
    model, x, y, d2, d1 = _affine_case(linear_net)
    overshoot = 0.02
    res = gt.attacks.create("deepfool", norm=norm, overshoot=overshoot).run(model, x, y)
    exact = d2 if norm == "l2" else d1
    assert bool(res.success.all())
    # DeepFool lands at (1 + overshoot) · (d + 1e-4): the authors' overshoot and crossing margin
    rel = res.norms / ((1 + overshoot) * (exact + 1e-4)) - 1
    assert float(rel.abs().max()) < 0.01, rel
    assert float((res.norms / exact - 1).median()) < 1.03 * (1 + overshoot) - 1
    # one linearisation is exact on an affine model: a single step of 2 candidate gradients each
    assert res.grad_evals == 2 * x.shape[0]


def test_deepfool_without_overshoot_lands_just_across_the_affine_boundary(linear_net) -> None:
    model, x, y, d2, _ = _affine_case(linear_net)
    res = gt.attacks.create("deepfool", overshoot=0.0).run(model, x, y)
    assert bool(res.success.all())
    assert float((res.norms - d2).abs().max()) < 2e-4  # d + 1e-4, the authors' crossing margin


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_fools_every_correctly_classified_digit(norm, digits_model, digits_test) -> None:
    x, y = digits_test.x, digits_test.y
    res = gt.attacks.create("deepfool", norm=norm).run(digits_model, x, y, seed=0)
    correct = res.clean_correct
    assert int(correct.sum()) > 400
    assert bool(res.success[correct].all()), f"{int((~res.success[correct]).sum())} correctly classified points survived"
    # honest gradient counting: each step costs (candidates − 1) = 9 gradients per active point
    assert res.grad_evals % 9 == 0 and res.grad_evals >= 9 * int(correct.sum())


def test_deepfool_l2_perturbation_is_near_minimal_on_digits(digits_model, digits_test) -> None:
    # DeepFool stops just past the boundary: shrinking its perturbation by 10% undoes it almost always
    x, y = digits_test.x[:200], digits_test.y[:200]
    res = gt.attacks.create("deepfool").run(digits_model, x, y, seed=0)
    ok = res.success & res.clean_correct
    delta = (res.x_adv - x)[ok]
    shrunk = digits_model.predict((x[ok] + 0.9 * delta).clamp(0, 1), count=False)
    assert float((shrunk == y[ok]).float().mean()) > 0.9
    # and it is far smaller than the budget PGD-L2 needs to break the model (ε = 1.0)
    assert float(res.norms[ok].median()) < 0.7


def test_deepfool_eps_restricts_the_minimal_result(digits_model, digits_batch) -> None:
    x, y = digits_batch
    free = gt.attacks.create("deepfool").run(digits_model, x, y, seed=0)
    eps = [0.05, 10.0]
    res = gt.attacks.create("deepfool", eps=eps).run(digits_model, x, y, seed=0)
    assert float(res.norms[0].max()) <= 0.05 + 1e-6
    assert torch.equal(res.success[1], free.success)  # a large ε changes nothing
    assert torch.allclose(res.x_adv[1], free.x_adv)
    assert float(res.success[0].float().mean()) < float(free.success.float().mean())


def test_deepfool_is_deterministic_and_leaves_fooled_points_alone(digits_model, digits_batch) -> None:
    x, y = digits_batch
    attack = gt.attacks.create("deepfool", norm="linf")
    a = attack.run(digits_model, x, y, seed=1)
    b = attack.run(digits_model, x, y, seed=1)
    assert torch.equal(a.x_adv, b.x_adv)
    # points the model already gets wrong are returned unchanged
    wrong = ~a.clean_correct
    y_bad = y.clone()
    y_bad[:4] = (digits_model.predict(x[:4], count=False) + 1) % 10
    c = attack.run(digits_model, x[:4], y_bad[:4])
    assert torch.equal(c.x_adv, x[:4]) and bool(c.success.all())
    assert torch.equal(a.x_adv[wrong], x[wrong])


def test_deepfool_candidates_limits_the_classes_considered(digits_model, digits_batch) -> None:
    x, y = digits_batch
    res = gt.attacks.create("deepfool", candidates=3).run(digits_model, x, y, seed=0)
    full = gt.attacks.create("deepfool", candidates=None).run(digits_model, x, y, seed=0)
    default = gt.attacks.create("deepfool").run(digits_model, x, y, seed=0)
    assert torch.equal(full.x_adv, default.x_adv)  # 10 candidates = every class here
    # 2 instead of 9 gradients per active point and step, and still a strong attack
    assert res.grad_evals % 2 == 0 and res.grad_evals < 0.4 * default.grad_evals
    assert float(res.success.float().mean()) > 0.9


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"norm": "l1"}, "norm"),
        ({"candidates": 1}, "candidates"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"steps": 0}, "steps"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_deepfool_rejects_bad_parameters(params, match) -> None:
    with pytest.raises(ConfigError, match=match):
        gt.attacks.create("deepfool", **params)


def test_deepfool_l2_norms_are_what_the_result_reports(digits_model, digits_batch) -> None:
    x, y = digits_batch
    res = gt.attacks.create("deepfool").run(digits_model, x, y, seed=0)
    assert torch.allclose(res.norms, N.norm(res.x_adv - x, "l2"))
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
