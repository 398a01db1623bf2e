"""Training defenses; importing this package registers every module in it."""

from __future__ import annotations

import importlib
import pkgutil

from gauntlet.defenses.training._base import (
    EpochRecord,
    TrainContext,
    Trainer,
    TrainingResult,
    accuracy,
    load_checkpoint,
    lr_at,
    module_mode,
    perturb,
    train,
)

__all__ = [
    "EpochRecord",
    "TrainContext",
    "Trainer",
    "TrainingResult",
    "accuracy",
    "load_checkpoint",
    "lr_at",
    "module_mode",
    "perturb",
    "train",
]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
