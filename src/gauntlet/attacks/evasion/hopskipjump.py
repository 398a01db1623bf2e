"""HopSkipJumpAttack (Chen, Jordan & Wainwright, IEEE S&P 2020): decision-based, L2 and L∞.

The attack sees only the model's predicted labels.  Per sample, every query counted against
``max_queries`` (which is never exceeded):

1. one query checks the input: a clean mistake (targeted: an input already of the target class)
   is returned as it is;
2. a starting point of an adversarial class: among the other inputs of the batch that the model
   puts in an adversarial class (targeted: in the target class; their labels are known from
   step 1), the ``init_candidates`` nearest (L2) are each blended towards ``x`` by a coarse
   binary search (five queries), and the closest blend is kept; without such inputs, uniform
   noise is drawn until it is adversarial (at most ``init_tries`` queries);
3. a binary search along the blend ``(1 − α) x + α x_start`` to the decision boundary (to the
   tolerance ``θ`` below for L2; for L∞ to α within 10⁻³, then over the L∞ boxes as below);
4. iterations ``t = 1, 2, …`` from the boundary point ``x_t``:

   * the boundary's normal is estimated by Monte Carlo from ``B_t = min(B_0 √t, max_evals)``
     labels at ``x_t + δ_t u`` (``u`` uniform on the unit sphere for L2; uniform in the cube
     then L2-normalised for L∞), with the mean of the ±1 decisions subtracted as a baseline
     (``δ_1 = 0.1 (hi − lo)``, then ``δ_t = √d θ d_{t−1}`` for L2 and ``d θ d_{t−1}`` for L∞, where
     ``d_{t−1}`` is the distance of the previous step's point before its binary search);
   * geometric step-size search: ``ξ_t = ‖x_t − x‖ / √t``, halved until
     ``x_t + ξ_t v_t`` is adversarial, with ``v_t`` the estimate (L2) or its sign (L∞);
   * binary search back to the boundary between ``x`` and that point: along the segment to a
     relative tolerance ``θ`` (L2), or over the L∞ boxes ``clip(x', x − α, x + α)`` to a tolerance
     ``min(θ, θ ‖x' − x‖∞)`` (L∞);

   with ``θ = γ / d^{3/2}`` (L2) or ``γ / d²`` (L∞), ``d`` the input dimension.

A point stops being queried when its perturbation is at most ``min(eps)`` (when ``eps`` is given),
when its budget cannot pay for another iteration, or when no adversarial start was found (it is
then returned unchanged, a failure).  Without ``eps`` it minimises its perturbation for the whole
budget.  The smallest adversarial point found is returned.  All points of a batch move through the
same stages together, each masked out when it stops; the labels-only queries are batched and run
under :func:`torch.inference_mode`.

The helpers here (the per-sample query ledger, the starting points, the binary searches) are
shared with ``boundary``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.attacks.base import Attack, Context, record_queries
from gauntlet.attacks.registry import register
from gauntlet.errors import BudgetExceeded
from gauntlet.threat import as_eps_tuple

_ROWS = 1024  # rows per model call
_NOISE_ELEMS = 1 << 22  # floats per chunk of gradient-estimation noise
_MAX_HALVINGS = 30  # geometric step-size search: at most this many halvings per iteration
_BLEND_QUERIES = 5  # binary-search steps on the blend towards each candidate start (α to 1/32)

MAX_QUERIES: list[Constraint] = [Interval(int, 1, None)]
INIT: list[Constraint] = [Options(("inputs", "noise"))]
INIT_TRIES: list[Constraint] = [Interval(int, 0, None)]
INIT_CANDIDATES: list[Constraint] = [Interval(int, 1, None)]


# ---------------------------------------------------------------------------------------------
# shared by the decision-based attacks
class LabelOracle:
    """The model's labels with a per-sample query ledger: every query of the attack goes here.

    Rows are clipped to the bounds and sent in chunks of ``_ROWS``; ``owner`` names the sample
    each row is spent on.  A call that would take any sample past ``budget`` raises before the
    model sees it (the attacks check :meth:`left` first, so this is a guard, not a control path).
    """

    def __init__(self, ctx: Context, x: Tensor, y: Tensor, budget: int) -> None:
        self.model = ctx.model
        self.shape = tuple(x.shape[1:])
        self.y = y
        self.t = ctx.target if ctx.targeted else None
        self.lo, self.hi = ctx.bounds
        self.budget = budget
        self.used = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def left(self, idx: Tensor | None = None) -> Tensor:
        left = self.budget - self.used
        return left if idx is None else left[idx]

    def labels(self, rows: Tensor, owner: Tensor) -> Tensor:
        if rows.shape[0] == 0:
            return torch.zeros(0, dtype=torch.int64, device=rows.device)
        counts = torch.bincount(owner, minlength=self.used.shape[0])
        if bool((self.used + counts > self.budget).any()):
            raise BudgetExceeded(f"internal error: a query past max_queries={self.budget} was attempted")
        self.used += counts
        rows = rows.clamp(self.lo, self.hi)
        out = [
            self.model.predict(rows[s : s + _ROWS].reshape(-1, *self.shape)).to(torch.int64)
            for s in range(0, rows.shape[0], _ROWS)
        ]
        return torch.cat(out)

    def is_adversarial(self, labels: Tensor, owner: Tensor) -> Tensor:
        if self.t is not None:
            return labels == self.t[owner]
        return labels != self.y[owner]

    def adversarial(self, rows: Tensor, owner: Tensor) -> Tensor:
        return self.is_adversarial(self.labels(rows, owner), owner)


def stop_radius(eps: Any) -> float | None:
    """The perturbation size at which a minimal-norm search may stop: the smallest ε given."""
    return None if eps is None else min(as_eps_tuple(eps))


def noise_scale(x: Tensor, bounds: tuple[float, float]) -> float:
    """Width of the input domain (of the batch's values when the bounds are infinite)."""
    lo, hi = bounds
    if math.isfinite(lo) and math.isfinite(hi):
        return hi - lo
    span = float(x.max() - x.min()) if x.numel() else 0.0
    return span if span > 0 else 1.0


def affordable(oracle: LabelOracle, owner: Tensor) -> Tensor:
    """Which of the rows owned by ``owner`` (repeats allowed) fit in their samples' budgets, in order."""
    if owner.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=owner.device)
    sorted_owner, perm = torch.sort(owner, stable=True)
    first = torch.searchsorted(sorted_owner, sorted_owner)
    rank = torch.empty_like(owner)
    rank[perm] = torch.arange(owner.numel(), device=owner.device) - first
    return rank < oracle.left(owner)


