"""Adversarial patch (Brown et al. 2017) trained with Expectation over Transformation (Athalye et al. 2018).

A patch is a small square image ``P`` (``C × s × s``) that, pasted anywhere on an input — at a
random position, rotation, size and brightness — makes the model predict the patch's target
class (or, untargeted, anything but the true class).  It is learned on one set of inputs and
evaluated on others under *fresh* random transformations: :meth:`PatchAttack.fit` returns an
:class:`AdversarialPatch` with ``apply(x, seed=...)`` and ``evaluate(model, x, y, seed=...)``.

**Placement.**  For every sample a transformation is drawn from the attack's generator:

* the rendered area ``a`` uniformly in ``[(1 − shrink)·scale, scale]`` of the image's ``H·W``
  pixels, so the rendered square has side ``L = √(a·H·W)`` pixels;
* a rotation angle uniformly in ``[−rotation, rotation]`` degrees;
* a centre uniformly among the positions that keep the rotated square inside the image;
* a brightness factor uniformly in ``[1 − brightness, 1 + brightness]`` (values scale about
  the lower bound and are clipped to the bounds).

The footprint is the set of pixels whose *centre* falls inside the rotated square (an exact
geometric test on the sampling grid built with ``affine_grid``); the patch's colour there is
sampled bilinearly from ``P`` with ``grid_sample``, so gradients flow to ``P``.  Pixels outside
the footprint are left exactly as they were.

**Pixel budget.**  A rotated square of area ``a·H·W`` can contain a few more pixel centres than
its area (Nosarzewska: up to ``area + perimeter/2 + 1``).  Instead of allowing that margin, the
footprint is capped: when it holds more than ``floor(scale·H·W)`` pixels, only the
``floor(scale·H·W)`` innermost (smallest distance to the centre in the square's own max-norm)
are kept.  So every placement changes at most ``floor(scale·H·W)`` pixels — the patch covers at
most ``scale`` of the image, exactly, in the pixel-count L0 of :mod:`gauntlet.norms`
(:meth:`PatchAttack.pixel_budget`).

**Training.**  Adam (``learning_rate``, in units of the value range) on ``P``, clipped to the
bounds after every step; each step takes ``minibatch`` inputs (random order, epoch by epoch) and
draws a fresh transformation for each.  The loss is the cross-entropy towards the target
(targeted; Brown et al. maximise the expected log-probability of the target class), or the
cross-entropy of the true class clipped at ``kappa`` (untargeted).  ``P`` starts uniform in the
bounds.

**Targets.**  ``fit`` learns one patch for one class (``target=`` or the ``target_class``
parameter) — the usual use.  ``run`` (learn on ``x``, apply to ``x`` under a fresh placement)
uses the per-sample targets ``Attack.run`` passes: it learns one patch per distinct target class
(all of them in the same steps, each sample pulling on its own class's patch), or one patch
for ``target_class`` when that is set.  ``info["patches"]`` maps each target class (``None``
untargeted) to its patch; ``info["footprint"]`` holds the ``(N, H, W)`` footprint mask of the
placement returned.

Inputs must be images ``(N, C, H, W)``.  Only torch is used (no torchvision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._batch import check_input_batch
from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.attacks.base import STEPS, Attack, Context
from gauntlet.attacks.evasion.universal_perturbation import (
    check_eval_inputs,
    check_seed,
    check_target_class,
    predict_chunked,
    success_rate,
)
from gauntlet.attacks.registry import register
from gauntlet.attacks.result import AttackResult
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model

_EPS_AREA = 1e-9


def pixel_budget(scale: float, height: int, width: int) -> int:
    """The most pixels a patch of ``scale`` may change on an ``height × width`` image."""
    return math.floor(scale * height * width + _EPS_AREA)


def texture_side(scale: float, height: int, width: int) -> int:
    """Side of the patch texture: the rendered side at full size, rounded (at least 1)."""
    return max(1, round(math.sqrt(scale * height * width)))


def value_range(bounds: tuple[float, float], x: Tensor) -> tuple[float, float]:
    """The bounds, or the batch's own range where a bound is infinite."""
    lo, hi = bounds
    if not math.isfinite(lo):
        lo = float(x.min())
    if not math.isfinite(hi):
        hi = float(x.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


@dataclass(frozen=True)
class Placement:
    """Per-sample transformations: the rendered side (pixels), angle (radians), centre (x, y in
    pixels from the top-left corner) and brightness factor, each of length ``N``."""

    side: Tensor
    angle: Tensor
    center: Tensor
    brightness: Tensor


def draw_placements(
    n: int,
    height: int,
    width: int,
    *,
    scale: float,
    shrink: float,
    rotation: float,
    brightness: float,
    generator: torch.Generator,
    device: torch.device,
) -> Placement:
    u = torch.rand((n, 5), generator=generator, device=device, dtype=torch.float64)
    area = scale * height * width * (1.0 - shrink * u[:, 0])
    side = area.sqrt()
    angle = (2 * u[:, 1] - 1) * math.radians(rotation)
    half = 0.5 * side * (angle.cos().abs() + angle.sin().abs())  # half extent of the rotated square
    cx = torch.where(width > 2 * half, half + u[:, 2] * (width - 2 * half), torch.full_like(half, width / 2))
    cy = torch.where(height > 2 * half, half + u[:, 3] * (height - 2 * half), torch.full_like(half, height / 2))
    b = 1.0 + (2 * u[:, 4] - 1) * brightness
    return Placement(side, angle, torch.stack([cx, cy], dim=1), b)


def render(
    x: Tensor,
    patches: Tensor,
    placement: Placement,
    *,
    budget: int,
    value_bounds: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Paste ``patches[i]`` (``(N, C, s, s)``) onto ``x[i]`` under ``placement``; returns the
    patched batch and the ``(N, H, W)`` boolean footprint (at most ``budget`` pixels each)."""
    n, c, h, w = x.shape
    dt = torch.float64
    side, cos, sin = placement.side, placement.angle.cos(), placement.angle.sin()
    # texture coordinates u = (2 / L) R(−θ) (p − centre), p in pixels; p = ((x_n + 1) W/2, (y_n + 1) H/2)
    k = 2.0 / side
    rot = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # R(−θ), (N, 2, 2)
    scale_xy = torch.tensor([w / 2.0, h / 2.0], dtype=dt, device=x.device)
    a = k[:, None, None] * rot * scale_xy[None, None, :]
    b = k[:, None] * torch.einsum("nij,nj->ni", rot, scale_xy[None, :] - placement.center)
    theta = torch.cat([a, b[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)  # (N, H, W, 2), float64
    cheb = grid.abs().amax(dim=3).flatten(1)  # (N, H·W): 1 on the square's edge
    inside = cheb <= 1.0
    order = torch.where(inside, cheb, torch.full_like(cheb, math.inf)).argsort(dim=1, stable=True)
    rank = order.argsort(dim=1, stable=True)
    keep = (inside & (rank < budget)).view(n, h, w)
    tex = F.grid_sample(patches, grid.to(patches.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    lo, hi = value_bounds
    bright = placement.brightness.to(tex.dtype).view(n, 1, 1, 1)
    tex = (lo + (tex - lo) * bright).clamp(lo, hi)
    m = keep.unsqueeze(1).to(x.dtype)
    return x * (1 - m) + tex * m, keep


@dataclass(frozen=True)
class AdversarialPatch:
    """A learned patch ``(C, s, s)`` and the distribution of its placements.

    ``apply(x, seed=)`` pastes it on every image of ``x`` under fresh random placements drawn
    from ``seed``; ``apply_with_mask`` also returns the ``(N, H, W)`` footprint;
    ``evaluate(model, x, y, seed=)`` is the share of images it fools: targeted, the share
    predicted as ``target`` among the images whose label is not ``target``; untargeted, the share
    predicted ≠ y.  ``train_success`` is that share on the training inputs (one placement each).
    """

    patch: Tensor
    scale: float
    target: int | None
    bounds: tuple[float, float]
    rotation: float
    shrink: float
    brightness: float
    train_success: float

    def pixel_budget(self, height: int, width: int) -> int:
        return pixel_budget(self.scale, height, width)

    def apply_with_mask(self, x: Tensor, *, seed: int = 0) -> tuple[Tensor, Tensor]:
        where = "AdversarialPatch.apply"
        check_seed(where, seed)
        p = self.patch
        check_input_batch(
            x, where=where, dtype=p.dtype, device=p.device, bounds=self.bounds, owner="the patch",
            dtype_owner="the patch has", bounds_name="the patch's bounds",
        )
        if x.dim() != 4 or x.shape[1] != p.shape[0]:
            raise DataError(f"{where}: x must be images (N, {p.shape[0]}, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        budget = _check_budget(where, self.scale, h, w)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        placement = draw_placements(
            x.shape[0], h, w, scale=self.scale, shrink=self.shrink, rotation=self.rotation,
            brightness=self.brightness, generator=gen, device=x.device,
        )
        patches = p.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        adv, mask = render(x.detach(), patches, placement, budget=budget, value_bounds=value_range(self.bounds, x))
        return adv.clamp(*self.bounds), mask

    def apply(self, x: Tensor, *, seed: int = 0) -> Tensor:
        return self.apply_with_mask(x, seed=seed)[0]

    def evaluate(self, model: Model, x: Tensor, y: Tensor, *, seed: int = 0) -> float:
        x, y = check_eval_inputs("AdversarialPatch.evaluate", model, x, y)
        adv = self.apply(x, seed=seed)
        with model.attack_mode():
            pred = predict_chunked(model, adv)
        return success_rate(pred, y, self.target)


def _check_budget(owner: str, scale: float, h: int, w: int) -> int:
    budget = pixel_budget(scale, h, w)
    if budget < 1:
        raise DataError(f"{owner}: scale={scale} covers less than one pixel of a {h}x{w} image; raise scale")
    return budget


@register
class PatchAttack(Attack):
    """Adversarial patch with EOT over position, rotation, size and brightness (see the module docstring).

    Args:
        scale: the largest share of the image's pixels the patch covers, in (0, 1].
        targeted: aim at a class (the usual use) or only away from the true one.
        target_class: one class for every input; ``None`` uses the targets ``run`` is given or
            draws (``fit`` then needs ``target=``).
        steps: optimisation steps.
        learning_rate: Adam's step, as a share of the value range.
        minibatch: inputs (each under a fresh placement) per step.
        rotation: largest rotation, degrees.
        shrink: the rendered area is drawn in ``[(1 − shrink)·scale, scale]``.
        brightness: brightness factor drawn in ``[1 − brightness, 1 + brightness]``.
        kappa: untargeted: the cross-entropy at which a sample's loss is clipped.
    """

    name = "patch"
    description = "Adversarial patch under random position, rotation, scale and brightness, EOT (Brown et al. 2017)"
    reference = 'Brown et al., "Adversarial Patch", NeurIPS 2017 workshop, https://arxiv.org/abs/1712.09665'
    norms = ("l0",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "scale": [Interval(float, 0, 1, closed="right")],
        "target_class": [Interval(int, 0, None), IsNone()],
        "steps": STEPS,
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "minibatch": [Interval(int, 1, None)],
        "rotation": [Interval(float, 0, 180)],
        "shrink": [Interval(float, 0, 1, closed="left")],
        "brightness": [Interval(float, 0, 1, closed="left")],
        "kappa": [Interval(float, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        scale: float = 0.1,
        targeted: bool = True,
        target_class: int | None = None,
        steps: int = 300,
        learning_rate: float = 0.1,
        minibatch: int = 64,
        rotation: float = 22.5,
        shrink: float = 0.3,
        brightness: float = 0.1,
        kappa: float = 10.0,
    ) -> None:
        self.scale = scale
        self.targeted = targeted
        self.target_class = target_class
        self.steps = steps
        self.learning_rate = learning_rate
        self.minibatch = minibatch
        self.rotation = rotation
        self.shrink = shrink
        self.brightness = brightness
        self.kappa = kappa
        self._validate()
        if target_class is not None and not targeted:
            raise ConfigError(f"{self.name}: target_class={target_class} was given but targeted=False; pass targeted=True")

    def pixel_budget(self, height: int, width: int) -> int:
        """The most pixels one placement changes on an ``height × width`` image: ``floor(scale·H·W)``."""
        return pixel_budget(self.scale, height, width)

    # ---------------------------------------------------------------------------------------
    def run(self, model: Model, x: Tensor, y: Tensor, *, seed: int = 0, target: Tensor | None = None,
            clean_pred: Tensor | None = None) -> AttackResult:
        if self.target_class is not None:
            if target is not None:
                raise ConfigError(f"{self.name}: target was given but target_class={self.target_class} fixes it; pass one of them")
            if isinstance(y, Tensor) and y.dim() == 1:
                k = model.infer_num_classes(x) if isinstance(model, Model) and isinstance(x, Tensor) else None
                if k is not None:
                    check_target_class(self.name, self.target_class, k)
                target = torch.full_like(y, self.target_class, dtype=torch.int64)
        return super().run(model, x, y, seed=seed, target=target, clean_pred=clean_pred)

    def fit(self, model: Model, x: Tensor, y: Tensor, *, seed: int = 0, target: int | None = None) -> AdversarialPatch:
        """Learn one patch on ``x`` (labels ``y``) under random placements and return it.

        Targeted: ``target`` (or the ``target_class`` parameter) is the class the patch aims at.
        The model is in attack mode while learning; all randomness (input order, placements, the
        initial patch) comes from a generator seeded with ``seed``.
        """
        x, y = self._check_inputs(model, x, y)
        check_seed(self.name, seed)
        num_classes = model.infer_num_classes(x)
        self._check_labels(y, num_classes, "y")
        cls: int | None = None
        if self.targeted:
            if target is None and self.target_class is None:
                raise ConfigError(f"{self.name}: a targeted patch needs a class: fit(..., target=<class>) or target_class=")
            cls = check_target_class(self.name, target if target is not None else self.target_class, num_classes)
            if self.target_class is not None and cls != self.target_class:
                raise ConfigError(f"{self.name}: target={cls} contradicts target_class={self.target_class}")
        elif target is not None:
            raise ConfigError(f"{self.name}: target was given but the attack is untargeted; pass targeted=True")
        self._check_images(x)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        with model.attack_mode():
            ctx = Context(model, generator, self.targeted, num_classes, model.bounds)
            goal = torch.full_like(y, cls) if cls is not None else None
            patches, index = self._learn(ctx, x, y, goal)
            adv, _ = self._place(ctx, x, patches, index)
            pred = predict_chunked(model, adv)
        return AdversarialPatch(
            patch=patches[0].detach(), scale=float(self.scale), target=cls, bounds=model.bounds,
            rotation=float(self.rotation), shrink=float(self.shrink), brightness=float(self.brightness),
            train_success=success_rate(pred, y, cls),
        )

    # ---------------------------------------------------------------------------------------
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        self._check_images(x)
        goal = ctx.target if ctx.targeted else None
        patches, index = self._learn(ctx, x, y, goal)
        adv, mask = self._place(ctx, x, patches, index)
        if goal is not None:
            classes = torch.unique(goal).tolist()
            ctx.info["patches"] = {int(c): patches[i].detach() for i, c in enumerate(classes)}
        else:
            ctx.info["patches"] = {None: patches[0].detach()}
        ctx.info["footprint"] = mask
        return adv

    def _check_images(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise DataError(f"{self.name}: needs images of shape (N, C, H, W), got per-sample shape {tuple(x.shape[1:])}")
        _check_budget(self.name, self.scale, x.shape[2], x.shape[3])

    def _place(self, ctx: Context, x: Tensor, patches: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        placement = draw_placements(
            n, h, w, scale=self.scale, shrink=self.shrink, rotation=self.rotation, brightness=self.brightness,
            generator=ctx.generator, device=x.device,
        )
        adv, mask = render(x, patches[index], placement, budget=self.pixel_budget(h, w),
                           value_bounds=value_range(ctx.bounds, x))
        return adv.detach().clamp(*ctx.bounds), mask

    def _learn(self, ctx: Context, x: Tensor, y: Tensor, goal: Tensor | None) -> tuple[Tensor, Tensor]:
        """The patches ``(K, C, s, s)`` (one per distinct goal class, one untargeted) and, per
        sample, the index of its patch."""
        n, c, h, w = x.shape
        if goal is not None:
            _, index = torch.unique(goal, return_inverse=True)
            k = int(index.max()) + 1
        else:
            index, k = torch.zeros_like(y), 1
        lo, hi = value_range(ctx.bounds, x)
        s = texture_side(self.scale, h, w)
        u = torch.rand((k, c, s, s), generator=ctx.generator, device=x.device, dtype=x.dtype)
        patches = (lo + (hi - lo) * u).requires_grad_(True)
        opt = torch.optim.Adam([patches], lr=float(self.learning_rate) * (hi - lo))
        budget = self.pixel_budget(h, w)
        mb = min(self.minibatch, n)
        perm = torch.randperm(n, generator=ctx.generator, device=x.device)
        pos = 0
        for _ in range(self.steps):
            if pos + mb > n:
                perm, pos = torch.randperm(n, generator=ctx.generator, device=x.device), 0
            idx = perm[pos : pos + mb]
            pos += mb
            placement = draw_placements(
                mb, h, w, scale=self.scale, shrink=self.shrink, rotation=self.rotation, brightness=self.brightness,
                generator=ctx.generator, device=x.device,
            )
            with torch.enable_grad():
                adv, _ = render(x[idx], patches[index[idx]], placement, budget=budget, value_bounds=(lo, hi))
                logits = ctx.model.scores(adv)
                if goal is not None:
                    loss = F.cross_entropy(logits, goal[idx])
                else:
                    loss = -F.cross_entropy(logits, y[idx], reduction="none").clamp(max=self.kappa).mean()
                (grad,) = torch.autograd.grad(loss, patches)
            ctx.model.grad_evals += mb
            opt.zero_grad(set_to_none=True)
            patches.grad = grad
            opt.step()
            with torch.no_grad():
                patches.clamp_(lo, hi)
        return patches.detach(), index

