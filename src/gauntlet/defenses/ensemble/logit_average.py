"""Ensemble by averaging the members' logits (or probabilities)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Options
from gauntlet.defenses.ensemble._base import Ensemble, log_probabilities, require_scores
from gauntlet.defenses.registry import register
from gauntlet.errors import ConfigError
from gauntlet.models.base import Model


@register
class LogitAverage(Ensemble):
    """Average the members' scores: the standard deep-ensemble prediction (e.g.
    Lakshminarayanan et al. 2017 average probabilities; Tramèr et al. 2018 attack such averages).

    ``space="logits"``: the ensemble's logits are the mean of the members' logits (every member
    must output logits).  ``space="probabilities"``: the mean of the members' softmax probabilities
    ``p̄``; the ensemble returns ``log p̄`` (computed as a log-sum-exp of log-probabilities), i.e.
    valid logits whose softmax is exactly ``p̄``, so cross-entropy and margin losses stay
    meaningful for attacks.  Both are differentiable, so gradient attacks see the whole ensemble.

    Args:
        space: ``"logits"`` or ``"probabilities"``.
    """

    name = "logit_average"
    description = "Ensemble: mean of the members' logits or probabilities"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"space": [Options(("logits", "probabilities"))]}

    def __init__(self, *, space: str = "logits") -> None:
        self.space = space
        self._validate()

    def check_members(self, members: Sequence[Model]) -> None:
        require_scores(self.name, members)
        if self.space == "logits":
            for i, m in enumerate(members):
                if m.output != "logits":
                    raise ConfigError(
                        f"logit_average: model {i} outputs {m.output}, not logits; use space='probabilities'"
                    )

    def capabilities_for(self, members: Sequence[Model]) -> frozenset[str]:
        caps = {"scores", "labels"}
        if all(m.has("gradients") for m in members):
            caps.add("gradients")
        return frozenset(caps)

    def combine(self, outs: Sequence[Tensor], members: Sequence[Model], grad: bool) -> Tensor:
        """Mean logits, or ``log`` of the mean probability."""
        if self.space == "logits":
            return torch.stack(list(outs)).mean(dim=0)
        logp = torch.stack([log_probabilities(o, m.output) for o, m in zip(outs, members)])
        return torch.logsumexp(logp, dim=0) - math.log(len(outs))
