"""Local median smoothing, the spatial squeezer of feature squeezing (Xu, Evans & Qi 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.preprocessing._base import (
    Bounds,
    Preprocessor,
    check_batch_tensor,
    check_int_param,
    pad_symmetric,
)
from gauntlet.defenses.registry import register


def median_filter(x: Tensor, size: int) -> Tensor:
    """Median over a ``size × size`` window around every pixel of every channel of ``(N, C, H, W)``.

    Matches ``scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")``, the call
    in Xu et al.'s code: borders are padded by half-sample symmetric reflection, the window spans
    offsets ``−(size // 2) … size − 1 − size // 2`` (so an even size such as 2 reaches one pixel
    up/left, as in the paper's 2×2 filter), and for an even number of values the upper median
    (sorted index ``size² // 2``) is taken.  Differentiable almost everywhere (the gradient goes
    to the selected pixel).
    """
    size = check_int_param(size, "size", 1, None, "median_filter")
    x = check_batch_tensor(x, "median_filter", images=True)
    if size == 1:
        return x.clone()
    before = size // 2
    after = size - 1 - before
    xp = pad_symmetric(x, before, after, before, after)
    n, c, h, w = x.shape
    patches = xp.unfold(2, size, 1).unfold(3, size, 1).reshape(n, c, h, w, size * size)
    return patches.kthvalue(size * size // 2 + 1, dim=-1).values


@register
class MedianFilter(Preprocessor):
    """Feature squeezing by local median smoothing (Xu, Evans & Qi, NDSS 2018).

    Replaces every pixel by the median of its ``size × size`` neighbourhood (see
    :func:`median_filter`); the authors use 2×2 on MNIST and CIFAR-10, 2×2 or 3×3 on ImageNet.
    This is also what IBM ART calls ``SpatialSmoothing``.

    The median is differentiable almost everywhere (its gradient routes to the selected pixel),
    so both views backpropagate through it exactly (``differentiable = True``): BPDA with the
    identity, the usual stand-in for non-differentiable squeezers (Athalye et al. 2018), is a
    *worse* direction here: in a pilot run (clean LeNet5, first 100 MNIST test images, PGD-10
    L∞ at ε = 0.1, 2×2 window) it left 86 % robust accuracy where the exact gradient left 69 %.

    Args:
        size: window side in pixels, an int >= 1 (1 is the identity).
    """

    name = "median_filter"
    description = "Feature squeezing: local median smoothing over a size x size window (Xu et al. 2018)"
    reference = (
        'Xu et al., "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018, '
        "https://arxiv.org/abs/1704.01155"
    )
    image_only = True
    differentiable = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"size": [Interval(int, 1, None)]}

    def __init__(self, *, size: int = 2) -> None:
        self.size = size
        self._validate()

    def transform(self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """:func:`median_filter` with this defense's ``size``."""
        return median_filter(x, self.size)
