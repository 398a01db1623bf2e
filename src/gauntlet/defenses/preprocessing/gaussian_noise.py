"""Additive Gaussian noise on the input, clipped to the bounds: a randomized defense."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.preprocessing._base import Bounds, Preprocessor
from gauntlet.defenses.registry import register


@register
class GaussianNoise(Preprocessor):
    """Add i.i.d. ``N(0, sigma²)`` noise to every input value and clip to the bounds.

    The random-noise preprocessing family (e.g. the noise layer of Liu et al. 2018, and the
    base transform of randomized smoothing, Cohen et al. 2019, here used as a plain
    preprocessing defense without certification).  Its output is random, so a single-draw
    gradient is a noisy estimate: the adaptive view averages ``eot_samples`` draws (EOT,
    Athalye et al. 2018) and backpropagates through the clipping as the identity (BPDA);
    the naive view takes one draw and autograd, whose clipping zeroes the gradient of every
    value pushed past a bound.

    Args:
        sigma: noise standard deviation in input units (e.g. 0.3 on [0, 1] images), > 0.
    """

    name = "gaussian_noise"
    description = "Additive Gaussian input noise clipped to the bounds (randomized; attack with EOT)"
    randomized = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "sigma": [Interval(float, 0, None, closed="neither")]
    }

    def __init__(self, *, sigma: float = 0.1) -> None:
        self.sigma = sigma
        self._validate()

    def transform(self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """``clip(x + sigma · n, bounds)`` with ``n`` standard normal drawn from ``generator``."""
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + float(self.sigma) * noise).clamp(bounds[0], bounds[1])
