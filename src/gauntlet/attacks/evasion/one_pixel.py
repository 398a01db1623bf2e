"""One-pixel attack (Su, Vargas & Sakurai, IEEE TEVC 2019): differential evolution on a few pixels.

A candidate changes ``pixels`` pixel positions: it is ``pixels`` × (row, column, one value per
channel), a real vector of length ``pixels · (2 + C)``; the row and column are floored to a
position when the candidate is applied, and the values replace the pixel's channels.  So an
adversarial example changes at most ``pixels`` positions (L0 ≤ ``pixels`` in the pixel count of
:mod:`gauntlet.norms`, all channels of a pixel counting once).

The search is the paper's differential evolution, DE/rand/1:

* a population of ``popsize`` candidates (400 in the paper): positions uniform over the image,
  values uniform in the input bounds (``init="uniform"``, the default: the digits and MNIST
  models read greyscale in [0, 1], where the extremes matter, and a uniform draw reaches them as
  often as the middle) or, as in the paper, ``N(128, 127)`` on the 0–255 scale clipped to it and
  mapped onto the bounds (``init="normal"``);
* every generation, each member ``i`` gets the trial ``x_r1 + F (x_r2 − x_r3)`` with ``r1, r2,
  r3`` distinct, drawn uniformly among the other members, ``F = 0.5`` (``mutation``); no
  crossover, as in the paper (``crossover=None``), or scipy's binomial crossover at rate
  ``crossover`` when one is given;
* a trial whose position leaves the image has that coordinate redrawn uniformly (as scipy's
  differential evolution does for a parameter out of its bounds); values are clipped to the bounds;
* a trial replaces its parent when its fitness is no worse: the model's probability of the true
  class (untargeted, minimised) or of the target class (targeted, maximised).  The log of the
  probability is used, which orders the candidates identically.

Per sample, in queries (``max_queries`` is never exceeded): one checks the input (a clean
mistake stops there), the initial population costs ``popsize``, each generation ``popsize``; the
initial population and the last generation are cut to what is left.  A sample stops as soon as a
candidate of a generation is adversarial (the paper stops on a probability threshold instead); it
is then returned with the first such candidate, otherwise with the fittest one.  All samples and
all members are evaluated together: one model call holds every still-running sample's candidates
(split into calls of at most ``max_batch_size`` inputs), under :func:`torch.inference_mode`.

Inputs of shape ``(N, C, H, W)`` are images; ``(N, H, W)`` is read as one channel; any other
per-sample shape as a row ``1 × D`` of one-channel "pixels" (features).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.base import Attack, Context, record_queries
from gauntlet.attacks.evasion.nes import MAX_QUERIES, log_probabilities
from gauntlet.attacks.registry import register
from gauntlet.models.estimated_gradients import MAX_BATCH


def image_view(x: Tensor) -> Tensor:
    """``x`` as ``(n, C, H, W)``: images as they are, ``(n, H, W)`` with one channel, else one row."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], 1, 1, -1)


