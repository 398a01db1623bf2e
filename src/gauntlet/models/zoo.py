"""Architectures Gauntlet knows by name: a small digits CNN for the demo and tests, and the
architectures of the public pretrained MNIST models (so their state dicts load with
``strict=True``), plus a tiny seeded training loop."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DigitsCNN(nn.Module):
    """A small CNN for 1×8×8 digits (sklearn's bundled set); ~97% test accuracy after a few seconds."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SmallCNN(nn.Module):
    """TRADES' MNIST SmallCNN (Zhang et al. 2019), keys ``feature_extractor.*`` / ``classifier.*``."""

    def __init__(self, num_classes: int = 10, drop: float = 0.5) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()), ("drop", nn.Dropout(drop)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, num_classes)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.feature_extractor(x).flatten(1))


class LeNet5(nn.Module):
    """advertorch's ``LeNet5`` (test_utils), the architecture of its MNIST checkpoints."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.maxpool2 = nn.MaxPool2d(2, 2)
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.relu3 = nn.ReLU()
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.relu1(self.conv1(x)))
        x = self.maxpool2(self.relu2(self.conv2(x)))
        return self.linear2(self.relu3(self.linear1(x.flatten(1))))


def wong_kolter_small(num_classes: int = 10) -> nn.Sequential:
    """Wong & Kolter (2018)'s small provably robust MNIST CNN (flat ``nn.Sequential`` keys 0…7)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def wong_kolter_wide(num_classes: int = 10, hidden: int = 200) -> nn.Sequential:
    """``wong_kolter_small`` with twice the channels and a wider hidden layer: conv32(4×4, s2) –
    conv64(4×4, s2) – fc ``hidden`` – fc10 (flat ``nn.Sequential`` keys 0…7, about 2.3M
    multiply-adds per image at ``hidden=200``, ≈ 4× the small one)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


#: the architectures ``gauntlet.models.load(..., arch=name)`` and ``gauntlet train --arch`` know by name
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "smallcnn": SmallCNN,
    "lenet5": LeNet5,
    "wong_kolter_small": wong_kolter_small,
    "wong_kolter_wide": wong_kolter_wide,
}


def train_classifier(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Standard cross-entropy training with Adam, deterministic for a given ``seed``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(module(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    module.eval()
    return module
