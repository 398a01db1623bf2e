"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, ICML 2019)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import EPS, POSITIVE, STEPS, TrainContext, Trainer, module_mode, perturb


def kl_per_sample(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """``KL(p_clean ‖ softmax(logits_adv))`` per sample (shape ``(N,)``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="none").sum(dim=1)


@register
class TRADES(Trainer):
    """TRADES: ``CE(f(x), y) + β · KL(f(x) ‖ f(x'))`` with ``x'`` maximising the KL term (Zhang et al. 2019).

    ``x'`` comes from ``steps`` L∞ PGD steps of ``step_size`` on the KL divergence from
    ``x + 0.001·N(0, I)``, with the module in **eval** mode (as in the authors' code); the loss
    is computed in train mode, the KL term averaged over the batch (``KLDivLoss(sum) / N``).
    β trades clean accuracy (small β) for robustness (large β); β = 0 is standard training.
    Defaults: ε = 0.3, 40 steps of 0.01 (the paper's MNIST attack), β = 6 (the paper's headline
    CIFAR-10 setting).

    Args:
        beta: weight β of the robust (KL) term, ``>= 0``.
        eps: L∞ radius of the inner maximisation.
        steps: inner PGD iterations.
        step_size: inner PGD step size.
        **common: the :class:`Trainer` hyperparameters.
    """

    name: ClassVar[str] = "trades"
    description: ClassVar[str] = "clean CE + beta * KL(f(x) || f(x_adv)) (Zhang et al. 2019)"
    reference: ClassVar[str] = (
        'Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019, '
        "https://arxiv.org/abs/1901.08573"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "beta": [Interval(float, 0, None)],
        "eps": EPS,
        "steps": STEPS,
        "step_size": POSITIVE,
    }

    def __init__(
        self,
        *,
        beta: float = 6.0,
        eps: float = 0.3,
        steps: int = 40,
        step_size: float = 0.01,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.beta = beta
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self._validate()

    def adversarial(self, module: nn.Module, xb: Tensor, ctx: TrainContext) -> Tensor:
        """TRADES' inner maximiser of the KL term (eval mode, mode restored)."""
        lo, hi = ctx.bounds
        with module_mode(module, False):
            with torch.no_grad():
                p_clean = F.softmax(module(xb), dim=1)
            noise = torch.randn(xb.shape, generator=ctx.generator, device=xb.device, dtype=xb.dtype)
            x_init = (xb + 0.001 * noise).clamp(lo, hi)
            return perturb(
                module, xb, p_clean,
                eps=float(self.eps), steps=self.steps, step_size=float(self.step_size), norm="linf",
                generator=ctx.generator, bounds=ctx.bounds, loss_fn=kl_per_sample, x_init=x_init,
            )

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        x_adv = self.adversarial(module, xb, ctx)
        logits = module(xb)
        ctx.logits = logits
        natural = F.cross_entropy(logits, yb)
        robust = kl_per_sample(module(x_adv), F.softmax(logits, dim=1)).mean()
        return natural + float(self.beta) * robust
