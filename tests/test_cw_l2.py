"""Carlini–Wagner L2: closed-form distances on an affine model, strict success on digits, options."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.errors import ConfigError

# affine-oracle settings: with bounds (-100, 100) one Adam step moves a coordinate by ~100·lr
ORACLE = {"learning_rate": 1e-4, "steps": 300}


def _affine_case(linear_net, n: int = 48, min_dist: float = 0.1):
    """Points of the affine oracle (at least ``min_dist`` from the boundary, so the distance is
    large next to one Adam step), labelled by the model, with exact per-class boundary distances."""
    model = gt.models.TorchModel(linear_net, bounds=(-100.0, 100.0), num_classes=3)
    x = 0.5 * torch.randn(n, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = linear_net(x)
    y = z.argmax(1)
    W = linear_net.fc.weight.detach()
    gap = z.gather(1, y[:, None]) - z  # z_y − z_j
    dist = gap / (W[y][:, None, :] - W[None, :, :]).norm(dim=2).clamp_min(1e-12)
    dist = dist.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), float("inf"))  # (n, 3)
    keep = dist.amin(1) >= min_dist
    return model, x[keep], y[keep], dist[keep], z[keep]


def test_cw_l2_finds_the_exact_boundary_distance_of_an_affine_classifier(linear_net) -> None:
    model, x, y, dist, z = _affine_case(linear_net)
    res = gt.attacks.create("cw_l2", **ORACLE).run(model, x, y)
    assert bool(res.success.all())
    exact = dist.amin(1)  # min_{j≠y} (z_y − z_j) / ||w_y − w_j||₂
    assert bool((res.norms >= exact * (1 - 1e-4)).all()), "an adversarial closer than the exact minimum"
    # C&W's margin follows the runner-up class, so it reaches the nearest boundary when that
    # boundary is the runner-up's (most points) and the runner-up's boundary otherwise
    runner_up = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    nearest = dist.argmin(1)
    same = nearest == runner_up
    assert int(same.sum()) >= 0.9 * len(y)
    assert float((res.norms[same] / exact[same] - 1).max()) < 0.01
    d_ru = dist.gather(1, runner_up[:, None]).squeeze(1)
    if bool((~same).any()):
        assert float((res.norms[~same] / d_ru[~same] - 1).abs().max()) < 0.01


def _distance_to_class_region(linear_net, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact L2 distance from each x to the convex region {z_t ≥ z_j for all j} of an affine model.

    The nearest point has one or two active constraints (3 classes): it is the projection onto
    one hyperplane z_t = z_j when that is feasible for the other, else the projection onto both.
    """
    W, b = linear_net.fc.weight.detach().double(), linear_net.fc.bias.detach().double()
    out = []
    for xi, ti in zip(x.double(), t.tolist()):
        z = W @ xi + b
        others = [j for j in range(3) if j != ti]
        A = torch.stack([W[ti] - W[j] for j in others])  # A δ ≥ c
        c = torch.stack([z[j] - z[ti] for j in others])
        feasible = lambda d: bool((A @ d >= c - 1e-9).all())  # noqa: E731
        cands = [c[i] * A[i] / A[i].dot(A[i]) for i in range(2)]
        cands.append(A.T @ torch.linalg.solve(A @ A.T, c))
        out.append(min(float(d.norm()) for d in cands if feasible(d)))
    return torch.tensor(out)


def test_cw_l2_targeted_finds_the_exact_distance_to_the_target_region(linear_net) -> None:
    # the targeted problem on an affine model is convex, so C&W must reach its global minimum
    model, x, y, _, _ = _affine_case(linear_net)
    target = (y + 1) % 3
    res = gt.attacks.create("cw_l2", targeted=True, **ORACLE).run(model, x, y, target=target)
    assert bool(res.success.all())
    assert bool((model.predict(res.x_adv, count=False) == target).all())
    exact = _distance_to_class_region(linear_net, x, target)
    rel = res.norms / exact - 1
    assert float(rel.min()) > -1e-4 and float(rel.max()) < 0.01, rel


def test_cw_l2_fools_the_digits_model_with_smaller_perturbations_than_deepfool(digits_model, digits_test) -> None:
    x, y = digits_test.x[:64], digits_test.y[:64]
    res = gt.attacks.create("cw_l2").run(digits_model, x, y, seed=0)
    correct = res.clean_correct
    assert float(res.success[correct].float().mean()) >= 0.99
    df = gt.attacks.create("deepfool").run(digits_model, x, y, seed=0)
    both = correct & res.success & df.success
    cw_med, df_med = float(res.norms[both].median()), float(df.norms[both].median())
    # DeepFool overshoots the linearised boundary; C&W optimises the L2 distance itself
    assert cw_med <= df_med, (cw_med, df_med)


