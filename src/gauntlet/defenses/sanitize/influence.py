"""Influence functions (Koh & Liang 2017): how up-weighting one training point moves the trained
parameters and a test loss, without retraining; and the self-influence sanitizer.

The model is trained to ``θ̂ = argmin R(θ)`` with ``R(θ) = (1/n) Σ_i L(z_i, θ)`` and
``L(z, θ) = ℓ(z, θ) + (l2/2)·‖θ‖²`` (cross-entropy ``ℓ`` plus the L2 penalty the model was trained
with: pass the training weight decay as ``l2``).  Up-weighting a training point ``z`` by ``ε``
moves the parameters by ``-ε·H⁻¹∇L(z, θ̂)`` (``H = ∇²R(θ̂)``), so its influence on the loss of a
test point ``z_test`` is

    I_up,loss(z, z_test) = -∇ℓ(z_test, θ̂)ᵀ H⁻¹ ∇L(z, θ̂).

Removing ``z`` is up-weighting it by ``ε = -1/n``, so the test loss after leave-one-out retraining
(on the ``n - 1`` other points, mean loss, same ``l2``) changes by about ``-(1/n)·I_up,loss``.
The self-influence ``∇L(z)ᵀ H⁻¹ ∇L(z) = -I_up,loss(z, z)`` says how much a point's own loss
depends on the point being in the training set: mislabelled or poisoned rows the model had to bend
to fit score high (Koh & Liang §5.4, "fixing mislabeled examples").

``H⁻¹v`` is computed three ways (``damping`` δ adds ``δ·I`` to ``H`` in each):

``"exact"``  the Hessian is formed explicitly (Hessian-vector products against the identity, in
             chunks) and factored (Cholesky); for up to ``MAX_EXACT_PARAMS`` parameters.
``"cg"``     conjugate gradient with Hessian-vector products over the whole training set
             (forward-over-reverse ``torch.func.jvp`` of the gradient); no Hessian is formed.
``"lissa"``  the stochastic recursion of Agarwal et al. 2017 as used by Koh & Liang:
             ``h_j = v + (I - (H_b + δI)/s)·h_{j-1}`` with ``H_b`` the Hessian on a fresh
             minibatch of ``lissa_batch_size`` rows, ``lissa_depth`` steps, ``h/s`` averaged over
             ``lissa_repeats`` runs; ``s`` (``lissa_scale``) must exceed the Hessian's largest
             eigenvalue (``None``: estimated by power iteration).  Koh & Liang's code writes the
             step as ``v + (1 - d)·h - H_b·h/s``, i.e. their ``d`` is this ``δ/s``.

The parameters are those of the ``TorchModel``'s module (``params="all"``), its last
``nn.Linear`` (``"last"``, where the loss is convex for a fixed feature extractor) or a list of
parameter names; the others stay fixed.  Everything is computed in float64 on a copy of the
network by default (effects of one point in ``n`` are small), in eval mode.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._batch import check_input_batch
from gauntlet._validation import Check, Constraint, Interval, IsNone, Options, validate_params
from gauntlet.defenses.base import check_labels
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import EXPECTED_FRACTION, REMOVAL_FACTOR, Sanitizer, flag_top, seed_from
from gauntlet.errors import CapabilityError, ConfigError, DataError

__all__ = ["MAX_EXACT_PARAMS", "Influence", "InfluenceSanitizer", "influence_on_test", "self_influence"]

#: the largest parameter count ``method="exact"`` forms a Hessian for (a p × p float64 matrix)
MAX_EXACT_PARAMS = 12_000
METHODS = ("exact", "cg", "lissa")
#: rows × Hessian-vector products evaluated in one vectorised call (bounds the memory of a chunk)
_CHUNK = 1 << 16


def _is_params(value: Any) -> bool:
    if value in ("all", "last"):
        return True
    return (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) and v for v in value)
    )


#: hyperparameters shared by the function API, :class:`Influence` and the sanitizer
CONSTRAINTS: dict[str, list[Constraint]] = {
    "params": [Check(_is_params, "'all', 'last' or a non-empty list of parameter names")],
    "method": [Options(METHODS)],
    "damping": [Interval(float, 0, None)],
    "l2": [Interval(float, 0, None)],
    "cg_steps": [Interval(int, 1, None)],
    "cg_tol": [Interval(float, 0, 1, closed="neither")],
    "lissa_depth": [Interval(int, 1, None)],
    "lissa_repeats": [Interval(int, 1, None)],
    "lissa_batch_size": [Interval(int, 1, None)],
    "lissa_scale": [Interval(float, 0, None, closed="neither"), IsNone()],
    "batch_size": [Interval(int, 1, None)],
    "dtype": [Options(("float64", "float32"))],
}


def _not_pd(owner: str, p: int, damping: float, detail: str) -> ConfigError:
    if damping > 0:
        fix = f"raise damping above {damping:g} (e.g. damping={max(10 * damping, 0.01):g})"
    else:
        fix = "pass damping > 0 (e.g. damping=0.01), or l2=<the weight decay the model was trained with>"
    return ConfigError(
        f"{owner}: the Hessian of the training loss over {p} parameters plus damping {damping:g} is singular or not "
        f"positive definite ({detail}), so H⁻¹ does not exist (the model is not at a strict minimum, or the loss is flat "
        f"in some direction, e.g. softmax's shift invariance); {fix}"
    )


class Influence:
    """Influence functions of one trained ``TorchModel`` on one training set ``(x, y)``.

    Builds the training objective once (which parameters, the Hessian or its factor for
    ``method="exact"``) and answers :meth:`on_test` (``I_up,loss`` of every training row on
    every test row), :meth:`self_influence` and :meth:`inverse_hvp`.  ``info`` collects what the
    solvers report (Hessian size, CG residuals and steps, the LiSSA scale).  See the module
    docstring for the definitions and the hyperparameters.
    """

    def __init__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        *,
        params: str | Sequence[str] = "all",
        method: str = "exact",
        damping: float = 0.0,
        l2: float = 0.0,
        cg_steps: int = 500,
        cg_tol: float = 1e-10,
        lissa_depth: int = 1000,
        lissa_repeats: int = 1,
        lissa_batch_size: int = 10,
        lissa_scale: float | None = None,
        batch_size: int = 1024,
        dtype: str = "float64",
        seed: int = 0,
        owner: str = "influence",
    ) -> None:
        from gauntlet.models.torch_model import TorchModel

        self.owner = owner
        hp = {
            "params": params, "method": method, "damping": damping, "l2": l2, "cg_steps": cg_steps, "cg_tol": cg_tol,
            "lissa_depth": lissa_depth, "lissa_repeats": lissa_repeats, "lissa_batch_size": lissa_batch_size,
            "lissa_scale": lissa_scale, "batch_size": batch_size, "dtype": dtype,
        }
        validate_params(owner, hp, CONSTRAINTS)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{owner}: seed must be an int >= 0, got {seed!r}")
        if not isinstance(model, TorchModel):
            raise CapabilityError(
                f"{owner}: needs the gradients and Hessian of a network's parameters, so a gauntlet TorchModel, "
                f"got {type(model).__name__}; wrap the module with gauntlet.models.TorchModel(module, ...)"
            )
        self.method, self.damping, self.l2 = method, float(damping), float(l2)
        self.cg_steps, self.cg_tol = cg_steps, float(cg_tol)
        self.lissa_depth, self.lissa_repeats, self.lissa_batch_size = lissa_depth, lissa_repeats, lissa_batch_size
        self.lissa_scale = lissa_scale
        self.batch_size = batch_size
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.generator = torch.Generator().manual_seed(seed)
        self.info: dict[str, Any] = {"method": method}

        device = model.device
        check_input_batch(x, where=owner, what="x_train", owner="the model", device=device)
        self.y = check_labels(y, int(x.shape[0]), model._num_classes, device, f"{owner} (y_train)")
        self.sample_shape = tuple(x.shape[1:])
        self.x = x.detach().to(self.dtype)
        self.n = int(x.shape[0])
        self.model = model
        self.probabilities = model.output == "probabilities"

        module = copy.deepcopy(model.module).to(self.dtype)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        named: dict[str, Tensor] = dict(module.named_parameters())
        self.names = self._select(module, named, params)
        self.shapes = [named[k].shape for k in self.names]
        self.numels = [named[k].numel() for k in self.names]
        self.p = sum(self.numels)
        self.theta = torch.cat([named[k].detach().flatten() for k in self.names])
        self.fixed: dict[str, Tensor] = {k: v for k, v in named.items() if k not in self.names}
        self.fixed.update(dict(module.named_buffers()))
        self.info.update(n_params=self.p, params=list(self.names), n_train=self.n)
        self._chol: Tensor | None = None
        self._scale: float | None = None
        if method == "exact":
            self._factor()

    # -- the objective ------------------------------------------------------------------------------
    def _select(self, module: nn.Module, named: dict[str, Tensor], params: str | Sequence[str]) -> list[str]:
        floating = [k for k, v in named.items() if v.is_floating_point()]
        if params == "all":
            names = floating
        elif params == "last":
            linears = [(k, m) for k, m in module.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ConfigError(f"{self.owner}: params='last' reads the last nn.Linear, but the network has none; pass params='all' or a list of parameter names")
            prefix = linears[-1][0]
            names = [f"{prefix}.{k}" if prefix else k for k, _ in linears[-1][1].named_parameters()]
        else:
            missing = [k for k in params if k not in named]
            if missing:
                raise ConfigError(f"{self.owner}: the network has no parameter {missing[0]!r}; it has {', '.join(floating)}")
            names = list(dict.fromkeys(params))
        if not names:
            raise ConfigError(f"{self.owner}: the network has no floating-point parameters to take influence over")
        return names

    def _unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = dict(self.fixed)
        for k, piece, shape in zip(self.names, theta.split(self.numels), self.shapes):
            out[k] = piece.view(shape)
        return out

    def _row_losses(self, theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        """ℓ(z, θ) per row (no penalty): cross-entropy of the logits, or NLL of the probabilities."""
        out = torch.func.functional_call(self.module, self._unflatten(theta), (self.model._normalize(xb),))
        if self.probabilities:
            return -torch.log(out.gather(1, yb[:, None]).squeeze(1).clamp_min(1e-30))
        return F.cross_entropy(out, yb, reduction="none")

    def _batch_loss(self, theta: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        return self._row_losses(theta, xb, yb).mean()

    def _hvp_rows(self, vs: Tensor, xb: Tensor, yb: Tensor, *, forward: bool = False) -> Tensor:
        """``∇²(mean ℓ over the rows) · v`` for each row of ``vs (k, p)`` (no penalty, no damping):
        double backward (fastest for a few vectors), or forward-over-reverse ``jvp`` of the gradient
        vectorised over ``vs`` (``forward=True``, for the many vectors of an explicit Hessian)."""
        step = max(1, _CHUNK // max(1, int(xb.shape[0])))
        if forward:
            grad = torch.func.grad(self._batch_loss)

            def one(v: Tensor) -> Tensor:
                return torch.func.jvp(lambda th: grad(th, xb, yb), (self.theta,), (v,))[1]

            return torch.cat([torch.func.vmap(one)(vs[s : s + step]) for s in range(0, vs.shape[0], step)])
        with torch.enable_grad():
            th = self.theta.detach().requires_grad_(True)
            g = torch.autograd.grad(self._batch_loss(th, xb, yb), th, create_graph=True)[0]
            if vs.shape[0] == 1:
                return torch.autograd.grad(g, th, grad_outputs=vs[0])[0][None]
            out = []
            for s in range(0, vs.shape[0], step):
                last = s + step >= vs.shape[0]
                out.append(torch.autograd.grad(g, th, grad_outputs=vs[s : s + step], is_grads_batched=True, retain_graph=not last)[0])
            return torch.cat(out)

    def _hvp(self, vs: Tensor) -> Tensor:
        """``(H + δI) v`` for each row of ``vs (k, p)``: H over the whole training set, with the penalty."""
        out = torch.zeros_like(vs)
        for s in range(0, self.n, self.batch_size):
            xb, yb = self.x[s : s + self.batch_size], self.y[s : s + self.batch_size]
            out += self._hvp_rows(vs, xb, yb) * (xb.shape[0] / self.n)
        return out + (self.l2 + self.damping) * vs

    def grads(self, x: Tensor, y: Tensor, *, penalty: bool) -> Tensor:
        """Per-row gradients ``(m, p)``: ``∇L(z) = ∇ℓ(z) + l2·θ`` (``penalty=True``, training rows) or
        ``∇ℓ(z)`` (test rows)."""
        x = x.detach().to(self.dtype)
        single = torch.func.grad(lambda th, xi, yi: self._row_losses(th, xi[None], yi[None])[0])
        out = []
        for s in range(0, x.shape[0], self.batch_size):
            out.append(torch.func.vmap(single, in_dims=(None, 0, 0))(self.theta, x[s : s + self.batch_size], y[s : s + self.batch_size]))
        g = torch.cat(out)
        return g + self.l2 * self.theta if penalty and self.l2 else g

    # -- H⁻¹ -------------------------------------------------------------------------------------------
    def hessian(self) -> Tensor:
        """The Hessian ``(p, p)`` of ``R`` (with the penalty, without damping), formed explicitly."""
        eye = torch.eye(self.p, dtype=self.dtype, device=self.theta.device)
        h = torch.zeros(self.p, self.p, dtype=torch.float64, device=self.theta.device)
        for s in range(0, self.n, self.batch_size):
            xb, yb = self.x[s : s + self.batch_size], self.y[s : s + self.batch_size]
            h += self._hvp_rows(eye, xb, yb, forward=True).double() * (xb.shape[0] / self.n)
        h = (h + h.T) / 2
        return h + self.l2 * torch.eye(self.p, dtype=torch.float64, device=h.device)

    def _factor(self) -> None:
        if self.p > MAX_EXACT_PARAMS:
            raise ConfigError(
                f"{self.owner}: method='exact' forms a {self.p} × {self.p} Hessian, more than {MAX_EXACT_PARAMS} parameters; "
                "use method='cg' or 'lissa', or params='last'"
            )
        h = self.hessian() + self.damping * torch.eye(self.p, dtype=torch.float64, device=self.theta.device)
        chol, info = torch.linalg.cholesky_ex(h)
        diag = chol.diagonal() if int(info) == 0 else None
        # a singular PSD matrix may factor in floating point with a pivot at rounding level
        if diag is None or not bool(torch.isfinite(diag).all()) or float(diag.min()) ** 2 <= 1e-11 * float(diag.max()) ** 2:
            lam = torch.linalg.eigvalsh(h)
            raise _not_pd(self.owner, self.p, self.damping, f"eigenvalues from {float(lam[0]):.3g} to {float(lam[-1]):.3g}")
        self._chol = chol
        self.info["hessian_diag_ratio"] = float((diag.min() / diag.max()) ** 2)

    def inverse_hvp(self, v: Tensor) -> Tensor:
        """``(H + δI)⁻¹ v`` for each row of ``v (k, p)`` with the chosen method."""
        if self.method == "exact":
            assert self._chol is not None
            return torch.cholesky_solve(v.double().T, self._chol).T.to(self.dtype)
        if self.method == "cg":
            return self._cg(v)
        return self._lissa(v)

    def _cg(self, b: Tensor) -> Tensor:
        """Conjugate gradient on every row of ``b`` at once (each row its own step sizes); a row stops
        when its residual is ``cg_tol`` of ``‖b‖``."""
        x = torch.zeros_like(b)
        r = b.clone()
        d = r.clone()
        rs = (r * r).sum(1)
        b2 = rs.clone()
        stop = self.cg_tol**2 * b2
        active = (rs > stop).nonzero().flatten()
        steps = 0
        for _ in range(self.cg_steps):
            if active.numel() == 0:
                break
            steps += 1
            da = d[active]
            ad = self._hvp(da)
            dad = (da * ad).sum(1)
            if bool((dad <= 0).any()):
                raise _not_pd(self.owner, self.p, self.damping, "conjugate gradient met a direction of non-positive curvature")
            alpha = rs[active] / dad
            x[active] += alpha[:, None] * da
            r[active] -= alpha[:, None] * ad
            rs_new = (r[active] * r[active]).sum(1)
            beta = rs_new / rs[active]
            d[active] = r[active] + beta[:, None] * da
            rs[active] = rs_new
            active = active[rs_new > stop[active]]
        rel = (rs / b2.clamp_min(1e-300)).sqrt()
        self.info["cg_steps"] = max(steps, int(self.info.get("cg_steps", 0)))
        self.info["cg_max_relative_residual"] = max(float(rel.max()), float(self.info.get("cg_max_relative_residual", 0.0)))
        self.info["cg_converged"] = bool(self.info.get("cg_converged", True)) and active.numel() == 0
        return x

    def _power(self, hvp: Callable[[Tensor], Tensor], iters: int = 20) -> float:
        v = torch.randn(1, self.p, generator=self.generator, dtype=torch.float64).to(self.theta)
        lam = 0.0
        for _ in range(iters):
            v = v / v.norm().clamp_min(1e-300)
            w = hvp(v)
            lam = float((v * w).sum())
            v = w
        return lam

    def lissa_scale_used(self) -> float:
        """LiSSA's ``s``: ``lissa_scale``, else 1.2 × the largest eigenvalue (power iteration) of the
        damped Hessian on the whole training set and on 8 sampled minibatches."""
        if self.lissa_scale is not None:
            return float(self.lissa_scale)
        if self._scale is None:
            lams = [self._power(self._hvp)]
            for _ in range(8):
                rows = torch.randint(self.n, (self.lissa_batch_size,), generator=self.generator)
                xb, yb = self.x[rows.to(self.x.device)], self.y[rows.to(self.y.device)]
                lams.append(self._power(functools.partial(self._hvp_rows, xb=xb, yb=yb)) + self.l2 + self.damping)
            self._scale = 1.2 * max(lams)
        return self._scale

    def _lissa(self, b: Tensor) -> Tensor:
        s = self.lissa_scale_used()
        self.info["lissa_scale"] = s
        shift = self.l2 + self.damping
        total = torch.zeros_like(b)
        for _ in range(self.lissa_repeats):
            h = b.clone()
            for _ in range(self.lissa_depth):
                rows = torch.randint(self.n, (self.lissa_batch_size,), generator=self.generator).to(self.x.device)
                hh = self._hvp_rows(h, self.x[rows], self.y[rows]) + shift * h
                h = b + h - hh / s
            if not bool(torch.isfinite(h).all()) or float(h.norm()) > 1e12 * float(b.norm()) * max(1.0, self.lissa_depth / s):
                raise ConfigError(
                    f"{self.owner}: the LiSSA recursion diverged with lissa_scale {s:.4g}; pass a larger lissa_scale "
                    "(above the Hessian's largest eigenvalue) or damping > 0"
                )
            total += h / s
        return total / self.lissa_repeats

    # -- influence -------------------------------------------------------------------------------------
    def _check_other(self, x: Tensor, y: Tensor, what: str) -> Tensor:
        check_input_batch(x, where=self.owner, what=f"x_{what}", owner="the model", device=self.model.device)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise DataError(
                f"{self.owner}: x_{what} has per-sample shape {tuple(x.shape[1:])} but x_train {self.sample_shape}; pass "
                "test inputs shaped like the training inputs"
            )
        return check_labels(y, int(x.shape[0]), self.model._num_classes, self.model.device, f"{self.owner} (y_{what})")

    def on_test(self, x_test: Tensor, y_test: Tensor) -> Tensor:
        """``I_up,loss(z_i, z_t) = -∇ℓ(z_t)ᵀ H⁻¹ ∇L(z_i)`` as ``(n_train, n_test)``; the test loss
        after removing training row ``i`` changes by about ``-I[i, t] / n``."""
        y_test = self._check_other(x_test, y_test, "test")
        s_test = self.inverse_hvp(self.grads(x_test, y_test, penalty=False))  # (T, p)
        out = []
        for s in range(0, self.n, self.batch_size):
            g = self.grads(self.x[s : s + self.batch_size], self.y[s : s + self.batch_size], penalty=True)
            out.append(-(g @ s_test.T))
        return torch.cat(out).double().cpu()

    def self_influence(self) -> Tensor:
        """``∇L(z_i)ᵀ (H + δI)⁻¹ ∇L(z_i)`` for every training row, ``(n,)`` (``= -I_up,loss(z_i, z_i)``)."""
        out = []
        step = self.batch_size if self.method == "exact" else max(self.batch_size, self.n)
        for s in range(0, self.n, step):
            g = self.grads(self.x[s : s + step], self.y[s : s + step], penalty=True)
            if self.method == "exact":
                assert self._chol is not None
                w = torch.linalg.solve_triangular(self._chol, g.double().T, upper=False)
                out.append((w * w).sum(0))
            else:
                out.append((g * self.inverse_hvp(g)).sum(1).double())
        return torch.cat(out).cpu()


def influence_on_test(
    model: Any, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, seed: int = 0, **options: Any
) -> Tensor:
    """The influence of up-weighting each training point on each test loss (Koh & Liang 2017):
    ``I_up,loss(z_i, z_t) = -∇ℓ(z_t)ᵀ H⁻¹ ∇L(z_i)`` as a float64 ``(n_train, n_test)`` tensor.

    Removing training row ``i`` changes test loss ``t`` by about ``-I[i, t] / n_train`` (positive:
    the point helped that test prediction).  ``options``: ``params`` ("all", "last" or names),
    ``method`` ("exact", "cg", "lissa"), ``damping``, ``l2`` (the training weight decay), ``cg_steps``,
    ``cg_tol``, ``lissa_depth``, ``lissa_repeats``, ``lissa_batch_size``, ``lissa_scale``,
    ``batch_size``, ``dtype``; see :class:`Influence`.
    """
    _check_options(options, "influence_on_test")
    return Influence(model, x_train, y_train, seed=seed, owner="influence_on_test", **options).on_test(x_test, y_test)


def self_influence(model: Any, x: Tensor, y: Tensor, *, seed: int = 0, **options: Any) -> Tensor:
    """Self-influence ``∇L(z_i)ᵀ H⁻¹ ∇L(z_i)`` of every training row ``(n,)`` (float64): how much each
    row's own loss depends on the row being trained on (high for mislabelled and poisoned rows)."""
    _check_options(options, "self_influence")
    return Influence(model, x, y, seed=seed, owner="self_influence", **options).self_influence()


