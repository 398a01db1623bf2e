"""Equation-solving extraction of logistic and softmax regression from confidence scores.

Tramèr et al. (2016), §4.1: a softmax regression answers ``p(x) = softmax(W x + b)``, so for
any two classes ``k`` and ``r`` the log-ratio of its probabilities is linear in the input,

    ``log p_k(x) - log p_r(x) = (w_k - w_r)·x + (b_k - b_r)``,

and ``d + 1`` queries at random points in the input bounds (``d`` = input features) determine
every difference ``θ_k - θ_r`` (``θ = [w, b]``) by one linear solve: the design matrix
``A = [x, 1]`` is ``(d+1) × (d+1)`` and the log-ratio matrix ``(d+1) × (K-1)``, all ``K - 1``
classes at once.  Binary logistic regression is the case ``K = 2`` (``log(p_1/p_0)`` is the
logit).  The softmax is shift-invariant, so the copy is exact up to that shift: its reference
class's row is zero, and recovered and true parameters compare as differences ``W - W[ref]``
(``ExtractionResult.info["weights"]`` / ``["bias"]`` hold that representation).

What the attack reads:

* ``output == "logits"``: the scores are the linear functions themselves (up to a per-row
  shift, which the differences remove); no logarithm is taken.
* ``output == "probabilities"``: the log of each probability.  A probability at or below
  ``1e-38`` (zero after rounding or underflow, or in float32's subnormal range where its
  relative precision is lost) is *clipped*: it says only that the class is far below the top
  one, so it is left out of the equations (``info["clipped"]`` counts them).  With clipping the
  solve is the per-row form: each row's equations are the log-ratios of its unclipped classes
  to its most probable class, solved jointly for all ``(K-1)(d+1)`` unknowns.

``extra_queries`` adds rows for a least-squares fit when the outputs are rounded or noisy.  In
that over-determined case, for probability outputs, each equation ``log p_k - log p_t`` is
weighted by its inverse standard deviation under an absolute error on the probabilities
(rounding, additive noise): ``(1/p_k² + 1/p_t²)^(-1/2)``.  Exact outputs give a consistent
system whose solution does not depend on the weights; the square default (``d + 1`` queries)
is an exact solve either way.

The copy is a :class:`~gauntlet.models.TorchModel` around ``nn.Sequential(nn.Flatten(),
nn.Linear(d, K))`` holding the recovered parameters: the solve is in float64, the copy's
parameters are stored in the target's input dtype (float32 for most targets, float64 for a
float64 target) and ``info`` keeps the float64 solution.  A target that is not linear in its
log-odds (a neural network) still gives a linear model through its ``d + 1`` points; the
solve cannot see that, so ``verify=True`` spends ``min(16, d + 1)`` more queries at fresh
random points and reports how far the copy's log-ratios are from the target's there.

Query points: uniform in the target's bounds (a standard normal clamped into them where a
bound is infinite), drawn from the explicit generator.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, Interval
from gauntlet.attacks.extraction._base import OPTIONAL_MAX_QUERIES, ExtractionAttack, QueryBudget
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.torch_model import TorchModel

__all__ = ["EquationSolving", "random_inputs"]

#: probabilities at or below this are clipped (left out of the equations)
FLOOR = 1e-38
#: the clipped (per-row pivot) solve is dense; past this many matrix entries it solves per class
_DENSE_LIMIT = 30_000_000


def random_inputs(n: int, shape: tuple[int, ...], bounds: tuple[float, float], dtype: torch.dtype,
                  generator: torch.Generator) -> Tensor:
    """``n`` inputs uniform in ``bounds`` (a standard normal clamped into them where a bound is
    infinite), drawn from ``generator`` in float64 and cast to ``dtype``."""
    lo, hi = bounds
    if math.isfinite(lo) and math.isfinite(hi):
        u = torch.rand((n, *shape), generator=generator, dtype=torch.float64)
        x = lo + (hi - lo) * u
    else:
        x = torch.randn((n, *shape), generator=generator, dtype=torch.float64).clamp(lo, hi)
    return x.to(dtype)


@register
class EquationSolving(ExtractionAttack):
    """Equation-solving extraction of a logistic / softmax regression (see the module docstring).

    Args:
        extra_queries: queries beyond the ``d + 1`` an exact solve needs; they make the solve a
            (weighted) least-squares fit, for rounded or noisy outputs.
        max_queries: the query budget (``None``: none); it must hold the ``d + 1 +
            extra_queries`` queries of the solve (plus the check batch when ``verify``), else a
            :class:`~gauntlet.errors.ConfigError` at run time says how many are needed.
        verify: spend ``min(16, d + 1)`` more queries at fresh random points and report in
            ``info`` the largest gap between the copy's and the target's log-ratios there
            (``"verify_max_abs_error"``) and their label agreement (``"verify_agreement"``):
            how a target that is not a softmax regression shows itself.

    ``info``: ``"weights"`` ``(K, d)`` and ``"bias"`` ``(K,)`` (float64, the reference class's
    row zero), ``"reference_class"``, ``"queries"``, ``"residual"`` (the largest absolute
    residual of the solve's equations), ``"rank"`` / ``"unknowns"`` (an under-determined solve is
    the minimum-norm one and says so in ``"underdetermined"``), ``"clipped"`` (probabilities
    clipped before the logarithm) and ``"solver"``.
    """

    name = "equation_solving"
    description = "equation-solving extraction of logistic / softmax regression from confidence scores (Tramèr et al. 2016)"
    reference = (
        'Tramèr, Zhang, Juels, Reiter and Ristenpart, "Stealing Machine Learning Models via Prediction APIs", '
        "USENIX Security 2016, §4.1"
    )
    needs: ClassVar[str] = "scores"
    labels_alternative: ClassVar[str] = "copycat"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "extra_queries": [Interval(int, 0, None)],
        "max_queries": OPTIONAL_MAX_QUERIES,
        "verify": [Boolean()],
    }

    def __init__(self, *, extra_queries: int = 0, max_queries: int | None = None, verify: bool = False) -> None:
        self.extra_queries = extra_queries
        self.max_queries = max_queries
        self.verify = verify
        self._validate()

    def _extract(self, target: QueryBudget, generator: torch.Generator) -> tuple[Model, dict[str, Any]]:
        shape = target.input_spec.shape
        if shape is None:
            raise ConfigError(
                f"{self.name}: the target declares no per-sample input shape, so the number of features d is unknown; "
                "build the model with input_shape="
            )
        d = math.prod(shape)
        n = d + 1 + self.extra_queries
        n_check = min(16, d + 1) if self.verify else 0
        left = target.left
        if left is not None and left < n + n_check:
            extra = f" + {self.extra_queries} extra_queries" if self.extra_queries else ""
            check = f" + {n_check} for verify" if n_check else ""
            raise ConfigError(
                f"{self.name}: needs {n + n_check} queries (d+1 = {d + 1} for {d} features{extra}{check}) "
                f"but max_queries={self.max_queries}; raise max_queries to {n + n_check}"
            )
        dtype = target.input_spec.dtype
        x = random_inputs(n, shape, target.bounds, dtype, generator)
        out = target.scores(x).detach().to("cpu", torch.float64)
        k = int(out.shape[1])
        a = torch.cat([x.reshape(n, d).to("cpu", torch.float64), torch.ones(n, 1, dtype=torch.float64)], dim=1)
        logs, usable, probs = _log_scores(out, target.output, self.name)
        theta, ref, info = _solve(a, logs, usable, probs, weighted=probs is not None and n > d + 1)
        weights, bias = theta[:, :d].clone(), theta[:, d].clone()
        copy_dtype = dtype if dtype == torch.float64 else torch.float32
        linear = nn.Linear(d, k).to(copy_dtype)
        with torch.no_grad():
            linear.weight.copy_(weights.to(copy_dtype))
            linear.bias.copy_(bias.to(copy_dtype))
        net = nn.Sequential(nn.Flatten(), linear)
        copy = TorchModel(net.eval(), bounds=target.bounds, num_classes=k, input_shape=shape)
        info.update(weights=weights, bias=bias, reference_class=ref, output=target.output)
        if n_check:
            xc = random_inputs(n_check, shape, target.bounds, dtype, generator)
            oc = target.scores(xc).detach().to("cpu", torch.float64)
            lc, uc, _ = _log_scores(oc, target.output, self.name)
            ac = torch.cat([xc.reshape(n_check, d).to("cpu", torch.float64), torch.ones(n_check, 1, dtype=torch.float64)], 1)
            pred = ac @ theta.T
            # compare log-ratios to each row's top class over the usable entries
            top = lc.masked_fill(~uc, -math.inf).argmax(dim=1, keepdim=True)
            gap = ((lc - lc.gather(1, top)) - (pred - pred.gather(1, top))).abs().masked_fill(~uc, 0.0)
            info["verify_max_abs_error"] = float(gap.max())
            info["verify_agreement"] = float((pred.argmax(1) == oc.argmax(1)).double().mean())
        info["queries"] = target.used
        return copy, info


def _log_scores(out: Tensor, output: str, owner: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(log-scores, usable mask, probabilities or None)``: logits are used as they are;
    probabilities are logged with entries at or below :data:`FLOOR` clipped (not usable)."""
    if not bool(torch.isfinite(out).all()):
        raise DataError(f"{owner}: the target returned NaN or inf scores; equation solving needs finite scores")
    if output != "probabilities":
        return out, torch.ones_like(out, dtype=torch.bool), None
    usable = out > FLOOR
    return out.clamp_min(FLOOR).log(), usable, out


