"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016), L2 and L∞.

At each step the classifier is linearised around the current point, and the point moves onto
the closest linearised decision boundary among the ``candidates`` most likely classes:

    f_k = z_k − z_y,  w_k = ∇f_k,  k* = argmin_k |f_k| / ||w_k||_q   (q = 2 for L2, 1 for L∞)
    d = |f_k*| / ||w_k*||_q + 1e-4
    r = d · w_k* / ||w_k*||_2       (L2)
    r = d · sign(w_k*)              (L∞)

The steps accumulate into ``r_tot`` and the iterate is ``x + (1 + overshoot) r_tot`` clipped
to the bounds.  A point leaves the active set as soon as it is misclassified.  On an affine
classifier one step lands exactly on the closest boundary (times ``1 + overshoot``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.attacks.base import STEPS, Attack, Context
from gauntlet.attacks.registry import register

_TINY = 1e-12


@register
class DeepFool(Attack):
    """DeepFool: walk to the closest linearised class boundary until the label flips.

    Args:
        norm: ``"l2"`` or ``"linf"``.
        eps: optional budget (one value or a list); the minimal adversarial found is projected
            into each ε-ball. ``None`` returns the minimal adversarial as found.
        steps: maximum linearisation steps.
        candidates: how many of the most likely classes (counting the true class) to consider,
            ranked by the clean logits; ``None`` considers every class. The default 10 is the
            authors' (and Foolbox's) choice.
        overshoot: factor ``1 + overshoot`` on the accumulated perturbation, to cross the
            boundary rather than land on it.
        batch_size: split the input into batches of this size.
    """

    name = "deepfool"
    description = "DeepFool minimal perturbation by iterative linearisation, L2/L∞ (Moosavi-Dezfooli et al. 2016)"
    reference = (
        'Moosavi-Dezfooli et al., "DeepFool: a simple and accurate method to fool deep neural networks", CVPR 2016, '
        "https://arxiv.org/abs/1511.04599"
    )
    norms = ("l2", "linf")
    minimal = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "candidates": [Interval(int, 2, None), IsNone()],
        "overshoot": [Interval(float, 0, None)],
    }

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | list[float] | None = None,
        steps: int = 50,
        candidates: int | None = 10,
        overshoot: float = 0.02,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.candidates = candidates
        self.overshoot = overshoot
        self.batch_size = batch_size
        self._validate()

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        model = ctx.model
        lo, hi = ctx.bounds
        n = x.shape[0]
        k = ctx.num_classes if self.candidates is None else min(self.candidates, ctx.num_classes)
        x_adv = x.clone()
        r_tot = torch.zeros_like(x)
        active = torch.arange(n, device=x.device)
        others: Tensor | None = None  # (n, k-1) candidate classes other than y, from the clean logits

        for _ in range(self.steps):
            xa = x_adv[active].detach().requires_grad_(True)
            ya = y[active]
            with torch.enable_grad():
                logits = model.scores(xa)
                if others is None:
                    ranked = logits.detach().scatter(1, y[:, None], float("-inf"))
                    others = ranked.topk(k - 1, dim=1).indices
                fooled = logits.detach().argmax(1) != ya
                keep = ~fooled
                if not bool(keep.any()):
                    break
                oa = others[active]
                # f_j = z_{o_j} − z_y for each candidate, shape (m, k-1)
                f = logits.gather(1, oa) - logits.gather(1, ya[:, None])
                grads = self._candidate_grads(f, xa, keep)
            model.grad_evals += xa.shape[0] * f.shape[1]  # every backward runs over the whole active batch
            f = f.detach()[keep]
            grads = grads[keep].flatten(2)  # (m, k-1, D)
            idx = active = active[keep]
            r = self._step(f, grads).view_as(x[idx])
            r_tot[idx] += r
            x_adv[idx] = (x[idx] + (1.0 + self.overshoot) * r_tot[idx]).clamp(lo, hi)
        return x_adv

    @staticmethod
    def _candidate_grads(f: Tensor, xa: Tensor, keep: Tensor) -> Tensor:
        """∇_x f_j for every candidate j: one backward pass per candidate over a shared forward."""
        grads = []
        mask = keep.to(f.dtype)
        for j in range(f.shape[1]):
            (g,) = torch.autograd.grad(f[:, j], xa, grad_outputs=mask, retain_graph=j + 1 < f.shape[1])
            grads.append(g)
        return torch.stack(grads, dim=1)

    def _step(self, f: Tensor, w: Tensor) -> Tensor:
        """The step onto the closest linearised boundary, shape (m, D)."""
        dual = 2 if self.norm == "l2" else 1
        wn = w.norm(p=dual, dim=2)  # (m, k-1)
        dist = f.abs() / (wn + _TINY)
        best = dist.argmin(dim=1)
        m = torch.arange(f.shape[0], device=f.device)
        step, wb = dist[m, best] + 1e-4, w[m, best]
        if self.norm == "l2":
            return (step / wn[m, best].clamp_min(_TINY))[:, None] * wb
        return step[:, None] * wb.sign()
