"""Label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture", §7)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import TrainContext, Trainer


@register
class LabelSmoothing(Trainer):
    """Cross-entropy against smoothed targets ``(1 - ε)·onehot(y) + ε / K`` (Szegedy et al. 2016).

    The loss is ``(1 - ε)·CE(z, y) + ε·mean_k(−log softmax(z)_k)``.  It regularises
    over-confident logits; as a defense it mostly *masks* gradients of weak attacks rather than
    adding robustness (it is here as a baseline and for audits to expose that).

    Args:
        smoothing: ε in ``[0, 1)``; 0 is standard training.
        **common: the :class:`Trainer` hyperparameters.
    """

    name: ClassVar[str] = "label_smoothing"
    description: ClassVar[str] = "cross-entropy on smoothed labels (Szegedy et al. 2016)"
    reference: ClassVar[str] = (
        'Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016, '
        "https://arxiv.org/abs/1512.00567"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "smoothing": [Interval(float, 0, 1, closed="left")]
    }

    def __init__(self, *, smoothing: float = 0.1, **common: Any) -> None:
        super().__init__(**common)
        self.smoothing = smoothing
        self._validate()

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        logits = module(xb)
        ctx.logits = logits
        return F.cross_entropy(logits, yb, label_smoothing=float(self.smoothing))
