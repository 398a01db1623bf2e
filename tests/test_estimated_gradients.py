"""EstimatedGradients: NES/SPSA vector-Jacobian products turn any gradient attack into a black-box one."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import gauntlet as gt
from gauntlet.attacks.base import loss_and_grad
from gauntlet.attacks.losses import dlr
from gauntlet.errors import CapabilityError, ConfigError
from gauntlet.models import EstimatedGradients
from gauntlet.models.estimated_gradients import estimate_gradient
from tests.test_nes_spsa import LabelsOnly, ScoresOnly, fit_forest, one_line


@pytest.fixture(scope="module")
def digits_forest(digits_train):
    return fit_forest(digits_train)


class Smooth(torch.nn.Module):
    """A smooth (tanh) network on 20 features: finite differences are accurate everywhere."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(20, 32, generator=g) / 4)
        self.w2 = torch.nn.Parameter(torch.randn(32, 5, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1) @ self.w1) @ self.w2


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def _true_grad(net, x, y, loss_fn):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(net(xg), y).sum(), xg)
    return g


@pytest.mark.parametrize("method", ["nes", "spsa"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_the_estimate_points_along_the_true_gradient_of_any_loss(method, loss):
    net = Smooth()
    x = torch.rand(16, 20, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2  # away from the bounds
    y = torch.arange(16) % 5
    loss_fn = (lambda z, t: F.cross_entropy(z, t, reduction="none")) if loss == "ce" else dlr
    inner = gt.models.TorchModel(net, num_classes=5, input_shape=(20,))
    model = EstimatedGradients(inner, method=method, samples=400, sigma=1e-3)
    with model.attack_mode():
        _, g_est, _ = loss_and_grad(model, x, lambda z: loss_fn(z, y))
    true = _true_grad(net, x, y, loss_fn)
    live = true.flatten(1).norm(dim=1) > 1e-6  # DLR is flat (constant 1) where y is the third-largest logit
    assert int(live.sum()) >= 12
    cos = _cosine(g_est[live], true[live])
    assert float(cos.mean()) > 0.7 and float(cos.min()) > 0.5  # measured ≈ 0.95 mean at 400 samples
    # the estimate's cost: one forward and `samples` estimation queries per sample, all counted
    assert model.queries == inner.queries == 16 * (1 + 400)
    assert model.grad_evals == 16 and model.estimates == 16


def test_more_samples_give_a_better_estimate(digits_net, digits_batch):
    x, y = digits_batch
    true = _true_grad(digits_net, x, y, lambda z, t: F.cross_entropy(z, t, reduction="none"))
    means = []
    for samples in (20, 200):
        model = EstimatedGradients(ScoresOnly(digits_net), samples=samples)
        _, g, _ = loss_and_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
        means.append(float(_cosine(g, true).mean()))
    assert means[1] > means[0] and means[1] > 0.6  # measured ≈ 0.34 and 0.75


def test_estimate_gradient_is_exact_in_expectation_on_a_linear_function():
    # for h(x) = <a, x>, every antithetic difference is exactly 2σ<a, u>: the SPSA estimate is
    # a ± noise from the cross terms, and averages to a
    a = torch.linspace(-1, 1, 10)
    model = gt.models.CallableModel(lambda t: torch.stack([t @ a, -(t @ a)], dim=1), bounds=(-10.0, 10.0))
    x = torch.zeros(1, 10)
    g = estimate_gradient(
        model, x, lambda s, owner: s[:, 0], method="spsa", pairs=4000, sigma=0.01,
        generator=torch.Generator().manual_seed(0), max_batch_size=1000,
    )
    assert torch.allclose(g[0], a, atol=0.06)
    assert model.queries == 8000


def test_queries_are_batched_chunked_clipped_and_run_under_inference_mode(digits_net, digits_batch):
    x, y = digits_batch
    inner = ScoresOnly(digits_net)
    calls: list[torch.Tensor] = []
    forward = inner._forward

    def recording(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.detach().clone())
        return forward(t)

    inner._forward = recording  # type: ignore[method-assign]
    model = EstimatedGradients(inner, samples=50, sigma=0.05, max_batch_size=500)
    _, g, _ = loss_and_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    assert g.shape == x.shape and not g.requires_grad and not g.is_inference()
    est_sizes = inner.call_sizes[1:]  # the first call is the forward pass
    assert sum(est_sizes) == 32 * 50 and max(est_sizes) <= 500 and len(est_sizes) == 4
    assert all(inner.inference[1:])
    queried = torch.cat(calls[1:])
    assert float(queried.min()) >= 0.0 and float(queried.max()) <= 1.0


def test_pgd_runs_black_box_close_to_white_box(digits_net, digits_batch, digits_model):
    x, y = digits_batch
    pgd = gt.attacks.create("pgd", eps=0.15, steps=20)
    white = pgd.run(digits_model, x, y, seed=0)
    bb = EstimatedGradients(ScoresOnly(digits_net), method="nes", samples=50)
    black = pgd.run(bb, x, y, seed=0)
    # measured on these 32 digits: white-box 0.25, through NES 0.41 (0.31 at 100 samples)
    assert black.robust_accuracy <= white.robust_accuracy + 0.25
    assert black.robust_accuracy <= float(black.clean_correct.float().mean()) - 0.4
    # 20 steps of one forward and 50 estimation queries per sample (the base class's own clean
    # and success checks are not counted)
    assert black.queries == 32 * 20 * 51 and black.grad_evals == 32 * 20
    assert bb.model.queries == black.queries


def test_spsa_wrapper_with_apgd_dlr(digits_net, digits_batch):
    x, y = digits_batch
    bb = EstimatedGradients(ScoresOnly(digits_net), method="spsa", samples=50)
    res = gt.attacks.create("apgd_dlr", eps=0.2, steps=20).run(bb, x, y, seed=0)
    assert res.robust_accuracy <= 0.4  # measured 0.28; white-box APGD-DLR leaves none


def test_same_seeds_same_result(digits_net, digits_batch):
    x, y = digits_batch
    pgd = gt.attacks.create("pgd", eps=0.1, steps=5)
    a = pgd.run(EstimatedGradients(ScoresOnly(digits_net), seed=3), x, y, seed=1)
    bb = EstimatedGradients(ScoresOnly(digits_net), seed=3)
    b = pgd.run(bb, x, y, seed=1)
    c = pgd.run(bb, x, y, seed=1)  # the wrapper's generator is reseeded per attack run
    d = pgd.run(EstimatedGradients(ScoresOnly(digits_net), seed=4), x, y, seed=1)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(b.x_adv, c.x_adv)
    assert not torch.equal(a.x_adv, d.x_adv)


def test_random_forest_through_estimated_gradients(digits_forest, digits_batch):
    x, y = digits_batch
    sk = gt.models.SklearnModel(digits_forest, input_shape=(1, 8, 8))
    bb = EstimatedGradients(sk, samples=50, sigma=0.1)
    assert bb.capabilities == {"gradients", "scores", "labels"} and bb.output == "probabilities"
    res = gt.attacks.create("pgd", eps=0.2, steps=20, loss="margin").run(bb, x, y, seed=0)
    assert res.success_rate >= 0.5  # measured 0.84
    assert res.queries == sk.queries


def test_callable_and_onnx_models(digits_net, digits_batch, tmp_path):
    x, y = digits_batch

    def fn(t: torch.Tensor):
        with torch.no_grad():
            return digits_net(t).numpy()

    cm = gt.models.CallableModel(fn, num_classes=10, input_shape=(1, 8, 8))
    res = gt.attacks.create("fgsm", eps=0.2).run(EstimatedGradients(cm, samples=100), x, y, seed=0)
    assert res.robust_accuracy <= 0.5

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "digits.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(digits_net, (x[:1],), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    om = gt.models.OnnxModel(path)
    res = gt.attacks.create("pgd", eps=0.2, steps=10).run(EstimatedGradients(om, samples=50), x, y, seed=0)
    assert res.robust_accuracy <= 0.35 and res.queries == om.queries  # measured 0.22


def test_plain_queries_pass_through_and_are_counted(digits_net, digits_batch):
    x, _ = digits_batch
    inner = ScoresOnly(digits_net)
    bb = EstimatedGradients(inner)
    assert torch.equal(bb.scores(x), inner.net(x).detach()) and torch.equal(bb(x), inner.net(x).detach())
    assert torch.equal(bb.predict(x), inner.net(x).argmax(1))
    assert bb.queries == inner.queries == 3 * 32
    bb.scores(x, count=False)
    assert bb.queries == inner.queries == 3 * 32
    bb.reset_counters()
    assert bb.queries == bb.estimates == bb.grad_evals == 0


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "zoo"}, "EstimatedGradients: parameter 'method' must be one of 'nes', 'spsa', got 'zoo'"),
        ({"samples": 5}, "EstimatedGradients: parameter 'samples' must be an even int >= 2, got 5"),
        ({"sigma": 0}, "EstimatedGradients: parameter 'sigma' must be a finite number > 0, got 0"),
        ({"seed": -1}, "EstimatedGradients: parameter 'seed' must be an int >= 0, got -1"),
        ({"max_batch_size": 0}, "EstimatedGradients: parameter 'max_batch_size' must be an int >= 2, got 0"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, message, digits_net):
    with pytest.raises(ConfigError) as e:
        EstimatedGradients(ScoresOnly(digits_net), **params)
    assert one_line(e) == message


def test_a_labels_only_model_cannot_be_wrapped(digits_net):
    with pytest.raises(CapabilityError) as e:
        EstimatedGradients(LabelsOnly(digits_net))
    assert "HopSkipJump" in one_line(e)


def test_a_raw_module_is_refused(digits_net):
    with pytest.raises(ConfigError, match="must be a gauntlet Model, got DigitsCNN"):
        EstimatedGradients(digits_net)  # type: ignore[arg-type]