def starting_points(
    oracle: LabelOracle, x: Tensor, gen: torch.Generator, *, init: str, tries: int, candidates: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Check the inputs and find an adversarial starting point per sample.

    Args:
        x: the inputs, flattened to ``(n, d)``.
        candidates: with ``init="inputs"``, how many of the nearest (L2) adversarial inputs to
            try, at most as many as a quarter of the budget pays for: with more than one, each
            is blended towards the sample by a coarse binary search (α to 1/32, five queries)
            and the closest blend is the start.

    Returns ``(start, found, clean_adv)``: ``start[i]`` is adversarial for sample ``i`` where
    ``found[i]``; ``clean_adv[i]`` says the input itself already is (then ``start[i] = x[i]``).
    Costs one query per sample, plus those of the candidates' searches and the noise draws.
    """
    n = x.shape[0]
    everyone = torch.arange(n, device=x.device)
    labels = oracle.labels(x, everyone)
    clean_adv = oracle.is_adversarial(labels, everyone)
    start = x.clone()
    found = clean_adv.clone()
    need = (~found).nonzero().squeeze(1)
    if init == "inputs" and need.numel():
        k = max(1, min(candidates, n, oracle.budget // 4 // _BLEND_QUERIES))
        picks, valid = [], []
        # another input is adversarial for sample i when its (already queried) label is
        for s in range(0, need.numel(), 256):
            rows = need[s : s + 256]
            if oracle.t is not None:
                ok = labels[None, :] == oracle.t[rows][:, None]
            else:
                ok = labels[None, :] != oracle.y[rows][:, None]
            dist = torch.cdist(x[rows], x).masked_fill(~ok, float("inf"))
            best, j = dist.topk(k, dim=1, largest=False)  # nearest first
            picks.append(j)
            valid.append(torch.isfinite(best))
        pick, has = torch.cat(picks), torch.cat(valid)  # (m, k) for the samples in need
        some = has.any(dim=1)
        if k == 1:
            start[need[some]] = x[pick[some, 0]]
        elif bool(some.any()):
            r, c = has.nonzero(as_tuple=True)
            owner = need[r]
            ones = torch.ones(owner.numel(), dtype=torch.float64, device=x.device)
            blend = boundary_search(oracle, owner, x[owner], x[pick[r, c]], ones, ones / 2**_BLEND_QUERIES)
            d = torch.full(has.shape, float("inf"), dtype=torch.float64, device=x.device)
            d[r, c] = (blend - x[owner]).norm(dim=1).to(torch.float64)
            pair = torch.full(has.shape, -1, dtype=torch.int64, device=x.device)
            pair[r, c] = torch.arange(owner.numel(), device=x.device)
            closest = pair[torch.arange(has.shape[0], device=x.device), d.argmin(dim=1)]
            start[need[some]] = blend[closest[some]]
        found[need[some]] = True
    lo, hi = oracle.lo, oracle.hi
    uniform = math.isfinite(lo) and math.isfinite(hi)
    scale = noise_scale(x, (lo, hi))
    for _ in range(tries):
        need = ((~found) & (oracle.left() > 0)).nonzero().squeeze(1)
        if need.numel() == 0:
            break
        shape = (need.numel(), x.shape[1])
        if uniform:
            noise = lo + (hi - lo) * torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype)
        else:
            noise = x[need] + scale * torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)
        ok = oracle.adversarial(noise, need)
        start[need[ok]] = noise[ok]
        found[need[ok]] = True
    return start, found, clean_adv


def _project(x0: Tensor, p: Tensor, a: Tensor, box: bool) -> Tensor:
    """The point at ``a`` between ``x0`` and ``p``: on the segment (``a`` a fraction), or, with
    ``box``, ``p`` clipped to the L∞ box of half-width ``a`` around ``x0``."""
    a = a.to(x0.dtype)[:, None]
    if box:
        return torch.minimum(torch.maximum(p, x0 - a), x0 + a)
    return x0 + a * (p - x0)


def boundary_search(
    oracle: LabelOracle, idx: Tensor, x0: Tensor, p: Tensor, high: Tensor, tol: Tensor, *, box: bool = False
) -> Tensor:
    """Binary search between the inputs ``x0`` (not adversarial) and adversarial points ``p``.

    ``high`` is where ``p`` lies (1 on the segment; its L∞ distance with ``box``), ``tol`` the
    per-sample stopping width.  Each sample stops at its tolerance, when its budget is spent, or
    when float precision stops the interval from shrinking.  Returns the adversarial end.
    """
    hi = high.to(torch.float64).clone()
    lo = torch.zeros_like(hi)
    tol = tol.to(torch.float64).clone()
    while True:
        need = (hi - lo > tol).nonzero().squeeze(1)
        need = need[affordable(oracle, idx[need])]
        if need.numel() == 0:
            break
        mid = (lo[need] + hi[need]) / 2
        stuck = (mid <= lo[need]) | (mid >= hi[need])
        if bool(stuck.any()):
            tol[need[stuck]] = float("inf")
            need, mid = need[~stuck], mid[~stuck]
            if need.numel() == 0:
                continue
        ok = oracle.adversarial(_project(x0[need], p[need], mid, box), idx[need])
        hi[need[ok]] = mid[ok]
        lo[need[~ok]] = mid[~ok]
    return _project(x0, p, hi, box)


def _norm(d: Tensor, norm: str) -> Tensor:
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


# ---------------------------------------------------------------------------------------------
@register
class HopSkipJump(Attack):
    """HopSkipJumpAttack: decision-based minimal perturbation from labels only, L2 or L∞.

    Args:
        norm: ``"l2"`` or ``"linf"``.
        eps: optional budget (one value or a list): a point stops being queried once its
            perturbation is at most the smallest ε, and the result is projected into each ε-ball.
            ``None`` minimises the perturbation for the whole query budget.
        max_queries: queries per sample, everything included (the check of the input, the
            search for a start, every estimate and search); never exceeded.
        gamma: binary-search precision ``θ = γ / d^{3/2}`` (L2) or ``γ / d²`` (L∞), which also
            sets the probe radius ``δ_t``; 1.0 in the paper.
        init_evals: ``B_0``, the estimate's sample size at the first iteration (``B_0 √t`` at
            iteration ``t``); 100 in the paper.
        max_evals: cap on the estimate's sample size (10 000 in the paper).
        init: ``"inputs"``: start from the batch's other inputs with an adversarial label (the
            target class when targeted), else from noise; ``"noise"``: uniform noise only (the
            paper's untargeted initialisation).
        init_candidates: with ``init="inputs"``, how many of the nearest such inputs to blend
            towards the sample (five queries each, at most a quarter of ``max_queries`` in all);
            the closest blend is the start.
        init_tries: noise draws per sample at most when looking for a start.
        targeted: aim at ``target`` (see ``Attack.run``); a start of the target class is looked
            for among the batch's inputs, then in noise.
        batch_size: split the input into batches of this size (starts are drawn within a batch).
    """

    name = "hopskipjump"
    description = "HopSkipJumpAttack: decision-based (labels only) minimal perturbation, L2/L∞ (Chen et al. 2020)"
    reference = (
        'Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", '
        "IEEE S&P 2020, https://arxiv.org/abs/1904.02144"
    )
    requires = frozenset({"labels"})
    norms = ("l2", "linf")
    minimal = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_queries": MAX_QUERIES,
        "gamma": [Interval(float, 0, None, closed="neither")],
        "init_evals": [Interval(int, 1, None)],
        "max_evals": [Interval(int, 1, None)],
        "init": INIT,
        "init_candidates": INIT_CANDIDATES,
        "init_tries": INIT_TRIES,
    }

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | list[float] | None = None,
        max_queries: int = 5000,
        gamma: float = 1.0,
        init_evals: int = 100,
        max_evals: int = 10_000,
        init: str = "inputs",
        init_candidates: int = 20,
        init_tries: int = 100,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.max_queries = max_queries
        self.gamma = gamma
        self.init_evals = init_evals
        self.max_evals = max_evals
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

    # -----------------------------------------------------------------------------------------
    def _search(self, ctx: Context, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        xf = x.reshape(n, -1)
        d = xf.shape[1]
        linf = self.norm == "linf"
        theta = self.gamma / (d**2 if linf else d**1.5)
        stop = stop_radius(self.eps)
        oracle = LabelOracle(ctx, x, y, self.max_queries)
        scale = noise_scale(xf, ctx.bounds)

        start, found, clean_adv = starting_points(
            oracle, xf, ctx.generator, init=self.init, tries=self.init_tries, candidates=self.init_candidates
        )
        best = xf.clone()
        best_dist = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
        best_dist[clean_adv] = 0.0
        cur = xf.clone()  # x_t, the current boundary point
        dist = torch.zeros(n, dtype=torch.float64, device=x.device)  # ‖x_t − x‖
        dist_post = torch.zeros_like(dist)  # distance of the last step's point before its binary search
        active = found & ~clean_adv

        def keep(j: Tensor, pts: Tensor) -> None:
            """Make ``pts`` the current points of samples ``j``; remember the best."""
            dj = _norm(pts - xf[j], self.norm).to(torch.float64)
            cur[j], dist[j] = pts, dj
            better = dj < best_dist[j]
            best[j[better]], best_dist[j[better]] = pts[better], dj[better]

        # the start, projected to the boundary along the blend (then, for L∞, over boxes)
        j = active.nonzero().squeeze(1)
        if j.numel():
            ones = torch.ones(j.numel(), dtype=torch.float64, device=x.device)
            pts = boundary_search(oracle, j, xf[j], start[j], ones, ones * (1e-3 if linf else theta))
            if linf:
                high = _norm(pts - xf[j], "linf").to(torch.float64)
                pts = boundary_search(oracle, j, xf[j], pts, high, torch.clamp(high * theta, max=theta), box=True)
            keep(j, pts)
            dist_post[j] = _norm(start[j] - xf[j], self.norm).to(torch.float64)
        if stop is not None:
            active &= best_dist > stop

        t = 0
        while True:
            t += 1
            j = (active & (oracle.left() > 0)).nonzero().squeeze(1)
            if j.numel() == 0:
                break
            # queries the binary search will need (and two for the step-size search)
            reserve = torch.ceil(torch.log2(dist[j].clamp_min(1.0) / theta if linf else torch.full_like(dist[j], 1 / theta)))
            reserve = reserve.to(torch.int64) + 2
            b_t = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            evals = torch.clamp(oracle.left(j) - reserve, max=b_t)
            broke = evals < 1
            if bool(broke.any()):  # the budget cannot pay for another iteration
                active[j[broke]] = False
                j, evals = j[~broke], evals[~broke]
                if j.numel() == 0:
                    break
            if t == 1:
                delta = torch.full((j.numel(),), 0.1 * scale, dtype=torch.float64, device=x.device)
            else:
                delta = (d if linf else math.sqrt(d)) * theta * dist_post[j]
            grad = self._estimate(oracle, j, cur[j], evals, delta.to(x.dtype), ctx)
            update = grad.sign() if linf else grad

            # geometric step-size search: ξ = ‖x_t − x‖ / √t, halved until adversarial
            xi = (dist[j] / math.sqrt(t)).to(x.dtype)
            step = cur[j].clone()
            ok_step = torch.zeros(j.numel(), dtype=torch.bool, device=x.device)
            pending = torch.ones_like(ok_step)
            for _ in range(_MAX_HALVINGS + 1):
                pend = (pending & (oracle.left(j) > 0)).nonzero().squeeze(1)
                if pend.numel() == 0:
                    break
                cand = (cur[j[pend]] + xi[pend, None] * update[pend]).clamp(*ctx.bounds)
                ok = oracle.adversarial(cand, j[pend])
                step[pend[ok]] = cand[ok]
                ok_step[pend[ok]] = True
                pending[pend[ok]] = False
                xi[pend[~ok]] /= 2
            # binary search back to the boundary
            k = ok_step.nonzero().squeeze(1)
            if k.numel() == 0:
                continue
            jk, pk = j[k], step[k]
            dist_post[jk] = _norm(pk - xf[jk], self.norm).to(torch.float64)
            if linf:
                high = dist_post[jk]
                pts = boundary_search(oracle, jk, xf[jk], pk, high, torch.clamp(high * theta, max=theta), box=True)
            else:
                ones = torch.ones(jk.numel(), dtype=torch.float64, device=x.device)
                pts = boundary_search(oracle, jk, xf[jk], pk, ones, ones * theta)
            keep(jk, pts)
            if stop is not None:
                active &= best_dist > stop
        ctx.info["iterations"] = max(ctx.info.get("iterations", 0), t - 1)
        return best, oracle.used

    def _estimate(
        self, oracle: LabelOracle, idx: Tensor, xa: Tensor, evals: Tensor, delta: Tensor, ctx: Context
    ) -> Tensor:
        """Unit-L2 Monte-Carlo estimate of the boundary's normal at the points ``xa``.

        ``evals[i]`` probes at ``xa[i] + δ_i u`` (clipped to the bounds; ``u`` as clipped), the
        ±1 decisions baseline-subtracted unless they all agree.
        """
        k, d = xa.shape
        gen = ctx.generator
        bmax = int(evals.max())
        grad = torch.zeros_like(xa)
        per = max(1, _NOISE_ELEMS // (bmax * d))
        arange = torch.arange(bmax, device=xa.device)
        for s in range(0, k, per):
            sl = slice(s, s + per)
            c = xa[sl].shape[0]
            if self.norm == "l2":
                rv = torch.randn((c, bmax, d), generator=gen, device=xa.device, dtype=xa.dtype)
            else:
                rv = torch.rand((c, bmax, d), generator=gen, device=xa.device, dtype=xa.dtype) * 2 - 1
            rv /= rv.norm(dim=2, keepdim=True).clamp_min(1e-12)
            dl = delta[sl].view(c, 1, 1)
            probe = (xa[sl, None, :] + dl * rv).clamp(*ctx.bounds)
            rv = (probe - xa[sl, None, :]) / dl
            valid = arange[None, :] < evals[sl, None]
            owner = idx[sl, None].expand(c, bmax)[valid]
            decision = oracle.adversarial(probe[valid], owner)
            f = torch.zeros((c, bmax), dtype=xa.dtype, device=xa.device)
            f[valid] = decision.to(xa.dtype) * 2 - 1
            mean = f.sum(dim=1) / evals[sl].to(xa.dtype)
            agree = mean.abs() == 1
            f = torch.where(agree[:, None], f, (f - mean[:, None]) * valid)
            grad[sl] = (f[:, :, None] * rv).sum(dim=1) / evals[sl, None].to(xa.dtype)
        return grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
