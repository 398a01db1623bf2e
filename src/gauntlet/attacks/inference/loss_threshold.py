"""Membership inference by the target's loss (Yeom et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gauntlet.attacks.inference._base import MembershipAttack, cross_entropy_scores, query_scores
from gauntlet.attacks.registry import register
from gauntlet.models.base import Model


@register
class LossThreshold(MembershipAttack):
    """Training points have lower loss: the score is ``-loss(x, y)`` on the target (one query
    per candidate).  Yeom et al. threshold it at the mean training loss; the result's ROC gives
    every threshold, and ``balanced_accuracy`` the best one."""

    name = "loss_threshold"
    description = "membership inference: a low loss on the target means a training member"
    reference = "Yeom et al., 'Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting', IEEE CSF 2018"

    def __init__(self) -> None:
        self._validate()

    def _scores(
        self, model: Model, x: Tensor, y: Tensor, population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator, seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        return -cross_entropy_scores(model, query_scores(model, x), y), {}
