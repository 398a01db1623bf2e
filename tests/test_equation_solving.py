"""Equation-solving extraction (Tramèr et al. 2016): d+1 queries recover a softmax regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.errors import CapabilityError, ConfigError

D = 64  # sklearn digits: 8x8 features


@pytest.fixture(scope="module")
def digits_lr(digits_train: gt.data.Dataset):
    from sklearn.linear_model import LogisticRegression

    x = digits_train.x.reshape(len(digits_train.y), -1).double().numpy()
    return LogisticRegression(max_iter=1000).fit(x, digits_train.y.numpy())


def _errors(info: dict, w_true: np.ndarray, b_true: np.ndarray) -> tuple[float, float]:
    """Max abs errors of the recovered W - W[ref] and b - b[ref] (the softmax's shift removed)."""
    ref = info["reference_class"]
    w = info["weights"].numpy()
    b = info["bias"].numpy()
    assert np.all(w[ref] == 0) and b[ref] == 0
    return float(np.abs(w - (w_true - w_true[ref])).max()), float(np.abs(b - (b_true - b_true[ref])).max())


def test_recovers_sklearn_multinomial_logistic_regression_exactly_with_d_plus_1_queries(digits_lr, digits_test) -> None:
    target = gt.models.SklearnModel(digits_lr, input_shape=(1, 8, 8))
    res = gt.attacks.create("equation_solving").run(target, seed=0)
    assert res.queries == D + 1 == target.queries == res.info["queries"]
    err_w, err_b = _errors(res.info, digits_lr.coef_, digits_lr.intercept_)
    assert err_w < 1e-4 and err_b < 1e-4
    assert res.info["clipped"] == 0 and not res.info["underdetermined"]
    assert res.fidelity(digits_test.x) == 1.0
    # the copy is a torch softmax regression: its probabilities match the target's on held-out digits
    assert isinstance(res.model, gt.models.TorchModel)
    with torch.no_grad():
        p_copy = torch.softmax(res.model.scores(digits_test.x, count=False).double(), dim=1)
    p_true = target.scores(digits_test.x, count=False).double()
    assert float((p_copy - p_true).abs().max()) < 1e-4


def test_recovers_torch_softmax_regression_from_logits_and_from_probabilities() -> None:
    gen = torch.Generator().manual_seed(1)
    lin = nn.Linear(20, 5)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 20, generator=gen))
        lin.bias.copy_(torch.randn(5, generator=gen))
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    for output, net in (("logits", nn.Sequential(nn.Flatten(), lin)),
                        ("probabilities", nn.Sequential(nn.Flatten(), lin, nn.Softmax(dim=1)))):
        target = gt.models.TorchModel(net, num_classes=5, input_shape=(4, 5), output=output)
        res = gt.attacks.create("equation_solving").run(target, seed=3)
        assert res.queries == 21 == target.queries
        err_w, err_b = _errors(res.info, w, b)
        assert err_w < 1e-4 and err_b < 1e-4, (output, err_w, err_b)
        assert res.info["output"] == output
        x = torch.rand(500, 4, 5, generator=gen)
        assert res.fidelity(x) == 1.0


def test_binary_logistic_regression_through_sklearn_probabilities(digits_train) -> None:
    from sklearn.linear_model import LogisticRegression

    x = digits_train.x.reshape(len(digits_train.y), -1).double().numpy()
    y = (digits_train.y.numpy() >= 5).astype(np.int64)
    lr = LogisticRegression(max_iter=1000).fit(x, y)
    target = gt.models.SklearnModel(lr, input_shape=(1, 8, 8))
    res = gt.attacks.create("equation_solving").run(target, seed=0)
    assert res.queries == D + 1
    # sklearn's binary model holds one row: p1 = sigmoid(w.x + b), i.e. the rows (0, w) in softmax form
    w_true = np.vstack([np.zeros(D), lr.coef_[0]])
    b_true = np.array([0.0, lr.intercept_[0]])
    err_w, err_b = _errors(res.info, w_true, b_true)
    assert err_w < 1e-4 and err_b < 1e-4


