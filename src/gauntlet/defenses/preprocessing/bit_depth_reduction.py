"""Bit-depth reduction, the colour-depth squeezer of feature squeezing (Xu, Evans & Qi 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.preprocessing._base import (
    Bounds,
    Preprocessor,
    check_batch_tensor,
    check_bounds,
    check_int_param,
)
from gauntlet.defenses.registry import register


def bit_depth(x: Tensor, bits: int, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """Reduce every value of ``x`` to ``bits`` bits of depth (Xu et al. 2018, §4.1).

    With ``u = (x − low) / (high − low)`` the value scaled to [0, 1], the result is
    ``low + (high − low) · round(u · (2^bits − 1)) / (2^bits − 1)``: ``2^bits`` evenly spaced
    levels that include both bounds.  ``round`` is round-half-to-even (``torch.round``, like
    NumPy's ``rint`` in the authors' code), so with ``bits=1`` the value 0.5 maps to 0.

    Works on any shape; ``x`` must be a finite float tensor inside ``bounds``.  Autograd through
    it gives a zero gradient (rounding is piecewise constant).
    """
    bits = check_int_param(bits, "bits", 1, 16, "bit_depth")
    lo, hi = check_bounds(bounds, "bit_depth")
    x = check_batch_tensor(x, "bit_depth", bounds=(lo, hi))
    levels = float(2**bits - 1)
    u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return lo + (hi - lo) * (torch.round(u * levels) / levels)


@register
class BitDepthReduction(Preprocessor):
    """Feature squeezing by colour-depth reduction (Xu, Evans & Qi, NDSS 2018).

    Quantizes every input value to ``bits`` bits (see :func:`bit_depth`); the authors use 1 bit
    on MNIST and 4–5 bits on CIFAR-10 / ImageNet.  Rounding has a zero gradient almost
    everywhere, so a naive gradient attack sees nothing; the adaptive view uses BPDA with the
    identity (Athalye et al. 2018), which breaks it.

    Args:
        bits: bits of depth kept, an int in [1, 16].
    """

    name = "bit_depth_reduction"
    description = "Feature squeezing: quantize inputs to a few bits of depth (Xu et al. 2018)"
    reference = (
        'Xu et al., "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018, '
        "https://arxiv.org/abs/1704.01155"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"bits": [Interval(int, 1, 16)]}

    def __init__(self, *, bits: int = 4) -> None:
        self.bits = bits
        self._validate()

    def transform(self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """:func:`bit_depth` with this defense's ``bits``."""
        return bit_depth(x, self.bits, bounds)
