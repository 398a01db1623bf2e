"""Adversarial patch: EOT placements, an exact pixel budget, learned on train, evaluated on held-out."""

from __future__ import annotations

import math

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion.patch import AdversarialPatch, Placement, draw_placements, pixel_budget, render
from gauntlet.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def fixed(n: int, side: float, angle_deg: float, cx: float, cy: float) -> Placement:
    f = lambda v: torch.full((n,), float(v), dtype=torch.float64)
    return Placement(f(side), f(math.radians(angle_deg)), torch.stack([f(cx), f(cy)], 1), f(1.0))


def expected_footprint(h: int, w: int, side: float, angle_deg: float, cx: float, cy: float) -> torch.Tensor:
    """Pixels whose centre lies inside the rotated square, computed directly (no affine_grid)."""
    t = math.radians(angle_deg)
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dx, dy = j + 0.5 - cx, i + 0.5 - cy
    u = math.cos(t) * dx + math.sin(t) * dy
    v = -math.sin(t) * dx + math.cos(t) * dy
    return (u.abs() <= side / 2) & (v.abs() <= side / 2)


@pytest.mark.parametrize(("side", "angle", "cx", "cy"), [(4.0, 0.0, 4.0, 4.0), (4.0, 30.0, 4.2, 3.7), (5.5, 45.0, 14.0, 9.0)])
def test_the_footprint_is_the_rotated_square_and_nothing_else_changes(side, angle, cx, cy) -> None:
    h = w = 8 if cx < 8 else 28
    x = torch.rand(3, 2, h, w, generator=torch.Generator().manual_seed(0))
    patch = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    adv, mask = render(x, patch, fixed(3, side, angle, cx, cy), budget=h * w, value_bounds=(0.0, 1.0))
    exp = expected_footprint(h, w, side, angle, cx, cy)
    assert torch.equal(mask, exp.expand(3, h, w))
    assert torch.equal(adv[:, :, ~exp], x[:, :, ~exp])
    if angle == 0.0:
        assert int(exp.sum()) == 16 and bool(exp[2:6, 2:6].all())  # the 4x4 block, exactly


def test_every_placement_changes_at_most_floor_scale_h_w_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    for h, w, scale in [(8, 8, 0.1), (8, 8, 0.25), (28, 28, 0.05), (28, 28, 0.1), (20, 12, 0.3), (8, 8, 1.0)]:
        budget = pixel_budget(scale, h, w)
        assert budget == math.floor(scale * h * w + 1e-9)
        x = torch.rand(400, 1, h, w, generator=gen)
        pl = draw_placements(400, h, w, scale=scale, shrink=0.0, rotation=45.0, brightness=0.2, generator=gen, device=x.device)
        patch = torch.rand(400, 1, 3, 3, generator=gen)
        adv, mask = render(x, patch, pl, budget=budget, value_bounds=(0.0, 1.0))
        counts = mask.flatten(1).sum(1)
        assert int(counts.max()) <= budget
        assert float(N.norm(adv - x, "l0").max()) <= budget
        assert bool(((adv - x).abs().sum(1) > 0).le(mask).all())  # changes only inside the footprint
        # the cap trims only the rim: the footprint is close to the budget, not a token few pixels
        assert float(counts.float().mean()) >= 0.8 * budget, (h, w, scale, float(counts.float().mean()))


def test_run_changes_only_its_footprint_within_the_budget(digits_model, digits_batch) -> None:
    x, y = digits_batch
    a = gt.attacks.create("patch", scale=0.1, targeted=False, steps=20)
    res = a.run(digits_model, x, y, seed=0)
    foot = res.info["footprint"]
    assert foot.shape == (32, 8, 8) and a.pixel_budget(8, 8) == 6
    changed = (res.x_adv - x).abs().sum(1) > 0
    assert bool(changed.le(foot).all())
    assert float(res.norms.max()) <= 6
    assert list(res.info["patches"]) == [None] and res.info["patches"][None].shape == (1, 3, 3)


def test_run_with_per_sample_targets_learns_one_patch_per_target_class(digits_model, digits_batch) -> None:
    x, y = digits_batch
    target = torch.tensor([1, 2] * 16)
    res = gt.attacks.create("patch", scale=0.5, steps=30).run(digits_model, x, y, seed=0, target=target)
    assert sorted(res.info["patches"]) == [1, 2]
    assert res.targeted and torch.equal(res.target, target)
    fixed_class = gt.attacks.create("patch", scale=0.5, steps=30, target_class=4).run(digits_model, x, y, seed=0)
    assert list(fixed_class.info["patches"]) == [4] and bool((fixed_class.target == 4).all())
    pred = digits_model.predict(fixed_class.x_adv, count=False)
    assert torch.equal(fixed_class.success, pred == 4)


