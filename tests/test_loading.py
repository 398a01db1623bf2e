"""gauntlet.models.load: every supported format round-trips through a file, pickles need trust,
and every kind of bad file or argument fails with one clear line."""

from __future__ import annotations

import gzip
import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.errors import ConfigError, ModelLoadError, UnknownNameError, UntrustedFileError
from gauntlet.models import OnnxModel, SklearnModel, TorchModel, detect_format, load
from gauntlet.models.zoo import DigitsCNN, wong_kolter_small

from conftest import shared_path

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # making TorchScript test files


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


@pytest.fixture(scope="module")
def net() -> DigitsCNN:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return DigitsCNN().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def same_outputs(model: gt.models.Model, net: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.allclose(model.scores(x), net(x), atol=1e-5))


class Payload:
    """Unpickling this creates a directory: a stand-in for arbitrary code in a malicious file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


# ------------------------------------------------------------------------------------------------
# round trips
def test_torchscript_scripted_archive_loads_as_torch_model(net, x, tmp_path) -> None:
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    m = load(path, num_classes=10)
    assert detect_format(path) == "torchscript"
    assert isinstance(m, TorchModel) and m.has("gradients") and m.num_classes == 10
    assert same_outputs(m, net, x)


def test_torchscript_traced_archive_loads_without_trust(net, x, tmp_path) -> None:
    path = tmp_path / "traced.torchscript"
    torch.jit.trace(net, x).save(str(path))
    m = load(path, input_shape=(1, 8, 8))
    assert m.input_spec.shape == (1, 8, 8)
    assert same_outputs(m, net, x)


def test_state_dict_zip_loads_into_zoo_arch(net, x, tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    rng = torch.random.get_rng_state()
    m = load(path, arch="digits_cnn", mean=0.0, std=1.0)
    assert torch.equal(torch.random.get_rng_state(), rng)  # building the arch leaves the global RNG alone
    assert detect_format(path) == "torch"
    assert isinstance(m, TorchModel) and m.input_spec.shape == (1, 8, 8)
    assert not m.module.training
    assert same_outputs(m, net, x)


def test_state_dict_legacy_format_loads(net, x, tmp_path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "torch_legacy"
    assert same_outputs(load(path, arch="digits_cnn"), net, x)


@pytest.mark.parametrize("arch", ["gauntlet.models.zoo:DigitsCNN", "gauntlet.models.zoo.DigitsCNN", DigitsCNN])
def test_state_dict_loads_into_arch_by_import_path_or_class(arch, net, x, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    assert same_outputs(load(path, arch=arch), net, x)


def test_arch_kwargs_reach_the_architecture(tmp_path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        small = DigitsCNN(num_classes=3).eval()
    path = tmp_path / "w3.pt"
    torch.save(small.state_dict(), path)
    m = load(path, arch="digits_cnn", num_classes=3)
    assert m.module.fc2.out_features == 3 and m.num_classes == 3


def test_checkpoint_dict_and_data_parallel_prefix_are_unwrapped(net, x, tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    sd = OrderedDict((f"module.{k}", v) for k, v in net.state_dict().items())
    torch.save({"epoch": 7, "state_dict": sd, "best_acc": 0.9}, path)
    assert same_outputs(load(path, arch="digits_cnn"), net, x)


def test_safetensors_loads_into_arch(net, x, tmp_path) -> None:
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    st.save_file(net.state_dict(), str(path))
    assert detect_format(path) == "safetensors"
    m = load(path, arch="digits_cnn")
    assert isinstance(m, TorchModel) and same_outputs(m, net, x)


def test_onnx_file_loads_as_onnx_model(net, x, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:1],), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    m = load(path, bounds=(0.0, 1.0))
    assert isinstance(m, OnnxModel) and m.capabilities == {"scores", "labels"}
    assert m.input_spec.shape == (1, 8, 8) and m.num_classes == 10
    with torch.no_grad():
        assert torch.allclose(m.scores(x), net(x), atol=1e-4)


@pytest.fixture(scope="module")
def fitted_sklearn(digits_train):
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB().fit(digits_train.x.reshape(len(digits_train), -1).numpy(), digits_train.y.numpy())


def test_joblib_sklearn_is_refused_without_trust(fitted_sklearn, tmp_path) -> None:
    import joblib

    path = tmp_path / "clf.joblib"
    joblib.dump(fitted_sklearn, path)
    with pytest.raises(UntrustedFileError) as exc:
        load(path)
    msg = one_line(exc)
    assert "arbitrary code" in msg and "trust=True" in msg and "safetensors/TorchScript/ONNX" in msg


def test_joblib_sklearn_loads_as_sklearn_model_with_trust(fitted_sklearn, digits_test, tmp_path) -> None:
    import joblib

    path = tmp_path / "clf.joblib"
    joblib.dump(fitted_sklearn, path, compress=3)
    m = load(path, trust=True, input_shape=(1, 8, 8))
    assert isinstance(m, SklearnModel) and m.num_classes == 10 and m.input_spec.shape == (1, 8, 8)
    want = fitted_sklearn.predict(digits_test.x.reshape(len(digits_test), -1).numpy())
    assert torch.equal(m.predict(digits_test.x), torch.from_numpy(want).long())


def test_plain_pickle_of_sklearn_loads_with_trust(fitted_sklearn, tmp_path) -> None:
    path = tmp_path / "clf.pkl"
    path.write_bytes(pickle.dumps(fitted_sklearn))
    assert detect_format(path) == "pickle"
    assert isinstance(load(path, trust=True), SklearnModel)


def test_sklearn_estimator_saved_with_torch_save_needs_trust(fitted_sklearn, tmp_path) -> None:
    path = tmp_path / "clf.pt"
    torch.save(fitted_sklearn, path)
    with pytest.raises(UntrustedFileError, match="trust=True"):
        load(path)
    assert isinstance(load(path, trust=True), SklearnModel)


def test_whole_pickled_module_needs_trust(tmp_path) -> None:
    seq = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    path = tmp_path / "whole.pt"
    torch.save(seq, path)
    with pytest.raises(UntrustedFileError) as exc:
        load(path)
    assert "whole nn.Module" in one_line(exc) and "trust=True" in str(exc.value)
    m = load(path, trust=True)
    xb = torch.rand(3, 1, 8, 8)
    assert isinstance(m, TorchModel) and same_outputs(m, seq, xb)


# ------------------------------------------------------------------------------------------------
# malicious files are never unpickled without trust
@pytest.mark.parametrize("how", ["pickle", "joblib", "torch_zip", "torch_legacy"])
def test_malicious_file_is_refused_and_its_code_never_runs(how, tmp_path) -> None:
    marker = tmp_path / "pwned"
    payload = {"fc.weight": torch.zeros(2, 2), "evil": Payload(marker)}
    path = tmp_path / ("model.pt" if how.startswith("torch") else f"model.{how}")
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    elif how == "joblib":
        import joblib

        joblib.dump(payload, path)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "torch_zip")
    with pytest.raises(UntrustedFileError, match="arbitrary code"):
        load(path, arch="digits_cnn")
    assert not marker.exists()


def test_content_wins_over_extension_for_pickles(tmp_path) -> None:
    marker = tmp_path / "pwned"
    for name in ("model.onnx", "model.pt", "weights.safetensors", "noext"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Payload(marker)))
        with pytest.raises(UntrustedFileError):
            load(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# bad files
def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        load(tmp_path / "absent.pt", arch="smallcnn")
    assert "does not exist" in one_line(exc) and "absent.pt" in str(exc.value)


def test_directory_instead_of_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="is a directory"):
        load(tmp_path)


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(ModelLoadError) as exc:
        load(path)
    assert "empty (0 bytes)" in one_line(exc)


def test_truncated_zip_state_dict(net, tmp_path) -> None:
    path = tmp_path / "cut.pt"
    torch.save(net.state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ModelLoadError) as exc:
        load(path, arch="digits_cnn")
    assert "corrupt" in one_line(exc) and "cut.pt" in str(exc.value)


def test_truncated_legacy_state_dict(net, tmp_path) -> None:
    path = tmp_path / "cut_legacy.pt"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ModelLoadError) as exc:
        load(path, arch="digits_cnn")
    msg = one_line(exc)
    assert "legacy" in msg and "truncated or corrupt" in msg
    assert not isinstance(exc.value, UntrustedFileError)


def test_garbage_file_has_unknown_format(tmp_path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(ModelLoadError) as exc:
        load(path, arch="smallcnn")
    assert "cannot tell the format" in one_line(exc)


def test_corrupt_safetensors(net, tmp_path) -> None:
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "cut.safetensors"
    st.save_file(net.state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(ModelLoadError) as exc:
        load(path, arch="digits_cnn")
    assert "safetensors" in one_line(exc) and "corrupt" in str(exc.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a valid safetensors"):
        load(junk, arch="digits_cnn")


def test_corrupt_onnx(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage-protobuf" * 8)
    with pytest.raises(ModelLoadError) as exc:
        load(path)
    assert "bad.onnx" in one_line(exc) and "re-export" in str(exc.value)


def test_zip_that_is_not_a_torch_file(tmp_path) -> None:
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ModelLoadError, match="not a TorchScript or torch.save file"):
        load(path)


def test_pickle_that_holds_no_model(tmp_path) -> None:
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ModelLoadError, match="holds a list, not a model"):
        load(path, trust=True)


def test_dict_without_tensors(tmp_path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelLoadError, match="without a state dict"):
        load(path, arch="digits_cnn")


# ------------------------------------------------------------------------------------------------
# weights that do not fit the architecture
def test_wrong_arch_lists_missing_and_unexpected_keys(tmp_path) -> None:
    path = tmp_path / "wk.pt"
    torch.save(wong_kolter_small().state_dict(), path)
    with pytest.raises(ModelLoadError) as exc:
        load(path, arch="lenet5")
    msg = one_line(exc)
    assert "do not fit arch 'lenet5'" in msg
    assert "missing keys conv1.weight" in msg and "unexpected keys 0.weight" in msg and "more)" in msg


def test_wrong_arch_size_lists_shape_mismatch(tmp_path) -> None:
    path = tmp_path / "w3.pt"
    torch.save(DigitsCNN(num_classes=3).state_dict(), path)
    with pytest.raises(ModelLoadError) as exc:
        load(path, arch="digits_cnn")
    assert "shape mismatch fc2.weight (file (3, 64) vs arch (10, 64))" in one_line(exc)


def test_state_dict_without_arch(net, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert "pass arch=" in one_line(exc) and "smallcnn" in str(exc.value)


def test_unknown_arch_name_suggests_close_matches(net, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(UnknownNameError) as exc:
        load(path, arch="digit_cnn")
    assert "did you mean 'digits_cnn'" in one_line(exc)


@pytest.mark.parametrize(
    ("arch", "fragment"),
    [
        ("no_such_package_xyz.models:Net", "cannot import module 'no_such_package_xyz.models'"),
        ("gauntlet.models.zoo:NoSuchNet", "has no attribute 'NoSuchNet'"),
        ("gauntlet.models.zoo:ARCHITECTURES", "not a class or factory"),
        (":Net", "must look like 'module.path:ClassName'"),
        (42, "arch must be an architecture name"),
    ],
)
def test_arch_that_cannot_be_imported(arch, fragment, net, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ConfigError) as exc:
        load(path, arch=arch)
    assert fragment in one_line(exc)


def test_arch_with_bad_kwargs_or_not_a_module(net, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ConfigError, match="cannot build arch 'digits_cnn'"):
        load(path, arch="digits_cnn", widht=3)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        load(path, arch=lambda: "nope")


# ------------------------------------------------------------------------------------------------
# bad arguments
def test_bad_arguments(net, tmp_path) -> None:
    path = tmp_path / "ts.pt"
    torch.jit.script(net).save(str(path))
    with pytest.raises(ConfigError, match="holds its own architecture; drop arch="):
        load(path, arch="digits_cnn")
    with pytest.raises(ConfigError, match="passed to arch="):
        load(path, num_clases=10)
    with pytest.raises(ConfigError, match="'trust'"):
        load(path, trust="yes")
    with pytest.raises(ConfigError, match="path must be a file path"):
        load(123)


@pytest.fixture(scope="module")
def net12() -> DigitsCNN:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return DigitsCNN(num_classes=12).eval()


_TWELVE = "TorchModel: num_classes=10 but the model outputs 12 scores per input; pass num_classes=12 or check the model"


def test_num_classes_that_contradicts_the_loaded_net_is_refused_at_load_when_the_shape_is_known(net12, tmp_path) -> None:
    path = tmp_path / "w12.pt"
    torch.save(net12.state_dict(), path)
    # a factory that takes no num_classes: the weights fit, only the declared count is wrong
    with pytest.raises(ConfigError) as e:
        load(path, arch=lambda: DigitsCNN(num_classes=12), num_classes=10, input_shape=(1, 8, 8))
    assert one_line(e) == _TWELVE
    ts = tmp_path / "ts12.pt"
    torch.jit.script(net12).save(str(ts))
    with pytest.raises(ConfigError) as e:
        load(ts, num_classes=10, input_shape=(1, 8, 8))
    assert one_line(e) == _TWELVE


def test_num_classes_that_contradicts_the_loaded_net_is_refused_on_the_first_query_without_a_shape(net12, x, tmp_path) -> None:
    ts = tmp_path / "ts12.pt"
    torch.jit.script(net12).save(str(ts))
    m = load(ts, num_classes=10)  # TorchScript carries no input shape: checked on the first query
    with pytest.raises(ConfigError) as e:
        m.predict(x)
    assert one_line(e) == _TWELVE
    assert load(ts, num_classes=12).predict(x).shape == (6,)


def test_onnx_with_a_dynamic_output_width_checks_num_classes(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "flat.onnx"  # every dimension dynamic: the output width is known only by running it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            nn.Flatten(), (torch.rand(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
            dynamic_axes={"x": {0: "n", 1: "c", 2: "h", 3: "w"}},
        )
    wrong = "OnnxModel: num_classes=10 but the model outputs 64 scores per input; pass num_classes=64 or check the model"
    with pytest.raises(ConfigError) as e:
        OnnxModel(path, num_classes=10, input_shape=(1, 8, 8))  # one run at construction
    assert one_line(e) == wrong
    m = OnnxModel(path, num_classes=10)  # no shape to run it with: the first query checks
    with pytest.raises(ConfigError) as e:
        m.scores(torch.rand(2, 1, 8, 8))
    assert one_line(e) == wrong
    assert OnnxModel(path, num_classes=64, input_shape=(1, 8, 8)).num_classes == 64


def test_mean_std_refused_for_sklearn(fitted_sklearn, tmp_path) -> None:
    import joblib

    path = tmp_path / "clf.joblib"
    joblib.dump(fitted_sklearn, path)
    with pytest.raises(ConfigError, match="mean/std apply to torch models only"):
        load(path, trust=True, mean=0.5)


# ------------------------------------------------------------------------------------------------
# the shared pretrained MNIST models (legacy torch.save files saved from CUDA)
def _mnist_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = shared_path("data", "mnist")
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read(16 + n * 28 * 28)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = f.read(8 + n)
    x = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).float().div(255).reshape(n, 1, 28, 28)
    return x, torch.frombuffer(bytearray(labels[8:]), dtype=torch.uint8).long()


@pytest.mark.parametrize(
    ("name", "arch", "min_acc"),
    [
        ("trades_smallcnn_mnist.pt", "smallcnn", 0.97),
        ("advertorch_lenet5_mnist_advtrained.pt", "lenet5", 0.96),
        ("advertorch_lenet5_mnist_clntrained.pt", "lenet5", 0.96),
        ("wongkolter_convex_mnist_small.pt", "wong_kolter_small", 0.96),
    ],
)
def test_shared_pretrained_mnist_models_load_and_are_accurate(name, arch, min_acc) -> None:
    path = shared_path("models", name)
    assert detect_format(path) == "torch_legacy"
    m = load(path, arch=arch, num_classes=10)
    assert isinstance(m, TorchModel) and m.input_spec.shape == (1, 28, 28)
    x, y = _mnist_test(200)
    acc = (m.predict(x) == y).float().mean().item()
    assert acc >= min_acc, f"{name}: clean accuracy {acc:.3f} on 200 MNIST test images"


def test_shared_trades_model_loads_by_string_path_and_refuses_the_wrong_arch() -> None:
    path = shared_path("models", "trades_smallcnn_mnist.pt")
    m = load(str(path), arch="smallcnn")
    assert not m.module.training and m.device == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="do not fit arch 'lenet5'"):
        load(path, arch="lenet5")
