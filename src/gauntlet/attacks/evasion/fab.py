"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020): minimal-norm white box.

At each step FAB linearises the classifier at the current iterate, picks the closest
linearised decision hyperplane, and projects both the iterate and the original point onto
it (inside the input box).  The next iterate is a convex combination of the two projections,
biased towards the original point (``alpha ≤ alpha_max``) and overshooting a little (``eta``);
whenever it is adversarial the best point is recorded and the iterate steps back towards the
original point (``beta``), so the search hugs the boundary close to ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet import norms as N
from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.attacks.base import SEARCH_PRECISION, STEPS, Attack, Context
from gauntlet.attacks.registry import register
from gauntlet.threat import as_eps_tuple

_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}
# random-restart radius when no eps is given, per unit of the input range (the reference's
# defaults for inputs in [0, 1])
_DEFAULT_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}


def project_hyperplane_box(w: Tensor, c: Tensor, lower: Tensor, upper: Tensor, norm: str) -> Tensor:
    """Minimal-``norm`` ``d`` with ``<w_i, d_i> = c_i`` and ``lower_i ≤ d_i ≤ upper_i``, per row.

    ``w``, ``lower``, ``upper`` are ``(n, D)`` with ``lower ≤ 0 ≤ upper``; ``c`` is ``(n,)``.
    Where no ``d`` in the box reaches the hyperplane, the box point that comes closest (the
    one maximising ``c_i · <w_i, d_i>``) is returned.

    For L2 and L∞ the optimum is ``d_j = sign(w_j) min(λ a_j / |w_j|, cap_j)`` with
    ``a = w²`` (L2) or ``a = |w|`` (L∞) and ``cap_j`` the room to the box in the direction of
    ``w_j``; ``<w, d(λ)>`` is piecewise linear and nondecreasing in ``λ``, with breakpoints
    ``cap_j |w_j| / a_j``, so one sort and two cumulative sums find ``λ`` exactly.  For L1 the
    optimum fills coordinates in decreasing ``|w_j|`` order up to their cap (one sort too).
    """
    s = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w = w * s[:, None]
    c = c * s
    aw = w.abs()
    cap = torch.where(w > 0, upper, torch.where(w < 0, -lower, torch.zeros_like(w))).clamp_min(0)
    gain = aw * cap  # <w, d> collected when coordinate j is at its cap
    sign = torch.sign(w)
    dim = w.shape[1]
    if norm == "l1":
        order = aw.argsort(dim=1, descending=True)
        aw_s, gain_s, cap_s = aw.gather(1, order), gain.gather(1, order), cap.gather(1, order)
        cum = gain_s.cumsum(dim=1)
        k = (cum < c[:, None]).sum(dim=1).clamp(max=dim - 1)[:, None]  # first coordinate not filled up
        before = (cum - gain_s).gather(1, k)
        part = ((c[:, None] - before) / aw_s.gather(1, k).clamp_min(1e-30)).clamp(min=0)
        pos = torch.arange(dim, device=w.device)[None, :]
        amount = torch.where(pos < k, cap_s, torch.zeros_like(cap_s))
        amount = amount.scatter(1, k, torch.minimum(part, cap_s.gather(1, k)))
        return torch.zeros_like(w).scatter(1, order, amount) * sign

    slope = w * w if norm == "l2" else aw
    tau = torch.where(slope > 0, gain / slope.clamp_min(1e-30), torch.zeros_like(w))
    tau_s, order = tau.sort(dim=1)
    slope_s, gain_s = slope.gather(1, order), gain.gather(1, order)
    cum_gain = gain_s.cumsum(dim=1)
    cum_slope = slope_s.cumsum(dim=1)
    total = cum_slope[:, -1:]
    g_at = cum_gain + tau_s * (total - cum_slope)  # <w, d(λ)> at each breakpoint
    k = (g_at < c[:, None]).sum(dim=1)
    feasible = k < dim
    kk = k.clamp(max=dim - 1)[:, None]
    before = (cum_gain - gain_s).gather(1, kk).squeeze(1)
    rest = (total - cum_slope + slope_s).gather(1, kk).squeeze(1)
    lam = (c - before) / rest.clamp_min(1e-30)
    lam = torch.where(feasible, lam, tau_s[:, -1]).clamp_min(0)
    step = lam[:, None] * aw if norm == "l2" else lam[:, None].expand_as(w)
    return sign * torch.minimum(step, cap)


