"""Influence functions (Koh & Liang 2017): on an L2-regularised logistic regression trained to the
optimum, exact influence predicts actual leave-one-out retraining, CG and LiSSA agree with exact,
the explicit Hessian is autograd's, self-influence ranks flipped labels first (the ``influence``
sanitizer, also on a network's last layer), results are deterministic, and bad input is one line."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gauntlet as gt
from gauntlet.defenses.sanitize import SanitizationResult
from gauntlet.defenses.sanitize.influence import Influence, influence_on_test, self_influence
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

L2 = 0.01


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float = L2, tol: float = 1e-11) -> nn.Module:
    """Full-batch L-BFGS on mean cross-entropy + (l2/2)·‖θ‖² to a gradient norm of ``tol``
    (warm-started from the module's current parameters)."""
    opt = torch.optim.LBFGS(
        net.parameters(), lr=1, max_iter=200, tolerance_grad=tol, tolerance_change=0, history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y) + l2 / 2 * sum((p**2).sum() for p in net.parameters())
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return net


def _logreg(classes: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, classes)).double()


@pytest.fixture(scope="module")
def binary(digits_train, digits_test) -> dict:
    """Digits 1 vs 7 (Koh & Liang's MNIST pair), a 2-logit logistic regression with L2 0.01 trained
    to the optimum in float64, and the test point of highest loss."""
    keep = (digits_train.y == 1) | (digits_train.y == 7)
    x, y = digits_train.x[keep], (digits_train.y[keep] == 7).long()
    net = _fit(_logreg(2), x.double(), y)
    kt = (digits_test.y == 1) | (digits_test.y == 7)
    xt, yt = digits_test.x[kt], (digits_test.y[kt] == 7).long()
    with torch.no_grad():
        losses = F.cross_entropy(net(xt.double()), yt, reduction="none")
    t = int(losses.argmax())
    model = gt.models.TorchModel(net, num_classes=2, input_shape=(1, 8, 8))
    exact = influence_on_test(model, x, y, xt[t : t + 1], yt[t : t + 1], l2=L2)[:, 0]
    return {"x": x, "y": y, "net": net, "model": model, "xt": xt[t : t + 1], "yt": yt[t : t + 1], "loss": float(losses[t]), "exact": exact}


def test_exact_influence_predicts_leave_one_out_retraining_on_50_points(binary) -> None:
    x, y, net = binary["x"], binary["y"], binary["net"]
    n = len(y)
    predicted = -binary["exact"] / n  # removing z is up-weighting it by -1/n
    rows = predicted.abs().topk(50).indices  # Koh & Liang's protocol: the most influential points
    theta = copy.deepcopy(net.state_dict())
    actual = []
    for i in rows.tolist():
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        loo = _fit(copy.deepcopy(net), x[keep].double(), y[keep])
        with torch.no_grad():
            actual.append(float(F.cross_entropy(loo(binary["xt"].double()), binary["yt"])) - binary["loss"])
    assert all(torch.equal(v, theta[k]) for k, v in net.state_dict().items())
    a, p = torch.tensor(actual, dtype=torch.float64), predicted[rows]
    assert _pearson(a, p) >= 0.95, _pearson(a, p)  # measured 0.998
    slope = float((a * p).sum() / (p * p).sum())
    assert 0.8 <= slope <= 1.5, slope  # sign and scale: measured 1.16
    assert float((a.sign() == p.sign()).double().mean()) >= 0.9


def test_explicit_hessian_is_autograds_hessian_of_the_regularised_mean_loss(binary) -> None:
    inf = Influence(binary["model"], binary["x"], binary["y"], l2=L2, method="cg")
    net = binary["net"]
    x, y = binary["x"].double(), binary["y"]
    w0, b0 = net[1].weight.detach(), net[1].bias.detach()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w, b = flat[: w0.numel()].view_as(w0), flat[w0.numel() :]
        return F.cross_entropy(x.flatten(1) @ w.T + b, y) + L2 / 2 * (flat**2).sum()

    ref = torch.autograd.functional.hessian(loss, torch.cat([w0.flatten(), b0]))
    assert inf.p == 130 and torch.allclose(inf.hessian(), ref, rtol=1e-9, atol=1e-12)


def test_cg_and_lissa_agree_with_exact(binary) -> None:
    args = (binary["model"], binary["x"], binary["y"], binary["xt"], binary["yt"])
    exact = binary["exact"]
    cg = influence_on_test(*args, l2=L2, method="cg")[:, 0]
    assert _pearson(cg, exact) >= 0.99 and torch.allclose(cg, exact, rtol=1e-6, atol=1e-8 * float(exact.abs().max()))
    lissa = influence_on_test(*args, l2=L2, method="lissa", lissa_depth=500, lissa_batch_size=50, lissa_repeats=2, seed=0)[:, 0]
    assert _pearson(lissa, exact) >= 0.9, _pearson(lissa, exact)  # measured >= 0.99 over seeds
    assert 0.7 <= float(lissa @ exact / (exact @ exact)) <= 1.3  # the same scale, not only the same direction


def test_self_influence_is_the_quadratic_form_of_the_training_gradient(binary) -> None:
    x, y, m = binary["x"], binary["y"], binary["model"]
    exact = Influence(m, x, y, l2=L2)
    own = exact.self_influence()
    assert own.shape == (len(y),) and bool((own > 0).all())
    cg = self_influence(m, x, y, l2=L2, method="cg")  # another solver, no Hessian formed
    assert torch.allclose(own, cg, rtol=1e-6)
    # on_test on training rows: -I_up,loss(z_i, z_i) = ∇ℓ(z_i)ᵀ H⁻¹ ∇L(z_i) (the test side has no penalty)
    on_self = exact.on_test(x[:5], y[:5])[torch.arange(5), torch.arange(5)]
    g, g_pen = exact.grads(x[:5], y[:5], penalty=False), exact.grads(x[:5], y[:5], penalty=True)
    assert torch.allclose(-on_self, (g * exact.inverse_hvp(g_pen)).sum(1).double(), rtol=1e-8)


