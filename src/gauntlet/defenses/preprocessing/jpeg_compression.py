"""JPEG compression as an input transform (Dziugaite et al. 2016; Guo et al. 2018)."""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
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
from gauntlet.errors import ConfigError, DataError


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the test environment
        raise ConfigError("jpeg_compression needs Pillow; install it with `pip install pillow`") from None
    return Image


def jpeg(x: Tensor, quality: int, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """Compress and decompress every image of ``(N, C, H, W)`` with Pillow's JPEG codec.

    Each image is mapped to 8-bit pixels (``round(255 · (x − low) / (high − low))``), encoded with
    ``Image.save(format="JPEG", quality=quality)`` (Pillow's defaults otherwise: 4:2:0 chroma
    subsampling for RGB, standard tables), decoded, and mapped back to ``bounds``.  ``C`` must be
    1 (grayscale, mode ``"L"``) or 3 (RGB).  The result leaves autograd (it is computed by
    Pillow), so it carries no gradient.
    """
    quality = check_int_param(quality, "quality", 1, 95, "jpeg")
    lo, hi = check_bounds(bounds, "jpeg")
    x = check_batch_tensor(x, "jpeg", images=True, bounds=(lo, hi))
    if x.shape[1] not in (1, 3):
        raise DataError(
            f"jpeg: images must have 1 (grayscale) or 3 (RGB) channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    image = _pillow()
    u8 = torch.round((x.detach() - lo) / (hi - lo) * 255.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
    out = np.empty_like(u8)
    for i in range(u8.shape[0]):
        arr = u8[i, 0] if u8.shape[1] == 1 else np.ascontiguousarray(u8[i].transpose(1, 2, 0))
        buf = io.BytesIO()
        image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with image.open(buf) as im:
            dec = np.asarray(im.convert("L" if u8.shape[1] == 1 else "RGB"))
        out[i] = dec[None] if u8.shape[1] == 1 else dec.transpose(2, 0, 1)
    y = torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0
    return lo + (hi - lo) * y


@register
class JpegCompression(Preprocessor):
    """JPEG compression of the input (Dziugaite, Ghahramani & Roy 2016; Guo et al., ICLR 2018).

    Real JPEG through Pillow, per image (see :func:`jpeg`), for grayscale and RGB images.  The
    codec is not differentiable: the naive view gets a zero gradient, the adaptive view uses
    BPDA with the identity, which Athalye et al. (2018) show circumvents it.

    Args:
        quality: JPEG quality, an int in [1, 95] (Pillow advises against > 95).
    """

    name = "jpeg_compression"
    description = "JPEG compression of the input through Pillow (Dziugaite et al. 2016, Guo et al. 2018)"
    reference = (
        'Guo et al., "Countering Adversarial Images using Input Transformations", ICLR 2018, '
        "https://arxiv.org/abs/1711.00117"
    )
    image_only = True
    channels = (1, 3)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"quality": [Interval(int, 1, 95)]}

    def __init__(self, *, quality: int = 75) -> None:
        self.quality = quality
        self._validate()

    def transform(self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """:func:`jpeg` with this defense's ``quality``."""
        return jpeg(x, self.quality, bounds)
