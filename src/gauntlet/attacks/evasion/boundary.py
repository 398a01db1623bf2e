"""Boundary Attack (Brendel, Rauber & Bethge, ICLR 2018): decision-based random walk, L2.

The attack sees only the model's predicted labels.  From an adversarial starting point it walks
along the decision boundary towards the input ``x``, keeping only adversarial points that are
closer.  Per sample, every query counted against ``max_queries`` (which is never exceeded):

1. one query checks the input (a clean mistake, or an input already of the target class, is
   returned as it is);
2. a starting point as in ``hopskipjump`` (the closest blend towards ``x`` of the nearest
   inputs of the batch with an adversarial label, else uniform noise) and a binary search along
   the blend ``(1 − α) x + α x_start`` to the boundary (α to within 10⁻³);
3. steps from the current point ``x̃`` at distance ``r = ‖x − x̃‖``:

   * **orthogonal step**: a Gaussian direction made orthogonal to ``x − x̃``, of length
     ``η r`` (``η`` the spherical step), projected back onto the sphere of radius ``r`` around
     ``x``;
   * **source step**: from there, ``ε r`` (``ε`` the source step) straight towards ``x``;

   the candidate (both steps) costs one query and replaces ``x̃`` when it is adversarial (it is
   closer by construction).  Every ``stats_every``-th step the orthogonal-only point is queried
   too, for the step-size statistics.

The paper's step-size adaptation, with the reference implementation's thresholds: when at least
half of the last orthogonal-only points were adversarial the boundary is locally flat and both
steps grow by ``step_adaptation`` (below 20%: both shrink); when more than 25% of the last
candidates were adversarial the source step grows (below 10%: it shrinks).  The statistics are
windows of the last 10 orthogonal checks and the last 30 candidates per sample, cleared after
each change.  A point stops when its source step falls below ``source_step_convergence``,
when its perturbation is at most ``min(eps)`` (``eps`` given), or when its budget is spent.

All points of a batch step together (one batched query per step), each masked out when it
stops; the queries run under :func:`torch.inference_mode`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.attacks.base import Attack, Context, record_queries
from gauntlet.attacks.evasion.hopskipjump import (
    INIT,
    INIT_CANDIDATES,
    INIT_TRIES,
    MAX_QUERIES,
    LabelOracle,
    boundary_search,
    starting_points,
    stop_radius,
)
from gauntlet.attacks.registry import register

_SPHERICAL_WINDOW = 10  # orthogonal-only checks per decision on both step sizes
_STEP_WINDOW = 30  # candidates per decision on the source step


class _Window:
    """Per-sample ring buffers of the last ``size`` outcomes (True/False)."""

    def __init__(self, n: int, size: int, device: torch.device) -> None:
        self.hits = torch.zeros((n, size), dtype=torch.bool, device=device)
        self.count = torch.zeros(n, dtype=torch.int64, device=device)
        self.size = size

    def add(self, idx: Tensor, outcome: Tensor) -> None:
        self.hits[idx, self.count[idx] % self.size] = outcome
        self.count[idx] += 1

    def rate(self) -> tuple[Tensor, Tensor]:
        """(full, success rate over the window) per sample."""
        full = self.count >= self.size
        return full, self.hits.float().mean(dim=1)

    def clear(self, mask: Tensor) -> None:
        self.count[mask] = 0
        self.hits[mask] = False


@register
class Boundary(Attack):
    """Boundary Attack: decision-based random walk along the boundary towards the input, L2.

    Args:
        norm: ``"l2"`` (the only norm of the attack).
        eps: optional budget (one value or a list): a point stops being queried once its
            perturbation is at most the smallest ε, and the result is projected into each ε-ball.
            ``None`` minimises the perturbation for the whole query budget.
        max_queries: queries per sample, everything included (the check of the input, the
            search for a start, every candidate); never exceeded.
        spherical_step: initial orthogonal step, relative to the distance to the input (10⁻²
            in the paper's implementation).
        source_step: initial step towards the input, relative to the distance (10⁻²).
        step_adaptation: factor by which the steps grow or shrink (1.5).
        source_step_convergence: a point whose source step falls below this has converged.
        stats_every: query the orthogonal-only point every this many steps (10).
        init: ``"inputs"``: start from the batch's other inputs with an adversarial label (the
            target class when targeted), else from noise; ``"noise"``: noise only.
        init_candidates: with ``init="inputs"``, how many of the nearest such inputs to blend
            towards the sample (five queries each, at most a quarter of ``max_queries`` in all).
        init_tries: noise draws per sample at most when looking for a start.
        targeted: aim at ``target`` (see ``Attack.run``).
        batch_size: split the input into batches of this size (starts are drawn within a batch).
    """

    name = "boundary"
    description = "Boundary Attack: decision-based (labels only) random walk on the boundary, L2 (Brendel et al. 2018)"
    reference = (
        'Brendel, Rauber & Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against Black-Box '
        'Machine Learning Models", ICLR 2018, https://arxiv.org/abs/1712.04248'
    )
    requires = frozenset({"labels"})
    norms = ("l2",)
    minimal = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_queries": MAX_QUERIES,
        "spherical_step": [Interval(float, 0, None, closed="neither")],
        "source_step": [Interval(float, 0, 1, closed="neither")],
        "step_adaptation": [Interval(float, 1, None, closed="neither")],
        "source_step_convergence": [Interval(float, 0, None)],
        "stats_every": [Interval(int, 1, None)],
        "init": INIT,
        "init_candidates": INIT_CANDIDATES,
        "init_tries": INIT_TRIES,
        "norm": [Options(("l2",))],
    }

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | list[float] | None = None,
        max_queries: int = 5000,
        spherical_step: float = 0.01,
        source_step: float = 0.01,
        step_adaptation: float = 1.5,
        source_step_convergence: float = 1e-7,
        stats_every: int = 10,
        init: str = "inputs",
        init_candidates: int = 20,
        init_tries: int = 100,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.max_queries = max_queries
        self.spherical_step = spherical_step
        self.source_step = source_step
        self.step_adaptation = step_adaptation
        self.source_step_convergence = source_step_convergence
        self.stats_every = stats_every
        self.init = init
        self.init_candidates = init_candidates
        self.init_tries = init_tries
        self.targeted = targeted
        self.batch_size = batch_size
        self._validate()

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        with torch.inference_mode():
            best, used = self._search(ctx, x, y)
        record_queries(ctx, used)
        return best.clone().reshape(x.shape)

    def _search(self, ctx: Context, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        dev, dt = x.device, x.dtype
        xf = x.reshape(n, -1)
        lo, hi = ctx.bounds
        gen = ctx.generator
        stop = stop_radius(self.eps)
        oracle = LabelOracle(ctx, x, y, self.max_queries)

        start, found, clean_adv = starting_points(
            oracle, xf, gen, init=self.init, tries=self.init_tries, candidates=self.init_candidates
        )
        cur = xf.clone()
        active = found & ~clean_adv
        j = active.nonzero().squeeze(1)
        if j.numel():
            ones = torch.ones(j.numel(), dtype=torch.float64, device=dev)
            cur[j] = boundary_search(oracle, j, xf[j], start[j], ones, ones * 1e-3)
        dist = (cur - xf).norm(dim=1)
        if stop is not None:
            active &= dist > stop

        sph = torch.full((n,), self.spherical_step, dtype=dt, device=dev)
        src = torch.full((n,), self.source_step, dtype=dt, device=dev)
        sph_stats = _Window(n, _SPHERICAL_WINDOW, dev)
        step_stats = _Window(n, _STEP_WINDOW, dev)
        up, conv = self.step_adaptation, self.source_step_convergence
        step = 0
        while True:
            j = (active & (oracle.left() > 0)).nonzero().squeeze(1)
            if j.numel() == 0:
                break
            step += 1
            x0, xa = xf[j], cur[j]
            diff = x0 - xa
            r = dist[j][:, None]
            unit = diff / r
            eta = torch.randn(xa.shape, generator=gen, device=dev, dtype=dt)
            eta -= (eta * unit).sum(dim=1, keepdim=True) * unit
            eta *= sph[j, None] * r / eta.norm(dim=1, keepdim=True).clamp_min(1e-12)
            spherical = (x0 + (eta - diff) / torch.sqrt(sph[j, None] ** 2 + 1)).clamp(lo, hi)
            back = x0 - spherical
            back_norm = back.norm(dim=1, keepdim=True).clamp_min(1e-12)
            length = (src[j, None] * r + back_norm - r).clamp_min(0) / back_norm
            cand = (spherical + length * back).clamp(lo, hi)

            if step % self.stats_every == 0:
                s = (oracle.left(j) >= 2).nonzero().squeeze(1)
                sph_stats.add(j[s], oracle.adversarial(spherical[s], j[s]))
            ok = oracle.adversarial(cand, j)
            step_stats.add(j, ok)
            cand_dist = (cand - x0).norm(dim=1)
            take = ok & (cand_dist < dist[j])
            cur[j[take]] = cand[take]
            dist[j[take]] = cand_dist[take]

            # the paper's step-size adaptation
            full, p = sph_stats.rate()
            grow, shrink = full & (p > 0.5), full & (p < 0.2)
            sph = torch.where(grow, sph * up, torch.where(shrink, sph / up, sph))
            src = torch.where(grow, src * up, torch.where(shrink, src / up, src))
            sph_stats.clear(grow | shrink)
            full, p = step_stats.rate()
            grow, shrink = full & (p > 0.25), full & (p < 0.1)
            src = torch.where(grow, src * up, torch.where(shrink, src / up, src))
            step_stats.clear(grow | shrink)
            src.clamp_(max=0.5)

            active &= src >= conv
            if stop is not None:
                active &= dist > stop
        ctx.info["steps"] = max(ctx.info.get("steps", 0), step)
        return cur, oracle.used