def test_rounded_probabilities_need_least_squares_and_the_error_is_reported(digits_lr, digits_test) -> None:
    def rounded(x: torch.Tensor) -> np.ndarray:
        return np.round(digits_lr.predict_proba(x.reshape(len(x), -1).double().numpy()), 2)

    errors = []
    for extra in (0, 4 * (D + 1)):
        target = gt.models.CallableModel(rounded, output="probabilities", input_shape=(1, 8, 8), num_classes=10)
        res = gt.attacks.create("equation_solving", extra_queries=extra).run(target, seed=0)
        assert res.queries == D + 1 + extra == target.queries
        assert res.info["clipped"] > 0  # rounding to 2 decimals zeroes small probabilities
        assert res.info["residual"] >= 0.0
        errors.append(_errors(res.info, digits_lr.coef_, digits_lr.intercept_)[0])
    # no exact claim: the rounding leaves an error, which more queries reduce
    assert errors[1] < errors[0]
    assert errors[1] > 1e-4
    assert res.fidelity(digits_test.x) > 0.95


def test_verify_spends_counted_check_queries_and_flags_a_nonlinear_target(digits_lr) -> None:
    lin = gt.models.SklearnModel(digits_lr, input_shape=(1, 8, 8))
    res = gt.attacks.create("equation_solving", verify=True).run(lin, seed=0)
    assert res.queries == D + 1 + 16 == lin.queries
    lin_error = res.info["verify_max_abs_error"]
    assert lin_error < 1e-3
    assert res.info["verify_agreement"] == 1.0
    # a network is not linear in its log-odds: the check sees it
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 10))
    net = gt.models.TorchModel(mlp, num_classes=10, input_shape=(1, 8, 8))
    res = gt.attacks.create("equation_solving", verify=True).run(net, seed=0)
    assert res.info["verify_max_abs_error"] > 10 * lin_error


def test_max_queries_below_d_plus_1_is_a_one_line_config_error_before_any_query(digits_lr) -> None:
    target = gt.models.SklearnModel(digits_lr, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="needs 65 queries") as info:
        gt.attacks.create("equation_solving", max_queries=64).run(target, seed=0)
    assert "\n" not in str(info.value)
    assert target.queries == 0
    with pytest.raises(ConfigError, match="needs 75 queries"):
        gt.attacks.create("equation_solving", max_queries=70, extra_queries=10).run(target, seed=0)
    # exactly enough is enough, and the budget is never exceeded
    res = gt.attacks.create("equation_solving", max_queries=65).run(target, seed=0)
    assert res.queries == 65 == target.queries


def test_labels_only_target_is_told_to_use_copycat(digits_lr) -> None:
    def labels(x: torch.Tensor) -> np.ndarray:
        return digits_lr.predict(x.reshape(len(x), -1).double().numpy())

    target = gt.models.CallableModel(labels, output="labels", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(CapabilityError, match="copycat"):
        gt.attacks.create("equation_solving").run(target, seed=0)
    assert target.queries == 0


def test_bad_hyperparameters_and_a_target_without_input_shape() -> None:
    for bad in ({"extra_queries": -1}, {"max_queries": 0}, {"verify": 1}):
        with pytest.raises(ConfigError):
            gt.attacks.create("equation_solving", **bad)
    target = gt.models.CallableModel(lambda x: torch.zeros(len(x), 3), output="logits", num_classes=3)
    with pytest.raises(ConfigError, match="input_shape"):
        gt.attacks.create("equation_solving").run(target, seed=0)


def test_same_seed_same_queries_and_copy(digits_lr) -> None:
    asked: list[torch.Tensor] = []

    def proba(x: torch.Tensor) -> np.ndarray:
        asked.append(x.clone())
        return digits_lr.predict_proba(x.reshape(len(x), -1).double().numpy())

    runs = []
    for _ in range(2):
        target = gt.models.CallableModel(proba, output="probabilities", input_shape=(1, 8, 8), num_classes=10)
        runs.append(gt.attacks.create("equation_solving").run(target, seed=5))
    assert torch.equal(asked[0], asked[1])  # the queries come from the seeded generator only
    a, b = runs
    assert a.info["reference_class"] == b.info["reference_class"]
    assert torch.allclose(a.info["weights"], b.info["weights"], rtol=0, atol=1e-9)
