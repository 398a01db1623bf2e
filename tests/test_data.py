"""gauntlet.data: every format through ``load``, exact decoding, and one test per kind of bad input."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path

import gauntlet as gt
from gauntlet.data import load
from gauntlet.errors import ConfigError, DataError, UnknownNameError

PIL = pytest.importorskip("PIL.Image")


def raises(cls: type[Exception], fn, *names: object) -> str:
    """Run ``fn``; it must raise exactly ``cls`` (or a subclass) with a one-line message naming ``names``."""
    with pytest.raises(cls) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert str(name) in msg, f"{name!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray, magic: bytes | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 0x08, arr.ndim])
    return head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True, magic: bytes | None = None) -> Path:
    data = idx_bytes(arr, magic)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist(folder: Path, *, gz: bool = True, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", x, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz=gz)
        out[f"x_{prefix}"], out[f"y_{prefix}"] = x, y
    return out


def test_idx_gz_folder_decodes_test_split_exactly(tmp_path: Path) -> None:
    ref = make_mnist(tmp_path / "fmnist")
    ds = load(tmp_path / "fmnist")
    assert ds.x.shape == (4, 1, 5, 4) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert torch.equal(ds.x, torch.from_numpy(ref["x_t10k"]).float().div(255).unsqueeze(1))
    assert ds.y.tolist() == ref["y_t10k"].tolist()
    assert ds.spec.shape == (1, 5, 4) and ds.spec.bounds == (0.0, 1.0)
    assert ds.num_classes == 10 and ds.name == "fmnist-test"


def test_idx_raw_files_train_and_all_splits(tmp_path: Path) -> None:
    ref = make_mnist(tmp_path / "m", gz=False)
    train = load(str(tmp_path / "m"), split="train")
    assert train.y.tolist() == ref["y_train"].tolist()
    both = load(tmp_path / "m", split="all")
    assert both.y.tolist() == ref["y_train"].tolist() + ref["y_t10k"].tolist()
    assert torch.equal(both.x[:6], train.x)


def test_idx_torchvision_layout_and_single_file_with_labels(tmp_path: Path) -> None:
    ref = make_mnist(tmp_path / "root" / "MNIST" / "raw")
    assert load(tmp_path / "root").y.tolist() == ref["y_t10k"].tolist()
    raw = tmp_path / "root" / "MNIST" / "raw"
    one = load(raw / "t10k-images-idx3-ubyte.gz", labels="t10k-labels-idx1-ubyte.gz")
    assert one.y.tolist() == ref["y_t10k"].tolist() and one.x.shape == (4, 1, 5, 4)


def test_real_mnist_test_set_shape_class_counts_range_and_speed() -> None:
    folder = shared_path("data", "mnist")
    t0 = time.perf_counter()
    ds = load(folder, split="test")
    elapsed = time.perf_counter() - t0
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert torch.bincount(ds.y, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels
    assert 0.10 < float(ds.x.mean()) < 0.14  # MNIST's mean intensity is 0.1325
    assert elapsed < 3.0, f"decoding the MNIST test set took {elapsed:.2f}s"  # ~0.1 s on an idle core
    sub = load(folder, n=500, seed=7)
    assert len(sub) == 500 and torch.equal(sub.y, load(folder, n=500, seed=7).y)


def test_idx_bad_magic_number_names_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    bad = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 5, 4)), magic=b"\x89PNG")
    raises(DataError, lambda: load(tmp_path), bad, "magic")


def test_idx_truncated_raw_file_names_file(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    raises(DataError, lambda: load(tmp_path), p, "truncated")


def test_idx_truncated_gzip_names_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-12])
    raises(DataError, lambda: load(tmp_path), p, "truncated")


def test_idx_image_count_differs_from_label_count(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    raises(DataError, lambda: load(tmp_path), tmp_path / "t10k-images-idx3-ubyte.gz", "4 images", "3 labels")


def test_idx_label_out_of_range_names_labels_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    lab = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 12, 3]))
    raises(DataError, lambda: load(tmp_path), lab, "label 12", "num_classes")
    assert load(tmp_path, num_classes=13).num_classes == 13


def test_idx_folder_missing_split_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    raises(DataError, lambda: load(tmp_path, split="train"), tmp_path, "train-labels-idx1-ubyte")


# ------------------------------------------------------------------------------------------- CIFAR


def write_batch(path: Path, data: object, labels: object, protocol: int = 2, **extra: object) -> Path:
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data, **extra}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


def make_cifar(folder: Path, protocol: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list] = {"data": [], "labels": []}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        write_batch(folder / name, data, labels, protocol)
        out["data"].append(data)
        out["labels"].append(labels)
    return {
        "train_x": np.concatenate(out["data"][:5]),
        "train_y": [v for labels in out["labels"][:5] for v in labels],
        "test_x": out["data"][5],
        "test_y": out["labels"][5],
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_decode_to_nchw_for_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    ref = make_cifar(tmp_path / "cifar-10-batches-py", protocol)
    ds = load(tmp_path)  # the official archive's subfolder is found
    assert ds.x.shape == (3, 3, 32, 32) and ds.spec.shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.y.tolist() == ref["test_y"]
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    i, c, h, w = 2, 1, 5, 17
    assert float(ds.x[i, c, h, w]) * 255 == pytest.approx(ref["test_x"][i, c * 1024 + h * 32 + w], abs=1e-4)
    assert torch.equal(ds.x, torch.from_numpy(ref["test_x"]).float().div(255).view(3, 3, 32, 32))
    train = load(tmp_path, split="train")
    assert train.x.shape == (10, 3, 32, 32) and train.y.tolist() == ref["train_y"]


def test_cifar_batch_with_numpy1_global_names_loads(tmp_path: Path) -> None:
    """The official files (NumPy 1, Python 2) name ``numpy.core.multiarray._reconstruct``."""
    make_cifar(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    assert b"numpy._core.multiarray\n" in blob
    (tmp_path / "test_batch").write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    ds = load(tmp_path)
    assert ds.y.tolist() == [3, 4] and torch.equal(ds.x.flatten(1), torch.from_numpy(data).float().div(255))


class _Evil:
    def __init__(self, fn: object, arg: str) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self) -> tuple:
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
def test_malicious_cifar_pickle_is_refused_without_running_anything(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    make_cifar(tmp_path)
    evil = (
        _Evil(os.system, f"touch {marker}")
        if how == "os.system"
        else _Evil(exec, f"open({str(marker)!r}, 'w').close()")
    )
    bad = write_batch(tmp_path / "test_batch", evil, [0])
    raises(DataError, lambda: load(tmp_path), bad, "refused to unpickle")
    assert not marker.exists()


def test_cifar_batch_missing_labels_lists_keys(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [1, 2]}))
    raises(DataError, lambda: load(tmp_path), p, "'labels'", "fine_labels")


def test_cifar_batch_wrong_data_shape(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    p = write_batch(tmp_path / "test_batch", np.zeros((2, 1024), np.uint8), [0, 1])
    raises(DataError, lambda: load(tmp_path), p, "(N, 3072)", "(2, 1024)")


def test_cifar_label_count_and_range(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    p = write_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8), [0, 1, 2])
    raises(DataError, lambda: load(tmp_path), p, "2 inputs but 3 labels")
    p = write_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8), [0, 10])
    raises(DataError, lambda: load(tmp_path), p, "label 10")


def test_cifar_missing_batch_and_corrupt_pickle(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    raises(DataError, lambda: load(tmp_path, split="train"), tmp_path, "missing: data_batch_3")
    p = tmp_path / "test_batch"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    raises(DataError, lambda: load(tmp_path), p, "not a CIFAR batch")


# ------------------------------------------------------------------------------------- npz / npy


def test_npz_float_tabular_loads_as_is(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.random((7, 5)), np.array([0, 1, 2, 1, 0, 2, 2])
    np.savez(tmp_path / "tab.npz", x=x, y=y)
    ds = load(tmp_path / "tab.npz")
    assert ds.x.shape == (7, 5) and ds.spec.shape == (5,) and ds.x.dtype == torch.float32
    assert torch.equal(ds.x, torch.from_numpy(x.astype(np.float32))) and ds.y.tolist() == y.tolist()
    assert ds.num_classes == 3 and ds.name == "tab"
    assert load(tmp_path / "tab.npz", num_classes=5).num_classes == 5


def test_npz_keras_layout_uint8_scaled_with_channel_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    xs = {s: rng.integers(0, 256, (n, 6, 6), dtype=np.uint8) for s, n in (("train", 5), ("test", 3))}
    np.savez(tmp_path / "mnist.npz", x_train=xs["train"], y_train=np.arange(5), x_test=xs["test"], y_test=[9, 8, 7])
    test = load(tmp_path / "mnist.npz")
    assert test.x.shape == (3, 1, 6, 6) and test.y.tolist() == [9, 8, 7]
    assert torch.equal(test.x, torch.from_numpy(xs["test"]).float().div(255).unsqueeze(1))
    assert load(tmp_path / "mnist.npz", split="train").y.tolist() == [0, 1, 2, 3, 4]


def test_npz_channels_last_images_become_nchw(tmp_path: Path) -> None:
    x = np.random.default_rng(4).random((2, 8, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x, y=[0, 1])
    ds = load(tmp_path / "c.npz", channels_last=True)
    assert ds.x.shape == (2, 3, 8, 6) and float(ds.x[1, 2, 7, 5]) == float(x[1, 7, 5, 2])


def test_npy_with_sibling_labels_file(tmp_path: Path) -> None:
    x = np.random.default_rng(5).random((4, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([1, 0, 1, 0]))
    (tmp_path / "y.txt").write_text("1\n0\n1\n0\n")
    for labels in ("y.npy", tmp_path / "y.txt", [1, 0, 1, 0]):
        ds = load(tmp_path / "x.npy", labels=labels)
        assert ds.y.tolist() == [1, 0, 1, 0] and ds.x.shape == (4, 3)
    raises(ConfigError, lambda: load(tmp_path / "x.npy"), tmp_path / "x.npy", "labels=")
    raises(DataError, lambda: load(tmp_path / "x.npy", labels="nope.npy"), "nope.npy", "not found")


def test_npz_missing_x_lists_keys_present(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, inputs=np.zeros((2, 3)), y=[0, 1])
    raises(DataError, lambda: load(p), p, "'x'", "inputs")
    assert load(p, x_key="inputs").x.shape == (2, 3)


def test_npz_wrong_dtype_and_shape(tmp_path: Path) -> None:
    p = tmp_path / "s.npz"
    np.savez(p, x=np.array([["a", "b"], ["c", "d"]]), y=[0, 1])
    raises(DataError, lambda: load(p), p, "numeric array")
    np.savez(p, x=np.zeros(4), y=[0, 1, 0, 1])
    raises(DataError, lambda: load(p), p, "(N, ...)")
    np.savez(p, x=np.zeros((2, 3)), y=np.eye(2))
    raises(DataError, lambda: load(p), p, "one-hot")
    np.savez(p, x=np.zeros((2, 3)), y=[0.5, 1.0])
    raises(DataError, lambda: load(p), p, "whole numbers")
    np.savez(p, x=np.zeros((2, 3)), y=[0, -1])
    raises(DataError, lambda: load(p), p, "label -1")
    np.savez(p, x=np.zeros((3, 3)), y=[0, 1])
    raises(DataError, lambda: load(p), p, "3 inputs but 2 labels")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_inputs_rejected(tmp_path: Path, bad: float) -> None:
    p = tmp_path / "n.npz"
    x = np.full((3, 2), 0.5)
    x[2, 1] = bad
    np.savez(p, x=x, y=[0, 1, 0])
    raises(DataError, lambda: load(p), p, "NaN/inf", "sample 2")


def test_npz_values_outside_bounds_rejected_unless_bounds_given(tmp_path: Path) -> None:
    p = tmp_path / "b.npz"
    np.savez(p, x=np.array([[0.0, 255.0], [3.0, 4.0]]), y=[0, 1])
    raises(DataError, lambda: load(p), p, "[0, 255]", "bounds")
    ds = load(p, bounds=(0, 255))
    assert ds.spec.bounds == (0.0, 255.0) and float(ds.x.max()) == 255.0
    np.savez(p, x=np.array([[0, 255], [3, 4]], dtype=np.int64), y=[0, 1])
    raises(DataError, lambda: load(p), p, "only uint8 is scaled")


def test_npz_object_array_and_non_npz_file_refused(tmp_path: Path) -> None:
    p = tmp_path / "o.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object), y=[0, 1])
    raises(DataError, lambda: load(p), p, "object array")
    q = tmp_path / "fake.npz"
    q.write_bytes(pickle.dumps({"x": 1}))
    raises(DataError, lambda: load(q), q, "not a .npy/.npz")


# -------------------------------------------------------------------------------------- images


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(arr).save(path)


def test_image_folder_rgb_classes_sorted_pixels_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    imgs = {}
    for cls in ("dog", "cat"):
        for i in range(2):
            imgs[(cls, i)] = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
            save_png(tmp_path / "pets" / cls / f"{i}.png", imgs[(cls, i)])
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("ignored")
    ds = load(tmp_path / "pets")
    assert ds.x.shape == (4, 3, 5, 7) and ds.y.tolist() == [0, 0, 1, 1] and ds.num_classes == 2
    assert torch.equal(ds.x[2], torch.from_numpy(imgs[("dog", 0)]).permute(2, 0, 1).float().div(255))
    gray = load(tmp_path / "pets", color="grayscale", size=(3, 4))
    assert gray.x.shape == (4, 1, 3, 4) and gray.spec.shape == (1, 3, 4)
    assert load(tmp_path / "pets", size=6).x.shape == (4, 3, 6, 6)


def test_image_folder_grayscale_auto_numeric_classes_and_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for split, classes in (("train", ("2", "10")), ("test", ("10",))):
        for cls in classes:
            save_png(tmp_path / "d" / split / cls / "a.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    test = load(tmp_path / "d")
    assert test.x.shape == (1, 1, 4, 4) and test.y.tolist() == [1] and test.num_classes == 2
    assert load(tmp_path / "d", split="train").y.tolist() == [0, 1]  # "2" before "10"
    assert len(load(tmp_path / "d", split="all")) == 3


def test_image_folder_empty_folder_and_empty_class(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    raises(DataError, lambda: load(tmp_path / "empty"), tmp_path / "empty", "empty folder")
    raises(DataError, lambda: gt.data.load_image_folder(tmp_path / "empty"), tmp_path / "empty", "empty folder")
    (tmp_path / "empty" / "emnist-test-images-idx3-ubyte.gz").write_bytes(b"")
    raises(DataError, lambda: load(tmp_path / "empty"), "no dataset files", "emnist-test-images")
    save_png(tmp_path / "f" / "a" / "x.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "f" / "b").mkdir()
    raises(DataError, lambda: load(tmp_path / "f"), tmp_path / "f" / "b", "no images")


def test_image_folder_corrupt_image_names_file(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "ok.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "b" / "ok.png", np.zeros((4, 4), np.uint8))
    bad = tmp_path / "b" / "zz.png"
    bad.write_bytes(b"definitely not a png")
    raises(DataError, lambda: load(tmp_path), bad, "corrupt")
    good = (tmp_path / "a" / "ok.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    raises(DataError, lambda: load(tmp_path), bad, "corrupt")


def test_image_folder_size_mismatch_and_bad_options(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "b" / "2.png", np.zeros((5, 4, 3), np.uint8))
    raises(DataError, lambda: load(tmp_path), tmp_path / "b" / "2.png", "size=")
    assert load(tmp_path, size=(4, 4)).x.shape == (2, 3, 4, 4)
    raises(ConfigError, lambda: load(tmp_path, color="cmyk"), "color")
    raises(ConfigError, lambda: load(tmp_path, size=(0, 3)), "size")


# --------------------------------------------------------------------------------- front door


def test_digits_by_name_with_reproducible_subset() -> None:
    a, b, c = load("digits", n=20, seed=1), load("digits", n=20, seed=1), load("digits", n=20, seed=2)
    assert a.x.shape == (20, 1, 8, 8) and a.name == "digits-test"
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.x, c.x)
    assert len(load("digits", split="train")) == len(gt.data.load_digits("train"))


def test_unknown_name_lists_accepted_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    raises(UnknownNameError, lambda: load("imagenet"), "'imagenet'", "digits", ".npz", "IDX", "CIFAR-10")
    raises(UnknownNameError, lambda: load("mnist"), "never downloads")


def test_missing_path_and_unsupported_file(tmp_path: Path) -> None:
    raises(DataError, lambda: load(tmp_path / "nothing.npz"), tmp_path / "nothing.npz", "no such file")
    p = tmp_path / "data.csv"
    p.write_text("1,2\n")
    raises(DataError, lambda: load(p), p, "unsupported file type")


def test_bad_front_door_arguments_raise_config_error(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    raises(ConfigError, lambda: load(tmp_path, size=3), "size", "IDX folder", "num_classes")
    raises(ConfigError, lambda: load("digits", n=0), "n must be")
    raises(ConfigError, lambda: load(tmp_path, split="validation"), "split")
    raises(ConfigError, lambda: load("digits", split=None), "split")
