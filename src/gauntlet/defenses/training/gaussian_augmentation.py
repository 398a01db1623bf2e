"""Gaussian data augmentation: the base-classifier training of randomized smoothing
(Cohen, Rosenfeld & Kolter, ICML 2019, §4 "Training")."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import POSITIVE, TrainContext, Trainer


@register
class GaussianAugmentation(Trainer):
    """Cross-entropy on inputs corrupted by isotropic Gaussian noise ``x + N(0, σ² I)``.

    This is how Cohen et al. (2019) train the base classifier ``f`` of a smoothed classifier: the
    smoothed prediction ``argmax_c P[f(x + δ) = c]`` is only accurate, and its certified radius
    ``σ Φ⁻¹(p_A)`` only large, if ``f`` classifies noisy inputs well.  Train with the ``sigma`` you
    will certify with (``randomized_smoothing``).  As in the paper's code, the noisy inputs are not
    clipped to the bounds (the smoothing noise is not either).  Noise comes from the run's seeded
    generator, so training is deterministic and resumable.

    Args:
        sigma: noise standard deviation in input units (the paper: 0.12, 0.25, 0.5, 1.0 on [0, 1]).
        **common: the :class:`Trainer` hyperparameters (epochs, batch_size, lr, ...).
    """

    name: ClassVar[str] = "gaussian_augmentation"
    description: ClassVar[str] = "training on Gaussian-noise-augmented inputs, for randomized smoothing (Cohen et al. 2019)"
    reference: ClassVar[str] = (
        'Cohen et al., "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019, '
        "https://arxiv.org/abs/1902.02918"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"sigma": POSITIVE}

    def __init__(self, *, sigma: float = 0.25, **common: Any) -> None:
        super().__init__(**common)
        self.sigma = sigma
        self._validate()

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        noise = torch.randn(xb.shape, generator=ctx.generator, device=xb.device, dtype=xb.dtype)
        logits = module(xb + float(self.sigma) * noise)
        ctx.logits = logits
        return F.cross_entropy(logits, yb)
