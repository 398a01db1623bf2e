"""Release the predicted label only."""

from __future__ import annotations

import torch
from torch import Tensor

from gauntlet.defenses.privacy._base import OutputDefense
from gauntlet.defenses.registry import register


@register
class LabelsOnly(OutputDefense):
    """The API returns the top-1 label and nothing else: score-based extraction and membership
    attacks are refused by the wrapped model (a labels-only black box); label-only attacks
    (``copycat``, decision-based evasion, ``label_only`` membership) still apply."""

    name = "labels_only"
    description = "output hardening: release the predicted label only"
    reference = "Tramèr et al., 'Stealing Machine Learning Models via Prediction APIs', USENIX Security 2016 (§7, class labels only)"
    releases = "labels"

    def __init__(self) -> None:
        self._validate()

    def release(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        return probs.argmax(dim=1)
