"""One validation of an input batch, shared by attacks, training, certification and detection.

Every entry point that takes ``x`` checks the same things in the same order (a tensor, a
non-empty batch, floating point, the expected dtype, per-sample shape and device, finite values,
inside the bounds) and says what is wrong in one line; callers differ only in what they check
against (a model's input spec or a module's parameters) and in how they name it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gauntlet.errors import DataError


def check_input_batch(
    x: object,
    *,
    where: str,
    what: str = "x",
    dtype: torch.dtype | None = None,
    shape: tuple[int, ...] | None = None,
    device: torch.device | None = None,
    bounds: tuple[float, float] | None = None,
    owner: str = "the model",
    dtype_owner: str = "the model expects",
    bounds_name: str = "the model's bounds",
    bounds_hint: str = "rescale x (e.g. x / 255) or declare the model's bounds",
) -> Tensor:
    """Return ``x`` unchanged if it is a valid batch, else raise a one-line :class:`DataError`.

    ``dtype``/``shape``/``device``/``bounds`` are checked only when given; ``owner`` names what
    ``device`` belongs to, ``dtype_owner`` how the expected dtype is introduced, ``bounds_name``
    and ``bounds_hint`` how an out-of-range value is reported.
    """
    if not isinstance(x, Tensor):
        conv = " (convert with torch.from_numpy(x).float())" if type(x).__module__ == "numpy" else ""
        raise DataError(f"{where}: {what} must be a torch.Tensor, got {type(x).__name__}{conv}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"{where}: {what} must be a non-empty batch of shape (N, ...), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        into = f" into {bounds_name} {tuple(bounds)}" if bounds is not None else ""
        raise DataError(f"{where}: {what} must be a float tensor, got {x.dtype}; scale it{into} and use .float()")
    if dtype is not None and x.dtype != dtype:
        raise DataError(f"{where}: {what} has dtype {x.dtype} but {dtype_owner} {dtype}; convert with {what}.to({dtype})")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"{where}: {what} has per-sample shape {tuple(x.shape[1:])} but the model expects {tuple(shape)}")
    if device is not None and x.device != device:
        raise DataError(f"{where}: {what} is on {x.device} but {owner} is on {device}; move one of them")
    v = x.detach()  # values only: reading a scalar from a tensor that requires grad warns
    if not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).flatten(1).any(dim=1).sum())
        raise DataError(f"{where}: {what} contains NaN or inf in {bad} sample(s); clean or drop them")
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        xmin, xmax = float(v.min()), float(v.max())
        if xmin < lo or xmax > hi:
            raise DataError(
                f"{where}: {what} has values in [{xmin:.4g}, {xmax:.4g}] outside {bounds_name} [{lo:g}, {hi:g}]; "
                f"{bounds_hint}"
            )
    return x


def module_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of a module's first floating-point parameter (``(None, None)`` if none)."""
    p = next(iter(module.parameters()), None)
    if p is None or not p.is_floating_point():
        return None, None
    return p.dtype, p.device