def _solve(a: Tensor, logs: Tensor, usable: Tensor, probs: Tensor | None, *, weighted: bool) -> tuple[Tensor, int, dict[str, Any]]:
    """Solve for ``θ`` ``(K, d+1)`` with one reference row zero from ``logs[n, k] = θ_k·a_n + c_n``
    (``c_n`` an unknown per-row shift).  Returns ``(θ, reference class, info)``."""
    p = a.shape[1]
    k = logs.shape[1]
    clipped = int((~usable).sum())
    info: dict[str, Any] = {"clipped": clipped, "unknowns": (k - 1) * p}
    if clipped == 0:
        # one reference class for every row: the (n, K-1) log-ratio matrix, one solve for all classes
        ref = int(logs.min(dim=0).values.argmax()) if probs is not None else 0
        others = [c for c in range(k) if c != ref]
        y = logs[:, others] - logs[:, ref : ref + 1]
        if weighted and probs is not None:
            w = (probs[:, others].pow(-2) + probs[:, ref : ref + 1].pow(-2)).rsqrt()
            cols = [_lstsq(a * w[:, j : j + 1], y[:, j : j + 1] * w[:, j : j + 1]) for j in range(k - 1)]
            sol = torch.cat([c[0] for c in cols], dim=1)
            rank = min(c[1] for c in cols) * (k - 1)
        else:
            sol, r = _lstsq(a, y)
            rank = r * (k - 1)
        theta = torch.zeros(k, p, dtype=torch.float64)
        theta[others] = sol.T
        resid = (a @ sol - y).abs()
        info.update(solver="reference" if not weighted else "reference, weighted")
    else:
        theta, ref, rank, resid = _solve_clipped(a, logs, usable, probs, weighted=weighted)
        info.update(solver="per-row pivot" + (", weighted" if weighted else ""))
    info.update(rank=rank, underdetermined=rank < (k - 1) * p, residual=float(resid.max()) if resid.numel() else 0.0)
    return theta, ref, info


