"""Shared fixtures: small data and models, trained once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.data import load_digits
from gauntlet.models.zoo import DigitsCNN, train_classifier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: ../shared (MNIST data and pretrained models) sits beside the checkout in CI only")
    return p


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test, restored after: tiny models run fastest that way on a
    loaded 2-core machine.  A module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_module(digits_net: nn.Module) -> Iterator[None]:
    """:func:`one_thread` for a whole module, module-scoped fixtures included; the shared
    ``digits_net`` is trained first, under the session's thread setting, so its weights do not
    depend on which module asked for it first."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_train() -> gt.data.Dataset:
    return load_digits("train")


@pytest.fixture(scope="session")
def digits_test() -> gt.data.Dataset:
    return load_digits("test")


@pytest.fixture(scope="session")
def digits_net(digits_train: gt.data.Dataset) -> nn.Module:
    """An undefended DigitsCNN (~97% clean test accuracy), trained once per session."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN()
    return train_classifier(net, digits_train.x, digits_train.y, epochs=15, seed=0)


@pytest.fixture()
def digits_model(digits_net: nn.Module) -> gt.models.TorchModel:
    """A fresh adapter (fresh query counters) around the shared trained network."""
    return gt.models.TorchModel(digits_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))


@pytest.fixture()
def digits_batch(digits_test: gt.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """32 test digits and their labels."""
    return digits_test.x[:32].clone(), digits_test.y[:32].clone()


def clear_argmax(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """Rows of ``scores (N, C)`` whose largest entry beats the runner-up by more than ``margin``.

    Two computation paths of the same scores (another batch size, another library, another
    CPU) round differently; only on these rows must their argmax agree exactly.
    """
    top2 = scores.detach().double().topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) > margin


class Linear(nn.Module):
    """An affine classifier z = W x + b on flat inputs: the closed-form oracle for minimal attacks."""

    def __init__(self, d: int = 20, k: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, k)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(k, d, generator=g))
            self.fc.bias.copy_(torch.randn(k, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture()
def linear_net() -> Linear:
    return Linear()