@register
class FAB(Attack):
    """FAB: minimal-norm adversarial examples by projections onto linearised boundaries.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: optional.  Without it FAB returns, per point, the smallest adversarial
            perturbation it found.  With it (one value or a list) the result is restricted to
            each ε, a point stops being attacked once an adversarial within the smallest ε is
            found (evaluation mode), and the smallest ε sets the random-restart radius.
        steps: iterations per restart (and per target class).
        restarts: runs per target; the first starts at ``x``, later ones at a random point at
            half the best norm found so far (or of ε) from ``x``.
        n_target_classes: ``None`` is untargeted FAB (the closest linearised boundary over all
            classes, one backward pass per class and step); an int ``k`` is FAB-T as in
            AutoAttack: one run against each of the ``k`` most likely wrong classes (one
            backward pass per step), keeping the smallest adversarial.
        alpha_max: largest weight of the original point's projection in the step.
        eta: overshoot factor of the projections.
        beta: backward step towards ``x`` after an adversarial iterate.
        batch_size: split the input into batches of this size.
        search_precision: ``"full"`` or ``"bfloat16"``: the search's gradient and check passes in bfloat16 where the
            model offers it (``TorchModel.search_precision``), every adversarial point that ends a search (within ε, or any
            improvement without ε) re-verified
            in full precision before it counts; ``info["precision"]`` says what ran and how many
            claims were checked and rejected.
    """

    name = "fab"
    description = "Fast Adaptive Boundary: minimal-norm L∞/L2/L1 attack via boundary projections (Croce & Hein 2020)"
    reference = (
        'Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack", ICML 2020, '
        "https://arxiv.org/abs/1907.02044"
    )
    norms = ("linf", "l2", "l1")
    minimal = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "restarts": [Interval(int, 1, None)],
        "n_target_classes": [Interval(int, 1, None), IsNone()],
        "alpha_max": [Interval(float, 0, 1)],
        "eta": [Interval(float, 1, None)],
        "beta": [Interval(float, 0, 1, closed="neither")],
        "search_precision": SEARCH_PRECISION,
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int | None = None,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        batch_size: int | None = None,
        search_precision: str = "full",
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.restarts = restarts
        self.n_target_classes = n_target_classes
        self.alpha_max = alpha_max
        self.eta = eta
        self.beta = beta
        self.batch_size = batch_size
        self.search_precision = search_precision
        self._validate()

    # ---------------------------------------------------------------------------------------
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        eps_stop = min(as_eps_tuple(self.eps, self.name)) if self.eps is not None else None
        lo, hi = ctx.bounds
        radius0 = eps_stop if eps_stop is not None else _DEFAULT_RADIUS[self.norm] * (hi - lo)
        n = x.shape[0]
        with ctx.exact(), torch.no_grad():
            z0 = ctx.model.scores(x)
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        best_norm[z0.argmax(dim=1) != y] = 0.0  # already misclassified: x itself
        if self.n_target_classes is None:
            targets: list[Tensor | None] = [None]
        else:
            k = min(self.n_target_classes, ctx.num_classes - 1)
            ranked = z0.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
            targets = [ranked[:, i] for i in range(k)]

        for t in targets:
            for r in range(self.restarts):
                todo = best_norm > 0
                if eps_stop is not None:
                    todo &= best_norm > eps_stop
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                xs = x[idx]
                if r == 0:
                    start = xs.clone()
                else:
                    rad = torch.clamp(best_norm[idx], max=radius0) * 0.5
                    step = _random_direction(xs, self.norm, ctx.generator) * rad.view(-1, *([1] * (xs.dim() - 1)))
                    start = (xs + step).clamp(lo, hi)
                ti = t[idx] if t is not None else None
                adv, nrm = self._run(ctx, xs, y[idx], ti, start, best_norm[idx], eps_stop)
                better = nrm < best_norm[idx]
                sel = idx[better]
                best[sel] = adv[better]
                best_norm[sel] = nrm[better]
        found = best_norm.isfinite() & (best_norm > 0)
        ctx.info["found"] = ctx.info.get("found", 0) + int(found.sum())
        return best

    def _run(
        self,
        ctx: Context,
        x0: Tensor,
        y: Tensor,
        t: Tensor | None,
        start: Tensor,
        known: Tensor,
        eps_stop: float | None,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run from ``start``; returns the best adversarial found and its norm (inf if none)."""
        lo, hi = ctx.bounds
        n = x0.shape[0]
        view = (-1,) + (1,) * (x0.dim() - 1)
        x1 = start.clone()
        adv = x0.clone()
        res = torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
        x0f = x0.flatten(1)
        for _ in range(self.steps):
            if eps_stop is not None:
                a = (torch.minimum(res, known) > eps_stop).nonzero().squeeze(1)
                if a.numel() == 0:
                    break
            else:
                a = torch.arange(n, device=x0.device)
            xa, ya = x1[a], y[a]
            df, dg = self._diff_grads(ctx, xa, ya, t[a] if t is not None else None)
            with torch.no_grad():
                m = xa.shape[0]
                dist = df.abs() / (1e-12 + _norm_last(dg, _DUAL[self.norm]))
                j = dist.argmin(dim=1)
                ar = torch.arange(m, device=x0.device)
                w = dg[ar, j]  # (m, D)
                f = df[ar, j]
                xaf, x0a = xa.flatten(1), x0f[a]
                # linearisation: f(z) ≈ f + <w, z − x1>; project x1 and x0 onto {f(z) = 0} ∩ box
                c1 = -f
                c0 = (w * (xaf - x0a)).sum(dim=1) - f
                d = project_hyperplane_box(
                    torch.cat([w, w]),
                    torch.cat([c1, c0]),
                    torch.cat([lo - xaf, lo - x0a]),
                    torch.cat([hi - xaf, hi - x0a]),
                    self.norm,
                )
                d1, d2 = d[:m], d[m:]
                nd = N.norm(d, self.norm).clamp_min(1e-8)
                n1, n2 = nd[:m], nd[m:]
                alpha = (n1 / (n1 + n2)).clamp(0.0, self.alpha_max)[:, None]
                x_new = ((1 - alpha) * (xaf + self.eta * d1) + alpha * (x0a + self.eta * d2)).clamp(lo, hi)
                x_new = x_new.view_as(xa)
                z_new = ctx.model.scores(x_new)
                is_adv = z_new.argmax(dim=1) != ya
                dnew = N.norm(x_new - x0[a], self.norm)
                improved = is_adv & (dnew < res[a])
                if ctx.reduced:
                    # the trajectory follows the reduced-precision check; a recorded point that
                    # would end the search (within ε; without ε, any) must hold in full precision
                    near = ctx.claims(z_new, ya) & (dnew < res[a])
                    final = near if eps_stop is None else near & (dnew <= eps_stop)
                    held = ctx.confirm(x_new, final, _misclassified(ya))
                    improved = (improved & ~final) | held
                ai = a[improved]
                adv[ai] = x_new[improved]
                res[ai] = dnew[improved]
                x_back = x0[a] + self.beta * (x_new - x0[a])
                x1[a] = torch.where(is_adv.view(view), x_back, x_new)
        return adv, res

    @staticmethod
    def _diff_grads(
        ctx: Context, x: Tensor, y: Tensor, t: Tensor | None, batched: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """``f_j = z_j − z_y`` at ``x`` and their input gradients, flattened: ``(m, J)``, ``(m, J, D)``.

        Untargeted: ``j`` runs over every class but ``y`` (``J = K − 1`` backward passes through
        one forward graph; vmapped with ``is_grads_batched`` off the CPU, where it saves kernel
        launches, a plain loop on the CPU, where it measured no faster); with ``t``, only
        ``j = t`` (one backward pass).  Counts the queries (one forward) and ``m × J``
        gradient evaluations.
        """
        if batched is None:
            batched = x.device.type != "cpu"
        model = ctx.model
        xg = x.detach().requires_grad_(True)
        m = x.shape[0]
        with torch.enable_grad():
            z = model.scores(xg)
            k = z.shape[1]
            if t is None:
                cls = torch.arange(k - 1, device=x.device)[None, :].expand(m, -1)
                cls = cls + (cls >= y[:, None]).long()
            else:
                cls = t[:, None]
            onehot = F.one_hot(cls, k).to(z.dtype) - F.one_hot(y, k).to(z.dtype)[:, None, :]  # (m, J, K)
            if cls.shape[1] == 1:
                (g,) = torch.autograd.grad(z, xg, grad_outputs=onehot[:, 0])
                g = g.unsqueeze(1)
            else:
                g = None
                if batched:
                    try:
                        (g,) = torch.autograd.grad(
                            z, xg, grad_outputs=onehot.transpose(0, 1), is_grads_batched=True, retain_graph=True
                        )
                        g = g.transpose(0, 1)
                    except RuntimeError:  # a module without vmap support: one backward per class
                        g = None
                if g is None:
                    g = torch.stack(
                        [
                            torch.autograd.grad(z, xg, grad_outputs=onehot[:, i], retain_graph=i < cls.shape[1] - 1)[0]
                            for i in range(cls.shape[1])
                        ],
                        dim=1,
                    )
        model.grad_evals += m * cls.shape[1]
        zd = z.detach()
        df = zd.gather(1, cls) - zd.gather(1, y[:, None])
        return df, g.detach().flatten(2)


def _misclassified(y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``is_adversarial`` for :meth:`Context.confirm`: rows whose label is not ``y``."""
    return lambda logits, rows: logits.argmax(dim=1) != y[rows]


def _norm_last(g: Tensor, p: str) -> Tensor:
    if p == "l1":
        return g.abs().sum(dim=-1)
    if p == "l2":
        return g.norm(dim=-1)
    return g.abs().amax(dim=-1)


def _random_direction(like: Tensor, p: str, gen: torch.Generator) -> Tensor:
    """A random direction of unit ``p``-norm per sample."""
    if p == "linf":
        u = 2 * torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype) - 1
    else:
        u = torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
    if p == "linf":
        return u / u.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (u.dim() - 1)))
    return N.normalize(u, p)
