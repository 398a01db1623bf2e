"""The built-in demo: a small CNN on sklearn's bundled digits, trained once, cached, and audited."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gauntlet.audit.spec import AuditSpec

import torch

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where trained demo models are cached (``$GAUNTLET_CACHE`` or ``~/.cache/gauntlet``)."""
    return Path(os.environ.get("GAUNTLET_CACHE", Path.home() / ".cache" / "gauntlet"))


def digits_model_path(seed: int = 0, epochs: int = 30) -> Path:
    """Where :func:`digits_model` caches its weights (a ``torch.save`` state dict, arch ``digits_cnn``)."""
    key = hashlib.sha256(f"digits_cnn-v1-seed{seed}-epochs{epochs}-torch{torch.__version__}".encode()).hexdigest()[:16]
    return cache_dir() / f"digits_cnn-{key}.pt"


def digits_model(seed: int = 0, epochs: int = 30) -> torch.nn.Module:
    """The demo's DigitsCNN trained on the digits train split; cached by its training recipe."""
    from gauntlet.data import load_digits
    from gauntlet.models.zoo import DigitsCNN, train_classifier

    path = digits_model_path(seed, epochs)
    net = DigitsCNN()
    if path.exists():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval()
        except Exception:  # noqa: BLE001 - corrupt cache: retrain
            log.warning("ignoring unreadable cached model %s", path)
    with torch.random.fork_rng():  # seeded layer initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        net = DigitsCNN()
    train = load_digits("train")
    train_classifier(net, train.x, train.y, epochs=epochs, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return net.eval()


def demo_spec(seed: int = 0) -> AuditSpec:
    """The audit ``gauntlet demo`` runs: the cached digits CNN, the 450 test digits, the quick preset."""
    from gauntlet.audit.spec import load_spec

    digits_model(seed)  # train once and cache
    return load_spec(
        {
            "model": {
                "path": str(digits_model_path(seed)),
                "arch": "digits_cnn",
                "name": "digits-cnn-demo",
                "version": str(seed),
                "num_classes": 10,
                "input_shape": [1, 8, 8],
            },
            "data": {"name": "digits", "seed": seed},
            "threats": [
                {"norm": "linf", "eps": [0.05, 0.1, 0.2, 0.3]},
                {"norm": "l2", "eps": [0.5, 1.0, 2.0]},
            ],
            "attacks": {"preset": "quick"},
            "seed": seed,
        }
    )
