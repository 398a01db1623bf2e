"""Availability poisoning: the poison is k inserted rows (the clean rows untouched), the gradient
through the training optimum is exact (finite differences through scikit-learn refits), the
attack lowers a digits logistic regression's accuracy more than random label flipping at the
same budget, the back-gradient variant raises its validation loss on a torch net, and bad input
is a one-line error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.attacks.poisoning.availability import Availability, LinearSurrogate
from gauntlet.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _flat(x: torch.Tensor):
    return x.reshape(x.shape[0], -1).double().numpy()


@pytest.fixture(scope="module")
def digits_lr(digits_train):
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(max_iter=1000).fit(_flat(digits_train.x), digits_train.y.numpy())
    return gt.models.SklearnModel(est, input_shape=(1, 8, 8))


def _lr_accuracy(x, y, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression

    return float(LogisticRegression(max_iter=1000).fit(_flat(x), y.numpy()).score(_flat(x_test), y_test.numpy()))


def test_poison_rows_are_inserted_after_the_untouched_clean_rows(digits_train, digits_lr) -> None:
    x, y = digits_train.x[:400], digits_train.y[:400]
    atk = gt.attacks.create("availability", fraction=0.05, steps=2)
    pd = atk.poison(x, y, model=digits_lr, seed=0)
    k = round(0.05 * 400)
    assert len(pd) == 400 + k and pd.n_poison == k and pd.fraction == pytest.approx(k / (400 + k))
    assert torch.equal(pd.x[:400], x) and torch.equal(pd.y[:400], y)
    assert bool(pd.is_poison[400:].all()) and not bool(pd.is_poison[:400].any())
    assert float(pd.x.min()) >= 0 and float(pd.x.max()) <= 1
    init = pd.info["init_rows"]
    assert bool((pd.y[400:] != y[init]).all()), "poison labels are flipped from the rows they start at"
    assert not bool(torch.isin(init, pd.info["val_rows"]).any()), "poison starts from the attacker's training split"
    assert pd.info["method"] == "linear" and pd.info["val_loss"][-1] >= pd.info["val_loss"][0]
    again = atk.poison(x, y, model=digits_lr, seed=0)
    assert torch.equal(again.x, pd.x) and torch.equal(again.y, pd.y)
    assert not torch.equal(atk.poison(x, y, model=digits_lr, seed=1).y[400:], pd.y[400:])


@pytest.mark.parametrize("kind", ["logistic", "squared_hinge", "svc_hinge"])
def test_the_gradient_through_the_training_optimum_matches_finite_differences(digits_train, kind) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC, LinearSVC

    x, y = digits_train.x.double(), digits_train.y
    if kind == "svc_hinge":  # Biggio et al.'s binary SVM: 1 vs 7
        keep = (y == 1) | (y == 7)
        x, y = x[keep], (y[keep] == 7).long()
        est = SVC(kernel="linear", C=1.0, tol=1e-8)
    elif kind == "squared_hinge":
        est = LinearSVC(C=0.1, tol=1e-10, max_iter=100000)
    else:
        est = LogisticRegression(tol=1e-10, max_iter=5000)
    n_tr, k = (100, 3) if kind == "svc_hinge" else (200, 8)
    x_tr, y_tr = x[:n_tr], y[:n_tr]
    xp, yp = x[n_tr : n_tr + k].clone(), (y[n_tr : n_tr + k] + 1) % int(y.max() + 1)
    x_val, y_val = x[n_tr + k : n_tr + k + 100], y[n_tr + k : n_tr + k + 100]
    sur = LinearSurrogate(est.fit(_flat(x_tr), y_tr.numpy()), "test")
    weight = torch.cat([torch.full((n_tr,), 1.3, dtype=torch.float64), torch.ones(k, dtype=torch.float64)])

    def val_loss(p: torch.Tensor) -> tuple[float, torch.Tensor]:
        theta = sur.fit(torch.cat([x_tr, p]), torch.cat([y_tr, yp]), weight)
        return float(sur.outer(theta, x_val, y_val, "loss")), theta

    _, theta = val_loss(xp)
    if kind == "svc_hinge":  # the KKT system rebuilds scikit-learn's solution
        rebuilt = sur.kkt_theta(theta, torch.cat([x_tr, xp]), torch.cat([y_tr, yp]), weight)
        assert float((rebuilt - theta).abs().max()) < 1e-5
    grad = Availability._linear_grad(sur, theta, xp, yp, x_tr, y_tr, weight, x_val, y_val, "loss")
    g = torch.Generator().manual_seed(0)
    d = torch.randn(xp.shape, generator=g, dtype=torch.float64)  # a random direction: central differences
    d /= d.norm()
    eps = 1e-3
    fd = (val_loss(xp + eps * d)[0] - val_loss(xp - eps * d)[0]) / (2 * eps)
    assert abs(fd) > 1e-4, "the direction moves the loss measurably"
    assert float((grad * d).sum()) == pytest.approx(fd, rel=0.1, abs=1e-5)


def test_conjugate_gradient_on_exact_hessian_vector_products_solves_like_the_explicit_hessian(digits_train) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = digits_train.x[:300], digits_train.y[:300]
    sur = LinearSurrogate(LogisticRegression(max_iter=1000).fit(x.reshape(300, -1).numpy(), y.numpy()), "test")
    w = torch.ones(300, dtype=torch.float64)
    theta = sur.fit(x, y, w)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    h = sur.hessian(theta, x, y, w)
    hv = (h @ v.reshape(-1)).reshape(theta.shape)
    assert torch.allclose(sur.hvp(theta, x, y, w, v), hv, rtol=1e-9, atol=1e-9 * float(hv.abs().max()))
    rhs = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    rhs -= rhs.mean(dim=0, keepdim=True)  # orthogonal to the flat direction (a common shift of the intercepts)
    explicit = sur.solve_hessian(theta, x, y, w, rhs)
    sur.EXPLICIT_MAX = 10  # force conjugate gradient
    cg = sur.solve_hessian(theta, x, y, w, rhs)
    assert float((cg - explicit).norm() / explicit.norm()) < 1e-5


def test_availability_poison_lowers_digits_lr_accuracy_more_than_random_flips(digits_train, digits_test, digits_lr) -> None:
    x, y, xt, yt = digits_train.x, digits_train.y, digits_test.x, digits_test.y
    clean = _lr_accuracy(x, y, xt, yt)
    pd = gt.attacks.create("availability", fraction=0.05, steps=12).poison(x, y, model=digits_lr, seed=0)
    flip = gt.attacks.create("label_flip", fraction=0.05).poison(x, y, seed=0)
    acc_poison, acc_flip = _lr_accuracy(pd.x, pd.y, xt, yt), _lr_accuracy(flip.x, flip.y, xt, yt)
    # measured: clean 96.9%, random flips 96.0%, availability 90.2% (12 steps; 90.0% at 60)
    assert acc_poison <= clean - 0.04, (acc_poison, clean)
    assert acc_poison <= acc_flip - 0.02, (acc_poison, acc_flip)
    assert pd.n_poison == flip.n_poison


def test_back_gradient_raises_the_validation_loss_of_a_torch_net(digits_train) -> None:
    from gauntlet.models.zoo import train_classifier

    x, y = digits_train.x[:600], digits_train.y[:600]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    net = train_classifier(net, x, y, epochs=10, seed=0)
    model = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))
    before = [p.detach().clone() for p in net.parameters()]
    atk = gt.attacks.create("availability", fraction=0.05, steps=15, batch_size=None, inner_steps=5, inner_lr=0.1, step_size=0.5)
    pd = atk.poison(x, y, model=model, seed=0)
    assert pd.info["method"] == "back_gradient" and len(pd) == 630 and pd.n_poison == 30
    assert torch.equal(pd.x[:600], x) and float(pd.x.min()) >= 0 and float(pd.x.max()) <= 1
    assert pd.info["val_loss"][-1] > pd.info["val_loss"][0], pd.info["val_loss"]
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())), "the given network is not trained"
    assert not torch.equal(pd.x[600:], x[pd.info["init_rows"]]), "the poison moved"


@pytest.mark.parametrize(
    ("params", "model", "data", "error", "match"),
    [
        ({"fraction": 0.0}, None, None, ConfigError, "parameter 'fraction' must be a finite number > 0 and < 1"),
        ({"method": "newton"}, None, None, ConfigError, "parameter 'method' must be one of"),
        ({}, "none", None, ConfigError, "poison needs the victim's or a surrogate model"),
        ({}, "forest", None, ConfigError, "method 'linear' needs a LogisticRegression, LinearSVC or binary SVC"),
        ({"method": "linear"}, "torch", None, ConfigError, "method 'linear' needs an SklearnModel"),
        ({"method": "back_gradient"}, "lr", None, ConfigError, "method 'back_gradient' needs a TorchModel"),
        ({}, "svc10", None, ConfigError, "one-vs-one; attack a LinearSVC"),
        ({}, "lr", "nan", DataError, "NaN"),
        ({}, "lr", "mismatch", DataError, "must have shape"),
    ],
)
def test_bad_input_is_one_line(digits_train, digits_lr, params, model, data, error, match) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.svm import SVC

    x, y = digits_train.x[:200], digits_train.y[:200]
    models = {
        "none": None, "lr": digits_lr, "torch": gt.models.TorchModel(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), num_classes=10, input_shape=(1, 8, 8)),
        "forest": gt.models.SklearnModel(RandomForestClassifier(n_estimators=2, random_state=0).fit(_flat(x), y.numpy())),
        "svc10": gt.models.SklearnModel(SVC(kernel="linear").fit(_flat(x), y.numpy())),
    }
    with pytest.raises(error, match=match) as info:
        atk = gt.attacks.create("availability", steps=1, **params)
        if data == "nan":
            x = torch.where(x > 0.5, torch.nan, x)
        atk.poison(x, y[:100] if data == "mismatch" else y, model=models[model])
    assert "\n" not in str(info.value)
