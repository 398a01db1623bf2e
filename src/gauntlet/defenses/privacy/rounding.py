"""Release class probabilities rounded to a few decimals."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.privacy._base import OutputDefense
from gauntlet.defenses.registry import register


@register
class Rounding(OutputDefense):
    """Probabilities rounded to ``decimals`` digits (what many prediction APIs return).

    Rounding destroys the low-order digits that equation-solving extraction and confidence-based
    membership inference read.  The label is kept: where rounding would create a tie or move the
    maximum, the original top class keeps its (rounded-up) value, so top-1 agreement with the
    bare model stays exactly 1.

    Args:
        decimals: digits kept after the decimal point.
    """

    name = "rounding"
    description = "output hardening: round the released probabilities to d decimals"
    reference = "Tramèr et al., 'Stealing Machine Learning Models via Prediction APIs', USENIX Security 2016 (§7, rounding confidences)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"decimals": [Interval(int, 0, None)]}

    def __init__(self, *, decimals: int = 2) -> None:
        self.decimals = decimals
        self._validate()

    def release(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        scale = 10.0**self.decimals
        out = torch.round(probs * scale) / scale
        label = probs.argmax(dim=1, keepdim=True)
        top = torch.ceil(probs.gather(1, label) * scale) / scale
        # the label's value is rounded up; any other class at that value (a tie) goes one step down
        tie = (out >= top) & (torch.arange(out.shape[1], device=out.device)[None] != label)
        out = torch.where(tie, top - 1.0 / scale, out).clamp_min(0.0)
        return out.scatter(1, label, top)
