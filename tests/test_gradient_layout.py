"""TorchModel's gradient-pass fast path (a channels-last copy of a convolutional network, issue 14):
input gradients equal to the module's own on every zoo architecture, used only in attack mode on
big enough 4-D batches, rebuilt on a weight change, refused with one log line when the network
cannot be copied, and attacks' robust accuracy unchanged on a shared model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.attacks.base import loss_and_grad
from gauntlet.models._layout import MIN_BATCH
from gauntlet.models.zoo import ARCHITECTURES, LeNet5
from tests.test_fast_forward import input_shape, rand, seeded

N = 2 * MIN_BATCH


def grads(model: gt.models.TorchModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    with model.attack_mode():
        _loss, g, logits = loss_and_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    return g, logits


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_input_gradients_equal_the_modules_own_on_every_zoo_architecture(arch: str) -> None:
    net = seeded(ARCHITECTURES[arch])
    shape = input_shape(net)
    x, y = rand(N, shape), torch.arange(N) % 10
    fast = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=shape)
    slow = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=shape, fast=False)
    (gf, lf), (gs, ls) = grads(fast, x, y), grads(slow, x, y)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    assert fast.gradient_path == ("channels_last" if convs else "n/a: no convolution over several channels")
    assert torch.allclose(lf, ls, rtol=0, atol=1e-5 * max(1.0, float(ls.abs().max())))
    assert torch.allclose(gf, gs, rtol=0, atol=1e-5 * max(1e-6, float(gs.abs().max())))
    assert gf.shape == x.shape and fast.grad_evals == N


def test_the_path_is_taken_only_in_attack_mode_and_on_big_enough_batches() -> None:
    net = seeded(LeNet5)
    model = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    y = torch.arange(N) % 10
    # training (weights require gradients): the module itself runs and its weights get gradients
    x = rand(N, (1, 28, 28)).requires_grad_(True)
    F.cross_entropy(model.scores(x), y).backward()
    assert model.gradient_path == "pending" and net.conv1.weight.grad is not None
    grads(model, rand(MIN_BATCH - 1, (1, 28, 28)), y[: MIN_BATCH - 1])
    assert model.gradient_path == "pending"  # below the minimum batch
    grads(model, rand(N, (1, 28, 28)), y)
    assert model.gradient_path == "channels_last" and model._grad.builds == 1
    grads(model, rand(N + 5, (1, 28, 28)), torch.arange(N + 5) % 10)
    assert model._grad.builds == 1  # another batch size reuses the copy
    assert all(p.requires_grad for p in net.parameters())  # attack mode restored the flags


def test_a_weight_change_rebuilds_the_copy_and_the_gradients_follow() -> None:
    net = seeded(LeNet5)
    fast = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    slow = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28), fast=False)
    x, y = rand(N, (1, 28, 28)), torch.arange(N) % 10
    grads(fast, x, y)
    with torch.no_grad():
        net.linear2.weight.mul_(-2.0)
    gf, _ = grads(fast, x, y)
    gs, _ = grads(slow, x, y)
    assert fast._grad.builds == 2
    assert torch.allclose(gf, gs, rtol=0, atol=1e-5 * float(gs.abs().max()))


class _Uncopyable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 10)
        self.stream = (i for i in range(3))  # a generator: deepcopy refuses it

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_a_network_that_cannot_be_copied_runs_eagerly_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    net = seeded(_Uncopyable)
    model = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(3, 8, 8))
    x, y = rand(N, (3, 8, 8)), torch.arange(N) % 10
    with caplog.at_level(logging.WARNING, logger="gauntlet.models._layout"):
        g, _ = grads(model, x, y)
        grads(model, x, y)
    assert model.gradient_path.startswith("eager: the network cannot be copied to channels-last (TypeError")
    assert len([r for r in caplog.records if "channels-last gradient path refused" in r.getMessage()]) == 1
    slow = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(3, 8, 8), fast=False)
    assert torch.equal(g, grads(slow, x, y)[0])


def test_pgd_robust_accuracy_is_unchanged_on_the_shared_lenet5() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared"
    weights = shared / "models" / "advertorch_lenet5_mnist_clntrained.pt"
    if not weights.exists():
        pytest.skip(f"{weights} not found (the shared MNIST models sit beside the repository)")
    model = gt.models.load(str(weights), arch="lenet5")
    fast = gt.models.TorchModel(model.module, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    slow = gt.models.TorchModel(model.module, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28), fast=False)
    from gauntlet.data import load_idx

    data = load_idx(shared / "data" / "mnist", split="test")
    x, y = data.x[:128], data.y[:128]
    atk = gt.attacks.create("pgd", eps=0.15, steps=10)
    a, b = atk.run(fast, x, y, seed=0), atk.run(slow, x, y, seed=0)
    assert fast.gradient_path == "channels_last"
    # sign steps on near-zero gradient coordinates may differ; the robust accuracy may not move beyond a point or two
    assert abs(int(a.success.sum()) - int(b.success.sum())) <= 2
