"""The SklearnModel, OnnxModel and CallableModel adapters: scores, labels, capabilities, query
counting, input spec, and one test per kind of bad input."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.attacks import registry
from gauntlet.attacks.base import Attack, Context
from gauntlet.errors import CapabilityError, ConfigError, DataError, ModelLoadError
from gauntlet.models import CallableModel, OnnxModel, SklearnModel, TorchModel
from tests.conftest import clear_argmax


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------------
# scikit-learn
@pytest.fixture(scope="module")
def digits_np(digits_train: gt.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    return digits_train.x.reshape(len(digits_train), -1).numpy().astype(np.float64), digits_train.y.numpy()


@pytest.fixture(scope="module")
def logreg(digits_np: tuple[np.ndarray, np.ndarray]):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=300).fit(*digits_np)


def test_sklearn_scores_are_predict_proba_as_float32(logreg, digits_batch) -> None:
    x, _ = digits_batch
    m = SklearnModel(logreg, input_shape=(1, 8, 8))
    s = m.scores(x)
    want = logreg.predict_proba(x.reshape(32, -1).double().numpy())
    assert s.dtype == torch.float32 and s.shape == (32, 10) and s.device == x.device
    assert torch.allclose(s, torch.from_numpy(want).float(), atol=1e-6)
    assert m.output == "probabilities"
    assert m.capabilities == {"scores", "labels"} and not m.has("gradients")


def test_sklearn_predict_matches_estimator_and_is_accurate(logreg, digits_test) -> None:
    m = SklearnModel(logreg, input_shape=(1, 8, 8))
    pred = m.predict(digits_test.x)
    flat = digits_test.x.reshape(len(digits_test), -1).double().numpy()
    want = logreg.predict(flat)
    assert pred.dtype == torch.int64
    # the adapter takes the argmax of float32 probabilities, scikit-learn of its float64 decision function
    clear = clear_argmax(torch.from_numpy(logreg.predict_proba(flat)), 1e-6)
    assert int(clear.sum()) >= len(digits_test) - 2
    assert torch.equal(pred[clear], torch.from_numpy(want).long()[clear])
    assert (pred == digits_test.y).float().mean() > 0.93


def test_sklearn_counts_one_query_per_sample(logreg, digits_batch) -> None:
    x, _ = digits_batch
    m = SklearnModel(logreg)
    m.scores(x)
    m.predict(x[:5])
    m.scores(x, count=False)
    assert m.queries == 37 and m.grad_evals == 0
    m.reset_counters()
    assert m.queries == 0


def test_sklearn_spec_num_classes_and_bounds(logreg) -> None:
    m = SklearnModel(logreg, bounds=(0.0, 1.0), input_shape=(1, 8, 8))
    assert m.num_classes == 10
    assert m.input_spec.shape == (1, 8, 8) and m.input_spec.dtype == torch.float32
    assert m.bounds == (0.0, 1.0)
    assert SklearnModel(logreg).input_spec.shape is None


def test_sklearn_accepts_flat_inputs(logreg, digits_batch) -> None:
    x, _ = digits_batch
    m = SklearnModel(logreg)
    assert torch.equal(m.predict(x.reshape(32, 64)), m.predict(x))


def test_sklearn_multiclass_decision_function_is_logits(digits_np, digits_batch) -> None:
    from sklearn.svm import LinearSVC

    svc = LinearSVC(max_iter=2000).fit(*digits_np)
    m = SklearnModel(svc)
    x, _ = digits_batch
    s = m.scores(x)
    assert m.output == "logits" and s.shape == (32, 10)
    want = svc.decision_function(x.reshape(32, -1).double().numpy())
    assert torch.allclose(s, torch.from_numpy(want).float(), atol=1e-5)


def test_sklearn_binary_decision_function_gives_two_columns_whose_argmax_is_predict(digits_np) -> None:
    from sklearn.svm import SVC

    xs, ys = digits_np
    keep = ys < 2
    svc = SVC(kernel="linear").fit(xs[keep], ys[keep])  # no predict_proba: decision_function
    m = SklearnModel(svc)
    x = torch.from_numpy(xs[keep][:40]).float()
    s = m.scores(x)
    d = torch.from_numpy(svc.decision_function(xs[keep][:40])).float()
    assert s.shape == (40, 2) and m.output == "logits"
    assert torch.allclose(s[:, 1] - s[:, 0], d, atol=1e-5)
    clear = d.abs() > 1e-5  # float32 scores against scikit-learn's float64 decision: agree off the boundary
    assert int(clear.sum()) >= 38
    assert torch.equal(m.predict(x)[clear], torch.from_numpy(svc.predict(x.double().numpy())).long()[clear])


class _PredictOnly:
    """A fitted classifier with predict() only (no scores)."""

    def __init__(self) -> None:
        self.classes_ = np.arange(3)
        self.n_features_in_ = 4
        self.fitted_ = True

    def fit(self, x, y):  # pragma: no cover - never called
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x.sum(axis=1) > 0).astype(np.int64) + 1


def test_sklearn_predict_only_estimator_is_labels_only() -> None:
    m = SklearnModel(_PredictOnly(), bounds=(-1.0, 1.0))
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5], [-0.5, -0.5, -0.5, -0.5]])
    assert m.capabilities == {"labels"} and m.output == "labels"
    assert m.predict(x).tolist() == [2, 1]
    with pytest.raises(CapabilityError, match="labels only"):
        m.scores(x)


class _ScoreOnly(Attack):
    name = "zz_score_probe"
    description = "test double: a score-based attack"
    requires: ClassVar[frozenset[str]] = frozenset({"scores"})

    def __init__(self, *, eps: float | None = None) -> None:
        self.eps = eps
        self._validate()

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:  # pragma: no cover
        return x


def test_gradient_attack_on_sklearn_model_is_refused_naming_score_based_alternatives(
    logreg, digits_batch, monkeypatch
) -> None:
    x, y = digits_batch
    monkeypatch.setitem(registry._REGISTRY, _ScoreOnly.name, _ScoreOnly)
    m = SklearnModel(logreg, input_shape=(1, 8, 8))
    with pytest.raises(CapabilityError) as exc:
        gt.attacks.create("pgd", eps=0.1, steps=2).run(m, x, y)
    msg = one_line(exc)
    assert "needs gradients" in msg and "SklearnModel" in msg
    alternatives = [n for n in gt.attacks.list_attacks("evasion") if gt.attacks.get_attack_class(n).requires <= m.capabilities]
    assert _ScoreOnly.name in alternatives
    for name in alternatives:
        assert repr(name) in msg
    assert "'pgd'" not in msg and "'fgsm'" not in msg
    assert m.queries == 0  # refused before any work


def test_sklearn_unfitted_estimator_is_refused() -> None:
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(ConfigError) as exc:
        SklearnModel(LogisticRegression())
    assert "not fitted" in one_line(exc) and "fit(" in str(exc.value)


def test_sklearn_unfitted_duck_typed_estimator_is_refused() -> None:
    est = _PredictOnly()
    for attr in ("classes_", "n_features_in_", "fitted_"):
        delattr(est, attr)
    with pytest.raises(ConfigError, match="not fitted"):
        SklearnModel(est)


def test_sklearn_string_class_labels_are_refused(digits_np) -> None:
    from sklearn.naive_bayes import GaussianNB

    xs, ys = digits_np
    est = GaussianNB().fit(xs[:200], np.array(["abcdefghij"[int(v)] for v in ys[:200]]))
    with pytest.raises(ConfigError) as exc:
        SklearnModel(est)
    assert "0..K-1" in one_line(exc) and "LabelEncoder" in str(exc.value)


def test_sklearn_shifted_integer_classes_are_refused(digits_np) -> None:
    from sklearn.naive_bayes import GaussianNB

    xs, ys = digits_np
    est = GaussianNB().fit(xs[:200], ys[:200] + 1)
    with pytest.raises(ConfigError, match="0..K-1"):
        SklearnModel(est)


def test_sklearn_regressor_and_non_estimators_are_refused(digits_np) -> None:
    from sklearn.linear_model import LinearRegression

    xs, ys = digits_np
    with pytest.raises(ConfigError, match="regressor"):
        SklearnModel(LinearRegression().fit(xs[:100], ys[:100]))
    with pytest.raises(ConfigError, match="CallableModel"):
        SklearnModel(lambda x: x)


def test_sklearn_bad_shape_num_classes_and_bounds_are_refused(logreg, digits_batch) -> None:
    with pytest.raises(ConfigError, match="fitted on 64"):
        SklearnModel(logreg, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="has 10 classes"):
        SklearnModel(logreg, num_classes=3)
    with pytest.raises(ConfigError, match="low < high"):
        SklearnModel(logreg, bounds=(1.0, 0.0))
    with pytest.raises(ConfigError, match="input_shape"):
        SklearnModel(logreg, input_shape=(0, 8))
    with pytest.raises(DataError, match="expects 64 features"):
        SklearnModel(logreg).scores(torch.zeros(2, 1, 28, 28))


def test_sklearn_pipeline_is_supported(digits_np, digits_batch) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(*digits_np)
    x, y = digits_batch
    m = SklearnModel(pipe, input_shape=(1, 8, 8))
    assert m.num_classes == 10 and m.output == "probabilities"
    assert (m.predict(x) == y).float().mean() > 0.85


# ------------------------------------------------------------------------------------------------
# callables
def test_callable_scores_match_the_function_and_count_queries(linear_net) -> None:
    m = CallableModel(lambda x: linear_net(x), bounds=(-3.0, 3.0), num_classes=3, input_shape=(20,))
    x = torch.rand(6, 20)
    with torch.no_grad():
        want = linear_net(x)
    assert torch.allclose(m.scores(x), want)
    assert torch.equal(m.predict(x), want.argmax(1))
    assert m.capabilities == {"scores", "labels"} and m.output == "logits"
    assert m.input_spec.shape == (20,) and m.bounds == (-3.0, 3.0)
    assert m.queries == 12


def test_callable_numpy_output_is_converted_at_the_edge() -> None:
    m = CallableModel(lambda x: np.stack([x.numpy().sum(1), -x.numpy().sum(1)], axis=1).astype(np.float64))
    s = m.scores(torch.rand(4, 3))
    assert s.dtype == torch.float32 and s.shape == (4, 2)
    assert m.infer_num_classes(torch.rand(1, 3)) == 2


def test_callable_labels_only_model_refuses_scores() -> None:
    m = CallableModel(lambda x: (x.sum(1) > 1.5).long(), output="labels", num_classes=2)
    x = torch.tensor([[1.0, 1.0], [0.0, 0.5]])
    assert m.capabilities == {"labels"} and m.output == "labels"
    assert m.predict(x).tolist() == [1, 0] and m.predict(x).dtype == torch.int64
    with pytest.raises(CapabilityError, match="decision-based"):
        m.scores(x)


def test_callable_labels_as_numpy_floats_are_accepted() -> None:
    m = CallableModel(lambda x: np.zeros(x.shape[0]) + 1.0, output="labels", num_classes=2)
    assert m.predict(torch.rand(3, 2)).tolist() == [1, 1, 1]


def test_differentiable_callable_gives_the_same_fgsm_as_torch_model(linear_net) -> None:
    x = torch.rand(16, 20)
    y = linear_net(x).argmax(1).detach()
    via_callable = CallableModel(lambda t: linear_net(t), differentiable=True, num_classes=3)
    assert via_callable.capabilities == {"gradients", "scores", "labels"}
    attack = gt.attacks.create("fgsm", eps=0.05)
    a = attack.run(via_callable, x, y)
    b = attack.run(TorchModel(linear_net, num_classes=3), x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert (a.x_adv - x).abs().max() == pytest.approx(0.05, abs=1e-6)


def test_non_differentiable_callable_refuses_gradient_attacks(linear_net) -> None:
    m = CallableModel(lambda t: linear_net(t), num_classes=3)
    x = torch.rand(4, 20)
    with pytest.raises(CapabilityError, match="needs gradients"):
        gt.attacks.create("fgsm", eps=0.05).run(m, x, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    ("fn", "kwargs", "fragment"),
    [
        (lambda x: torch.zeros(x.shape[0] + 1, 3), {}, "must return scores of shape (4, num_classes)"),
        (lambda x: torch.zeros(x.shape[0]), {}, "pass output='labels'"),
        (lambda x: torch.zeros(x.shape[0], 3, dtype=torch.long), {}, "float scores"),
        (lambda x: torch.zeros(x.shape[0], 5), {"num_classes": 3}, "num_classes=3"),
        (lambda x: torch.full((x.shape[0], 3), float("nan")), {}, "NaN or inf"),
        (lambda x: "not an array", {}, "return a torch.Tensor or NumPy array"),
        (lambda x: torch.zeros(x.shape[0], 2), {"output": "labels"}, "labels of shape (4,)"),
        (lambda x: torch.full((x.shape[0],), 0.5), {"output": "labels"}, "non-integer labels"),
        (lambda x: torch.full((x.shape[0],), 7), {"output": "labels", "num_classes": 3}, "[0, 2]"),
        (lambda x: x.detach().numpy()[:, :3], {"differentiable": True}, "differentiable=True"),
    ],
)
def test_callable_returning_the_wrong_thing_raises_data_error(fn, kwargs, fragment) -> None:
    m = CallableModel(fn, **kwargs)
    with pytest.raises(DataError) as exc:
        m.predict(torch.rand(4, 5))
    assert fragment in one_line(exc)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("not callable",), {}, "fn must be callable"),
        ((abs,), {"output": "softmax"}, "'output'"),
        ((abs,), {"output": "labels", "differentiable": True}, "differentiable=True needs scores"),
        ((abs,), {"differentiable": 1}, "'differentiable'"),
        ((abs,), {"num_classes": 1}, "'num_classes'"),
        ((abs,), {"bounds": (0.0,)}, "bounds must be a pair"),
        ((abs,), {"input_shape": (-1, 3)}, "input_shape"),
    ],
)
def test_callable_bad_arguments_raise_config_error(args, kwargs, fragment) -> None:
    with pytest.raises(ConfigError) as exc:
        CallableModel(*args, **kwargs)
    assert fragment in one_line(exc)


# ------------------------------------------------------------------------------------------------
# ONNX
class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def export_onnx(net: nn.Module, path: Path, *, batch: int = 1, dynamic: bool = True) -> Path:
    """Export ``net`` (input 1×8×8) to ONNX with the legacy TorchScript-based exporter."""
    pytest.importorskip("onnx")
    dyn = {"x": {0: "batch"}, "scores": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(), (torch.zeros(batch, 1, 8, 8),), str(path), dynamo=False,
            input_names=["x"], output_names=["scores"], dynamic_axes=dyn,
        )
    return path


@pytest.fixture(scope="module")
def tiny_net() -> _TinyNet:
    return _TinyNet().eval()


@pytest.fixture(scope="module")
def onnx_file(tiny_net: _TinyNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    return export_onnx(tiny_net, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_onnx_scores_match_the_torch_network(onnx_file, tiny_net, digits_batch) -> None:
    x, _ = digits_batch
    m = OnnxModel(onnx_file)
    with torch.no_grad():
        want = tiny_net(x)
    s = m.scores(x)
    assert s.dtype == torch.float32 and s.shape == (32, 10)
    assert torch.allclose(s, want, atol=1e-4)
    clear = clear_argmax(want, 1e-3)  # onnxruntime and torch round differently: compare off near-ties
    assert int(clear.sum()) >= 30
    assert torch.equal(m.predict(x)[clear], want.argmax(1)[clear])
    assert m.queries == 64


def test_onnx_spec_comes_from_the_graph(onnx_file) -> None:
    m = OnnxModel(onnx_file, bounds=(0.0, 1.0))
    assert m.input_spec.shape == (1, 8, 8) and m.input_spec.dtype == torch.float32
    assert m.num_classes == 10 and m.bounds == (0.0, 1.0)
    assert m.capabilities == {"scores", "labels"} and m.output == "logits"


def test_onnx_fixed_batch_graph_is_fed_in_chunks(tiny_net, tmp_path, digits_batch) -> None:
    pytest.importorskip("onnxruntime")
    path = export_onnx(tiny_net, tmp_path / "fixed.onnx", batch=4, dynamic=False)
    m = OnnxModel(path)
    x = digits_batch[0][:10]
    with torch.no_grad():
        want = tiny_net(x)
    assert torch.allclose(m.scores(x), want, atol=1e-4)
    assert m.queries == 10


def test_onnx_labels_output_is_labels_only(onnx_file, digits_batch) -> None:
    x, _ = digits_batch
    m = OnnxModel(onnx_file, output="labels", num_classes=10)
    assert m.capabilities == {"labels"}
    with pytest.raises(CapabilityError):
        m.scores(x)
    with pytest.raises(DataError, match="output='labels' needs"):
        m.predict(x)  # the graph returns scores, not labels


def test_onnx_refuses_gradient_attacks(onnx_file, digits_batch) -> None:
    x, y = digits_batch
    with pytest.raises(CapabilityError, match="needs gradients"):
        gt.attacks.create("pgd", eps=0.1, steps=2).run(OnnxModel(onnx_file), x, y)


def test_onnx_missing_file_is_a_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        OnnxModel(tmp_path / "nope.onnx")
    assert "does not exist" in one_line(exc) and "nope.onnx" in str(exc.value)


def test_onnx_corrupt_file_is_a_load_error(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf" * 4)
    with pytest.raises(ModelLoadError) as exc:
        OnnxModel(bad)
    assert "bad.onnx" in one_line(exc) and "re-export" in str(exc.value)


def test_onnx_bad_options_and_inputs(onnx_file, tmp_path) -> None:
    with pytest.raises(ConfigError, match="not available"):
        OnnxModel(onnx_file, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ConfigError, match="num_classes=3"):
        OnnxModel(onnx_file, num_classes=3)
    with pytest.raises(ConfigError, match="contradicts"):
        OnnxModel(onnx_file, input_shape=(1, 28, 28))
    with pytest.raises(ModelLoadError, match="not a file"):
        OnnxModel(tmp_path)
    with pytest.raises(DataError, match="rejected a batch"):
        OnnxModel(onnx_file).scores(torch.zeros(2, 1, 5, 5))


def test_onnx_without_onnxruntime_says_how_to_install(onnx_file, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ModelLoadError) as exc:
        OnnxModel(onnx_file)
    assert "pip install gauntlet[onnx]" in one_line(exc)
