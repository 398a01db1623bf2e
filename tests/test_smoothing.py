"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): the certified radius is σ Φ⁻¹ of the
Clopper–Pearson lower bound of the counts, closed forms for constant and linear base classifiers,
abstention on ties, PREDICT's binomial test, determinism, query accounting, bounded batches, the
Certification result, the registered defense, and bad input."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest
import torch
from scipy.stats import beta, binom, binomtest
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.defenses import create, get_defense_class, list_defenses
from gauntlet.defenses.certify import ABSTAIN, Certification, RandomizedSmoothing, RandomizedSmoothingCertifier
from gauntlet.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


class Constant(nn.Module):
    """Always predicts ``cls`` whatever the input (so p_A = 1 exactly)."""

    def __init__(self, cls: int = 3, k: int = 10) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(cls), k).float())

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1)


class Halfspace(nn.Module):
    """Two classes split by the hyperplane ``w·x + b = 0`` (class 0 on the positive side): the smoothed
    classifier equals the base one and its exact certified radius is the distance to the plane."""

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.b = b
        self.max_batch = 0

    def forward(self, x: Tensor) -> Tensor:
        self.max_batch = max(self.max_batch, int(x.shape[0]))
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([s, -s], dim=1)


def tiny_cnn(seed: int = 0) -> nn.Module:
    """An untrained 1×8×8 → 10 CNN: the bookkeeping tests need a network, not an accurate one."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture()
def tiny_model() -> gt.models.TorchModel:
    return gt.models.TorchModel(tiny_cnn(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))


@pytest.fixture()
def tiny_batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def halfspace_batch(d: int = 20, n: int = 12, seed: int = 0) -> tuple[Halfspace, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    w = w / w.norm()
    x = torch.rand(n, d, generator=g)
    b = -float(x.mean(0) @ w)
    net = Halfspace(w, b)
    dist = (x @ w + b).abs()
    return net, x, dist


# ---------------------------------------------------------------------------------------------
# the radius formula
def test_radius_is_sigma_times_inverse_normal_of_the_clopper_pearson_lower_bound() -> None:
    net, x, _ = halfspace_batch()
    sigma, n, alpha = 0.25, 2000, 0.001
    cert = RandomizedSmoothing(net, sigma=sigma).certify(x, n0=100, n=n, alpha=alpha, seed=1)
    counts, sel = cert.info["counts"], cert.info["selected"]
    assert counts.shape == (12, 2) and int(counts.sum()) == 12 * n
    assert int(cert.info["counts0"].sum()) == 12 * 100
    assert torch.equal(sel, cert.info["counts0"].argmax(1))
    certified = 0
    for i in range(len(x)):
        k = int(counts[i, sel[i]])
        p_low = float(beta.ppf(alpha, k, n - k + 1)) if k > 0 else 0.0
        # the defining property of the one-sided Clopper–Pearson bound: P[Bin(n, p_low) >= k] = alpha
        if 0 < k < n:
            assert binom.sf(k - 1, n, p_low) == pytest.approx(alpha, rel=1e-6)
        assert float(cert.info["p_lower"][i]) == pytest.approx(p_low, rel=0, abs=1e-15)
        if p_low > 0.5:
            certified += 1
            assert int(cert.prediction[i]) == int(sel[i])
            assert float(cert.radius[i]) == pytest.approx(sigma * NormalDist().inv_cdf(p_low), rel=1e-12, abs=1e-12)
        else:
            assert int(cert.prediction[i]) == ABSTAIN and float(cert.radius[i]) == 0.0
    assert 0 < certified < len(x)  # the batch holds both certified and abstained points


def test_constant_classifier_certifies_everything_with_the_radius_implied_by_n_and_alpha() -> None:
    sigma, n, alpha = 0.5, 1000, 0.001
    x = torch.rand(5, 1, 4, 4)
    cert = RandomizedSmoothing(Constant(3), sigma=sigma).certify(x, n0=10, n=n, alpha=alpha)
    # n successes out of n: Clopper–Pearson lower bound alpha^(1/n), radius σ Φ⁻¹(alpha^(1/n))
    expected = sigma * NormalDist().inv_cdf(alpha ** (1.0 / n))
    assert torch.equal(cert.prediction, torch.full((5,), 3))
    torch.testing.assert_close(cert.radius, torch.full((5,), expected, dtype=torch.float64), rtol=1e-10, atol=0)
    assert cert.info["max_radius"] == pytest.approx(expected, rel=1e-12)


def test_linear_classifier_radius_is_below_and_close_to_the_distance_to_the_hyperplane() -> None:
    # For a linear base classifier p_A = Φ(dist / σ), so the exact smoothed radius is dist (Cohen §3.1);
    # the certified radius uses a lower confidence bound of p_A, so it is a little smaller.
    net, x, dist = halfspace_batch(n=16, seed=3)
    sigma = 0.25
    cert = RandomizedSmoothing(net, sigma=sigma).certify(x, n0=100, n=20_000, alpha=0.001, seed=0)
    side = torch.where(x @ net.w + net.b > 0, 0, 1)
    cap = cert.info["max_radius"]
    ok = cert.prediction != ABSTAIN
    assert bool((cert.prediction[ok] == side[ok]).all())
    assert bool((cert.radius <= dist.double() + 1e-9).all())
    inside = (dist > 0.05) & (dist < cap - 0.1)  # not within sampling error of 0 or of the cap
    assert int(inside.sum()) >= 5
    assert bool(ok[inside].all())
    gap = dist.double()[inside] - cert.radius[inside]
    assert float(gap.max()) < 0.1 * sigma


def test_two_tied_classes_abstain() -> None:
    net, x, _ = halfspace_batch(d=20, n=4)
    x_tie = x - ((x @ net.w + net.b)[:, None] * net.w[None, :])  # project onto the plane: p_A = 1/2
    rs = RandomizedSmoothing(net, sigma=0.25)
    cert = rs.certify(x_tie, n0=100, n=2000)
    assert bool((cert.prediction == ABSTAIN).all()) and bool((cert.radius == 0).all())
    assert bool((cert.info["p_lower"] <= 0.5).all())
    assert bool((rs.predict(x_tie, n=2000) == ABSTAIN).all())


def test_predict_returns_the_top_class_exactly_when_the_two_sided_binomial_test_rejects() -> None:
    net, x, _ = halfspace_batch(n=10, seed=5)
    rs = RandomizedSmoothing(net, sigma=0.5)
    n, alpha, seed = 500, 0.01, 7
    pred = rs.predict(x, n=n, alpha=alpha, seed=seed)
    counts = rs.sample_counts(x, n, torch.Generator().manual_seed(seed), 2)
    decided = 0
    for i in range(len(x)):
        top = counts[i].topk(2)
        n_a, n_b = int(top.values[0]), int(top.values[1])
        p = binomtest(n_a, n_a + n_b, 0.5).pvalue
        expected = int(top.indices[0]) if p <= alpha else ABSTAIN
        assert int(pred[i]) == expected
        decided += expected != ABSTAIN
    assert 0 < decided < len(x)


# ---------------------------------------------------------------------------------------------
# randomness, queries, memory
def test_same_seed_gives_the_same_certificates_and_another_seed_other_counts() -> None:
    net, x, _ = halfspace_batch()
    rs = RandomizedSmoothing(net, sigma=0.25)
    a = rs.certify(x, n0=50, n=500, seed=11)
    b = rs.certify(x, n0=50, n=500, seed=11)
    c = rs.certify(x, n0=50, n=500, seed=12)
    assert torch.equal(a.prediction, b.prediction) and torch.equal(a.radius, b.radius)
    assert torch.equal(a.info["counts"], b.info["counts"])
    assert not torch.equal(a.info["counts"], c.info["counts"])
    assert torch.equal(rs.predict(x, n=300, seed=4), rs.predict(x, n=300, seed=4))


def test_smoothing_leaves_the_global_rng_untouched() -> None:
    net, x, _ = halfspace_batch()
    state = torch.get_rng_state()
    RandomizedSmoothing(net, sigma=0.25).certify(x, n0=10, n=100)
    assert torch.equal(state, torch.get_rng_state())


def test_every_noisy_copy_is_counted_as_a_query_on_a_gauntlet_model(tiny_model: gt.models.TorchModel, tiny_batch) -> None:
    x, y = tiny_batch
    x, y = x[:4], y[:4]
    cert = RandomizedSmoothing(tiny_model, sigma=0.25, batch_size=64).certify(x, n0=20, n=100, y=y)
    assert tiny_model.queries == 4 * (20 + 100)
    assert cert.y is not None and torch.equal(cert.y, y)


def test_forward_batches_never_exceed_batch_size_and_mix_inputs_when_n_is_small() -> None:
    net, x, _ = halfspace_batch(n=12)
    RandomizedSmoothing(net, sigma=0.25, batch_size=37).certify(x, n0=5, n=50)
    assert net.max_batch == 37
    net.max_batch = 0
    RandomizedSmoothing(net, sigma=0.25, batch_size=10_000).certify(x, n0=5, n=50)
    assert net.max_batch == 12 * 50  # all copies of all inputs in one pass


def test_model_mode_and_requires_grad_are_restored(tiny_batch) -> None:
    x, _ = tiny_batch
    net = tiny_cnn()
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    try:
        RandomizedSmoothing(net, sigma=0.25).certify(x[:2], n0=5, n=20)
        assert net.training
        model = gt.models.TorchModel(net, num_classes=10)
        RandomizedSmoothing(model, sigma=0.25).certify(x[:2], n0=5, n=20)
        assert net.training and [p.requires_grad for p in net.parameters()] == flags
    finally:
        net.eval()


# ---------------------------------------------------------------------------------------------
# the result
def test_certified_accuracy_counts_correct_unabstained_predictions_with_radius_at_least_r() -> None:
    cert = Certification(
        method="m", norm="l2",
        prediction=torch.tensor([1, 2, -1, 0, 1]),
        radius=torch.tensor([0.5, 0.2, 0.0, 1.0, 0.3], dtype=torch.float64),
        y=torch.tensor([1, 2, 2, 1, 1]),
        params={}, seconds=0.0,
    )
    assert cert.certified_accuracy(0.0) == pytest.approx(3 / 5)
    assert cert.certified_accuracy(0.3) == pytest.approx(2 / 5)  # radius >= r is inclusive
    assert cert.certified_accuracy(0.5) == pytest.approx(1 / 5)
    assert cert.certified_accuracy(0.6) == 0.0
    assert cert.curve([0.0, 0.25, 0.5]) == [(0.0, 0.6), (0.25, 0.4), (0.5, 0.2)]
    assert [r for r, _ in cert.curve()] == [0.0, 0.25, 0.5, 0.75, 1.0]  # 0.25 steps up to the largest radius (1.0)
    assert int(cert.abstained.sum()) == 1
    d = json.loads(json.dumps(cert.to_dict()))
    assert d["prediction"] == [1, 2, -1, 0, 1] and d["curve"][0] == [0.0, 0.6]


def test_certified_accuracy_without_labels_is_a_data_error() -> None:
    net, x, _ = halfspace_batch(n=3)
    cert = RandomizedSmoothing(net, sigma=0.25).certify(x, n0=5, n=20)
    assert cert.to_dict()["curve"] is None
    with pytest.raises(DataError, match="y is missing; pass y="):
        cert.certified_accuracy(0.0)
    with pytest.raises(DataError, match="y is missing"):
        cert.curve([0.0])
    cert.y = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ConfigError, match="radius must be a finite number >= 0"):
        cert.certified_accuracy(-0.1)


# ---------------------------------------------------------------------------------------------
# the registered defense
def test_randomized_smoothing_is_a_registered_certification_defense(tiny_model, tiny_batch) -> None:
    assert "randomized_smoothing" in list_defenses("certification")
    cls = get_defense_class("randomized_smoothing")
    assert cls is RandomizedSmoothingCertifier and cls.kind == "certification"
    d = create("randomized_smoothing", sigma=0.25, n0=20, n=200, alpha=0.01, batch_size=256)
    assert d.get_params() == {"sigma": 0.25, "n0": 20, "n": 200, "alpha": 0.01, "batch_size": 256}
    assert type(d)(**d.get_params()).get_params() == d.get_params()
    x, y = tiny_batch
    cert = d.certify(tiny_model, x[:8], y[:8], seed=3)
    assert cert.method == "randomized_smoothing" and cert.norm == "l2"
    assert cert.prediction.dtype == torch.int64 and cert.radius.shape == (8,)
    assert cert.params["seed"] == 3 and cert.params["n"] == 200
    again = d.certify(tiny_model, x[:8], y[:8], seed=3)
    assert torch.equal(cert.radius, again.radius)
    json.dumps(cert.to_dict())


# ---------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=0.0), "parameter 'sigma' must be a finite number > 0"),
        (dict(sigma=-1.0), "parameter 'sigma' must be"),
        (dict(sigma=float("nan")), "parameter 'sigma' must be"),
        (dict(sigma="0.25"), "parameter 'sigma' must be"),
        (dict(sigma=0.25, batch_size=0), "parameter 'batch_size' must be an int >= 1"),
        (dict(sigma=0.25, num_classes=1), "parameter 'num_classes' must be an int >= 2 or None"),
    ],
)
def test_bad_smoothing_hyperparameters_are_config_errors(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        RandomizedSmoothing(Constant(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=0.0), "'sigma' must be a finite number > 0"),
        (dict(n0=0), "'n0' must be an int >= 1"),
        (dict(n=0), "'n' must be an int >= 1"),
        (dict(n=10.5), "'n' must be an int >= 1"),
        (dict(alpha=0.0), "'alpha' must be a finite number > 0 and < 1"),
        (dict(alpha=1.0), "'alpha' must be"),
        (dict(sigm=0.5), "unknown parameter 'sigm'; did you mean 'sigma'"),
    ],
)
def test_bad_defense_hyperparameters_are_config_errors(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        create("randomized_smoothing", **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (dict(n0=0), "'n0' must be an int >= 1"),
        (dict(n=-5), "'n' must be an int >= 1"),
        (dict(alpha=1.5), "'alpha' must be"),
        (dict(seed=-1), "seed must be an int >= 0"),
    ],
)
def test_bad_certify_arguments_are_config_errors(call, match) -> None:
    rs = RandomizedSmoothing(Constant(), sigma=0.25)
    with pytest.raises(ConfigError, match=match):
        rs.certify(torch.rand(2, 1, 4, 4), **call)


def test_bad_inputs_are_one_line_data_errors(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    rs = RandomizedSmoothing(tiny_model, sigma=0.25)
    cases = [
        (x[:2].numpy(), "x must be a torch.Tensor, got ndarray"),
        (x[:2].reshape(2, 64), "per-sample shape (64,) but the model expects (1, 8, 8)"),
        (x[:2].double(), "dtype torch.float64 but the model expects torch.float32"),
        (x[:2] * 3 + 1, "outside the model's bounds"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN or inf in 2 sample"),
        (x[:0], "non-empty batch"),
    ]
    for bad, match in cases:
        with pytest.raises(DataError, match=match.replace("(", r"\(").replace(")", r"\)")) as info:
            rs.certify(bad, n0=2, n=5)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"y must have shape \(2,\)"):
        rs.certify(x[:2], n0=2, n=5, y=y[:3])
    with pytest.raises(DataError, match="integer class labels"):
        rs.certify(x[:2], n0=2, n=5, y=y[:2].float())
    with pytest.raises(DataError, match="labels in"):
        rs.certify(x[:2], n0=2, n=5, y=torch.tensor([0, 10]))
    with pytest.raises(DataError, match="non-empty batch"):
        RandomizedSmoothing(Constant(), sigma=0.25).predict(torch.rand(4), n=5)


def test_a_base_classifier_that_is_neither_module_nor_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must be a torch.nn.Module or a gauntlet Model, got function"):
        RandomizedSmoothing(lambda x: x, sigma=0.25)  # type: ignore[arg-type]


def test_labels_outside_num_classes_from_the_base_classifier_are_a_data_error() -> None:
    with pytest.raises(DataError, match="returned label 3 but num_classes is 2"):
        RandomizedSmoothing(Constant(3), sigma=0.25, num_classes=2).certify(torch.rand(2, 4), n0=2, n=5)


def test_the_largest_certifiable_radius_grows_with_n_and_too_few_draws_abstain() -> None:
    few = RandomizedSmoothing(Constant(), sigma=1.0).certify(torch.rand(2, 2), n0=1, n=9)
    assert bool((few.prediction == ABSTAIN).all())
    caps = [
        RandomizedSmoothing(Constant(), sigma=1.0).certify(torch.rand(1, 2), n0=1, n=n).info["max_radius"]
        for n in (9, 100, 1000)
    ]
    assert caps[0] == 0.0  # 0.001^(1/9) = 0.46 < 1/2: n = 9 draws can never certify at alpha = 0.001
    assert caps[0] < caps[1] < caps[2]
    assert caps[2] == pytest.approx(NormalDist().inv_cdf(0.001 ** (1 / 1000)))
    assert math.isfinite(caps[2])
