"""Release only the k largest class probabilities (the rest as zeros)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval
from gauntlet.defenses.privacy._base import OutputDefense
from gauntlet.defenses.registry import register


@register
class TopK(OutputDefense):
    """Only the ``k`` largest probabilities are released; the others read 0.

    With ``renormalize=True`` the kept ones are rescaled to sum to 1 (the API hides that
    anything was dropped).  Ties keep the lower class index.  ``k = 1`` is the label with its
    confidence.  The label never changes.

    Args:
        k: number of classes released per query.
        renormalize: rescale the kept probabilities to sum to 1.
    """

    name = "top_k"
    description = "output hardening: release only the k largest class probabilities"
    reference = "Tramèr et al., 'Stealing Machine Learning Models via Prediction APIs', USENIX Security 2016 (§7, countermeasures)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "k": [Interval(int, 1, None)],
        "renormalize": [Boolean()],
    }

    def __init__(self, *, k: int = 1, renormalize: bool = False) -> None:
        self.k = k
        self.renormalize = renormalize
        self._validate()

    def release(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        k = min(self.k, probs.shape[1])
        idx = probs.topk(k, dim=1).indices
        out = torch.zeros_like(probs).scatter_(1, idx, probs.gather(1, idx))
        if self.renormalize:
            out = out / out.sum(dim=1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
        return out