def _lstsq(a: Tensor, y: Tensor) -> tuple[Tensor, int]:
    res = torch.linalg.lstsq(a, y, driver="gelsy")
    return res.solution, int(res.rank)


def _solve_clipped(a: Tensor, logs: Tensor, usable: Tensor, probs: Tensor | None, *, weighted: bool) -> tuple[Tensor, int, int, Tensor]:
    """Clipped entries present: each row's equations are its usable classes' log-ratios to its
    top class (``(θ_k - θ_t)·a_n = log p_nk - log p_nt``), solved for all classes jointly with the
    reference class (the one usable in most rows) fixed at zero."""
    p = a.shape[1]
    k = logs.shape[1]
    ref = int(usable.sum(dim=0).argmax())
    top = logs.masked_fill(~usable, -math.inf).argmax(dim=1)
    rows_n, rows_k = torch.nonzero(usable & (torch.arange(k)[None, :] != top[:, None]), as_tuple=True)
    rows_t = top[rows_n]
    rhs = logs[rows_n, rows_k] - logs[rows_n, rows_t]
    e = int(rhs.shape[0])
    if weighted and probs is not None:
        w = (probs[rows_n, rows_k].pow(-2) + probs[rows_n, rows_t].pow(-2)).rsqrt()
    else:
        w = torch.ones(e, dtype=torch.float64)
    col = torch.full((k,), -1, dtype=torch.int64)
    col[[c for c in range(k) if c != ref]] = torch.arange(k - 1)
    if e * (k - 1) * p <= _DENSE_LIMIT:
        m = torch.zeros(e, (k - 1) * p, dtype=torch.float64)
        for cls, sign in ((rows_k, 1.0), (rows_t, -1.0)):
            keep = col[cls] >= 0
            idx = torch.nonzero(keep, as_tuple=True)[0]
            base = col[cls[idx]] * p
            m[idx[:, None], base[:, None] + torch.arange(p)[None, :]] += sign * a[rows_n[idx]]
        sol, rank = _lstsq(m * w[:, None], (rhs * w)[:, None])
        resid = (m @ sol)[:, 0] - rhs
        theta = torch.zeros(k, p, dtype=torch.float64)
        theta[[c for c in range(k) if c != ref]] = sol[:, 0].reshape(k - 1, p)
        return theta, ref, rank, resid.abs()
    # too large to solve densely: per class against the fixed reference, on the rows where both are usable
    theta = torch.zeros(k, p, dtype=torch.float64)
    rank, resids = 0, []
    for c in range(k):
        if c == ref:
            continue
        rows = usable[:, c] & usable[:, ref]
        if not bool(rows.any()):
            continue  # never seen beside the reference: this class's row stays zero
        y = (logs[rows, c] - logs[rows, ref])[:, None]
        wc = (probs[rows, c].pow(-2) + probs[rows, ref].pow(-2)).rsqrt()[:, None] if weighted and probs is not None else 1.0
        sol, r = _lstsq(a[rows] * wc, y * wc)
        theta[c] = sol[:, 0]
        rank += r
        resids.append((a[rows] @ sol - y).abs().flatten())
    return theta, ref, rank, torch.cat(resids)
