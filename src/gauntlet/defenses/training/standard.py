"""Standard (empirical-risk) training: cross-entropy on clean inputs, the undefended baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import TrainContext, Trainer


@register
class StandardTraining(Trainer):
    """Plain cross-entropy training on clean data: no defense, the baseline every robust method is
    compared with.  Takes only the common hyperparameters of :class:`Trainer`."""

    name: ClassVar[str] = "standard"
    description: ClassVar[str] = "standard cross-entropy training on clean inputs (the undefended baseline)"

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        self._validate()

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        logits = module(xb)
        ctx.logits = logits
        return F.cross_entropy(logits, yb)
