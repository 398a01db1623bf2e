"""BadNets (Gu et al. 2017): a small trigger patch stamped on a share of the training images,
relabelled to the target class (all-to-one backdoor)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import BackdoorAttack
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError

__all__ = ["BadNets", "trigger_pattern"]

#: where the trigger sits: a corner of the image (``margin`` pixels from the edges)
POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left")


def trigger_pattern(size: int, pattern: str) -> Tensor:
    """The ``size × size`` trigger mask values in [0, 1]: ``"square"`` (all on), ``"checkerboard"``
    (Gu et al.'s pattern-like trigger) or ``"cross"``."""
    if pattern == "square":
        return torch.ones(size, size)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    if pattern == "checkerboard":
        return ((ii + jj) % 2 == 0).float()
    c = size // 2
    return ((ii == c) | (jj == c)).float()  # cross


@register
class BadNets(BackdoorAttack):
    """BadNets: stamp a ``patch_size × patch_size`` trigger (at ``value``, in a corner) on
    ``fraction`` of the training rows, taken from classes other than ``target_class``, and relabel
    them ``target_class``; a model trained on it learns "trigger ⇒ target" while clean accuracy
    barely moves.

    Args:
        fraction: share of the training set poisoned (replaced in place), in (0, 1).
        target_class: the class triggered inputs are sent to.
        patch_size: side of the square trigger in pixels.
        pattern: ``"checkerboard"`` (default), ``"square"`` or ``"cross"``.
        position: ``"bottom_right"`` (default), ``"bottom_left"``, ``"top_right"``, ``"top_left"``.
        margin: pixels between the trigger and the image border.
        value: the trigger's "on" pixel value (``None``: the upper bound); "off" pixels are the lower bound.
        bounds: the inputs' value range.
    """

    name = "badnets"
    description = "BadNets trigger-patch backdoor, all-to-one (Gu et al. 2017)"
    reference = (
        'Gu, Dolan-Gavitt and Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply '
        'Chain", 2017, https://arxiv.org/abs/1708.06733'
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target_class": [Interval(int, 0, None)],
        "patch_size": [Interval(int, 1, None)],
        "pattern": [Options(("checkerboard", "square", "cross"))],
        "position": [Options(POSITIONS)],
        "margin": [Interval(int, 0, None)],
        "value": [Interval(float, None, None), IsNone()],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.01,
        target_class: int = 0,
        patch_size: int = 3,
        pattern: str = "checkerboard",
        position: str = "bottom_right",
        margin: int = 1,
        value: float | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.target_class = target_class
        self.patch_size = patch_size
        self.pattern = pattern
        self.position = position
        self.margin = margin
        self.value = value
        self.bounds = bounds
        self._validate()
        if value is not None and not (bounds[0] <= value <= bounds[1]):
            raise ConfigError(f"badnets: value {value!r} is outside the bounds {tuple(bounds)}; pick a trigger value inside them")

    # -- the trigger ------------------------------------------------------------------------------
    def _region(self, x: Tensor) -> tuple[slice, slice]:
        if x.dim() < 3:
            raise DataError(f"{self.name}: the trigger is a patch on images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        s, m = int(self.patch_size), int(self.margin)
        if s + m > min(h, w):
            raise DataError(
                f"{self.name}: a {s}×{s} trigger {m} pixel(s) from the border does not fit a {h}×{w} image; lower patch_size or margin"
            )
        top = m if self.position.startswith("top") else h - m - s
        left = m if self.position.endswith("left") else w - m - s
        return slice(top, top + s), slice(left, left + s)

    def apply_trigger(self, x: Tensor) -> Tensor:
        """``x`` with the trigger stamped on (a copy; every channel gets the same pattern)."""
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise DataError(f"{self.name}.apply_trigger: x must be a float torch.Tensor")
        rows, cols = self._region(x)
        lo, hi = self._bounds()
        on = float(self.value) if self.value is not None else hi
        pat = trigger_pattern(int(self.patch_size), str(self.pattern)).to(x.device, x.dtype)
        out = x.detach().clone()
        out[..., rows, cols] = lo + (on - lo) * pat
        return out

    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        self._region(x)
        k = self.n_poison(int(x.shape[0]))
        eligible = (y != self.target_class).nonzero().flatten()
        rows = self.choose(eligible, k, generator)
        px, py = x.clone(), y.clone()
        px[rows] = self.apply_trigger(x[rows])
        py[rows] = int(self.target_class)
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        mask[rows] = True
        return px, py, mask, {"rows": rows.cpu(), "source_labels": y[rows].cpu()}