@pytest.fixture(scope="module")
def flipped(digits_train) -> dict:
    """400 digits, 20 (5%) relabelled to another class."""
    x, y = digits_train.x[:400], digits_train.y[:400].clone()
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(y), generator=g)[:20]
    y[rows] = (y[rows] + torch.randint(1, 10, (20,), generator=g)) % 10
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[rows] = True
    return {"x": x, "y": y, "mask": mask}


def test_self_influence_ranks_flipped_labels_first(flipped) -> None:
    x, y, mask = flipped["x"], flipped["y"], flipped["mask"]
    net = _fit(_logreg(10), x.double(), y, tol=1e-9)
    model = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))
    san = gt.defenses.create("influence", expected_fraction=0.05, params="all", damping=0.0, l2=L2)
    res = san.detect(model, x, y)
    assert isinstance(res, SanitizationResult) and res.method == "influence" and res.n_flagged == 30  # 1.5 × 5% of 400
    assert res.scores.shape == (400,) and torch.equal(res.flagged, res.scores >= res.scores.topk(30).values[-1])
    assert res.precision_recall(mask)["recall"] >= 0.9  # measured 1.0 (chance: 0.075)
    assert float(mask[res.scores.topk(20).indices].double().mean()) >= 0.75  # recall at k = #flipped


def test_the_sanitizer_reads_a_networks_last_layer_by_default(flipped) -> None:
    x, y, mask = flipped["x"], flipped["y"], flipped["mask"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model = gt.models.TorchModel(train_classifier(mlp, x, y, epochs=40, seed=0), num_classes=10, input_shape=(1, 8, 8))
    before = copy.deepcopy(mlp.state_dict())
    res = gt.defenses.create("influence", expected_fraction=0.05).detect(model, x, y)
    assert res.info["params"] == ["3.weight", "3.bias"] and res.info["n_params"] == 330
    assert res.precision_recall(mask)["recall"] >= 0.8  # measured 0.95
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items()), "the model is not touched"


def test_results_are_deterministic_and_lissa_follows_its_seed(binary) -> None:
    args = (binary["model"], binary["x"], binary["y"], binary["xt"], binary["yt"])
    opts = {"l2": L2, "method": "lissa", "lissa_depth": 50, "lissa_batch_size": 20}
    a, b = influence_on_test(*args, seed=3, **opts), influence_on_test(*args, seed=3, **opts)
    assert torch.equal(a, b) and not torch.equal(a, influence_on_test(*args, seed=4, **opts))
    assert torch.equal(influence_on_test(*args, l2=L2), influence_on_test(*args, l2=L2))
    san = gt.defenses.create("influence", params="all", method="lissa", l2=L2, lissa_depth=20)
    r1, r2 = san.detect(binary["model"], binary["x"], binary["y"], seed=1), san.detect(binary["model"], binary["x"], binary["y"], seed=1)
    assert torch.equal(r1.scores, r2.scores) and torch.equal(r1.flagged, r2.flagged)


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("not_torch_model", CapabilityError, "needs .* a gauntlet TorchModel"),
        ("singular", ConfigError, "singular or not positive definite .* pass damping > 0"),
        ("test_shape", DataError, "x_test has per-sample shape"),
        ("y_length", DataError, "must have shape"),
        ("nan", DataError, "NaN"),
        ("method", ConfigError, "parameter 'method' must be one of"),
        ("damping", ConfigError, "parameter 'damping' must be"),
        ("unknown_option", ConfigError, "unknown parameter 'dampng'; did you mean 'damping'"),
        ("param_name", ConfigError, "no parameter 'fc.weight'"),
        ("fraction", ConfigError, "parameter 'expected_fraction'"),
        ("no_model", ConfigError, "reads a network trained on the data"),
    ],
)
def test_bad_input_is_one_line(binary, case, error, match) -> None:
    x, y, m, xt, yt = binary["x"], binary["y"], binary["model"], binary["xt"], binary["yt"]
    with pytest.raises(error, match=match) as info:
        if case == "not_torch_model":
            influence_on_test(binary["net"], x, y, xt, yt)
        elif case == "singular":  # two logits without a penalty: softmax's shift leaves the loss flat
            influence_on_test(m, x, y, xt, yt)
        elif case == "test_shape":
            influence_on_test(m, x, y, xt.flatten(1), yt, l2=L2)
        elif case == "y_length":
            influence_on_test(m, x, y[:-1], xt, yt, l2=L2)
        elif case == "nan":
            influence_on_test(m, torch.where(x > 0.5, torch.nan, x), y, xt, yt, l2=L2)
        elif case == "method":
            influence_on_test(m, x, y, xt, yt, method="newton")
        elif case == "damping":
            influence_on_test(m, x, y, xt, yt, damping=-1.0)
        elif case == "unknown_option":
            influence_on_test(m, x, y, xt, yt, dampng=0.1)
        elif case == "param_name":
            influence_on_test(m, x, y, xt, yt, params=["fc.weight"], l2=L2)
        elif case == "fraction":
            gt.defenses.create("influence", expected_fraction=1.0)
        elif case == "no_model":
            gt.defenses.create("influence").detect(None, x, y)
    assert "\n" not in str(info.value)


def test_influence_is_a_registered_sanitizer() -> None:
    assert "influence" in gt.defenses.list_defenses("sanitizer")
    san = gt.defenses.create("influence")
    assert san.kind == "sanitizer" and san.get_params()["params"] == "last" and "Koh" in san.reference
