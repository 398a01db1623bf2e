"""``gauntlet train``: trains on digits, writes weights that load back, resumes, one-line errors with exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import gauntlet as gt
from gauntlet.cli import app
from gauntlet.defenses.training._base import Trainer, accuracy, load_checkpoint

runner = CliRunner()

# 2 epochs of fast AT at ε = 0.1 on the 1347 training digits: about half a second
FAST = ["--method", "fast_at", "-p", "eps=0.1", "-p", "lr=0.01", "-p", "batch_size=64", "--epochs", "2", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def invoke(*args: Any):
    return runner.invoke(app, ["train", *[str(a) for a in args]])


def test_train_writes_safetensors_weights_that_gauntlet_models_load_reads_back(
    tmp_path: Path, digits_test: gt.data.Dataset
) -> None:
    out = tmp_path / "fast.safetensors"
    res = invoke(*FAST, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["method"] == "fast_at" and report["params"]["eps"] == 0.1 and report["params"]["epochs"] == 2
    assert report["clean_accuracy"] > 0.5 and 0 <= report["robust_accuracy"] <= report["clean_accuracy"]
    assert report["eval_eps"] == 0.1 and report["data"] == {"name": "digits-train", "n_train": 1347, "n_eval": 450}
    assert res.stderr.strip() == report["summary"]
    model = gt.models.load(out, arch="digits_cnn")
    assert isinstance(model, gt.models.TorchModel)
    assert accuracy(model.module, digits_test.x, digits_test.y) == pytest.approx(report["clean_accuracy"])


def test_train_text_output_and_pt_weights(tmp_path: Path) -> None:
    out = tmp_path / "std.pt"
    res = invoke("--method", "standard", "--epochs", "1", "--threads", "1", "--out", out)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].split() == ["epoch", "loss", "train", "seconds"]
    assert re.match(r"standard on digits-train \(1347 samples, 1 epochs, [\d.]+s\): clean accuracy [\d.]+% on 450 test samples; weights in ", lines[-1])
    assert "PGD" not in lines[-1]  # standard training has no eps, so no robust check unless --eval-eps
    sd = torch.load(out, weights_only=True)
    assert sd.keys() == gt.models.zoo.DigitsCNN().state_dict().keys()


def test_rerunning_an_interrupted_command_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "whole.safetensors"
    assert invoke(*FAST, "--out", whole).exit_code == 0

    out, ckpt = tmp_path / "m.safetensors", tmp_path / "m.ckpt"
    original = Trainer.fit

    def interrupted_fit(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        def stop(record: Any) -> None:
            if record.epoch == 1:
                raise KeyboardInterrupt

        return original(self, *args, **kwargs, callback=stop)

    monkeypatch.setattr(Trainer, "fit", interrupted_fit)
    res = invoke(*FAST, "--out", out, "--checkpoint", ckpt)
    assert res.exit_code == 130 and "run the same command again to resume" in res.stderr
    assert load_checkpoint(ckpt)["epoch"] == 1 and not out.exists()
    monkeypatch.setattr(Trainer, "fit", original)

    res = invoke(*FAST, "--out", out, "--checkpoint", ckpt, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["resumed_from"] == 1
    assert out.read_bytes() == whole.read_bytes()  # bitwise the uninterrupted run
    res = invoke(*FAST, "--out", out, "--checkpoint", ckpt)
    assert res.exit_code == 0 and "2 finished epoch(s) reused" in res.stdout
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "fast_t"], r"unknown defense 'fast_t'; did you mean 'fast_at'\?"),
        (["-p", "eps"], r"--param 'eps': expected key=value"),
        (["-p", "eps=[0.1"], r"--param 'eps=\[0.1': the value is not a valid YAML scalar"),
        (["-p", "eps=-0.1"], r"pgd_at: parameter 'eps' must be a finite number > 0, got -0.1"),
        (["-p", "epoch=3"], r"pgd_at: unknown parameter 'epoch'; did you mean 'epochs'\?"),
        (["-p", "eps=0.1", "-p", "eps=0.2"], r"--param eps is given twice"),
        (["--epochs", "2", "-p", "epochs=3"], r"--epochs or --param epochs="),
        (["--arch", "resnet9000"], r"unknown architecture 'resnet9000'"),
        (["--data", "mnist"], r"dataset 'mnist' is not bundled"),
        (["--out", "model.onnx"], r"--out 'model.onnx': use a .safetensors"),
    ],
)
def test_bad_options_give_one_line_errors_and_exit_code_2(args: list[str], message: str, tmp_path: Path) -> None:
    extra = [] if "--out" in args else ["--out", tmp_path / "m.safetensors"]
    res = invoke(*args, *extra, "--threads", "1")
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.output
    assert re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "m.safetensors").exists()
    res = invoke(*args, *extra, "--threads", "1", "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["exit_code"] == 2


def test_a_checkpoint_from_other_settings_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    assert invoke(*FAST, "--out", tmp_path / "a.safetensors", "--checkpoint", ckpt).exit_code == 0
    res = invoke(*FAST, "--seed", "1", "--out", tmp_path / "b.safetensors", "--checkpoint", ckpt)
    assert res.exit_code == 2
    assert "made with different data, hyperparameters, seed or architecture" in res.stderr
