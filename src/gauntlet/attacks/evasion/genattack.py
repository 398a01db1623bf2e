"""GenAttack (Alzantot, Sharma, Chakraborty, Zhang, Hsieh & Srivastava, GECCO 2019): a genetic
algorithm in the L∞ ball, from the model's scores only.

Per sample, a population of ``population`` perturbations (6 in the paper), each drawn uniformly
from the ε-box (Algorithm 1), evolves generation by generation:

* **fitness** (the paper's, targeted): ``log p_t − log Σ_{j≠t} p_j``; untargeted, the same
  log-odds turned round: ``log Σ_{j≠y} p_j − log p_y`` (it is positive exactly when the true
  class holds less than half of the probability).  Log-probabilities come from the logits by
  ``log_softmax``, or from probability outputs clipped at 1e-12.
* **elitism**: the fittest member passes unchanged into the next generation (and is not queried
  again: a generation costs ``population − 1`` queries);
* **selection**: each of the ``population − 1`` children has two parents drawn with the
  probabilities ``softmax(fitness / τ)`` (``temperature`` τ; 0.1 in the authors' MNIST and
  CIFAR-10 runs);
* **crossover**: each coordinate of the child comes from the first parent with probability
  ``p₁ / (p₁ + p₂)`` (the parents' selection probabilities), else from the second;
* **mutation**: each coordinate, with probability ρ, gets ``U(−α ε, α ε)`` added; the child is
  then clipped to the ε-box and the input bounds;
* **adaptive parameter scaling** (``adaptive=True``, the paper's Section 4.2):
  ``ρ = max(ρ_min, 0.5 · 0.9^k)`` and ``α = max(α_min, 0.4 · 0.9^k)``, with ``k`` the number of
  plateaus so far: a plateau is ``patience`` generations (100) without the best fitness improving.
  ``mutation_rate`` and ``alpha`` are ``ρ_min`` and ``α_min`` (fixed ρ and α without ``adaptive``).

Per sample, in queries (``max_queries`` is never exceeded): one checks the input (a clean mistake
stops there), the initial population costs ``population``, each generation ``population − 1``;
the initial population and the last generation are cut to what is left.  A sample stops as soon
as a member is adversarial and is returned with it, otherwise with the fittest member after its
last generation.  Every still-running sample's members are evaluated in one model call (split into
calls of at most ``max_batch_size`` inputs) under :func:`torch.inference_mode`.

**Dimensionality reduction** (optional, the paper's Section 4.1): with ``resize=r`` the
perturbations live in a ``C × r × r`` space and are upsampled bilinearly to the image (inputs of
shape ``(N, C, H, W)`` or ``(N, H, W)``); the search then clips only the upsampled image to the
bounds (the box ``[−ε, ε]`` is kept by the low-resolution values, since bilinear upsampling
interpolates).  Without it (the default) the search is in the input's own coordinates.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, IsNone
from gauntlet.attacks.base import POSITIVE, Attack, Context, record_queries
from gauntlet.attacks.evasion.nes import MAX_QUERIES, log_probabilities
from gauntlet.attacks.registry import register
from gauntlet.errors import DataError
from gauntlet.models.estimated_gradients import MAX_BATCH


def log_odds(logp: Tensor, goal: Tensor) -> Tensor:
    """``log p_goal − log Σ_{j≠goal} p_j`` per row of log-probabilities ``logp (n, K)``."""
    own = logp.gather(1, goal[:, None]).squeeze(1)
    others = torch.logsumexp(logp.scatter(1, goal[:, None], float("-inf")), dim=1)
    return own - others


def adaptive_rates(plateaus: Tensor, rho_min: float, alpha_min: float) -> tuple[Tensor, Tensor]:
    """The paper's adaptive scaling: ``ρ = max(ρ_min, 0.5 · 0.9^k)``, ``α = max(α_min, 0.4 · 0.9^k)``
    for ``k = plateaus`` (per sample)."""
    decay = 0.9 ** plateaus.to(torch.float64)
    return torch.clamp(0.5 * decay, min=rho_min), torch.clamp(0.4 * decay, min=alpha_min)


def count_plateaus(
    best: Tensor, stale: Tensor, plateaus: Tensor, now: Tensor, patience: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One generation of the plateau counter: ``now`` is the best fitness of the new population.

    A generation that does not beat ``best`` adds one to ``stale``; ``patience`` such generations
    in a row make a plateau (``plateaus + 1``, ``stale`` back to 0).  Returns the new
    ``(best, stale, plateaus)``.
    """
    improved = now > best
    best = torch.where(improved, now, best)
    stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
    flat = stale >= patience
    return best, torch.where(flat, torch.zeros_like(stale), stale), plateaus + flat.to(plateaus.dtype)


