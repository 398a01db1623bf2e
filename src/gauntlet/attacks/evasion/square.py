"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black box.

Random search over localised square-shaped updates: at every iteration each point still
standing proposes one candidate (a square of side set by the ``p`` schedule, at a random
position) and keeps it only when it lowers the loss; points stop being queried as soon as they
are fooled.  L∞ starts from vertical stripes of ±ε, L2 from a grid of ±"pseudo-Gaussian"
bumps and moves mass between two windows with the paper's centred-square update.

L2 and the input bounds: the paper scales every L2 candidate to norm ε and then clips it to the
bounds, so whatever the clip cuts off is lost (on MNIST, where most pixels are 0, the initial
tiles keep about three quarters of ε).  ``l2_bounds="rescale"`` (the default) scales the candidate along
the same direction until the *clipped* perturbation has norm ε (an exact line search: the
largest multiple of the direction whose clipped norm is ε), i.e. it puts every candidate on the
boundary of the feasible set, the paper's own design principle; ``l2_bounds="clip"`` is the
paper's (and the authors' code's) behaviour.  See BENCHMARKS.md section 12 for what it changes.

Inputs of shape ``(N, C, H, W)`` use square windows; ``(N, H, W)`` is read as one channel;
any other per-sample shape (e.g. tabular features) is read as a single row ``1 × D`` on which a
"square" is a segment covering the same share ``p`` of the features.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.attacks.base import SEARCH_PRECISION, Attack, Context, record_queries
from gauntlet.attacks.losses import margin
from gauntlet.attacks.registry import register

# the paper's schedule: p halves after these iterations (for a 10 000-query budget)
_P_BREAKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, budget: int) -> float:
    """Share of the features a square covers at iteration ``it`` of a ``budget``-query run.

    The paper halves ``p`` after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
    of a 10 000-query run; other budgets rescale the iteration count to that scale.
    """
    it = int(it / budget * 10000)
    halvings = sum(it > b for b in _P_BREAKS)
    return p_init / 2**halvings


