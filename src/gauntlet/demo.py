"""The built-in demo: a small CNN on sklearn's bundled digits, attacked with PGD."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where trained demo models are cached (``$GAUNTLET_CACHE`` or ``~/.cache/gauntlet``)."""
    return Path(os.environ.get("GAUNTLET_CACHE", Path.home() / ".cache" / "gauntlet"))


def digits_model(seed: int = 0, epochs: int = 30) -> torch.nn.Module:
    """The demo's DigitsCNN trained on the digits train split; cached by its training recipe."""
    from gauntlet.data import load_digits
    from gauntlet.models.zoo import DigitsCNN, train_classifier

    key = hashlib.sha256(f"digits_cnn-v1-seed{seed}-epochs{epochs}-torch{torch.__version__}".encode()).hexdigest()[:16]
    path = cache_dir() / f"digits_cnn-{key}.pt"
    net = DigitsCNN()
    if path.exists():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval()
        except Exception:  # corrupt cache: retrain
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


def run_demo(eps: list[float], steps: int = 20, seed: int = 0) -> dict[str, Any]:
    import gauntlet as gt
    from gauntlet.data import load_digits

    test = load_digits("test")
    model = gt.models.TorchModel(digits_model(seed), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    attack = gt.attacks.create("pgd", norm="linf", eps=list(eps), steps=steps)
    res = attack.run(model, test.x, test.y, seed=seed)
    per_eps = [res.at(i) for i in range(len(eps))]
    return {
        "model": "DigitsCNN (digits)",
        "n": len(test),
        "clean_accuracy": float(res.clean_correct.float().mean()),
        "eps": list(eps),
        "robust_accuracy": [r.robust_accuracy for r in per_eps],
        "seconds": [res.seconds / len(eps)] * len(eps),
    }
