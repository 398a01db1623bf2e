"""IBP training (Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelović, Mann & Kohli 2018,
"On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.defenses.certify.ibp import layers, margin_bounds
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import EPS, NON_NEGATIVE, TrainContext, Trainer


@register
class IBPTraining(Trainer):
    """Verifiably robust training with interval bound propagation (Gowal et al. 2018, eq. 9).

    The loss of a batch is ``κ · CE(z(x), y) + (1 − κ) · CE(ẑ(x, ε), y)`` where ``z`` are the clean
    logits and ``ẑ`` the worst-case logits over the L∞ box of radius ``ε``: ``ẑ_j = −m_j`` with ``m_j``
    the IBP lower bound of the margin ``z_y − z_j``, the last linear layer elided into the
    specification (``ibp.margin_bounds``; ``ẑ_y = 0``).  The schedule follows the paper: after
    ``warmup_epochs`` of clean training (``ε = 0``, ``κ = 1``), ``ε`` rises linearly from 0 to ``eps``
    and ``κ`` from 1 to ``kappa_final`` over ``ramp_epochs`` (fractional epochs allowed; the
    schedule is updated every step), then both stay constant.  The paper trains MNIST with
    ``κ_final = 0.5`` and a training ε somewhat above the test ε (0.2 for a test ε of 0.1).

    The network must be an ``nn.Sequential`` of layers IBP supports (checked before training
    starts); bounds are those of the eval-mode network (Dropout off, BatchNorm with running
    statistics).

    Args:
        eps: final L∞ training radius (input units).
        ramp_epochs: length of the linear ramp of ε and κ in epochs; ``None`` = half of ``epochs``.
        warmup_epochs: clean epochs before the ramp starts.
        kappa_final: weight of the clean loss at the end of the ramp (``κ``), in ``[0, 1]``.
        **common: the :class:`Trainer` hyperparameters (epochs, batch_size, lr, ...).
    """

    name: ClassVar[str] = "ibp_training"
    description: ClassVar[str] = "verifiably robust training with interval bound propagation (Gowal et al. 2018)"
    reference: ClassVar[str] = (
        'Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models", '
        "arXiv 2018, https://arxiv.org/abs/1810.12715"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": EPS,
        "ramp_epochs": [Interval(float, 0, None), IsNone()],
        "warmup_epochs": NON_NEGATIVE,
        "kappa_final": [Interval(float, 0, 1)],
    }

    def __init__(
        self,
        *,
        eps: float = 0.1,
        ramp_epochs: float | None = None,
        warmup_epochs: float = 0.0,
        kappa_final: float = 0.5,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.eps = eps
        self.ramp_epochs = ramp_epochs
        self.warmup_epochs = warmup_epochs
        self.kappa_final = kappa_final
        self._validate()

    def schedule(self, t: float) -> tuple[float, float]:
        """``(ε, κ)`` at training time ``t`` in epochs (``epoch + batch / steps_per_epoch``)."""
        ramp = float(self.ramp_epochs) if self.ramp_epochs is not None else self.epochs / 2.0
        start = float(self.warmup_epochs)
        if ramp <= 0:
            frac = 1.0 if t >= start else 0.0
        else:
            frac = min(1.0, max(0.0, (t - start) / ramp))
        return float(self.eps) * frac, 1.0 - (1.0 - float(self.kappa_final)) * frac

    def prepare(
        self, module: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext, *, checkpoint: Path | None, resume: bool, progress: bool
    ) -> None:
        """Refuse a network IBP cannot bound before any training step (``CapabilityError``)."""
        layers(module)

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        eps, kappa = self.schedule(ctx.epoch + ctx.batch / ctx.steps_per_epoch)
        ctx.state["eps"], ctx.state["kappa"] = eps, kappa
        logits = module(xb)
        ctx.logits = logits
        loss = F.cross_entropy(logits, yb)
        if kappa >= 1.0:
            return loss
        worst = -margin_bounds(module, xb, yb, eps, bounds=ctx.bounds)
        return kappa * loss + (1.0 - kappa) * F.cross_entropy(worst, yb)

    def _result_info(self, ctx: TrainContext) -> dict[str, Any]:
        return {"eps_last": ctx.state.get("eps"), "kappa_last": ctx.state.get("kappa")}