def _bump(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Concentric rectangles around the centre, weight Σ_{k≥d} 1/(k+1)², d = Chebyshev distance."""
    if h == 0 or w == 0:
        return torch.zeros(h, w, device=device, dtype=dtype)
    ch, cw = h // 2, w // 2
    levels = max(ch, cw) + 1
    tail = (1.0 / torch.arange(1, levels + 1, device=device, dtype=dtype) ** 2).flip(0).cumsum(0).flip(0)
    di = (torch.arange(h, device=device) - ch).abs()
    dj = (torch.arange(w, device=device) - cw).abs()
    d = torch.maximum(di[:, None], dj[None, :])
    out = tail[d]
    return out / out.norm()


def _eta(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The paper's L2 update shape: a + bump next to a − bump, unit L2 norm (split along rows)."""
    if h >= 2:
        out = torch.cat([_bump(h // 2, w, device, dtype), -_bump(h - h // 2, w, device, dtype)], dim=0)
    else:
        out = torch.cat([_bump(h, w // 2, device, dtype), -_bump(h, w - w // 2, device, dtype)], dim=1)
    return out / out.norm().clamp_min(1e-12)


def _flips(k: int, c: int, gen: torch.Generator, dev: torch.device, dt: torch.dtype) -> Tensor:
    """``(k, c, 1, 1)`` of ±1 with a uniformly drawn non-empty set of channels at −1."""
    if c <= 62:
        code = torch.randint(1, 2**c, (k, 1), generator=gen, device=dev)
        bits = (code >> torch.arange(c, device=dev)[None, :]) & 1
    else:  # so many channels that an all-zero draw is (practically) impossible
        bits = torch.randint(0, 2, (k, c), generator=gen, device=dev)
    return (1 - 2 * bits).to(dt).view(k, c, 1, 1)


def _fit_l2(x: Tensor, d: Tensor, eps: float, lo: float, hi: float) -> Tensor:
    """``clip(x + λ·d)`` with the ``λ ≥ 0`` whose clipped perturbation has L2 norm ``eps``, per row.

    The clipped norm grows with ``λ``: coordinate ``i`` moves ``λ|d_i|`` until it reaches its bound
    (room ``r_i``) at ``λ = t_i = r_i/|d_i|``.  With the ``t_i`` sorted, ``‖·‖²`` on the stretch
    where the first ``k`` coordinates are saturated is ``R_k + λ²·A_k`` (``R_k``: their squared
    rooms, ``A_k``: the other ``d_i²``), so ``λ`` is exact: the first ``k`` whose solution
    ``√((ε² − R_k)/A_k)`` lies before ``t_k``.  Where the bounds leave less than ``eps`` in that
    direction, every coordinate that moves goes to its bound.
    """
    n = x.shape[0]
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    xf = x.reshape(n, -1).to(wide)
    df = d.reshape(n, -1).to(wide)
    a = df.abs()
    room = torch.where(df > 0, hi - xf, xf - lo).clamp_min(0.0)
    t = torch.where(a > 0, room / a.clamp_min(torch.finfo(wide).tiny), torch.full_like(a, math.inf))
    t, order = t.sort(dim=1)
    r2 = torch.where(t.isfinite(), room.gather(1, order) ** 2, torch.zeros_like(t))
    zero = torch.zeros(n, 1, dtype=xf.dtype, device=xf.device)
    big_r = torch.cat([zero, r2.cumsum(1)], dim=1)  # R_k, k = 0..D
    big_a = torch.cat([(a.gather(1, order) ** 2).flip(1).cumsum(1).flip(1), zero], dim=1)  # A_k
    lam = ((eps**2 - big_r).clamp_min(0.0) / big_a.clamp_min(torch.finfo(wide).tiny)).sqrt()
    lam = torch.where((big_r >= eps**2) | (big_a <= 0), torch.full_like(lam, math.inf), lam)
    valid = lam <= torch.cat([t, torch.full_like(zero, math.inf)], dim=1)
    lam = lam.gather(1, valid.to(torch.uint8).argmax(dim=1, keepdim=True))  # the first valid k
    # unreachable ε: a step long enough to take every moving coordinate to its bound
    reach = torch.where(t.isfinite(), t, torch.zeros_like(t)).amax(dim=1, keepdim=True)
    lam = torch.where(lam.isfinite(), lam, 2 * reach)
    return (xf + lam * df).clamp(lo, hi).to(x.dtype).reshape(x.shape)


def _window_mask(top: Tensor, left: Tensor, sh: int, sw: int, h: int, w: int) -> Tensor:
    """Boolean masks ``(n, 1, h, w)`` of the windows ``[top, top+sh) × [left, left+sw)``."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    mr = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + sh)
    mc = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + sw)
    return (mr[:, :, None] & mc[:, None, :]).unsqueeze(1)


def _window_index(top: Tensor, left: Tensor, sh: int, sw: int, c: int) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple that reads/writes the ``(n, c, sh, sw)`` window of each sample."""
    n = top.shape[0]
    dev = top.device
    ni = torch.arange(n, device=dev).view(n, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    ri = (top[:, None] + torch.arange(sh, device=dev)[None, :]).view(n, 1, sh, 1)
    wi = (left[:, None] + torch.arange(sw, device=dev)[None, :]).view(n, 1, 1, sw)
    return ni, ci, ri, wi


@register
class Square(Attack):
    """Square Attack: random search with square updates, needing only the model's scores.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: budget, one value or a list (each ε is attacked separately, with its own budget).
        max_queries: queries per sample and per ε for the search (the initial evaluation
            included); one more query per sample checks the clean prediction.  Points
            already fooled are never queried again.
        p_init: initial share of the features a square covers (0.8 in the paper for L∞, and
            fine for L2), halved on the paper's schedule rescaled to ``max_queries``.
        restarts: independent runs on the points still standing; they share ``max_queries``
            (each gets ``max_queries // restarts``, the first also the remainder).
        loss: ``"margin"`` (logit margin, the paper's untargeted loss) or ``"ce"``.
        l2_bounds: how an L2 candidate meets the input bounds. ``"rescale"``: scaled along its
            direction so that its *clipped* perturbation has norm ε (on the ε-sphere whenever
            the bounds allow; see the module docstring); ``"clip"``: the paper's scale to norm ε,
            then clip (what the bounds cut off is lost).  Ignored for L∞.
        targeted: aim at ``target`` (see ``Attack.run``).
        batch_size: split the input into batches of this size.
        search_precision: ``"full"`` or ``"bfloat16"``: the search's queries in bfloat16 where the
            model offers it (``TorchModel.search_precision``), every fooled point re-verified
            in full precision before it counts; ``info["precision"]`` says what ran and how many
            claims were checked and rejected.
    """

    name = "square"
    description = "Square Attack: score-based black-box random search, L∞/L2 (Andriushchenko et al. 2020)"
    reference = (
        'Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via random search", '
        "ECCV 2020, https://arxiv.org/abs/1912.00049"
    )
    requires = frozenset({"scores"})
    norms = ("linf", "l2")
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_queries": [Interval(int, 1, None)],
        "p_init": [Interval(float, 0, 1, closed="right")],
        "restarts": [Interval(int, 1, None)],
        "loss": [Options(("margin", "ce"))],
        "l2_bounds": [Options(("rescale", "clip"))],
        "search_precision": SEARCH_PRECISION,
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        max_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str = "margin",
        l2_bounds: str = "rescale",
        targeted: bool = False,
        batch_size: int | None = None,
        search_precision: str = "full",
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.max_queries = max_queries
        self.p_init = p_init
        self.restarts = restarts
        self.loss = loss
        self.l2_bounds = l2_bounds
        self.targeted = targeted
        self.batch_size = batch_size
        self.search_precision = search_precision
        self._validate()

    # ---------------------------------------------------------------------------------------
    def _loss(self, ctx: Context, scores: Tensor, y: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """(loss to minimise, fooled) per sample."""
        goal = t if t is not None else y
        if self.loss == "margin":
            m = margin(scores, goal)  # max_{j≠goal} z_j − z_goal
            loss = m if t is not None else -m
        else:
            logp = (
                scores.clamp_min(1e-12).log()
                if getattr(ctx.model, "output", "logits") == "probabilities"
                else F.log_softmax(scores, dim=1)
            )
            ce = -logp.gather(1, goal[:, None]).squeeze(1)
            loss = ce if t is not None else -ce
        pred = scores.argmax(dim=1)
        fooled = pred == t if t is not None else pred != y
        return loss, fooled

    def _query(self, ctx: Context, x: Tensor, y: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            scores = ctx.model.scores(x)
            loss, fooled = self._loss(ctx, scores, y, t)
        if ctx.reduced:  # a point is fooled only when full precision agrees (checked near the decision too)
            claimed = ctx.claims(scores, y if t is None else t, hit=t is not None)
            fooled = ctx.confirm(x, claimed, lambda z, rows: self._loss(ctx, z, y[rows], None if t is None else t[rows])[1])
        return loss, fooled

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        shape = x.shape
        if x.dim() == 4:
            xi = x
        elif x.dim() == 3:
            xi = x.unsqueeze(1)
        else:
            xi = x.reshape(shape[0], 1, 1, -1)
        t_all = ctx.target if ctx.targeted else None

        _, fooled = self._query(ctx, x, y, t_all)  # clean check: 1 query per sample
        best = xi.clone()
        best_loss = torch.full((shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        queries = torch.zeros(shape[0], dtype=torch.int64, device=x.device)
        budgets = [self.max_queries // self.restarts] * self.restarts
        budgets[0] += self.max_queries - sum(budgets)
        for budget in budgets:
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0 or budget == 0:
                continue
            t = t_all[todo] if t_all is not None else None
            adv, loss, ok, used = self._single_run(ctx, xi[todo], y[todo], t, eps, budget, shape)
            better = ok | (loss < best_loss[todo])
            sel = todo[better]
            best[sel] = adv[better]
            best_loss[sel] = loss[better]
            fooled[todo] = ok
            queries[todo] += used

        # per sample, everything included (the clean check and the search), in the order the base class
        # calls: batches within an ε, then the next ε
        record_queries(ctx, queries + 1)
        # search queries (initial evaluation included) of every point this call fooled
        prev = ctx.info.get("queries_successful", torch.zeros(0, dtype=torch.int64))
        qs = torch.cat([prev, queries[fooled & (queries > 0)].cpu()])
        ctx.info["queries_successful"] = qs
        ctx.info["mean_queries_successful"] = float(qs.double().mean()) if qs.numel() else float("nan")
        ctx.info["median_queries_successful"] = float(qs.double().median()) if qs.numel() else float("nan")
        return best.reshape(shape)

    # ---------------------------------------------------------------------------------------
    def _single_run(
        self, ctx: Context, x: Tensor, y: Tensor, t: Tensor | None, eps: float, budget: int, shape: torch.Size
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One run on ``x`` (viewed as ``(n, c, h, w)``) with ``budget`` queries per sample.

        Returns the best point, its loss, whether it is adversarial, and queries used per sample.
        """
        gen = ctx.generator
        lo, hi = ctx.bounds
        n, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        image = h > 1

        def unflat(z: Tensor) -> Tensor:
            return z.reshape(z.shape[0], *shape[1:])

        def signs(k: int) -> Tensor:
            return torch.randint(0, 2, (k, c, 1, 1), generator=gen, device=dev).to(dt) * 2 - 1

        # initialisation: 1 query
        if self.norm == "linf":
            stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=dev).to(dt) * 2 - 1
            x_best = (x + eps * stripes).clamp(lo, hi)
        else:
            s0 = max(min(h, w) // 5, 1)
            nh, nw = h // s0, w // s0
            oh, ow = (h - s0 * nh) // 2, (w - s0 * nw) // 2
            # the authors' code: a bump pair per tile, transposed at random tile by tile, with a
            # random sign per tile and channel
            bump = _eta(s0, s0, dev, dt)
            turn = (torch.rand(n, 1, nh, nw, generator=gen, device=dev) > 0.5)[..., None, None]
            shapes = torch.where(turn, bump.T, bump)  # (n, 1, nh, nw, s0, s0)
            sgn = torch.randint(0, 2, (n, c, nh, nw), generator=gen, device=dev).to(dt) * 2 - 1
            tiles = (sgn[..., None, None] * shapes).permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s0, nw * s0)
            delta0 = torch.zeros_like(x)
            delta0[:, :, oh : oh + nh * s0, ow : ow + nw * s0] = tiles
            x_best = self._l2_place(x, delta0, eps, lo, hi)
        loss_best, fooled = self._query(ctx, unflat(x_best), y, t)
        used = torch.ones(n, dtype=torch.int64, device=dev)

        for it in range(budget - 1):
            idx = (~fooled).nonzero().squeeze(1)
            k = idx.numel()
            if k == 0:
                break
            xc, xb = x[idx], x_best[idx]
            p = p_schedule(self.p_init, it, budget)
            if self.norm == "linf":
                if image:
                    s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
                    sh = sw = s
                else:
                    sh, sw = 1, min(max(round(p * w), 1), w)
                top = torch.randint(0, h - sh + 1, (k,), generator=gen, device=dev)
                left = torch.randint(0, w - sw + 1, (k,), generator=gen, device=dev)
                mask = _window_mask(top, left, sh, sw, h, w)
                sg = signs(k)
                x_new = torch.where(mask, (xc + eps * sg).clamp(lo, hi), xb)
                # the paper redraws the colours while the window would stay unchanged; an
                # unchanged window has one sign per channel, so flipping a uniformly drawn
                # non-empty set of channels is the same draw in one step
                same = ~((x_new != xb) & mask).flatten(1).any(dim=1)
                sg = torch.where(same.view(-1, 1, 1, 1), sg * _flips(k, c, gen, dev, dt), sg)
                x_new = torch.where(mask, (xc + eps * sg).clamp(lo, hi), xb)
            else:
                x_new = self._l2_candidate(xc, xb, eps, p, gen, lo, hi)
            loss, ok = self._query(ctx, unflat(x_new), y[idx], t[idx] if t is not None else None)
            used[idx] += 1
            take = ok | (loss < loss_best[idx])
            sel = idx[take]
            x_best[sel] = x_new[take]
            loss_best[sel] = loss[take]
            fooled[idx] = ok
        return x_best, loss_best, fooled, used

    def _l2_candidate(
        self, x: Tensor, x_best: Tensor, eps: float, p: float, gen: torch.Generator, lo: float, hi: float
    ) -> Tensor:
        """The paper's L2 proposal: move the mass of two windows into the first, as a new bump pair."""
        k, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        if h > 1:
            s = max(round(math.sqrt(p * h * w)), 3)
            s += 1 - s % 2  # odd
            s = min(s, h, w)
            sh = sw = s
        else:
            s = max(round(p * w), 3)
            s += 1 - s % 2
            sh, sw = 1, min(s, w)
        delta = x_best - x
        top1 = torch.randint(0, h - sh + 1, (k,), generator=gen, device=dev)
        left1 = torch.randint(0, w - sw + 1, (k,), generator=gen, device=dev)
        top2 = torch.randint(0, h - sh + 1, (k,), generator=gen, device=dev)
        left2 = torch.randint(0, w - sw + 1, (k,), generator=gen, device=dev)
        m1 = _window_mask(top1, left1, sh, sw, h, w)
        m2 = _window_mask(top2, left2, sh, sw, h, w)
        win = _window_index(top1, left1, sh, sw, c)

        sq = delta * delta
        norm_w1 = (sq * m1).sum(dim=(2, 3), keepdim=True).sqrt()  # (k, c, 1, 1)
        norm_both = (sq * (m1 | m2)).sum(dim=(2, 3), keepdim=True).sqrt()
        norm_img = _l2(delta)  # (k, 1, 1, 1)

        eta = _eta(sh, sw, dev, dt).expand(k, 1, sh, sw)
        if sh == sw:
            flip = torch.rand(k, generator=gen, device=dev) > 0.5
            eta = torch.where(flip.view(k, 1, 1, 1), eta.transpose(2, 3), eta)
        sgn = torch.randint(0, 2, (k, c, 1, 1), generator=gen, device=dev).to(dt) * 2 - 1
        new = eta * sgn + delta[win] / (norm_w1 + 1e-10)
        room = (torch.clamp(eps**2 - norm_img**2, min=0.0) / c + norm_both**2).sqrt()
        new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * room
        delta = torch.where(m2, torch.zeros_like(delta), delta)
        delta[win] = new
        return self._l2_place(x, delta, eps, lo, hi)

    def _l2_place(self, x: Tensor, delta: Tensor, eps: float, lo: float, hi: float) -> Tensor:
        """The candidate ``x + δ`` for the direction ``delta``: norm ε, then clipped (``"clip"``), or
        clipped with norm ε (``"rescale"``)."""
        d = eps * delta / _l2(delta).clamp_min(1e-12)
        if self.l2_bounds == "rescale":
            return _fit_l2(x, d, eps, lo, hi)
        return (x + d).clamp(lo, hi)


def _l2(z: Tensor) -> Tensor:
    return z.flatten(1).norm(dim=1).view(-1, *([1] * (z.dim() - 1)))
