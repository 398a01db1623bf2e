"""Batched L∞ / L2 / L1 (and pixel-count L0) norms, projections and steepest-ascent directions.

All functions work on a batch of perturbations ``delta`` of shape ``(N, ...)`` and take
``eps`` as a Python float or a tensor of shape ``(N,)`` (one budget per sample).

``"l0"`` counts changed *pixels*: for image batches ``(N, C, H, W)`` a position counts once
however many of its ``C`` channels changed (so a one-pixel attack on RGB has L0 = 1, as in
Su et al. 2019); for any other shape every element is one pixel.  It is used by the sparse
attacks (one-pixel, patch, sticker) and is not in ``NORMS``, the threat-model norms of the
dense attacks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")

_TINY = 1e-12
L0 = "l0"


def pixel_change(delta: Tensor) -> Tensor:
    """Per-pixel change magnitude, shape ``(N, P)``: L2 over channels for ``(N, C, H, W)``."""
    if delta.dim() == 4:
        return delta.pow(2).sum(dim=1).sqrt().flatten(1)
    return delta.abs().flatten(1)


def _view(eps: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(eps, Tensor):
        return eps.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return eps


def norm(delta: Tensor, p: str) -> Tensor:
    """Per-sample norm of ``delta``, shape ``(N,)``."""
    flat = delta.flatten(1)
    if p == "linf":
        return flat.abs().amax(dim=1)
    if p == "l2":
        return flat.norm(p=2, dim=1)
    if p == "l1":
        return flat.abs().sum(dim=1)
    if p == L0:
        return (pixel_change(delta) > 0).sum(dim=1).to(delta.dtype)
    raise ValueError(f"unknown norm {p!r}")


def project(delta: Tensor, p: str, eps: float | Tensor) -> Tensor:
    """Euclidean projection of each ``delta[i]`` onto the ``p``-ball of radius ``eps[i]``."""
    if p == "linf":
        e = _view(eps, delta)
        if isinstance(e, Tensor):
            return torch.maximum(torch.minimum(delta, e), -e)
        return delta.clamp(-e, e)
    if p == "l2":
        n = norm(delta, "l2").clamp_min(_TINY)
        e = eps if isinstance(eps, Tensor) else torch.full_like(n, float(eps))
        factor = torch.clamp(e.to(n.dtype) / n, max=1.0)
        return delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    if p == "l1":
        return _project_l1(delta, eps)
    if p == L0:
        return _project_l0(delta, eps)
    raise ValueError(f"unknown norm {p!r}")


def _project_l0(delta: Tensor, eps: float | Tensor) -> Tensor:
    """Keep the ``floor(eps)`` pixels that changed most (per sample); zero every other pixel."""
    mag = pixel_change(delta)
    n, p = mag.shape
    k = eps.floor().to(torch.int64).view(-1) if isinstance(eps, Tensor) else torch.full((n,), int(eps), dtype=torch.int64)
    k = k.to(mag.device).clamp(0, p)
    rank = mag.argsort(dim=1, descending=True, stable=True).argsort(dim=1, stable=True)
    keep = (rank < k.unsqueeze(1)) & (mag > 0)
    if delta.dim() == 4:
        return delta * keep.view(n, 1, *delta.shape[2:]).to(delta.dtype)
    return delta * keep.view(delta.shape).to(delta.dtype)


def _project_l1(delta: Tensor, eps: float | Tensor) -> Tensor:
    """Projection onto the L1 ball (Duchi et al. 2008), vectorised over the batch."""
    shape = delta.shape
    v = delta.flatten(1)
    n = v.shape[0]
    e = eps.to(v.dtype).view(-1) if isinstance(eps, Tensor) else torch.full((n,), float(eps), dtype=v.dtype, device=v.device)
    a = v.abs()
    inside = a.sum(dim=1) <= e
    if bool(inside.all()):
        return delta
    mu, _ = torch.sort(a, dim=1, descending=True)
    cs = mu.cumsum(dim=1)
    ar = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = mu - (cs - e.unsqueeze(1)) / ar > 0
    rho = cond.to(torch.int64).cumsum(dim=1).argmax(dim=1)  # last index where cond holds
    theta = (cs.gather(1, rho.unsqueeze(1)).squeeze(1) - e) / (rho.to(v.dtype) + 1)
    out = torch.sign(v) * (a - theta.clamp_min(0).unsqueeze(1)).clamp_min(0)
    out = torch.where(inside.unsqueeze(1), v, out)
    return out.view(shape)


def normalize(g: Tensor, p: str) -> Tensor:
    """Unit-``p``-norm direction of ``g`` (per sample); zero stays zero."""
    if p == "linf":
        return g.sign()
    n = norm(g, p).clamp_min(_TINY)
    return g / n.view(-1, *([1] * (g.dim() - 1)))


def steepest_ascent(
    g: Tensor,
    p: str,
    sparsity: float = 0.99,
    x: Tensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Direction ``d`` with ``||d||_p = 1`` maximising ``<g, d>`` (approximately for L1).

    For L1 the exact maximiser puts all mass on one coordinate, which makes PGD crawl; we use
    the sparse variant of Tramèr & Boneh (2019): the sign of the top ``1 - sparsity`` share of
    coordinates by magnitude (at least ``min(d, 10)``), scaled to unit L1 norm.  Given the
    current point ``x`` and the box ``bounds``, coordinates already at the bound the step would
    push through are skipped, so the L1 budget is not wasted on moves the clipping undoes.
    """
    if p == "linf":
        return g.sign()
    if p == "l2":
        return normalize(g, "l2")
    if p == "l1":
        if x is not None and bounds is not None:
            blocked = ((x <= bounds[0]) & (g < 0)) | ((x >= bounds[1]) & (g > 0))
            g = g.masked_fill(blocked, 0.0)
        flat = g.flatten(1)
        k = min(flat.shape[1], max(round((1.0 - sparsity) * flat.shape[1]), 10))
        thr = flat.abs().topk(k, dim=1).values[:, -1:]
        d = torch.where(flat.abs() >= thr, flat.sign(), torch.zeros_like(flat))
        d = d / d.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
        return d.view_as(g)
    raise ValueError(f"unknown norm {p!r}")


def random_in_ball(like: Tensor, p: str, eps: float | Tensor, generator: torch.Generator | None) -> Tensor:
    """A random perturbation inside the ``p``-ball (uniform for L∞, uniform-in-volume for L2/L1)."""
    n = like.shape[0]
    d = like[0].numel()
    if p == "linf":
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return (2 * u - 1) * _view(eps, like)
    if p == "l2":
        g = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        g = normalize(g, "l2")
    else:  # l1: Laplace direction, normalised
        e = torch.empty(like.shape, device=like.device, dtype=like.dtype).exponential_(generator=generator)
        s = torch.randint(0, 2, like.shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1
        g = normalize(e * s, "l1")
    r = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype) ** (1.0 / d)
    e_t = eps.to(like.dtype) if isinstance(eps, Tensor) else torch.full((n,), float(eps), device=like.device, dtype=like.dtype)
    return g * (r * e_t).view(-1, *([1] * (like.dim() - 1)))
