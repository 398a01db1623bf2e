"""The KKT attack with decoy parameters (Koh, Steinhardt and Liang 2018) for linear models.

A convex learner trained on the clean rows plus the poison ends at ``θ_d`` exactly when the
gradient of its training objective vanishes there (its KKT condition)::

    r(θ_d) = ∇R(θ_d) + C Σ_clean ∇_θ ℓ(x_i, y_i; θ_d) + C Σ_j c_j ∇_θ ℓ(x_j, y_j; θ_d) = 0

with the poison as ``c_j`` copies of a few points ``(x_j, y_j)`` (``Σ c_j = k``, ``x_j`` in the
input box).  So instead of differentiating through training, the attacker picks a *decoy* ``θ_d``
with a high error and solves for poison that makes its residual ``r`` small; when ``r = 0`` the
victim, retraining from scratch, lands on the decoy (the objective is strictly convex).

Two ways to get the decoy:

* ``"flip"`` (the paper's): decoys of increasing error, fitted on the clean rows plus label-flipped
  copies of a growing share of them; for each, the locations and counts that minimise ``‖r‖²``
  with ``θ_d`` fixed.
* ``"joint"`` (the decoy search done as one problem): ``θ_d``, the locations and the counts
  together, maximising a smooth training error of ``θ_d`` (the sigmoid of the margin by which the
  best wrong class beats the true one, over ``temperature``) minus ``λ ‖r / (C n)‖²``, ``λ``
  raised by √10 per stage — each stage is a decoy reachable with a smaller residual.

After each stage (each decoy) the counts are rounded to integers summing to ``k`` and the
model's own estimator is refitted on the clean rows plus that poison, as the victim would; the
stage whose refit has the lowest accuracy on the attacker's (training) data is returned.  The
attacker never sees test data: both the error it aims at and the choice among decoys are on the
training rows it is given.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from gauntlet.attacks.poisoning.availability import LinearSurrogate

__all__ = ["kkt_poison", "round_counts"]

#: Adam's step: for θ and the count logits, and, times the box's width, for the locations
LR = 0.02
#: the penalty grows by this factor per stage of the joint search
GROWTH = math.sqrt(10.0)
#: the share of the clean rows flipped for decoy ``s`` of the paper's search: ``0.1 · 2^s``, at most 1
FLIP_SHARE = 0.1


class _Adam:
    """Adam (Kingma and Ba 2015) on a few tensors, each with its own step size (``torch.optim``
    is not used: importing it loads torch's compiler, seconds on a cold start)."""

    def __init__(self, groups: list[tuple[Tensor, float]], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = groups
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p, _ in groups]
        self.v = [torch.zeros_like(p) for p, _ in groups]
        self.t = 0

    def step(self, loss: Tensor) -> None:
        params = [p for p, _ in self.groups]
        grads = torch.autograd.grad(loss, params)
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        with torch.no_grad():
            for (p, lr), g, m, v in zip(self.groups, grads, self.m, self.v):
                m.mul_(self.b1).add_(g, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                p.sub_(lr * (m / c1) / ((v / c2).sqrt() + self.eps))


def round_counts(c: Tensor, k: int) -> Tensor:
    """Non-negative integers summing to ``k`` nearest to the non-negative ``c`` (``Σ c = k``):
    the floors, plus one for the largest remainders (ties to the lower index)."""
    base = torch.floor(c).long()
    rest = int(k - int(base.sum()))
    if rest > 0:
        order = torch.argsort(-(c - base.double()), stable=True)
        base[order[:rest]] += 1
    return base


def soft_error(sur: LinearSurrogate, theta: Tensor, x: Tensor, y: Tensor, temperature: float) -> Tensor:
    """The mean sigmoid of (best wrong score − true score) / temperature: a smooth error rate."""
    z = sur.scores(theta, x)
    if sur.rows == 1:
        margin = -sur.signs(y)[:, 0] * z[:, 0]
    else:
        zy = z.gather(1, y.unsqueeze(1)).squeeze(1)
        zo = z.masked_fill(F.one_hot(y, sur.rows).bool(), -math.inf).max(dim=1).values
        margin = zo - zy
    return torch.sigmoid(margin / temperature).mean()


def accuracy(sur: LinearSurrogate, theta: Tensor, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        z = sur.scores(theta, x)
        pred = (z[:, 0] > 0).long() if sur.rows == 1 else z.argmax(dim=1)
    return float((pred == y).double().mean())


def residual(sur: LinearSurrogate, theta: Tensor, x: Tensor, y: Tensor, xs: Tensor, ls: Tensor, counts: Tensor) -> Tensor:
    """``r(θ)``: the gradient of the victim's training objective on the clean rows (weight 1) plus
    ``counts`` copies of ``(xs, ls)``, differentiable in ``θ``, ``xs`` and ``counts``.  In closed
    form, ``C Σ w_i P_i x̃_iᵀ`` plus the penalty's gradient, with ``P`` the derivative of the loss
    in the scores: ``softmax − onehot`` (multinomial), ``−s σ(−s z)`` (binary logistic),
    ``−2 s (1 − s z)₊`` (squared hinge)."""
    xa = torch.cat([sur.augment(x), sur.augment(xs)])
    yy = torch.cat([y, ls])
    z = xa @ theta.T
    if sur.loss == "multinomial":
        coef = torch.softmax(z, dim=1) - F.one_hot(yy, sur.rows).double()
    else:
        s = sur.signs(yy)
        coef = -s * torch.sigmoid(-s * z) if sur.loss == "logistic" else -2 * s * torch.relu(1 - s * z)
    weight = torch.cat([torch.ones(x.shape[0], dtype=torch.float64), counts])
    pen = torch.ones_like(theta)
    if sur.fit_intercept and not sur.penalize_intercept:
        pen[:, -1] = 0
    return sur.C * (weight.unsqueeze(1) * coef).T @ xa + pen * theta


def kkt_poison(
    sur: LinearSurrogate, x: Tensor, y: Tensor, k: int, *, decoy: str, locations_per_class: int, stages: int,
    steps: int, penalty: float, temperature: float, bounds: tuple[float, float], generator: torch.Generator,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``k`` poison rows ``(x_p, y_p)`` (float64, flattened; copies of at most
    ``locations_per_class · K`` distinct points) for the clean rows ``(x, y)`` (float64,
    flattened), and a record of the search.  See the module docstring."""
    lo, hi = bounds
    n, kk = int(x.shape[0]), sur.num_classes
    ls = torch.arange(kk).repeat_interleave(int(locations_per_class))
    m = int(ls.shape[0])
    ones = torch.ones(n, dtype=torch.float64)
    theta0 = sur.fit(x, y, ones)
    scale = sur.C * n
    clean_acc = accuracy(sur, theta0, x, y)

    def start() -> tuple[Tensor, Tensor]:
        rows = torch.randint(n, (m,), generator=generator)
        return x[rows].clone().requires_grad_(True), torch.zeros(m, dtype=torch.float64, requires_grad=True)

    def evaluate(xs: Tensor, a: Tensor) -> tuple[Tensor, Tensor, float]:
        counts = round_counts(torch.softmax(a.detach(), 0) * k, k)
        xp = xs.detach().repeat_interleave(counts, dim=0)
        yp = ls.repeat_interleave(counts)
        theta = sur.fit(torch.cat([x, xp]), torch.cat([y, yp]), torch.ones(n + k, dtype=torch.float64))
        return xp, yp, accuracy(sur, theta, x, y)

    record: list[dict[str, float]] = []
    best: tuple[Tensor, Tensor, float] | None = None
    from gauntlet.attacks.poisoning.availability import other_labels

    joint = decoy == "joint"
    if joint:  # one decoy, refined stage after stage under a growing penalty; the poison carries over
        theta = theta0.clone().requires_grad_(True)
        xs, a = start()
        opt = _Adam([(theta, LR), (a, LR), (xs, LR * (hi - lo))])
    for s in range(int(stages)):
        if joint:
            lam = float(penalty) * GROWTH**s
            label: dict[str, float] = {"penalty": lam}
            target = theta
        else:  # the paper's decoys: fitted on label-flipped copies of a doubling share of the rows
            share = min(1.0, FLIP_SHARE * 2**s)
            rows = torch.randperm(n, generator=generator)[: max(1, round(share * n))]
            flipped = other_labels(y[rows], kk, generator)
            label = {"flipped_share": share}
            target = sur.fit(torch.cat([x, x[rows]]), torch.cat([y, flipped]), torch.ones(n + rows.shape[0], dtype=torch.float64))
            xs, a = start()
            opt = _Adam([(a, LR), (xs, LR * (hi - lo))])
        for _ in range(int(steps)):
            r = residual(sur, target, x, y, xs, ls, torch.softmax(a, 0) * k) / scale
            # joint: raise the decoy's (smooth) training error while driving its KKT residual to 0
            opt.step(-soft_error(sur, theta, x, y, temperature) + lam * (r**2).sum() if joint else (r**2).sum())
            with torch.no_grad():
                xs.clamp_(lo, hi)
        xp, yp, acc = evaluate(xs, a)
        res = residual(sur, target, x, y, xs, ls, torch.softmax(a, 0) * k).detach()
        record.append({**label, "residual": float(res.norm()), "decoy_accuracy": accuracy(sur, target.detach(), x, y), "accuracy": acc})
        if best is None or acc < best[2]:
            best = (xp, yp, acc)
    assert best is not None  # stages >= 1
    chosen = min(range(len(record)), key=lambda i: record[i]["accuracy"])
    info = {
        "decoy": decoy, "stages": record, "chosen_stage": chosen, "locations": int(torch.unique(best[0], dim=0).shape[0]),
        "train_accuracy": (clean_acc, best[2]),
    }
    return best[0], best[1], info