def _check_options(options: dict[str, Any], owner: str) -> None:
    from gauntlet._validation import check_param_names

    check_param_names(owner, options, list(CONSTRAINTS))


@register
class InfluenceSanitizer(Sanitizer):
    """Self-influence sanitizer (Koh & Liang 2017, §5.4): score every training row by
    ``∇L(z)ᵀ (H + δI)⁻¹ ∇L(z)`` at the model trained on the (possibly poisoned) data and flag the
    ``round(expected_fraction · removal_factor · n)`` highest (at least one).

    Args:
        expected_fraction: the share of poison (or mislabelled rows) the defender budgets for.
        removal_factor: flag this many times ``expected_fraction`` (Tran et al.'s 1.5 by default).
        params: ``"last"`` (default: the last ``nn.Linear``, convex for the fixed features, small
            enough for ``method="exact"``), ``"all"`` or a list of parameter names.
        method: ``"exact"``, ``"cg"`` or ``"lissa"`` (how ``H⁻¹`` is applied).
        damping: added to the Hessian's diagonal; a trained network is not at a strict minimum
            (and softmax is shift invariant), so the default is 0.01.
        l2: the weight decay the model was trained with (part of the loss and its Hessian).
        cg_steps, cg_tol, lissa_depth, lissa_repeats, lissa_batch_size, lissa_scale: solver settings.
        batch_size: rows per vectorised gradient / Hessian-vector product call.
        dtype: ``"float64"`` (default) or ``"float32"``.
    """

    name = "influence"
    description = "Self-influence of every training row, Koh & Liang 2017 (influence functions)"
    reference = (
        'Koh and Liang, "Understanding Black-box Predictions via Influence Functions", ICML 2017, '
        "https://arxiv.org/abs/1703.04730"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "expected_fraction": EXPECTED_FRACTION,
        "removal_factor": REMOVAL_FACTOR,
        **CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        expected_fraction: float = 0.05,
        removal_factor: float = 1.5,
        params: str | Sequence[str] = "last",
        method: str = "exact",
        damping: float = 0.01,
        l2: float = 0.0,
        cg_steps: int = 500,
        cg_tol: float = 1e-8,
        lissa_depth: int = 1000,
        lissa_repeats: int = 1,
        lissa_batch_size: int = 10,
        lissa_scale: float | None = None,
        batch_size: int = 1024,
        dtype: str = "float64",
    ) -> None:
        self.expected_fraction = expected_fraction
        self.removal_factor = removal_factor
        self.params = params
        self.method = method
        self.damping = damping
        self.l2 = l2
        self.cg_steps = cg_steps
        self.cg_tol = cg_tol
        self.lissa_depth = lissa_depth
        self.lissa_repeats = lissa_repeats
        self.lissa_batch_size = lissa_batch_size
        self.lissa_scale = lissa_scale
        self.batch_size = batch_size
        self.dtype = dtype
        self._validate()

    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        options = {k: v for k, v in self.get_params().items() if k in CONSTRAINTS}
        inf = Influence(model, x, y, seed=seed_from(generator), owner=f"{self.name}.detect", **options)
        scores = inf.self_influence().float()
        flagged, k = flag_top(scores, self.expected_fraction, self.removal_factor)
        return scores, flagged, {**inf.info, "n_flagged": k}