def value_range(x: Tensor, bounds: tuple[float, float]) -> tuple[float, float]:
    """The input bounds, or the batch's own range where a bound is infinite."""
    lo, hi = bounds
    if not math.isfinite(lo):
        lo = float(x.min()) if x.numel() else 0.0
    if not math.isfinite(hi):
        hi = float(x.max()) if x.numel() else 1.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def three_distinct_others(k: int, p: int, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For each of ``k`` populations of ``p ≥ 4`` members and each member ``i``: three distinct
    indices drawn uniformly from the other ``p − 1`` members, each ``(k, p)``."""
    a = torch.randint(0, p - 1, (k, p), generator=gen, device=device)
    b = torch.randint(0, p - 2, (k, p), generator=gen, device=device)
    c = torch.randint(0, p - 3, (k, p), generator=gen, device=device)
    b = b + (b >= a).to(b.dtype)  # distinct from a, uniform over the other p − 2
    small, large = torch.minimum(a, b), torch.maximum(a, b)
    c = c + (c >= small).to(c.dtype)
    c = c + (c >= large).to(c.dtype)  # distinct from both
    i = torch.arange(p, device=device).expand(k, p)
    # skip the member itself: 0..p-2 onto 0..p-1 without i
    return tuple(v + (v >= i).to(v.dtype) for v in (a, b, c))  # type: ignore[return-value]


@register
class OnePixel(Attack):
    """One-pixel (few-pixel) attack: differential evolution over pixel positions and values, scores only.

    Args:
        pixels: pixel positions a candidate changes (all channels of each); the L0 budget.
        max_queries: queries per sample, everything included (the check of the input, the
            initial population, every generation); never exceeded.  The default pays for the
            paper's run: the check, an initial population of 400 and 100 generations.
        popsize: members of the population (400 in the paper); at least 4 (DE/rand/1 draws three
            others per member).
        mutation: the differential weight ``F`` (0.5 in the paper).
        crossover: ``None`` (the paper: the trial is the mutant), or the rate ``CR`` of scipy's
            binomial crossover (each parameter from the mutant with probability ``CR``, at least one).
        init: ``"uniform"`` values uniform in the bounds, or ``"normal"``, the paper's
            ``N(128, 127)`` on a 0–255 scale, clipped and mapped onto the bounds.
        targeted: aim at ``target`` (see ``Attack.run``): maximise the target class's probability.
        batch_size: split the input into batches of this size.
        max_batch_size: the most inputs sent to the model in one call.
    """

    name = "one_pixel"
    description = "One-pixel attack: differential evolution on a few pixels, score-based, L0 (Su et al. 2019)"
    reference = (
        'Su, Vargas & Sakurai, "One pixel attack for fooling deep neural networks", '
        "IEEE TEVC 2019, https://arxiv.org/abs/1710.08864"
    )
    requires = frozenset({"scores"})
    norms = ("l0",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "pixels": [Interval(int, 1, None)],
        "max_queries": MAX_QUERIES,
        "popsize": [Interval(int, 4, None)],
        "mutation": [Interval(float, 0, 2, closed="right")],
        "crossover": [Interval(float, 0, 1, closed="right"), IsNone()],
        "init": [Options(("uniform", "normal"))],
        "max_batch_size": MAX_BATCH,
    }

    def __init__(
        self,
        *,
        pixels: int = 1,
        max_queries: int = 40_401,
        popsize: int = 400,
        mutation: float = 0.5,
        crossover: float | None = None,
        init: str = "uniform",
        targeted: bool = False,
        batch_size: int | None = None,
        max_batch_size: int = 4096,
    ) -> None:
        self.pixels = pixels
        self.max_queries = max_queries
        self.popsize = popsize
        self.mutation = mutation
        self.crossover = crossover
        self.init = init
        self.targeted = targeted
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self._validate()

    # -----------------------------------------------------------------------------------------
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        t = ctx.target if ctx.targeted else None
        with torch.inference_mode():
            adv, used, fooled, generations = self._search(ctx, x, y, t)
        record_queries(ctx, used, fooled)
        ctx.info["generations"] = max(ctx.info.get("generations", 0), generations)
        return adv.clone()

    def _fitness(
        self, ctx: Context, xi: Tensor, y: Tensor, t: Tensor | None, cand: Tensor, shape: torch.Size
    ) -> tuple[Tensor, Tensor]:
        """Evaluate candidates ``cand (k, m, pixels, 2 + C)`` on the images ``xi (k, C, H, W)``.

        Returns the fitness to minimise (``log p_y``; targeted ``−log p_t``) and whether each
        candidate is adversarial, both ``(k, m)``.  Costs ``m`` queries per sample.
        """
        k, m = cand.shape[:2]
        rows = k * m
        fit = torch.empty(rows, device=xi.device, dtype=torch.float64)
        adv = torch.empty(rows, device=xi.device, dtype=torch.bool)
        flat = cand.reshape(rows, *cand.shape[2:])
        for s in range(0, rows, self.max_batch_size):
            e = min(s + self.max_batch_size, rows)
            owner = torch.arange(s, e, device=xi.device) // m
            imgs = apply_pixels(xi.index_select(0, owner), flat[s:e])
            scores = ctx.model.scores(imgs.reshape(e - s, *shape))
            logp = log_probabilities(scores, ctx.model.output).to(torch.float64)
            pred = scores.argmax(dim=1)
            if t is not None:
                fit[s:e] = -logp.gather(1, t[owner, None]).squeeze(1)
                adv[s:e] = pred == t[owner]
            else:
                fit[s:e] = logp.gather(1, y[owner, None]).squeeze(1)
                adv[s:e] = pred != y[owner]
        return fit.view(k, m), adv.view(k, m)

    def _search(self, ctx: Context, x: Tensor, y: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int]:
        gen = ctx.generator
        n = x.shape[0]
        shape = x.shape[1:]
        dev = x.device
        xi = image_view(x)
        _, c, h, w = xi.shape
        vlo, vhi = value_range(x, ctx.bounds)
        g = 2 + c
        pp = self.pixels

        limit = torch.tensor([h, w], device=dev, dtype=torch.float64)

        def draw_positions(size: tuple[int, ...]) -> Tensor:
            return torch.rand(*size, 2, generator=gen, device=dev, dtype=torch.float64) * limit

        # the check of the input: 1 query
        mb = self.max_batch_size
        scores = torch.cat([ctx.model.scores(x[s : s + mb]) for s in range(0, n, mb)])  # the input check: 1 query
        pred = scores.argmax(dim=1)
        fooled = pred == t if t is not None else pred != y
        used = torch.ones(n, dtype=torch.int64, device=dev)
        out = xi.clone()
        active = (~fooled).nonzero().squeeze(1)
        left = self.max_queries - 1
        if active.numel() == 0 or left <= 0:
            return out.reshape(x.shape), used, fooled, 0

        # the initial population, cut to the budget
        k, p = active.numel(), self.popsize
        pos = draw_positions((k, p, pp))
        if self.init == "uniform":
            val = torch.rand(k, p, pp, c, generator=gen, device=dev, dtype=torch.float64)
        else:
            val = (128 + 127 * torch.randn(k, p, pp, c, generator=gen, device=dev, dtype=torch.float64)).clamp(0, 255) / 255
        pop = torch.cat([pos, vlo + (vhi - vlo) * val], dim=3)  # (k, p, pixels, 2 + C)
        xa, ya = xi[active], y[active]
        ta = t[active] if t is not None else None
        m = min(p, left)
        pop = pop[:, :m]  # a population the budget cannot pay for in full is cut (then no generation follows)
        fit, ok = self._fitness(ctx, xa, ya, ta, pop, shape)
        used[active] += m
        left -= m
        rows = torch.arange(k, device=dev)  # rows of xa still running, aligned with pop and fit

        def settle(sel: Tensor, cand: Tensor, adv: Tensor, f: Tensor) -> None:
            """Samples ``rows[sel]`` stop: each keeps its first adversarial candidate, else its fittest."""
            cand, adv, f = cand[sel], adv[sel], f[sel]
            hit = adv.any(dim=1)
            pick = torch.where(hit, adv.to(torch.int8).argmax(dim=1), f.argmin(dim=1))
            chosen = cand[torch.arange(cand.shape[0], device=dev), pick]
            r = rows[sel]
            out[active[r]] = apply_pixels(xa[r], chosen)
            fooled[active[r]] = hit

        generations = 0
        cand_eval, f_eval = pop, fit  # the candidates last evaluated, their fitness and `ok`
        while True:
            hit = ok.any(dim=1)
            if bool(hit.any()):  # stop on success with the first adversarial candidate evaluated
                settle(hit, cand_eval, ok, f_eval)
            done = hit if left > 0 and pop.shape[1] == p else torch.ones_like(hit)
            rest = done & ~hit
            if bool(rest.any()):  # out of budget: the fittest member of the population
                settle(rest, pop, torch.zeros_like(ok), fit)
            keep = ~done
            pop, fit, rows = pop[keep], fit[keep], rows[keep]
            if rows.numel() == 0:
                break
            generations += 1
            kk = rows.numel()
            r1, r2, r3 = three_distinct_others(kk, p, gen, dev)

            a, b, c3 = (pop.gather(1, r[:, :, None, None].expand(kk, p, pp, g)) for r in (r1, r2, r3))
            trial = a + self.mutation * (b - c3)
            if self.crossover is not None:
                mask = torch.rand(kk, p, pp * g, generator=gen, device=dev) < self.crossover
                j = torch.randint(0, pp * g, (kk, p, 1), generator=gen, device=dev)
                mask.scatter_(2, j, True)
                trial = torch.where(mask.view(kk, p, pp, g), trial, pop)
            # positions that left the image are redrawn, values clipped to the bounds
            where = trial[..., :2]
            outside = (where < 0) | (where >= limit)
            where = torch.where(outside, draw_positions((kk, p, pp)), where)
            trial = torch.cat([where, trial[..., 2:].clamp(vlo, vhi)], dim=3)

            m = min(p, left)  # the last generation is cut to the budget
            cand_eval = trial[:, :m]
            r = rows
            f_eval, ok = self._fitness(ctx, xa[r], ya[r], ta[r] if ta is not None else None, cand_eval, shape)
            used[active[r]] += m
            left -= m
            better = f_eval <= fit[:, :m]
            pop[:, :m] = torch.where(better[:, :, None, None], cand_eval, pop[:, :m])
            fit[:, :m] = torch.where(better, f_eval, fit[:, :m])
        return out.reshape(x.shape), used, fooled, generations


def apply_pixels(xi: Tensor, cand: Tensor) -> Tensor:
    """Images ``xi (r, C, H, W)`` with the pixels of ``cand (r, pixels, 2 + C)`` set (a copy).

    Row and column are floored (and kept inside the image); a later pixel of a candidate at the
    same position overwrites an earlier one.
    """
    out = xi.clone()
    r, _, h, w = xi.shape
    ar = torch.arange(r, device=xi.device)
    for j in range(cand.shape[1]):
        row = cand[:, j, 0].floor().clamp(0, h - 1).to(torch.int64)
        col = cand[:, j, 1].floor().clamp(0, w - 1).to(torch.int64)
        out[ar, :, row, col] = cand[:, j, 2:].to(xi.dtype)
    return out