@register
class GenAttack(Attack):
    """GenAttack: a genetic algorithm (selection, crossover, mutation, elitism) in the L∞ ball, scores only.

    Args:
        norm: ``"linf"`` (the paper's threat model).
        eps: budget, one value or a list (each ε is attacked separately, with its own budget).
        max_queries: queries per sample and per ε, everything included (the check of the input,
            the initial population, every generation); never exceeded.
        population: members per sample (6 in the paper); at least 2.
        mutation_rate: ρ, the probability that a coordinate mutates (its floor ``ρ_min`` with
            ``adaptive``).
        alpha: α, mutations are ``U(−α ε, α ε)`` (its floor ``α_min`` with ``adaptive``).
        temperature: τ of the selection probabilities ``softmax(fitness / τ)``.
        adaptive: the paper's adaptive scaling of ρ and α (see the module docstring).
        patience: generations without improvement that make a plateau (``adaptive`` only).
        resize: search in a ``C × resize × resize`` space upsampled to the image (the paper's
            dimensionality reduction), or ``None``: the input's own coordinates.
        targeted: aim at ``target`` (see ``Attack.run``).
        batch_size: split the input into batches of this size.
        max_batch_size: the most inputs sent to the model in one call.
    """

    name = "genattack"
    description = "GenAttack: genetic algorithm in the L∞ ball, score-based black-box (Alzantot et al. 2019)"
    reference = (
        'Alzantot, Sharma, Chakraborty, Zhang, Hsieh & Srivastava, "GenAttack: Practical Black-box Attacks with '
        'Gradient-Free Optimization", GECCO 2019, https://arxiv.org/abs/1805.11090'
    )
    requires = frozenset({"scores"})
    norms = ("linf",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_queries": MAX_QUERIES,
        "population": [Interval(int, 2, None)],
        "mutation_rate": [Interval(float, 0, 1, closed="right")],
        "alpha": POSITIVE,
        "temperature": POSITIVE,
        "adaptive": [Boolean()],
        "patience": [Interval(int, 1, None)],
        "resize": [Interval(int, 1, None), IsNone()],
        "max_batch_size": MAX_BATCH,
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        max_queries: int = 10_000,
        population: int = 6,
        mutation_rate: float = 0.1,
        alpha: float = 0.15,
        temperature: float = 0.1,
        adaptive: bool = True,
        patience: int = 100,
        resize: int | None = None,
        targeted: bool = False,
        batch_size: int | None = None,
        max_batch_size: int = 4096,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.max_queries = max_queries
        self.population = population
        self.mutation_rate = mutation_rate
        self.alpha = alpha
        self.temperature = temperature
        self.adaptive = adaptive
        self.patience = patience
        self.resize = resize
        self.targeted = targeted
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self._validate()

    # -----------------------------------------------------------------------------------------
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        if self.resize is not None and x.dim() not in (3, 4):
            raise DataError(
                f"{self.name}: resize={self.resize} needs image inputs (N, C, H, W) or (N, H, W), got shape "
                f"{tuple(x.shape)}; pass resize=None"
            )
        t = ctx.target if ctx.targeted else None
        with torch.inference_mode():
            adv, used, fooled, generations = self._search(ctx, x, y, t, eps)
        record_queries(ctx, used, fooled)
        ctx.info["generations"] = max(ctx.info.get("generations", 0), generations)
        return adv.clone()

    def _images(self, x: Tensor, noise: Tensor, bounds: tuple[float, float]) -> Tensor:
        """``x (r, ...)`` plus the perturbations ``noise (r, D')`` (upsampled with ``resize``), clipped to the bounds."""
        if self.resize is not None:
            xi = x if x.dim() == 4 else x.unsqueeze(1)
            c, h, w = xi.shape[1:]
            up = F.interpolate(noise.view(-1, c, self.resize, self.resize), size=(h, w), mode="bilinear", align_corners=False)
            return (xi + up).clamp(*bounds).view_as(x)
        return (x + noise.view_as(x)).clamp(*bounds)

    def _fitness(
        self, ctx: Context, x: Tensor, goal: Tensor, targeted: bool, noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Fitness (to maximise) and adversarial flags of ``noise (k, m, D')`` on ``x (k, ...)``, both ``(k, m)``."""
        k, m = noise.shape[:2]
        rows = k * m
        flat = noise.reshape(rows, -1)
        fit = torch.empty(rows, device=x.device, dtype=torch.float64)
        adv = torch.empty(rows, device=x.device, dtype=torch.bool)
        for s in range(0, rows, self.max_batch_size):
            e = min(s + self.max_batch_size, rows)
            owner = torch.arange(s, e, device=x.device) // m
            scores = ctx.model.scores(self._images(x.index_select(0, owner), flat[s:e], ctx.bounds))
            logp = log_probabilities(scores, ctx.model.output).to(torch.float64)
            g = goal[owner]
            pred = scores.argmax(dim=1)
            if targeted:
                fit[s:e] = log_odds(logp, g)
                adv[s:e] = pred == g
            else:
                fit[s:e] = -log_odds(logp, g)
                adv[s:e] = pred != g
        return fit.view(k, m), adv.view(k, m)

    def _search(
        self, ctx: Context, x: Tensor, y: Tensor, t: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        gen = ctx.generator
        n = x.shape[0]
        dev, dt = x.device, x.dtype
        lo, hi = ctx.bounds
        goal = t if t is not None else y
        targeted = t is not None
        p = self.population
        if self.resize is not None:
            c = x.shape[1] if x.dim() == 4 else 1
            d = c * self.resize * self.resize
        else:
            d = x[0].numel()

        mb = self.max_batch_size
        scores = torch.cat([ctx.model.scores(x[s : s + mb]) for s in range(0, n, mb)])  # the input check: 1 query
        pred = scores.argmax(dim=1)
        fooled = pred == t if t is not None else pred != y
        used = torch.ones(n, dtype=torch.int64, device=dev)
        out = x.clone()
        active = (~fooled).nonzero().squeeze(1)
        left = self.max_queries - 1
        if active.numel() == 0 or left <= 0:
            return out, used, fooled, 0

        k = active.numel()
        xa, ga = x[active], goal[active]
        if self.resize is None:  # the feasible box of each coordinate: the ε-box within the bounds
            xf = xa.reshape(k, 1, d)
            box_lo = torch.clamp(lo - xf, min=-eps).clamp(max=0.0)
            box_hi = torch.clamp(hi - xf, max=eps).clamp(min=0.0)
        else:
            box_lo = torch.full((k, 1, d), -eps, device=dev, dtype=dt)
            box_hi = torch.full((k, 1, d), eps, device=dev, dtype=dt)

        # the initial population: uniform in the ε-box (cut to the budget)
        m = min(p, left)
        pop = (torch.rand(k, m, d, generator=gen, device=dev, dtype=dt) * 2 - 1) * eps
        pop = torch.minimum(torch.maximum(pop, box_lo), box_hi)
        fit, ok = self._fitness(ctx, xa, ga, targeted, pop)
        used[active] += m
        left -= m
        rows = torch.arange(k, device=dev)  # rows of xa still running, aligned with pop and fit
        best = fit.amax(dim=1)
        stale = torch.zeros(k, dtype=torch.int64, device=dev)
        plateaus = torch.zeros(k, dtype=torch.int64, device=dev)

        def settle(sel: Tensor, members: Tensor, adv: Tensor, f: Tensor) -> None:
            """Samples ``rows[sel]`` stop with their first adversarial member, else their fittest."""
            members, adv, f = members[sel], adv[sel], f[sel]
            hit = adv.any(dim=1)
            pick = torch.where(hit, adv.to(torch.int8).argmax(dim=1), f.argmax(dim=1))
            chosen = members[torch.arange(members.shape[0], device=dev), pick]
            r = rows[sel]
            out[active[r]] = self._images(xa[r], chosen, ctx.bounds)
            fooled[active[r]] = hit

        generations = 0
        while True:
            hit = ok.any(dim=1)
            done = hit if left > 0 and pop.shape[1] == p else torch.ones_like(hit)
            if bool(done.any()):
                settle(done, pop, ok, fit)
            keep = ~done
            pop, fit, rows = pop[keep], fit[keep], rows[keep]
            best, stale, plateaus = best[keep], stale[keep], plateaus[keep]
            if rows.numel() == 0:
                break
            generations += 1
            kk = rows.numel()
            if self.adaptive:
                rho_k, alpha_k = adaptive_rates(plateaus, self.mutation_rate, self.alpha)
                rho, alpha = rho_k.to(dt).view(kk, 1, 1), alpha_k.to(dt).view(kk, 1, 1)
            else:
                rho = torch.full((kk, 1, 1), self.mutation_rate, device=dev, dtype=dt)
                alpha = torch.full((kk, 1, 1), self.alpha, device=dev, dtype=dt)

            elite = fit.argmax(dim=1)
            ar = torch.arange(kk, device=dev)
            probs = torch.softmax(fit / self.temperature, dim=1)
            parents = torch.multinomial(probs, 2 * (p - 1), replacement=True, generator=gen)
            p1, p2 = parents[:, : p - 1], parents[:, p - 1 :]
            w1, w2 = probs.gather(1, p1), probs.gather(1, p2)
            share = (w1 / (w1 + w2)).to(dt)[:, :, None]
            from_first = torch.rand(kk, p - 1, d, generator=gen, device=dev, dtype=dt) < share
            child = torch.where(
                from_first, pop.gather(1, p1[:, :, None].expand(kk, p - 1, d)), pop.gather(1, p2[:, :, None].expand(kk, p - 1, d))
            )
            mutate = torch.rand(kk, p - 1, d, generator=gen, device=dev, dtype=dt) < rho
            step = (torch.rand(kk, p - 1, d, generator=gen, device=dev, dtype=dt) * 2 - 1) * alpha * eps
            child = child + mutate.to(dt) * step
            r = rows
            child = torch.minimum(torch.maximum(child, box_lo[r]), box_hi[r])

            m = min(p - 1, left)  # the last generation is cut to the budget
            child = child[:, :m]
            f_child, ok_child = self._fitness(ctx, xa[r], ga[r], targeted, child)
            used[active[r]] += m
            left -= m
            pop = torch.cat([pop[ar, elite][:, None], child], dim=1)
            fit = torch.cat([fit[ar, elite][:, None], f_child], dim=1)
            ok = torch.cat([torch.zeros(kk, 1, dtype=torch.bool, device=dev), ok_child], dim=1)
            if m < p - 1:
                pop = pop[:, : m + 1]  # so that the loop settles every sample now
            # adaptive scaling: a plateau is `patience` generations without a better member
            best, stale, plateaus = count_plateaus(best, stale, plateaus, fit.amax(dim=1), self.patience)
        return out, used, fooled, generations
