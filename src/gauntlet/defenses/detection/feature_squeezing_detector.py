"""Feature-squeezing detection (Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples
in Deep Neural Networks", NDSS 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.defenses.detection._base import Detector, probabilities
from gauntlet.defenses.preprocessing.bit_depth_reduction import bit_depth
from gauntlet.defenses.preprocessing.median_filter import median_filter
from gauntlet.defenses.registry import register
from gauntlet.errors import ConfigError
from gauntlet.models.base import Model


@register
class FeatureSqueezingDetector(Detector):
    """Flag inputs whose prediction moves when the input is squeezed (Xu, Evans & Qi 2018).

    The score is the largest L1 distance between the model's softmax on ``x`` and on a squeezed
    copy of ``x``, over the squeezers in use (the paper's "joint" detector)::

        score(x) = max_{sq} || softmax(f(x)) − softmax(f(sq(x))) ||_1        ∈ [0, 2]

    Squeezers: colour-depth reduction to ``bits`` bits
    (:func:`~gauntlet.defenses.preprocessing.bit_depth_reduction.bit_depth`) and a
    ``median_size × median_size`` median filter
    (:func:`~gauntlet.defenses.preprocessing.median_filter.median_filter`, images only).  The
    defaults are the paper's MNIST configuration (1-bit depth, 2×2 median); use ``bits=5`` and
    ``median_size=2`` on CIFAR-10 as they do.  ``None`` drops a squeezer.  The threshold comes
    from :meth:`~Detector.fit` on clean data (the paper also sets it at a 5 % clean FPR).

    Gradients: the median filter is differentiable almost everywhere and is backpropagated
    through exactly; bit-depth reduction is piecewise constant (zero gradient), so the adaptive
    view (``score(x, adaptive=True)``, used by detector-aware attacks) passes its gradient straight
    through (BPDA with the identity, Athalye et al. 2018).

    Args:
        bits: bits of depth kept by the colour-depth squeezer, an int in [1, 16], or ``None``.
        median_size: side of the median-filter window, an int >= 2, or ``None``.
    """

    name = "feature_squeezing_detector"
    description = "Feature squeezing: max L1 gap between softmax on x and on squeezed x (Xu et al. 2018)"
    reference = (
        'Xu et al., "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018, '
        "https://arxiv.org/abs/1704.01155"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "bits": [Interval(int, 1, 16), IsNone()],
        "median_size": [Interval(int, 2, None), IsNone()],
    }

    def __init__(self, *, bits: int | None = 1, median_size: int | None = 2) -> None:
        self.bits = bits
        self.median_size = median_size
        self._validate()
        if bits is None and median_size is None:
            raise ConfigError(f"{self.name}: at least one squeezer is needed; set bits or median_size")

    def _check_model(self, model: Model) -> None:
        shape = model.input_spec.shape
        if self.median_size is not None and shape is not None and len(shape) != 3:
            raise ConfigError(
                f"{self.name}: median_size needs image inputs (C, H, W) but the model's input shape is {shape}; "
                "pass median_size=None"
            )

    def squeeze(self, x: Tensor, *, adaptive: bool = False, bounds: tuple[float, float] | None = None) -> list[Tensor]:
        """The squeezed copies of ``x``, one per squeezer in use (bit depth first).

        ``bounds`` is the valid input range (default: the fitted model's, else (0, 1));
        ``adaptive`` gives the bit-depth copy the identity's gradient (BPDA, same values)."""
        if bounds is None:
            bounds = self.model_.bounds if self.model_ is not None else (0.0, 1.0)
        out = []
        if self.bits is not None:
            q = bit_depth(x, self.bits, bounds)
            out.append(x + (q - x).detach() if adaptive else q)
        if self.median_size is not None:
            if x.dim() != 4:
                raise ConfigError(
                    f"{self.name}: median_size needs image batches (N, C, H, W), got shape {tuple(x.shape)}; pass median_size=None"
                )
            out.append(median_filter(x, self.median_size))
        return out

    def _score_logits(self, x: Tensor, adaptive: bool) -> tuple[Tensor, Tensor]:
        model = self.model_
        assert model is not None
        views = [x, *self.squeeze(x, adaptive=adaptive)]
        n = x.shape[0]
        out = model.scores(torch.cat(views), count=False)  # one forward pass for x and every squeezed copy
        p = probabilities(out, model.output).view(len(views), n, -1)
        dist = (p[1:] - p[:1]).abs().sum(dim=2)  # (squeezers, N)
        return dist.amax(dim=0), out[:n]
