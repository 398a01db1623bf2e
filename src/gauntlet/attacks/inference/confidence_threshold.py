"""Membership inference by the target's confidence (Salem et al. 2019)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Options
from gauntlet.attacks.inference._base import MembershipAttack, query_scores, true_class_probability
from gauntlet.attacks.registry import register
from gauntlet.models.base import Model


@register
class ConfidenceThreshold(MembershipAttack):
    """Training points get confident answers: the score is the target's probability of the true
    class (``of="label"``, needs the labels) or its top probability (``of="max"``, label-free,
    Salem et al.'s adversary 3)."""

    name = "confidence_threshold"
    description = "membership inference: a confident answer from the target means a training member"
    reference = "Salem et al., 'ML-Leaks: Model and Data Independent Membership Inference Attacks and Defenses', NDSS 2019"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"of": [Options(("label", "max"))]}

    def __init__(self, *, of: str = "label") -> None:
        self.of = of
        self._validate()

    def _scores(
        self, model: Model, x: Tensor, y: Tensor, population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator, seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        s = query_scores(model, x)
        if self.of == "label":
            return true_class_probability(model, s, y), {}
        probs = s.double() if model.output == "probabilities" else torch.softmax(s.double(), dim=1)
        return probs.max(dim=1).values, {}
