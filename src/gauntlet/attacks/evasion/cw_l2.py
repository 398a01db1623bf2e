"""Carlini & Wagner's L2 attack (IEEE S&P 2017).

The box constraint is removed by a change of variables, ``x' = mid + half · tanh(w)`` over the
model's bounds ``[mid − half, mid + half]``, and Adam minimises, per sample,

    ||x' − x||₂² + c · f(x'),   f = max(z_y − max_{j≠y} z_j, −κ)          (untargeted)
                                f = max(max_{j≠t} z_j − z_t, −κ)          (targeted, class t)

(written below as ``max(·, −κ)`` shifted by ``+κ``, which has the same gradient).  The constant
``c`` is searched per sample: multiplied by 10 until an adversarial is found, then bisected, for
``binary_search_steps`` rounds of ``steps`` Adam steps each, every round restarting from ``x``.
A round stops early for a sample once its loss stops falling (checked every tenth of the
steps).  The smallest adversarial seen at any step of any round is returned.

One addition to the published algorithm (``final_steps``, 0 turns it off): once the search is
done, a last round restarts each sample from its best adversarial, at the smallest ``c`` that
succeeded, with Adam's step size annealed to zero.  Above the boundary the objective has a kink
(``f`` is clamped at 0), where a constant step size oscillates across the boundary and leaves the
result a few percent above the minimum; the annealed round settles onto it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval
from gauntlet.attacks.base import POSITIVE, STEPS, Attack, Context
from gauntlet.attacks.registry import register

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_SHRINK = 1.0 - 1e-6  # keeps atanh finite for inputs on the bounds, as in the authors' code


@register
class CarliniWagnerL2(Attack):
    """Carlini–Wagner L2: Adam in tanh space on ``||δ||² + c·f``, binary search over ``c``.

    Args:
        norm: ``"l2"`` (the only norm).
        eps: optional budget (one value or a list); the minimal adversarial found is projected
            into each ε-ball. ``None`` returns the minimal adversarial as found.
        steps: Adam steps per binary-search round.
        binary_search_steps: rounds of the search over the constant ``c``.
        initial_const: ``c`` of the first round.
        confidence: the margin κ an adversarial must clear (0: just across the boundary).
        learning_rate: Adam's step size in tanh space.
        abort_early: end a sample's round once its loss stops decreasing.
        final_steps: Adam steps of a final round run after the search, from each sample's best
            adversarial at the smallest ``c`` that succeeded, with the step size annealed to zero
            (cosine); 0 skips it and gives the authors' algorithm exactly.
        targeted: aim at ``target`` (see ``Attack.run``).
        batch_size: split the input into batches of this size.
    """

    name = "cw_l2"
    description = "Carlini-Wagner L2 minimal perturbation: Adam in tanh space, binary search over c (2017)"
    reference = (
        'Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, '
        "https://arxiv.org/abs/1608.04644"
    )
    norms = ("l2",)
    minimal = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": STEPS,
        "binary_search_steps": STEPS,
        "initial_const": POSITIVE,
        "confidence": [Interval(float, 0, None)],
        "learning_rate": POSITIVE,
        "abort_early": [Boolean()],
        "final_steps": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | list[float] | None = None,
        steps: int = 1000,
        binary_search_steps: int = 9,
        initial_const: float = 1e-2,
        confidence: float = 0.0,
        learning_rate: float = 1e-2,
        abort_early: bool = False,
        final_steps: int = 1000,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.binary_search_steps = binary_search_steps
        self.initial_const = initial_const
        self.confidence = confidence
        self.learning_rate = learning_rate
        self.abort_early = abort_early
        self.final_steps = final_steps
        self.targeted = targeted
        self.batch_size = batch_size
        self._validate()

    # ---------------------------------------------------------------------------------------
    def _margin_loss(self, logits: Tensor, goal: Tensor, targeted: bool) -> Tensor:
        """``f + κ`` ≥ 0, zero once the goal is reached with margin κ."""
        z_goal = logits.gather(1, goal[:, None]).squeeze(1)
        z_other = logits.scatter(1, goal[:, None], float("-inf")).amax(dim=1)
        gap = z_other - z_goal if targeted else z_goal - z_other
        return (gap + self.confidence).clamp_min(0.0)

    def _reached(self, logits: Tensor, goal: Tensor, targeted: bool) -> Tensor:
        """The authors' success test: the goal logit shifted by κ, then argmax."""
        shift = -self.confidence if targeted else self.confidence
        z = logits.scatter_add(1, goal[:, None], torch.full_like(logits[:, :1], shift)) if shift else logits
        pred = z.argmax(dim=1)
        return pred == goal if targeted else pred != goal

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        targeted = ctx.targeted and ctx.target is not None
        goal = ctx.target if targeted else y
        assert goal is not None
        # points that already reach the goal are their own minimal adversarial (norm 0)
        with torch.no_grad():
            todo = ~self._reached(ctx.model.scores(x), goal, targeted)
        best = x.clone()
        if bool(todo.any()):
            best[todo] = self._search(ctx, x[todo], goal[todo], targeted)
        return best

    def _search(self, ctx: Context, x: Tensor, goal: Tensor, targeted: bool) -> Tensor:
        lo, hi = ctx.bounds
        mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
        n = x.shape[0]
        w0 = torch.atanh(((x - mid) / half).clamp(-1.0, 1.0) * _SHRINK)

        const = torch.full((n,), float(self.initial_const), dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best_sq = torch.full_like(const, math.inf)
        best = x.clone()

        for round_ in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and round_ == self.binary_search_steps - 1:
                const = torch.where(torch.isinf(upper), const, upper)  # the authors' final repeat at the upper bound
            found = self._optimise(
                ctx, x, w0, goal, const, best, best_sq, targeted, mid, half, steps=self.steps, abort_early=self.abort_early
            )
            # per-sample search over c: bisect once bracketed, else grow tenfold
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10.0, (lower + upper) / 2.0)
        if self.final_steps and bool(torch.isfinite(best_sq).any()):
            # final round: from the best adversarial, at the smallest c that worked, with the step
            # size annealed to zero, so Adam settles onto the boundary instead of oscillating across it
            ok = torch.isfinite(best_sq).nonzero().squeeze(1)
            w_best = torch.atanh(((best[ok] - mid) / half).clamp(-1.0, 1.0) * _SHRINK)
            b, b_sq = best[ok].clone(), best_sq[ok].clone()
            self._optimise(ctx, x[ok], w_best, goal[ok], upper[ok], b, b_sq, targeted, mid, half,
                           steps=self.final_steps, anneal=True, abort_early=False)
            best[ok], best_sq[ok] = b, b_sq
        return best

    def _optimise(
        self,
        ctx: Context,
        x: Tensor,
        w0: Tensor,
        goal: Tensor,
        const: Tensor,
        best: Tensor,
        best_sq: Tensor,
        targeted: bool,
        mid: float,
        half: float,
        *,
        steps: int,
        anneal: bool = False,
        abort_early: bool = False,
    ) -> Tensor:
        """One round of Adam from ``tanh(w0)`` at fixed ``const``, distances measured to ``x``;
        updates ``best``/``best_sq`` in place and returns which samples reached the goal at some
        step.  ``anneal``: cosine-decay the step size from ``learning_rate`` to zero."""
        model = ctx.model
        n = x.shape[0]
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        check_every = max(1, steps // 10)
        # state of the samples still optimising, kept compact (rows ``ids`` of the batch)
        ids = torch.arange(n, device=x.device)
        xs, ws, gs, cs = x, w0, goal, const
        mod, m, v = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
        prev = torch.full_like(const, math.inf)
        found_a = torch.zeros_like(found)
        bsq, badv = best_sq.clone(), best.clone()

        def write_back(rows: Tensor) -> None:
            found[ids[rows]] = found_a[rows]
            best_sq[ids[rows]] = bsq[rows]
            best[ids[rows]] = badv[rows]

        for t in range(1, steps + 1):
            mod.requires_grad_(True)
            with torch.enable_grad():
                x_new = torch.tanh(ws + mod) * half + mid
                logits = model.scores(x_new)
                sq = (x_new - xs).flatten(1).pow(2).sum(dim=1)
                loss = sq + cs * self._margin_loss(logits, gs, targeted)
                (g,) = torch.autograd.grad(loss.sum(), mod)
            model.grad_evals += int(ids.numel())
            with torch.no_grad():
                mod = mod.detach()
                # bookkeeping on the point just evaluated
                ok = self._reached(logits.detach(), gs, targeted)
                found_a |= ok
                better = ok & (sq.detach() < bsq)
                bsq = torch.where(better, sq.detach(), bsq)
                badv = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), x_new.detach(), badv)
                # Adam step
                m.mul_(_BETA1).add_(g, alpha=1 - _BETA1)
                v.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
                # Adam (Kingma & Ba, Algorithm 1): ε is added to the bias-corrected √v̂
                denom = v.sqrt().div_(math.sqrt(1 - _BETA2**t)).add_(_ADAM_EPS)
                lr = self.learning_rate * (0.5 * (1.0 + math.cos(math.pi * (t - 1) / steps)) if anneal else 1.0)
                mod.addcdiv_(m, denom, value=-lr / (1 - _BETA1**t))
                if abort_early and t % check_every == 0:
                    lv = loss.detach()
                    stalled = lv > 0.9999 * prev
                    prev = lv
                    if bool(stalled.any()):
                        write_back(stalled)
                        keep = ~stalled
                        if not bool(keep.any()):
                            return found
                        ids, xs, ws, gs, cs = ids[keep], xs[keep], ws[keep], gs[keep], cs[keep]
                        mod, m, v, prev = mod[keep], m[keep], v[keep], prev[keep]
                        found_a, bsq, badv = found_a[keep], bsq[keep], badv[keep]
        write_back(torch.ones_like(found_a))
        return found
