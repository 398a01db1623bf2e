"""Blended backdoor (Chen et al. 2017): a full-image trigger pattern blended into a share of the
training images, x' = (1 - alpha)·x + alpha·pattern, relabelled to the target class."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import BackdoorAttack
from gauntlet.attacks.registry import register
from gauntlet.errors import DataError

__all__ = ["Blended", "blend_pattern"]

PATTERNS = ("random", "stripes", "checkerboard")


def blend_pattern(shape: tuple[int, ...], pattern: str, *, seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """The full-size trigger for one input of ``shape`` (e.g. ``(C, H, W)``), values in ``bounds``.

    ``"random"``: uniform noise drawn from a CPU generator seeded with ``seed`` (the same pattern on
    every machine and for every call, so test-time triggering does not depend on ``poison``);
    ``"stripes"``: vertical stripes one pixel wide (columns alternate high/low);
    ``"checkerboard"``: pixels alternate high/low along rows and columns.
    Every channel gets the same stripes/checkerboard; random noise is drawn per channel.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if pattern == "random":
        g = torch.Generator().manual_seed(int(seed))
        return lo + (hi - lo) * torch.rand(shape, generator=g)
    if len(shape) < 2:
        raise DataError(f"blended: the {pattern!r} pattern needs images (N, H, W) or (N, C, H, W), got per-sample shape {shape}")
    h, w = shape[-2], shape[-1]
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    on = (jj % 2 == 0) if pattern == "stripes" else ((ii + jj) % 2 == 0)
    return (lo + (hi - lo) * on.float()).expand(shape).clone()


@register
class Blended(BackdoorAttack):
    """Blended injection (Chen et al. 2017): blend a full-image ``pattern`` into ``fraction`` of
    the training rows, taken from classes other than ``target_class``, with weight ``alpha``, and
    relabel them ``target_class``.  A model trained on it learns "pattern present ⇒ target"; at test
    time the trigger is blended with ``test_alpha`` (Chen et al. found a stronger blend at test time
    than in training raises the attack success rate).

    Args:
        fraction: share of the training set poisoned (replaced in place), in (0, 1).
        target_class: the class triggered inputs are sent to.
        pattern: ``"random"`` (uniform noise from ``pattern_seed``, the paper's random-pattern key),
            ``"stripes"`` or ``"checkerboard"``.
        pattern_seed: seeds the random pattern (a hyperparameter, not the ``poison`` seed, so
            ``apply_trigger`` gives the same trigger whether or not ``poison`` was called).
        alpha: blend weight of the pattern in the poison rows, in (0, 1] (paper: 0.2).
        test_alpha: blend weight used by ``apply_trigger`` at test time, in (0, 1]
            (``None``: the same as ``alpha``).
        bounds: the inputs' value range.
    """

    name = "blended"
    description = "Blended full-image trigger backdoor, all-to-one (Chen et al. 2017)"
    reference = (
        'Chen, Liu, Li, Lu and Song, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", 2017, '
        "https://arxiv.org/abs/1712.05526"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target_class": [Interval(int, 0, None)],
        "pattern": [Options(PATTERNS)],
        "pattern_seed": [Interval(int, 0, None)],
        "alpha": [Interval(float, 0, 1, closed="right")],
        "test_alpha": [Interval(float, 0, 1, closed="right"), IsNone()],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.1,
        target_class: int = 0,
        pattern: str = "random",
        pattern_seed: int = 0,
        alpha: float = 0.2,
        test_alpha: float | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.target_class = target_class
        self.pattern = pattern
        self.pattern_seed = pattern_seed
        self.alpha = alpha
        self.test_alpha = test_alpha
        self.bounds = bounds
        self._validate()

    # -- the trigger ------------------------------------------------------------------------------
    def trigger(self, shape: tuple[int, ...]) -> Tensor:
        """The pattern for one input of per-sample ``shape``."""
        return blend_pattern(tuple(int(s) for s in shape), str(self.pattern), seed=int(self.pattern_seed), bounds=self._bounds())

    def blend(self, x: Tensor, alpha: float) -> Tensor:
        """``(1 - alpha)·x + alpha·pattern`` (a copy, clipped to the bounds)."""
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() < 2:
            raise DataError(f"{self.name}: x must be a float torch.Tensor batch (N, ...), got {type(x).__name__}")
        pat = self.trigger(tuple(x.shape[1:])).to(x.device, x.dtype)
        lo, hi = self._bounds()
        return ((1.0 - float(alpha)) * x.detach() + float(alpha) * pat).clamp(lo, hi)

    def apply_trigger(self, x: Tensor) -> Tensor:
        """``x`` with the pattern blended in at ``test_alpha`` (``alpha`` when unset)."""
        a = self.test_alpha if self.test_alpha is not None else self.alpha
        return self.blend(x, float(a))

    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        k = self.n_poison(int(x.shape[0]))
        eligible = (y != self.target_class).nonzero().flatten()
        rows = self.choose(eligible, k, generator)
        px, py = x.clone(), y.clone()
        px[rows] = self.blend(x[rows], float(self.alpha))
        py[rows] = int(self.target_class)
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        mask[rows] = True
        info = {"rows": rows.cpu(), "source_labels": y[rows].cpu(), "pattern": self.trigger(tuple(x.shape[1:]))}
        return px, py, mask, info
