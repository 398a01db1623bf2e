"""Input-preprocessing defenses: exact transforms, the naive vs adaptive (BPDA/EOT) gradient views,
query accounting, and the headline property that BPDA/EOT break what a naive attack cannot."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import gauntlet as gt
from gauntlet.attacks import create as create_attack
from gauntlet.attacks.base import loss_and_grad
from gauntlet.attacks.losses import cross_entropy
from gauntlet.defenses import create, get_defense_class, list_defenses
from gauntlet.defenses.preprocessing._base import PreprocessedModel, Preprocessor, pad_symmetric
from gauntlet.defenses.preprocessing.bit_depth_reduction import bit_depth
from gauntlet.defenses.preprocessing.jpeg_compression import jpeg
from gauntlet.defenses.preprocessing.median_filter import median_filter
from gauntlet.defenses.preprocessing.random_resize_pad import random_resize_pad, resize_and_pad
from gauntlet.defenses.preprocessing.spatial_smoothing import gaussian_blur
from gauntlet.errors import ConfigError, DataError

ALL = {
    "bit_depth_reduction": {"bits": 2},
    "median_filter": {"size": 2},
    "jpeg_compression": {"quality": 75},
    "spatial_smoothing": {"sigma": 0.5},
    "gaussian_noise": {"sigma": 0.2},
    "random_resize_pad": {"max_pad": 2},
}
RANDOMIZED = {"gaussian_noise", "random_resize_pad"}


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _robust(res: gt.attacks.AttackResult) -> float:
    return float((res.clean_correct & ~res.success).float().mean())


# ------------------------------------------------------------------------------------------------
# registry and flags
def test_registry_holds_every_preprocessing_defense_with_kind_and_randomized_flag() -> None:
    assert set(ALL) <= set(list_defenses("preprocessing"))
    for name, params in ALL.items():
        d = create(name, **params)
        assert isinstance(d, Preprocessor) and d.kind == "preprocessing"
        assert d.randomized is (name in RANDOMIZED)
        assert d.get_params() == {**get_defense_class(name)().get_params(), **params}
        assert type(create(name, **d.get_params())) is type(d)


@pytest.mark.parametrize("name", sorted(ALL))
def test_wrapped_model_mirrors_inner_model_and_flags_randomness(name: str, digits_model: gt.models.TorchModel) -> None:
    w = create(name, **ALL[name]).wrap(digits_model)
    assert isinstance(w, PreprocessedModel) and isinstance(w, gt.models.Model)
    assert w.capabilities == digits_model.capabilities
    assert w.input_spec == digits_model.input_spec and w.num_classes == 10 and w.output == "logits"
    assert w.randomized is (name in RANDOMIZED) and w.adaptive is True
    assert w.eot_samples == (10 if name in RANDOMIZED else 1)
    assert create(name, **ALL[name]).wrap(digits_model, adaptive=False).eot_samples == 1


# ------------------------------------------------------------------------------------------------
# exact transforms
def test_bit_depth_maps_known_values_to_the_nearest_of_2_to_the_bits_levels() -> None:
    x = torch.tensor([[0.0, 0.2, 0.49, 0.5, 0.51, 1.0]])
    assert torch.equal(bit_depth(x, 1), torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]))  # 0.5 rounds half to even
    x2 = torch.tensor([[0.0, 0.16, 0.17, 0.5, 0.83, 0.84, 1.0]])
    assert torch.allclose(bit_depth(x2, 2), torch.tensor([[0.0, 0.0, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0]]))
    # bounds (-1, 1): levels -1, 1 with one bit
    assert torch.equal(bit_depth(torch.tensor([[-0.9, -0.1, 0.1, 0.9]]), 1, bounds=(-1.0, 1.0)), torch.tensor([[-1.0, -1.0, 1.0, 1.0]]))
    # 8 bits keeps the 256 levels of 8-bit images exactly, and never yields more than 2^bits values
    levels = torch.arange(256, dtype=torch.float32).view(1, -1) / 255
    assert torch.allclose(bit_depth(levels, 8), levels, atol=1e-7)
    r = _rand(4, 1000)
    for bits in (1, 3, 5):
        assert torch.unique(bit_depth(r, bits)).numel() <= 2**bits
        assert float((bit_depth(r, bits) - r).abs().max()) <= 0.5 / (2**bits - 1) + 1e-6


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
def test_median_filter_equals_scipy_reflect_median_filter(size: int) -> None:
    x = _rand(2, 3, 7, 6, seed=size)
    ours = median_filter(x, size).numpy()
    ref = ndi.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_array_equal(ours, ref)


def test_median_filter_2x2_window_reaches_up_and_left_like_xu_et_al() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    x[0, 0, 1, 2] = 1.0
    # a 2x2 window at (i, j) covers rows i-1..i, cols j-1..j; upper median of 4 values needs 2 ones
    out = median_filter(x, 2)[0, 0]
    expected = torch.zeros(4, 4)
    expected[1, 2] = expected[2, 2] = 1.0  # windows holding both ones
    assert torch.equal(out, expected)


def test_pad_symmetric_equals_numpy_symmetric_padding() -> None:
    x = _rand(1, 1, 3, 4)
    ours = pad_symmetric(x, 2, 5, 1, 7).numpy()
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 5), (1, 7)), mode="symmetric")  # pads <= size here
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_spatial_smoothing_equals_scipy_gaussian_filter(sigma: float) -> None:
    x = _rand(2, 3, 9, 8)
    ref = ndi.gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="reflect")
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), ref, atol=1e-6)
    d = create("spatial_smoothing", sigma=sigma)
    assert torch.equal(d(x), gaussian_blur(x, sigma))


def _pillow_round_trip(u8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


@pytest.mark.parametrize("quality", [10, 75, 95])
def test_jpeg_equals_pillow_round_trip_for_grayscale_and_rgb(quality: int) -> None:
    gen = torch.Generator().manual_seed(quality)
    gray = torch.randint(0, 256, (3, 1, 16, 12), generator=gen, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8)
    out_g = jpeg(gray.float() / 255, quality)
    for i in range(3):
        ref = _pillow_round_trip(gray[i, 0].numpy(), quality)
        np.testing.assert_array_equal(torch.round(out_g[i, 0] * 255).to(torch.uint8).numpy(), ref)
    out_c = jpeg(rgb.float() / 255, quality)
    for i in range(2):
        ref = _pillow_round_trip(np.ascontiguousarray(rgb[i].permute(1, 2, 0).numpy()), quality)
        np.testing.assert_array_equal(torch.round(out_c[i].permute(1, 2, 0) * 255).to(torch.uint8).numpy(), ref)
    # bounds are respected: the same image in [-1, 1] decodes to the same pixels
    out_b = jpeg(gray.float() / 255 * 2 - 1, quality, bounds=(-1.0, 1.0))
    assert torch.allclose((out_b + 1) / 2, out_g, atol=1e-6)


def test_jpeg_distortion_falls_as_quality_rises() -> None:
    x = _rand(4, 3, 16, 16)
    err = [float((jpeg(x, q) - x).abs().mean()) for q in (5, 50, 95)]
    assert err[0] > err[1] > err[2]


def test_gaussian_noise_has_the_stated_moments_and_clipping_rate() -> None:
    d = create("gaussian_noise", sigma=0.5)
    x = torch.full((200, 1, 10, 50), 0.5)
    wide = d.transform(x, torch.Generator().manual_seed(0), bounds=(-100.0, 100.0)) - x
    assert abs(float(wide.mean())) < 0.005  # std error 0.5/sqrt(1e5) = 0.0016
    assert abs(float(wide.std()) - 0.5) < 0.005
    clipped = d.transform(x, torch.Generator().manual_seed(1), bounds=(0.0, 1.0))
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    phi = 0.5 * (1 + math.erf(-1 / math.sqrt(2)))  # P(0.5 + 0.5 n < 0) = Φ(-1)
    assert abs(float((clipped == 0).float().mean()) - phi) < 0.006
    assert abs(float((clipped == 1).float().mean()) - phi) < 0.006


def test_resize_and_pad_equals_interpolate_then_pad_per_image() -> None:
    x = _rand(4, 2, 7, 9)
    new_h, new_w = torch.tensor([7, 8, 10, 9]), torch.tensor([9, 11, 12, 10])
    top, left = torch.tensor([0, 1, 0, 2]), torch.tensor([3, 0, 0, 1])
    out = resize_and_pad(x, new_h, new_w, top, left, (11, 12), pad_value=0.25)
    for i in range(4):
        r = F.interpolate(x[i : i + 1], size=(int(new_h[i]), int(new_w[i])), mode="nearest-exact")
        pads = (int(left[i]), 12 - int(left[i]) - int(new_w[i]), int(top[i]), 11 - int(top[i]) - int(new_h[i]))
        assert torch.equal(out[i : i + 1], F.pad(r, pads, value=0.25))


def test_random_resize_pad_keeps_shape_and_bounds_and_is_random_but_seeded() -> None:
    x = _rand(64, 3, 10, 12)
    a = random_resize_pad(x, 3, torch.Generator().manual_seed(5))
    b = random_resize_pad(x, 3, torch.Generator().manual_seed(5))
    c = random_resize_pad(x, 3, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # per-image draws: images differ in how they were transformed (not one draw per batch)
    same = x[:1].expand(64, -1, -1, -1).contiguous()
    outs = random_resize_pad(same, 3, torch.Generator().manual_seed(0))
    assert torch.unique(outs.flatten(1), dim=0).shape[0] > 5
    # a constant image stays constant away from the padding, and padding pulls values down
    ones = torch.ones(8, 1, 12, 12)
    o = random_resize_pad(ones, 3, torch.Generator().manual_seed(1))
    assert float(o.min()) < 1.0 and float(o.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_randomized_wrap_same_seed_same_outputs_other_seed_other_outputs(
    name: str, digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, _ = digits_batch
    d = create(name, **ALL[name])
    s1 = d.wrap(digits_model, seed=3).scores(x)
    s2 = d.wrap(digits_model, seed=3).scores(x)
    s3 = d.wrap(digits_model, seed=4).scores(x)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    w = d.wrap(digits_model, seed=3)
    first = w.scores(x)
    assert not torch.equal(first, w.scores(x))  # a fresh draw per query
    w.reseed()
    assert torch.equal(first, w.scores(x))


# ------------------------------------------------------------------------------------------------
# the views
@pytest.mark.parametrize("name", sorted(ALL))
def test_predictions_use_the_real_transform_with_one_draw(
    name: str, digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, _ = digits_batch
    d = create(name, **ALL[name])
    for adaptive in (True, False):
        w = d.wrap(digits_model, adaptive=adaptive, seed=7)
        expected = digits_model.scores(d.transform(x, torch.Generator().manual_seed(7), bounds=(0.0, 1.0)), count=False)
        assert torch.allclose(w.scores(x), expected, atol=1e-6)
        w.reseed()
        assert torch.equal(w.predict(x), expected.argmax(1))


def _input_grad(model: gt.models.Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return loss_and_grad(model, x, lambda z: cross_entropy(z, y))[1]


@pytest.mark.parametrize("name", ["bit_depth_reduction", "jpeg_compression"])
def test_bpda_gradient_is_the_inner_gradient_at_the_transformed_input(
    name: str, digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    d = create(name, **ALL[name])
    g = _input_grad(d.wrap(digits_model, adaptive=True), x, y)
    z = d.transform(x, None, bounds=(0.0, 1.0))
    g_ref = _input_grad(digits_model, z, y)  # identity approximation: dL/dx = dL/dz at z = t(x)
    assert torch.allclose(g, g_ref, atol=1e-7) and float(g.abs().sum()) > 0


@pytest.mark.parametrize("name", ["bit_depth_reduction", "jpeg_compression"])
def test_naive_gradient_through_rounding_or_pillow_is_exactly_zero(
    name: str, digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    g = _input_grad(create(name, **ALL[name]).wrap(digits_model, adaptive=False), x, y)
    assert torch.equal(g, torch.zeros_like(g))


def test_median_filter_gradient_routes_through_the_selected_pixels_in_both_views(
    digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    xg = x.clone().requires_grad_(True)
    loss = cross_entropy(digits_model.scores(median_filter(xg, 2)), y).sum()
    (g_ref,) = torch.autograd.grad(loss, xg)
    for adaptive in (False, True):
        g = _input_grad(create("median_filter", size=2).wrap(digits_model, adaptive=adaptive), x, y)
        assert torch.allclose(g, g_ref, atol=1e-7) and float(g.abs().sum()) > 0


def test_spatial_smoothing_is_differentiable_so_naive_equals_adaptive(
    digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    d = create("spatial_smoothing", sigma=0.8)
    g_naive = _input_grad(d.wrap(digits_model, adaptive=False), x, y)
    g_adapt = _input_grad(d.wrap(digits_model, adaptive=True), x, y)
    assert torch.equal(g_naive, g_adapt) and float(g_naive.abs().sum()) > 0
    xg = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(cross_entropy(digits_model.scores(gaussian_blur(xg, 0.8)), y).sum(), xg)
    assert torch.allclose(g_adapt, g_ref, atol=1e-7)


def test_eot_output_and_gradient_are_the_mean_over_draws_from_the_wrapper_generator(
    digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    k, seed = 6, 11
    d = create("gaussian_noise", sigma=0.3)
    w = d.wrap(digits_model, eot_samples=k, seed=seed)
    xg = x.clone().requires_grad_(True)
    probs = w.scores(xg).softmax(dim=1)
    p_y = probs.gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(p_y, xg)

    # the same K draws, replayed from the same seed: one batch of K copies, in order
    z = d.transform(x.repeat(k, 1, 1, 1), torch.Generator().manual_seed(seed), bounds=(0.0, 1.0))
    zg = z.clone().requires_grad_(True)
    per_draw = digits_model.scores(zg, count=False).softmax(dim=1)
    assert torch.allclose(probs.detach(), per_draw.detach().view(k, *x.shape[:1], 10).mean(0), atol=1e-6)
    (gz,) = torch.autograd.grad(per_draw.gather(1, y.repeat(k)[:, None]).sum(), zg)
    # BPDA through the clip (identity), then EOT: the mean of the K per-draw gradients
    assert torch.allclose(g, gz.view(k, *x.shape).mean(0), rtol=1e-5, atol=1e-6)


def test_naive_randomized_view_takes_one_draw_and_autograd_through_the_clip(
    digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    d = create("gaussian_noise", sigma=0.3)
    g = _input_grad(d.wrap(digits_model, adaptive=False, seed=2), x, y)
    xg = x.clone().requires_grad_(True)
    z = d.transform(xg, torch.Generator().manual_seed(2), bounds=(0.0, 1.0))
    (g_ref,) = torch.autograd.grad(cross_entropy(digits_model.scores(z), y).sum(), xg)
    assert torch.allclose(g, g_ref, atol=1e-7)
    clipped = (z.detach() <= 0) | (z.detach() >= 1)
    assert bool(clipped.any()) and torch.equal(g[clipped], torch.zeros_like(g[clipped]))


def test_queries_and_grad_evals_count_every_eot_draw(
    digits_model: gt.models.TorchModel, digits_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits_batch
    n = x.shape[0]
    w = create("gaussian_noise", sigma=0.2).wrap(digits_model, eot_samples=5)
    loss_and_grad(w, x, lambda z: cross_entropy(z, y))
    assert (w.queries, w.grad_evals) == (5 * n, 5 * n)
    w.predict(x)
    w.scores(x)  # no gradient request: one draw
    assert (w.queries, w.grad_evals) == (7 * n, 5 * n)
    w.scores(x, count=False)
    assert w.queries == 7 * n
    det = create("bit_depth_reduction", bits=2).wrap(digits_model)
    loss_and_grad(det, x, lambda z: cross_entropy(z, y))
    assert (det.queries, det.grad_evals) == (n, n)
    res = create_attack("pgd", eps=0.1, steps=3).run(w, x, y)
    assert res.grad_evals == 3 * 5 * n and res.queries == 3 * 5 * n


def test_attack_mode_enters_the_inner_models_and_restores_it(digits_net: nn.Module) -> None:
    m = gt.models.TorchModel(digits_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    w = create("median_filter", size=2).wrap(m)
    digits_net.train()
    try:
        with w.attack_mode():
            assert not digits_net.training
            assert not any(p.requires_grad for p in digits_net.parameters())
        assert digits_net.training and all(p.requires_grad for p in digits_net.parameters())
    finally:
        digits_net.eval()


# ------------------------------------------------------------------------------------------------
# the headline: naive attacks are masked, BPDA/EOT are not
@pytest.mark.parametrize("name,params", [("bit_depth_reduction", {"bits": 2}), ("bit_depth_reduction", {"bits": 1}), ("jpeg_compression", {"quality": 75})])
def test_pgd_through_naive_wrap_is_masked_but_bpda_breaks_the_defense(
    name: str, params: dict, digits_model: gt.models.TorchModel, digits_test: gt.data.Dataset
) -> None:
    x, y = digits_test.x[:120], digits_test.y[:120]
    d = create(name, **params)
    pgd = create_attack("pgd", eps=0.3, steps=10)
    naive = _robust(pgd.run(d.wrap(digits_model, adaptive=False), x, y, seed=0))
    adaptive = _robust(pgd.run(d.wrap(digits_model, adaptive=True), x, y, seed=0))
    assert naive >= 0.7, f"naive PGD should be masked by {name}; robust accuracy {naive:.3f}"
    assert adaptive <= 0.3, f"BPDA PGD should break {name}; robust accuracy {adaptive:.3f}"
    assert naive - adaptive >= 0.5


def test_gaussian_noise_eot_attack_beats_single_draw_and_naive_attacks(
    digits_model: gt.models.TorchModel, digits_test: gt.data.Dataset
) -> None:
    x, y = digits_test.x[:300], digits_test.y[:300]
    d = create("gaussian_noise", sigma=0.3)
    fgsm = create_attack("fgsm", eps=0.15)

    def expected_accuracy(adv: torch.Tensor) -> float:
        judge = d.wrap(digits_model, seed=99)  # the deployed defense, averaged over 16 draws
        return float(torch.stack([(judge.predict(adv) == y).float() for _ in range(16)]).mean())

    naive = expected_accuracy(fgsm.run(d.wrap(digits_model, adaptive=False, seed=1), x, y).x_adv)
    single = expected_accuracy(fgsm.run(d.wrap(digits_model, eot_samples=1, seed=1), x, y).x_adv)
    eot = expected_accuracy(fgsm.run(d.wrap(digits_model, eot_samples=10, seed=1), x, y).x_adv)
    assert eot <= single - 0.02, f"EOT over 10 draws ({eot:.3f}) should beat one draw ({single:.3f})"
    assert naive >= eot + 0.1, f"naive ({naive:.3f}) should be far weaker than BPDA+EOT ({eot:.3f})"


# ------------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize(
    "name,params,match",
    [
        ("bit_depth_reduction", {"bits": 0}, "'bits' must be an int >= 1 and <= 16"),
        ("bit_depth_reduction", {"bits": 17}, "'bits'"),
        ("bit_depth_reduction", {"bits": 2.0}, "'bits'"),
        ("bit_depth_reduction", {"bits": True}, "'bits'"),
        ("median_filter", {"size": 0}, "'size' must be an int >= 1"),
        ("jpeg_compression", {"quality": 0}, "'quality' must be an int >= 1 and <= 95"),
        ("jpeg_compression", {"quality": 96}, "'quality'"),
        ("spatial_smoothing", {"sigma": 0.0}, "'sigma' must be a finite number > 0"),
        ("gaussian_noise", {"sigma": -0.1}, "'sigma'"),
        ("gaussian_noise", {"sigma": float("nan")}, "'sigma'"),
        ("random_resize_pad", {"max_pad": 0}, "'max_pad' must be an int >= 1"),
        ("random_resize_pad", {"pad_value": "black"}, "'pad_value'"),
    ],
)
def test_bad_hyperparameters_raise_config_error(name: str, params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create(name, **params)


def test_pure_functions_reject_bad_parameters() -> None:
    x = _rand(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="bits must be an int in \\[1, 16\\]"):
        bit_depth(x, 0)
    with pytest.raises(ConfigError, match="bounds must be finite with low < high"):
        bit_depth(x, 2, bounds=(1.0, 0.0))
    with pytest.raises(ConfigError, match="size must be an int >= 1"):
        median_filter(x, 0)
    with pytest.raises(ConfigError, match="quality must be an int in \\[1, 95\\]"):
        jpeg(x, 100)
    with pytest.raises(ConfigError, match="sigma must be a finite number > 0"):
        gaussian_blur(x, 0.0)
    with pytest.raises(ConfigError, match="pad_value=2.0 lies outside the bounds"):
        create("random_resize_pad", pad_value=2.0)(x)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: median_filter(torch.rand(4, 64), 2), r"shape \(N, C, H, W\), got shape \(4, 64\)"),
        (lambda: median_filter(torch.rand(1, 8, 8), 2), r"got shape \(1, 8, 8\)"),
        (lambda: median_filter(np.zeros((1, 1, 8, 8)), 2), "must be a torch.Tensor, got ndarray"),
        (lambda: bit_depth(torch.ones(2, 3, dtype=torch.int64), 2), "must be a float tensor"),
        (lambda: bit_depth(torch.tensor([[0.5, float("nan")]]), 2), "NaN or inf"),
        (lambda: bit_depth(torch.tensor([[0.5, 1.5]]), 2), r"outside the bounds \[0, 1\]"),
        (lambda: jpeg(torch.rand(2, 2, 8, 8), 75), "1 \\(grayscale\\) or 3 \\(RGB\\) channels, got 2"),
        (lambda: create("jpeg_compression")(torch.rand(2, 4, 8, 8)), "must have 1 or 3 channels, got 4"),
        (lambda: random_resize_pad(torch.rand(2, 5), 2), "batch of images"),
        (lambda: gaussian_blur(torch.rand(3, 8, 8), 1.0), "batch of images"),
    ],
)
def test_bad_inputs_raise_data_error(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=match):
        call()


def test_wrapped_model_rejects_non_image_batches(digits_model: gt.models.TorchModel) -> None:
    w = create("median_filter", size=2).wrap(digits_model)
    with pytest.raises(DataError, match=r"median_filter: x must be a batch of images"):
        w.scores(torch.rand(4, 64))
    with pytest.raises(DataError, match="NaN or inf"):
        w.predict(torch.full((2, 1, 8, 8), float("nan")))


def test_wrap_rejects_bad_models_and_options(digits_net: nn.Module, digits_model: gt.models.TorchModel) -> None:
    d = create("median_filter", size=2)
    with pytest.raises(ConfigError, match="model must be a gauntlet Model, got DigitsCNN; wrap it first"):
        d.wrap(digits_net)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model must be a gauntlet Model, got str"):
        d.wrap("model.pt")  # type: ignore[arg-type]
    flat = gt.models.TorchModel(nn.Linear(64, 10), num_classes=10, input_shape=(64,))
    with pytest.raises(ConfigError, match=r"median_filter: needs image inputs \(C, H, W\) but the model's input shape is \(64,\)"):
        d.wrap(flat)
    two_channels = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 10))
    rgb_only = gt.models.TorchModel(two_channels, num_classes=10, input_shape=(2, 8, 8))
    with pytest.raises(ConfigError, match="jpeg_compression: needs 1 or 3 channels"):
        create("jpeg_compression").wrap(rgb_only)
    with pytest.raises(ConfigError, match="eot_samples must be an int >= 1 or None, got 0"):
        create("gaussian_noise").wrap(digits_model, eot_samples=0)
    with pytest.raises(ConfigError, match="needs adaptive=True"):
        create("gaussian_noise").wrap(digits_model, adaptive=False, eot_samples=5)
    with pytest.raises(ConfigError, match="is deterministic; leave eot_samples unset"):
        d.wrap(digits_model, eot_samples=5)
    with pytest.raises(ConfigError, match="adaptive must be True or False"):
        d.wrap(digits_model, adaptive="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="seed must be an int >= 0, got -1"):
        d.wrap(digits_model, seed=-1)
