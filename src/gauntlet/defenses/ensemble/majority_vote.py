"""Ensemble by majority vote over the members' predicted labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet.defenses.ensemble._base import Ensemble, log_probabilities
from gauntlet.defenses.registry import register
from gauntlet.models.base import Model, Output


@register
class MajorityVote(Ensemble):
    """Hard majority vote: each member votes for its predicted label.

    Scores are the vote counts normalised by the number of members (``output="probabilities"``),
    so the prediction is the plurality label; ties go to the lowest class index.  Members may be
    labels-only.

    Votes are piecewise constant in the input, so their gradient is zero almost everywhere.  When
    every member offers gradients, the ensemble does too, through a BPDA surrogate (Athalye et al.
    2018): the forward value is the vote share, the backward pass runs through the *mean of the
    members' softmax probabilities* (``s + (votes − s).detach()``), a smooth stand-in whose argmax
    tracks the vote, so gradient attacks still see every member.
    """

    name = "majority_vote"
    description = "Ensemble: plurality vote of the members' labels (gradients through a mean-probability surrogate)"

    def __init__(self) -> None:
        self._validate()

    def output_for(self, members: Sequence[Model]) -> Output:
        return "probabilities"

    def combine(self, outs: Sequence[Tensor], members: Sequence[Model], grad: bool) -> Tensor:
        """Vote shares ``(N, C)``; under a gradient request, with the mean-probability surrogate's gradient."""
        c = int(members[0].num_classes)  # type: ignore[arg-type]
        labels = [o.argmax(dim=1) if o.dim() == 2 else o.to(torch.int64) for o in outs]
        dtype = next((o.dtype for o in outs if o.is_floating_point()), torch.float32)
        votes = torch.stack([F.one_hot(lab, c) for lab in labels]).to(dtype).mean(dim=0)
        if not grad or not all(m.has("scores") for m in members):
            return votes.detach()
        surrogate = torch.stack([log_probabilities(o, m.output).exp() for o, m in zip(outs, members)]).mean(dim=0)
        return surrogate + (votes - surrogate).detach()