def test_a_patch_learned_on_train_digits_hits_its_target_on_held_out_digits_under_fresh_placements(
    digits_model, digits_train, digits_test
) -> None:
    # 8x8 digits leave little room: at half the image a patch reaches 0.81-0.93 on held-out digits
    # for targets 0, 3, 9 (0.45-0.7 for 1, 6, 7); an untrained random patch 0.0-0.08
    xt, yt = digits_test.x, digits_test.y
    a = gt.attacks.create("patch", scale=0.5, steps=100)
    for seed in (0, 1):
        p = a.fit(digits_model, digits_train.x, digits_train.y, seed=seed, target=3)
        assert isinstance(p, AdversarialPatch) and p.target == 3 and p.patch.shape == (1, 6, 6)
        assert float(p.patch.min()) >= 0.0 and float(p.patch.max()) <= 1.0
        rates = [p.evaluate(digits_model, xt, yt, seed=s) for s in (100, 101)]
        assert min(rates) >= 0.75, rates
        assert p.train_success >= 0.75
        rnd = AdversarialPatch(torch.rand(p.patch.shape, generator=torch.Generator().manual_seed(seed)), 0.5, 3,
                               (0.0, 1.0), p.rotation, p.shrink, p.brightness, 0.0)
        assert rnd.evaluate(digits_model, xt, yt, seed=100) <= 0.2
        # fresh placements: another seed moves the patch
        _, m1 = p.apply_with_mask(xt[:50], seed=100)
        _, m2 = p.apply_with_mask(xt[:50], seed=101)
        assert not torch.equal(m1, m2)
        assert int(m1.flatten(1).sum(1).max()) <= p.pixel_budget(8, 8) == 32


def test_a_ten_percent_patch_is_supported_and_untargeted_patches_work(digits_model, digits_train, digits_test) -> None:
    p = gt.attacks.create("patch", scale=0.1, targeted=False, steps=60).fit(
        digits_model, digits_train.x, digits_train.y, seed=0
    )
    assert p.target is None and p.patch.shape == (1, 3, 3)
    adv, mask = p.apply_with_mask(digits_test.x, seed=3)
    assert int(mask.flatten(1).sum(1).max()) <= 6
    assert float(N.norm(adv - digits_test.x, "l0").max()) <= 6
    # measured 0.22-0.23 on held-out digits (clean error 0.03; a random 10% patch 0.08-0.10)
    rnd = AdversarialPatch(torch.rand(p.patch.shape, generator=torch.Generator().manual_seed(0)), 0.1, None,
                           (0.0, 1.0), p.rotation, p.shrink, p.brightness, 0.0)
    rate = p.evaluate(digits_model, digits_test.x, digits_test.y, seed=3)
    assert rate >= 0.16 and rate >= rnd.evaluate(digits_model, digits_test.x, digits_test.y, seed=3) + 0.07


def test_same_seed_same_patch_and_placements(digits_model, digits_train) -> None:
    x, y = digits_train.x[:200], digits_train.y[:200]
    a = gt.attacks.create("patch", scale=0.3, steps=15, target_class=2)
    p1, p2 = a.fit(digits_model, x, y, seed=4), a.fit(digits_model, x, y, seed=4)
    assert torch.equal(p1.patch, p2.patch) and p1.train_success == p2.train_success
    assert not torch.equal(p1.patch, a.fit(digits_model, x, y, seed=5).patch)
    assert torch.equal(p1.apply(x, seed=9), p1.apply(x, seed=9))
    r1, r2 = a.run(digits_model, x[:8], y[:8], seed=1), a.run(digits_model, x[:8], y[:8], seed=1)
    assert torch.equal(r1.x_adv, r2.x_adv)


def test_bad_input_is_one_line_errors(digits_model, digits_batch) -> None:
    x, y = digits_batch
    for scale in (0, 1.5, -0.1):
        with pytest.raises(ConfigError) as e:
            gt.attacks.create("patch", scale=scale)
        assert one_line(e).startswith("patch: parameter 'scale' must be a finite number > 0 and <= 1")
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("patch", eps=0.1)
    assert "unknown parameter 'eps'" in one_line(e)
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("patch", targeted=False, target_class=3)
    assert "targeted=False" in one_line(e)
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("patch").fit(digits_model, x, y)
    assert "a targeted patch needs a class" in one_line(e)
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("patch", target_class=3).fit(digits_model, x, y, target=4)
    assert one_line(e) == "patch: target=4 contradicts target_class=3"
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("patch").fit(digits_model, x, y, target=torch.tensor([1, 2]))
    assert "target must be one class" in one_line(e)
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("patch", target_class=3).run(digits_model, x, y, target=y)
    assert "pass one of them" in one_line(e)
    with pytest.raises(DataError) as e:
        gt.attacks.create("patch", scale=0.01, targeted=False).run(digits_model, x, y)
    assert one_line(e) == "patch: scale=0.01 covers less than one pixel of a 8x8 image; raise scale"
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(DataError) as e:
        gt.attacks.create("patch", targeted=False).fit(digits_model, bad, y)
    assert "NaN" in one_line(e)
    p = gt.attacks.create("patch", scale=0.25, steps=2).fit(digits_model, x, y, target=1)
    with pytest.raises(DataError) as e:
        p.apply(bad)
    assert one_line(e).startswith("AdversarialPatch.apply: x contains NaN")
    with pytest.raises(DataError) as e:
        p.apply(torch.rand(4, 64))
    assert "must be images (N, 1, H, W)" in one_line(e)
    with pytest.raises(DataError) as e:
        p.apply(x * 2)
    assert "outside the patch's bounds" in one_line(e)
    with pytest.raises(ConfigError) as e:
        p.apply(x, seed=-2)
    assert "seed must be an int >= 0" in one_line(e)
    with pytest.raises(ConfigError) as e:
        p.evaluate(torch.nn.Linear(2, 2), x, y)  # type: ignore[arg-type]
    assert "model must be a gauntlet Model" in one_line(e)
