"""The projected-gradient loop shared by FGSM, BIM, PGD and MI-FGSM."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from gauntlet import norms as N
from gauntlet.attacks.base import Context, loss_and_grad
from gauntlet.attacks.losses import goal_loss


def projected_gradient(
    ctx: Context,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    random_start: bool,
    loss: str = "ce",
    momentum: float | None = None,
    early_stop: bool = False,
    x_init: Tensor | None = None,
) -> Tensor:
    """Run ``steps`` steps of steepest ascent on ``loss`` inside the ``norm``-ball of radius ``eps``.

    With ``early_stop`` (evaluation mode) a sample leaves the loop as soon as it is adversarial,
    so compute is spent only on points still standing; otherwise every step runs on every point
    and the final iterate is returned.
    """
    lo, hi = ctx.bounds
    target = ctx.target if ctx.targeted else None
    if x_init is not None:
        x_adv = x_init.clone()
    elif random_start:
        x_adv = (x + N.random_in_ball(x, norm, eps, ctx.generator)).clamp(lo, hi)
    else:
        x_adv = x.clone()
    g_mom = torch.zeros_like(x) if momentum is not None else None

    if not early_stop:
        for _ in range(steps):
            _, g, _ = loss_and_grad(ctx.model, x_adv, lambda z: goal_loss(loss, z, y, target))
            if g_mom is not None:
                g_mom = momentum * g_mom + N.normalize(g, "l1")  # type: ignore[operator]
                g = g_mom
            x_adv = x_adv + step_size * N.steepest_ascent(g, norm, x=x_adv, bounds=ctx.bounds)
            x_adv = (x + N.project(x_adv - x, norm, eps)).clamp(lo, hi)
        return x_adv

    idx = torch.arange(x.shape[0], device=x.device)  # samples still standing
    for _ in range(steps):
        xa, xc, ya = x_adv[idx], x[idx], y[idx]
        ta = target[idx] if target is not None else None
        _, g, logits = loss_and_grad(ctx.model, xa, partial(goal_loss, loss, y=ya, target=ta))
        fooled = logits.argmax(1) == ta if ta is not None else logits.argmax(1) != ya
        keep = ~fooled
        if not bool(keep.any()):
            idx = idx[keep]
            break
        if not bool(keep.all()):
            idx, xa, xc, g = idx[keep], xa[keep], xc[keep], g[keep]
        if g_mom is not None:
            m = momentum * g_mom[idx] + N.normalize(g, "l1")  # type: ignore[operator]
            g_mom[idx] = m
            g = m
        xa = xa + step_size * N.steepest_ascent(g, norm, x=xa, bounds=ctx.bounds)
        x_adv[idx] = (xc + N.project(xa - xc, norm, eps)).clamp(lo, hi)
    return x_adv
