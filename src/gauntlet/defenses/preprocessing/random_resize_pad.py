"""Random resizing and random padding (Xie, Wang, Zhang, Ren & Yuille, ICLR 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.preprocessing._base import Bounds, Preprocessor, check_batch_tensor, check_int_param
from gauntlet.defenses.registry import register
from gauntlet.errors import ConfigError


def _nearest_source(pos: Tensor, out_size: Tensor, in_size: int) -> Tensor:
    # PyTorch's "nearest-exact" rule: src = floor((dst + 0.5) * in / out), in float32 like ATen
    scale = (torch.full_like(out_size, in_size, dtype=torch.float32) / out_size.to(torch.float32)).to(torch.float64)
    src = torch.floor(((pos.to(torch.float64) + 0.5) * scale[:, None]).to(torch.float32)).to(torch.int64)
    return src.clamp(0, in_size - 1)


def resize_and_pad(
    x: Tensor, new_h: Tensor, new_w: Tensor, top: Tensor, left: Tensor, canvas: tuple[int, int], pad_value: float = 0.0
) -> Tensor:
    """Resize each image ``x[i]`` to ``new_h[i] × new_w[i]`` (nearest neighbour, PyTorch's
    ``"nearest-exact"`` rule) and place it at ``(top[i], left[i])`` on a ``canvas`` filled with
    ``pad_value``.  Vectorised as one index gather, so it is differentiable in ``x``."""
    n, c, h, w = x.shape
    ch, cw = canvas
    rows = torch.arange(ch, device=x.device)[None, :] - top[:, None]  # (N, ch) position inside the resized image
    cols = torch.arange(cw, device=x.device)[None, :] - left[:, None]
    ok_r = (rows >= 0) & (rows < new_h[:, None])
    ok_c = (cols >= 0) & (cols < new_w[:, None])
    src_r = _nearest_source(rows, new_h, h)
    src_c = _nearest_source(cols, new_w, w)
    idx = (src_r[:, :, None] * w + src_c[:, None, :]).view(n, 1, ch * cw).expand(n, c, ch * cw)
    out = x.flatten(2).gather(2, idx).view(n, c, ch, cw)
    mask = (ok_r[:, :, None] & ok_c[:, None, :])[:, None]
    return torch.where(mask, out, torch.full_like(out, pad_value))


def random_resize_pad(
    x: Tensor, max_pad: int, generator: torch.Generator | None = None, *, pad_value: float = 0.0
) -> Tensor:
    """Xie et al.'s randomization layer for ``(N, C, H, W)``, then a resize back to ``H × W``.

    Per image, independently: draw ``d`` uniformly in ``{0, …, max_pad}`` and resize to
    ``(H + d) × (W + d)`` (nearest neighbour); draw ``top`` and ``left`` uniformly in
    ``{0, …, max_pad − d}`` and zero-pad (with ``pad_value``) to the fixed ``(H + max_pad) ×
    (W + max_pad)`` canvas; finally resize the canvas bilinearly back to ``H × W`` so the
    defended model keeps its input shape (Xie et al. feed the padded 331×331 image to an
    Inception network that accepts it; a fixed-shape classifier cannot).  Differentiable in ``x``.
    """
    max_pad = check_int_param(max_pad, "max_pad", 1, None, "random_resize_pad")
    x = check_batch_tensor(x, "random_resize_pad", images=True)
    n, _, h, w = x.shape
    d = torch.randint(0, max_pad + 1, (n,), generator=generator, device=x.device)
    room = (max_pad - d + 1).to(torch.float32)
    top = (torch.rand(n, generator=generator, device=x.device) * room).floor().to(torch.int64).clamp(max=max_pad - d)
    left = (torch.rand(n, generator=generator, device=x.device) * room).floor().to(torch.int64).clamp(max=max_pad - d)
    canvas = resize_and_pad(x, h + d, w + d, top, left, (h + max_pad, w + max_pad), pad_value)
    return F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)


@register
class RandomResizePad(Preprocessor):
    """Mitigating adversarial effects through randomization (Xie et al., ICLR 2018).

    A random resize followed by a random zero padding (see :func:`random_resize_pad`); the paper
    resizes 299-pixel images to ``[299, 331)`` and pads to 331, i.e. ``max_pad ≈ 11 %`` of the
    side (``max_pad=3`` on 28-pixel MNIST).  The transform is differentiable but random: the
    adaptive view averages ``eot_samples`` draws (EOT, which Athalye et al. 2018 used to break
    it), the naive view takes one draw.

    Args:
        max_pad: largest extra size in pixels, an int >= 1.
        pad_value: value of the padding, inside the model's bounds (0.0: black on [0, 1] images).
    """

    name = "random_resize_pad"
    description = "Random resize and random padding of the input (Xie et al. 2018; randomized, attack with EOT)"
    reference = (
        'Xie et al., "Mitigating Adversarial Effects Through Randomization", ICLR 2018, '
        "https://arxiv.org/abs/1711.01991"
    )
    image_only = True
    randomized = True
    differentiable = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_pad": [Interval(int, 1, None)],
        "pad_value": [Interval(float, None, None)],
    }

    def __init__(self, *, max_pad: int = 3, pad_value: float = 0.0) -> None:
        self.max_pad = max_pad
        self.pad_value = pad_value
        self._validate()

    def transform(self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """:func:`random_resize_pad` with this defense's ``max_pad`` and ``pad_value``."""
        if not bounds[0] <= float(self.pad_value) <= bounds[1]:
            raise ConfigError(
                f"random_resize_pad: pad_value={self.pad_value!r} lies outside the bounds {tuple(bounds)}; "
                "pass a pad_value inside them"
            )
        return random_resize_pad(x, self.max_pad, generator, pad_value=float(self.pad_value))
