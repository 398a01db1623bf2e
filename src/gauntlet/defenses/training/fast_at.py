"""Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free")."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet import norms as N
from gauntlet._validation import Boolean, Constraint, Interval, IsNone
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import EPS, NON_NEGATIVE, POSITIVE, TrainContext, Trainer


@register
class FastAdversarialTraining(Trainer):
    """FGSM adversarial training from a random start (Wong, Rice & Kolter, ICLR 2020).

    Per batch: draw ``δ ~ U[-ε, ε]^d``, take one FGSM step
    ``δ ← clip_ε(δ + α·sign(∇_δ CE(f(x + δ), y)))``, clip ``x + δ`` to the bounds, and train on
    ``CE(f(x + δ), y)``.  The random start and ``α = 1.25·ε`` are what make single-step training
    avoid catastrophic overfitting; the paper pairs it with a cyclic learning rate (the default
    here).  Their MNIST setting: ε = 0.3, α = 0.375, 10 epochs, batch 100, Adam with cyclic lr
    peaking at 5e-3 — the defaults below.  The attack runs with the module in train mode, as in
    the authors' code.

    Args:
        eps: L∞ radius ε of the training perturbation.
        alpha: FGSM step size; ``None`` means ``1.25 * eps``.
        clip_start: clip the random start ``x + δ`` to the bounds before taking the gradient (as
            the authors' CIFAR-10 code does).  The default ``False`` follows their MNIST code: the
            gradient is taken at the unclipped start and only the final point is clipped.  On
            MNIST this matters: with ``clip_start=True`` half of the background pixels (at 0)
            start exactly at the bound, the start loses its randomness there and our run
            (``benchmarks/bench_fast_at.py --clip-start``) overfit catastrophically (PGD accuracy
            0%), while the default reached 85.8% under PGD-50×10 (the paper reports ≈ 88%).
        eps_ramp_epochs: length in epochs (fractional allowed) of a linear ramp of the training
            radius from 0 to ``eps`` at the start of training, updated every step; the step
            ``α`` is scaled by the same factor (so ``α / ε`` stays fixed).  ``0`` (the default,
            the paper's setting) trains at ``eps`` from the first step.  A warm-up of ε is the
            usual MNIST practice for PGD and IBP training (e.g. Gowal et al. 2018) and is meant
            to keep the single-step attack from being masked early in training.
        start_scale: the random start is drawn from ``U[-k·ε, k·ε]`` with ``k = start_scale``
            (``1``, the default, is Wong et al.'s start).
        project: clip the perturbation back to the ε-ball after the step (the default, as in
            Wong et al.).  ``start_scale=2, alpha=eps, project=False`` is N-FGSM (de Jorge et al.,
            "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training", NeurIPS
            2022): the training points then lie up to ``(k + α/ε)·ε`` from the clean input.
        **common: the :class:`Trainer` hyperparameters (defaults here: ``epochs=10``,
            ``batch_size=100``, ``lr=5e-3``, ``optimizer="adam"``, ``lr_schedule="cyclic"``).
    """

    name: ClassVar[str] = "fast_at"
    description: ClassVar[str] = "FGSM adversarial training from a random start, cyclic lr (Wong et al. 2020)"
    reference: ClassVar[str] = (
        'Wong et al., "Fast is better than free: Revisiting adversarial training", ICLR 2020, '
        "https://arxiv.org/abs/2001.03994"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": EPS,
        "alpha": [Interval(float, 0, None, closed="neither"), IsNone()],
        "clip_start": [Boolean()],
        "eps_ramp_epochs": NON_NEGATIVE,
        "start_scale": POSITIVE,
        "project": [Boolean()],
    }

    def __init__(
        self,
        *,
        eps: float = 0.3,
        alpha: float | None = None,
        clip_start: bool = False,
        eps_ramp_epochs: float = 0.0,
        start_scale: float = 1.0,
        project: bool = True,
        epochs: int = 10,
        batch_size: int = 100,
        lr: float = 5e-3,
        optimizer: str = "adam",
        lr_schedule: str = "cyclic",
        **common: Any,
    ) -> None:
        super().__init__(
            epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, lr_schedule=lr_schedule, **common
        )
        self.eps = eps
        self.alpha = alpha
        self.clip_start = clip_start
        self.eps_ramp_epochs = eps_ramp_epochs
        self.start_scale = start_scale
        self.project = project
        self._validate()

    def ramp(self, ctx: TrainContext) -> float:
        """The factor in ``[0, 1]`` applied to ε and α at this step (1 once the ramp is over)."""
        ramp = float(self.eps_ramp_epochs)
        if ramp <= 0:
            return 1.0
        return min(1.0, (ctx.epoch + ctx.batch / ctx.steps_per_epoch) / ramp)

    def adversarial(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        """The FGSM-from-random-start inputs for one batch (module mode left as it is)."""
        frac = self.ramp(ctx)
        ctx.state["eps"] = eps = float(self.eps) * frac
        alpha = (1.25 * float(self.eps) if self.alpha is None else float(self.alpha)) * frac
        lo, hi = ctx.bounds
        if eps == 0.0:
            return xb.detach().clone()
        x0 = xb + N.random_in_ball(xb, "linf", float(self.start_scale) * eps, ctx.generator)
        if self.clip_start:
            x0 = x0.clamp(lo, hi)
        xg = x0.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(module(xg), yb), xg)
        delta = x0.detach() + alpha * g.sign() - xb
        if self.project:
            delta = delta.clamp(-eps, eps)
        return (xb + delta).clamp(lo, hi).detach()

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        x_adv = self.adversarial(module, xb, yb, ctx)
        logits = module(x_adv)
        ctx.logits = logits
        return F.cross_entropy(logits, yb)
