"""Masked "sticker" perturbation, RP2 (Eykholt et al., CVPR 2018), with EOT over mild transformations.

Robust Physical Perturbations (RP2) optimise a perturbation ``δ`` that lives only inside a mask
``M`` (the stickers on a stop sign) so that the object, seen under varying conditions, is
misclassified:

    min_δ  λ ‖M·δ‖_p  +  E_{T}[ J(f(T(x + M·δ)), y*) ]

``T`` ranges over mild transformations of the whole picture (the sticker moves with the object):
a rotation in ``[−rotation, rotation]`` degrees, a shift of up to ``shift`` of the image size
each way, a zoom in ``[1 − zoom, 1 + zoom]`` and a brightness factor in
``[1 − brightness, 1 + brightness]``, built with ``affine_grid``/``grid_sample`` and drawn from
the attack's generator.  Each step averages the loss over ``eot_samples`` transformations per
input; the first of them is the identity.  ``J`` is the C&W margin towards the target (or away
from the true class) clipped at ``confidence``, ``p`` is ``penalty`` (``"l2"`` or ``"l1"``,
weight ``penalty_weight``), the optimiser Adam (``learning_rate`` as a share of the value range),
and ``x + M·δ`` is kept inside the bounds.

The returned input is ``clip(x + M·δ)`` with no transformation, so **nothing outside the mask
changes**: the perturbation's pixel count (L0, channels counted once) is at most the mask's area.
Per sample, the iterate returned is the latest one that fools the model on the untransformed
input, else the last one (with ``universal=True``, the last one).  ``universal=True`` learns one ``δ`` for all inputs (the mean loss).

``mask`` is a ``(H, W)`` or ``(C, H, W)`` tensor of 0/1 (bool, int or float), or a built-in
shape scaled to the image: ``"bars"`` (two horizontal bars, above and below the middle, as the
stop-sign stickers of the paper) or ``"square"`` (a centred square of 40% of the side).

Out of scope: the paper's non-printability score (printer colours) and its mask search by L1
(the mask is given); this is the "NPS-free" RP2 objective.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, Options
from gauntlet.attacks.base import STEPS, Attack, Context
from gauntlet.attacks.evasion.patch import value_range
from gauntlet.attacks.losses import margin
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError

MASKS = ("bars", "square")


def named_mask(name: str, height: int, width: int) -> Tensor:
    """A built-in ``(H, W)`` boolean mask: ``"bars"`` or ``"square"``."""
    m = torch.zeros(height, width, dtype=torch.bool)
    if name == "bars":
        bar = max(1, round(0.15 * height))
        left, right = round(0.15 * width), width - round(0.15 * width)
        right = max(right, left + 1)
        for top in (round(0.25 * height), round(0.6 * height)):
            m[top : min(top + bar, height), left:right] = True
    elif name == "square":
        side = max(1, round(0.4 * min(height, width)))
        top, left = (height - side) // 2, (width - side) // 2
        m[top : top + side, left : left + side] = True
    else:  # pragma: no cover - validated on construction
        raise ConfigError(f"sticker: unknown mask {name!r}; use one of {', '.join(MASKS)} or a tensor")
    return m


def _check_mask(owner: str, mask: object) -> None:
    if isinstance(mask, str):
        if mask not in MASKS:
            raise ConfigError(f"{owner}: unknown mask {mask!r}; use one of {', '.join(repr(m) for m in MASKS)} or a 0/1 tensor")
        return
    if not isinstance(mask, Tensor):
        raise ConfigError(f"{owner}: mask must be a 0/1 tensor of shape (H, W) or (C, H, W) or one of {', '.join(MASKS)}, "
                          f"got {type(mask).__name__}")
    if mask.dim() not in (2, 3):
        raise ConfigError(f"{owner}: mask must have shape (H, W) or (C, H, W), got {tuple(mask.shape)}")
    v = mask.detach()
    if v.is_complex() or not bool(((v == 0) | (v == 1)).all()):
        raise ConfigError(f"{owner}: mask must hold only 0 and 1 (it selects the pixels the sticker covers)")
    if not bool(v.any()):
        raise ConfigError(f"{owner}: mask is empty (all 0); the sticker must cover at least one pixel")


@register
class StickerAttack(Attack):
    """RP2 sticker: a perturbation only inside ``mask``, robust to mild transformations (see the module docstring).

    Args:
        mask: ``(H, W)`` or ``(C, H, W)`` 0/1 tensor, or ``"bars"`` / ``"square"``.
        targeted: aim at ``target`` (see ``Attack.run``).
        steps: Adam steps.
        learning_rate: Adam's step, as a share of the value range.
        penalty: ``"l2"`` or ``"l1"``: the norm of ``M·δ`` in the objective.
        penalty_weight: its weight λ (0 switches it off).
        confidence: margin κ at which the classification loss is clipped.
        eot_samples: transformations per input and step (the first is the identity).
        rotation: largest rotation, degrees.
        shift: largest shift, as a share of the image size.
        zoom: largest relative change of size.
        brightness: brightness factor drawn in ``[1 − brightness, 1 + brightness]``.
        universal: learn one ``δ`` for every input instead of one per input.
    """

    name = "sticker"
    description = "RP2 sticker: a perturbation inside a given mask, robust to mild transformations (Eykholt et al. 2018)"
    reference = (
        'Eykholt et al., "Robust Physical-World Attacks on Deep Learning Visual Classification", CVPR 2018, '
        "https://arxiv.org/abs/1707.08945"
    )
    norms = ("l0",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "penalty": [Options(("l2", "l1"))],
        "penalty_weight": [Interval(float, 0, None)],
        "confidence": [Interval(float, 0, None)],
        "eot_samples": [Interval(int, 1, None)],
        "rotation": [Interval(float, 0, 180)],
        "shift": [Interval(float, 0, 0.5)],
        "zoom": [Interval(float, 0, 1, closed="left")],
        "brightness": [Interval(float, 0, 1, closed="left")],
        "universal": [Boolean()],
    }

    def __init__(
        self,
        *,
        mask: Tensor | str = "bars",
        targeted: bool = False,
        steps: int = 100,
        learning_rate: float = 0.1,
        penalty: str = "l2",
        penalty_weight: float = 0.01,
        confidence: float = 2.0,
        eot_samples: int = 4,
        rotation: float = 10.0,
        shift: float = 0.05,
        zoom: float = 0.1,
        brightness: float = 0.1,
        universal: bool = False,
    ) -> None:
        self.mask = mask
        self.targeted = targeted
        self.steps = steps
        self.learning_rate = learning_rate
        self.penalty = penalty
        self.penalty_weight = penalty_weight
        self.confidence = confidence
        self.eot_samples = eot_samples
        self.rotation = rotation
        self.shift = shift
        self.zoom = zoom
        self.brightness = brightness
        self.universal = universal
        self._validate()
        _check_mask(self.name, mask)

    def mask_for(self, x: Tensor) -> Tensor:
        """The mask as a ``(1, C, H, W)`` float tensor for images ``x`` (``(N, C, H, W)``)."""
        if x.dim() != 4:
            raise DataError(f"{self.name}: needs images of shape (N, C, H, W), got per-sample shape {tuple(x.shape[1:])}")
        c, h, w = x.shape[1:]
        if isinstance(self.mask, str):
            m = named_mask(self.mask, h, w).unsqueeze(0).expand(c, h, w)
        else:
            m = self.mask.detach()
            if m.dim() == 2:
                if tuple(m.shape) != (h, w):
                    raise ConfigError(f"{self.name}: mask has shape {tuple(m.shape)} but the images are {h}x{w}; "
                                      f"give a ({h}, {w}) or ({c}, {h}, {w}) mask")
                m = m.unsqueeze(0).expand(c, h, w)
            elif tuple(m.shape) != (c, h, w):
                raise ConfigError(f"{self.name}: mask has shape {tuple(m.shape)} but the images are {(c, h, w)}; "
                                  f"give a ({h}, {w}) or ({c}, {h}, {w}) mask")
        return m.to(device=x.device, dtype=x.dtype).unsqueeze(0)

    def pixel_budget(self, x: Tensor) -> int:
        """The most pixels the sticker changes on images like ``x``: the mask's area (channels once)."""
        return int(self.mask_for(x)[0].amax(dim=0).count_nonzero())

    # ---------------------------------------------------------------------------------------
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        m = self.mask_for(x)
        lo_b, hi_b = ctx.bounds
        lo, hi = value_range(ctx.bounds, x)
        n = x.shape[0]
        goal = ctx.target if ctx.targeted else None
        delta = torch.zeros((1 if self.universal else n, *x.shape[1:]), device=x.device, dtype=x.dtype)
        delta.requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=float(self.learning_rate) * (hi - lo))
        best = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        k = self.eot_samples
        for _ in range(self.steps):
            theta, bright = self._draw(n * k, x, ctx.generator)
            with torch.enable_grad():
                adv = (x + m * delta).clamp(lo_b, hi_b)
                rep = adv.repeat_interleave(k, dim=0)
                grid = F.affine_grid(theta, list(rep.shape), align_corners=False)
                seen = F.grid_sample(rep, grid, mode="bilinear", padding_mode="border", align_corners=False)
                seen = (lo + (seen - lo) * bright).clamp(lo_b, hi_b)
                logits = ctx.model.scores(seen)
                yk = y.repeat_interleave(k)
                if goal is not None:
                    cls = -margin(logits, goal.repeat_interleave(k))
                else:
                    cls = margin(logits, yk)
                cls = (-cls).clamp(min=-self.confidence)  # to minimise: ≤ −κ once fooled by κ
                md = (m * delta).flatten(1)
                pen = md.norm(p=2, dim=1) if self.penalty == "l2" else md.abs().sum(dim=1)
                loss = cls.view(n, k).mean(dim=1).sum() + self.penalty_weight * pen.sum() * (n if self.universal else 1)
                (grad,) = torch.autograd.grad(loss, delta)
            ctx.model.grad_evals += n * k
            with torch.no_grad():
                z0 = logits.view(n, k, -1)[:, 0]  # the identity transformation
                ok = z0.argmax(1) == goal if goal is not None else z0.argmax(1) != y
                ok &= not self.universal  # one sticker for all: no per-sample choice of iterate
                best[ok] = adv.detach()[ok]
                found |= ok
            opt.zero_grad(set_to_none=True)
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                if not self.universal:  # keep x + M·δ inside the bounds
                    delta.copy_(torch.where(m > 0, (x + delta).clamp(lo_b, hi_b) - x, torch.zeros_like(delta)))
                else:
                    delta.mul_(m).clamp_(lo - hi, hi - lo)
        with torch.no_grad():
            last = (x + m * delta.detach()).clamp(lo_b, hi_b)
            out = torch.where(found.view(-1, *([1] * (x.dim() - 1))), best, last)
        if self.universal:
            ctx.info["sticker"] = (m * delta.detach())[0]
        ctx.info["mask"] = m[0] > 0
        return out

    def _draw(self, count: int, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``count`` affine matrices (the first of every ``eot_samples`` the identity) and brightness factors."""
        u = torch.rand((count, 5), generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        angle = u[:, 0] * math.radians(self.rotation)
        s = 1.0 + u[:, 1] * self.zoom
        tx, ty = u[:, 2] * 2 * self.shift, u[:, 3] * 2 * self.shift  # normalised coordinates span 2
        bright = 1.0 + u[:, 4] * self.brightness
        ident = torch.arange(count, device=x.device) % self.eot_samples == 0
        angle, tx, ty = angle.masked_fill(ident, 0.0), tx.masked_fill(ident, 0.0), ty.masked_fill(ident, 0.0)
        s, bright = s.masked_fill(ident, 1.0), bright.masked_fill(ident, 1.0)
        cos, sin = angle.cos() / s, angle.sin() / s
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        return theta, bright.view(-1, 1, 1, 1)