def test_cw_l2_targeted_reaches_the_target_class(digits_model, digits_batch) -> None:
    x, y = digits_batch
    fast = {"steps": 100, "learning_rate": 0.1, "final_steps": 100}  # cheaper than the defaults, still exact enough
    res = gt.attacks.create("cw_l2", targeted=True, **fast).run(digits_model, x, y, seed=0)
    assert res.target is not None and bool((res.target != y).all())
    assert float(res.success.float().mean()) >= 0.99
    assert torch.equal(digits_model.predict(res.x_adv, count=False)[res.success], res.target[res.success])
    untargeted = gt.attacks.create("cw_l2", **fast).run(digits_model, x, y, seed=0)
    assert float(res.norms[res.success].median()) > float(untargeted.norms[untargeted.success].median())


def test_cw_l2_confidence_leaves_a_logit_margin(digits_model, digits_batch) -> None:
    x, y = digits_batch
    kappa = 3.0
    res = gt.attacks.create(
        "cw_l2", confidence=kappa, steps=50, binary_search_steps=5, learning_rate=0.1, final_steps=20
    ).run(digits_model, x, y, seed=0)
    ok = res.success & res.clean_correct
    assert float(ok.float().mean()) > 0.9
    with torch.no_grad():
        z = digits_model.scores(res.x_adv[ok], count=False)
    yo = y[ok]
    margin = z.scatter(1, yo[:, None], float("-inf")).amax(1) - z.gather(1, yo[:, None]).squeeze(1)
    assert float(margin.min()) >= kappa - 1e-4


def test_cw_l2_is_deterministic_and_counts_every_gradient(digits_model, digits_batch) -> None:
    x, y = digits_batch
    x, y = x[:8], y[:8]
    attack = gt.attacks.create("cw_l2", steps=20, binary_search_steps=3, abort_early=False, final_steps=0)
    a = attack.run(digits_model, x, y, seed=5)
    b = attack.run(digits_model, x, y, seed=5)
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.grad_evals == 20 * 3 * 8  # no early abort: every sample, every step, every round
    early = gt.attacks.create("cw_l2", steps=20, binary_search_steps=3, abort_early=True, final_steps=0).run(
        digits_model, x, y, seed=5
    )
    assert early.grad_evals <= a.grad_evals
    # the final annealed round runs final_steps more on every sample that found an adversarial
    final = gt.attacks.create("cw_l2", steps=20, binary_search_steps=3, abort_early=False, final_steps=7).run(
        digits_model, x, y, seed=5
    )
    found = int((final.success & final.clean_correct).sum())
    assert final.grad_evals == a.grad_evals + 7 * found


def test_cw_l2_final_annealed_round_never_enlarges_and_usually_shrinks_the_perturbation(digits_model, digits_batch) -> None:
    x, y = digits_batch
    params = {"steps": 100, "learning_rate": 0.1, "binary_search_steps": 5}
    plain = gt.attacks.create("cw_l2", final_steps=0, **params).run(digits_model, x, y, seed=0)
    refined = gt.attacks.create("cw_l2", final_steps=200, **params).run(digits_model, x, y, seed=0)
    # the same points are broken; the refined ones sit on the boundary (margins down to ~1e-6 of a logit),
    # so the final check, a batch of its own, may round one the other way: only such a point may differ
    flipped = plain.success ^ refined.success
    with torch.no_grad():
        z = digits_model.scores(refined.x_adv[flipped], count=False)
    yf = y[flipped]
    margin = z.scatter(1, yf[:, None], float("-inf")).amax(1) - z.gather(1, yf[:, None]).squeeze(1)
    assert int(flipped.sum()) <= 2 and bool((margin.abs() < 1e-4).all()), margin
    ok = plain.success & plain.clean_correct
    assert bool((refined.norms[ok] <= plain.norms[ok] + 1e-6).all())  # the best adversarial is kept
    assert float(refined.norms[ok].median()) < float(plain.norms[ok].median())


def test_cw_l2_eps_restricts_the_minimal_result(digits_model, digits_batch) -> None:
    x, y = digits_batch
    x, y = x[:16], y[:16]
    params = {"steps": 50, "binary_search_steps": 5}
    free = gt.attacks.create("cw_l2", **params).run(digits_model, x, y, seed=0)
    res = gt.attacks.create("cw_l2", eps=[0.1, 50.0], **params).run(digits_model, x, y, seed=0)
    assert float(res.norms[0].max()) <= 0.1 + 1e-6
    assert torch.equal(res.success[1], free.success) and torch.allclose(res.x_adv[1], free.x_adv)
    assert float(res.success[0].float().mean()) < float(free.success.float().mean())


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"norm": "linf"}, "norm"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"initial_const": -1.0}, "initial_const"),
        ({"confidence": -0.5}, "confidence"),
        ({"binary_search_steps": 0}, "binary_search_steps"),
        ({"abort_early": "yes"}, "abort_early"),
        ({"final_steps": -1}, "final_steps"),
    ],
)
def test_cw_l2_rejects_bad_parameters(params, match) -> None:
    with pytest.raises(ConfigError, match=match):
        gt.attacks.create("cw_l2", **params)
