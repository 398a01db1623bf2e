"""Availability (indiscriminate) poisoning by gradient ascent on the attacker's validation loss.

The attacker inserts ``k = round(fraction * N)`` points into the training set and moves their
features so that the model the victim trains on the poisoned set does as badly as possible on
held-out data.  This is the bilevel problem of Biggio, Nelson and Laskov (2012)::

    max_{x_p}  A(θ*(x_p)) = mean loss on the attacker's validation split
    s.t.       θ*(x_p) = argmin_θ  R(θ) + C Σ_{train ∪ poison} ℓ(x, y; θ)

solved by projected gradient ascent on the poison features (their labels stay fixed, flipped
from the training points they were initialised from, as Biggio et al. do).  Two ways to get the
gradient ``dA/dx_p``:

* ``method="linear"`` (scikit-learn ``LogisticRegression``, ``LinearSVC`` and binary
  ``SVC(kernel="linear")`` in a :class:`~gauntlet.models.SklearnModel`): the model is refitted
  with scikit-learn at every step and the gradient is exact through its optimality conditions.
  For the twice-differentiable objectives (logistic, multinomial, squared hinge) it is the
  implicit-function gradient ``dA/dx_p = -C ∂/∂x_p [v · ∇_θ ℓ(x_p, y_p; θ)]`` with
  ``v = H⁻¹ ∇_θ A`` and ``H`` the Hessian of the regularised training objective; for the hinge
  loss (Biggio et al.'s SVM) the KKT system of the fitted solution (margin support vectors ``S``,
  error vectors ``E`` at ``α = C``) is solved again in torch as a function of the poison, so the
  gradient flows through the linear solve.
* ``method="back_gradient"`` (a :class:`~gauntlet.models.TorchModel`; Muñoz-González et al.
  2017): training is unrolled for ``inner_steps`` SGD steps from the given network's weights on
  the attacker's training split plus the poison and the validation loss after them is
  differentiated through every step with torch autograd.
* ``method="kkt"`` (a ``LogisticRegression`` or squared-hinge ``LinearSVC``; Koh, Steinhardt
  and Liang 2018): no gradient through training at all.  The attacker picks *decoy* parameters
  with a high training error and solves for poison — copies of a few points, labels chosen per
  point — under which the decoy satisfies the victim's optimality (KKT) condition, so retraining
  lands on it.  ``decoy="flip"`` is the paper's search over decoys fitted on label-flipped
  copies; ``decoy="joint"`` finds the decoy and the poison together (see
  :mod:`gauntlet.attacks.poisoning._kkt`).  It aims at the error on all the training rows it is
  given (no validation split: ``val_fraction`` is unused) and keeps the decoy whose refitted
  model has the lowest training accuracy.

For ``"linear"`` and ``"back_gradient"`` the attacker's validation split (``val_fraction`` of the training data it is given) is held out
from its surrogate training; the victim later trains on all ``N`` rows plus the ``k`` poison
points.  The returned :class:`PoisonedDataset` therefore has ``N + k`` rows: the clean rows
unchanged and in order, then the poison, marked by ``is_poison``; ``pd.fraction`` is
``k / (N + k)``.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import PoisoningAttack
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError

__all__ = ["Availability", "LinearSurrogate", "flip_gains", "other_labels"]

LINEAR_MODELS = "a LogisticRegression, LinearSVC or binary SVC(kernel='linear')"


def other_labels(y: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A label drawn uniformly among the ``num_classes - 1`` labels other than ``y``, per row."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
    return (y + shift) % num_classes


class LinearSurrogate:
    """A scikit-learn linear classifier read as torch parameters, with its training objective.

    ``θ`` is a float64 tensor ``(R, D)``: one row per decision function (``R = 1`` for two
    classes, else one per class), the feature weights followed by the intercept's weight when
    the model fits one.  The objective is ``R(θ) + C Σ ℓ(x, y; θ)`` exactly as scikit-learn
    minimises it: multinomial or binary logistic loss with an unpenalised intercept
    (``LogisticRegression``, lbfgs/newton/sag solvers) or liblinear's penalised synthetic
    intercept feature of value ``intercept_scaling`` (``LinearSVC``, ``solver="liblinear"``);
    one-vs-rest squared hinge or hinge (``LinearSVC``); the binary hinge with a free intercept
    (``SVC(kernel="linear")``).
    """

    def __init__(self, estimator: Any, owner: str, num_classes: int | None = None) -> None:
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # scikit-learn ships no type information
        from sklearn.svm import SVC, LinearSVC  # type: ignore[import-untyped]  # scikit-learn ships no type information

        kind = type(estimator).__name__
        self.template = estimator
        self.num_classes = len(estimator.classes_) if num_classes is None else int(num_classes)
        self.rows = 1 if self.num_classes == 2 else self.num_classes
        p = estimator.get_params()
        if p.get("class_weight") is not None:
            raise ConfigError(f"{owner}: the {kind} uses class_weight, which the attack's objective does not model; refit it without class_weight")
        self.C = float(p.get("C", 1.0))
        if not math.isfinite(self.C) or self.C <= 0:
            raise ConfigError(f"{owner}: the {kind} has C={self.C}; the attack needs a finite regularisation C > 0")
        self.fit_intercept = bool(p.get("fit_intercept", True))
        self.intercept_scaling = float(p.get("intercept_scaling", 1.0))
        if isinstance(estimator, LogisticRegression):
            penalty, l1 = p.get("penalty", "l2"), p.get("l1_ratio")
            if penalty not in ("l2", "deprecated") or (l1 not in (None, 0, 0.0) and penalty != "l2"):
                raise ConfigError(f"{owner}: the LogisticRegression has an L1/elastic-net penalty; the attack needs the L2 penalty (l1_ratio=0)")
            self.loss = "logistic" if self.rows == 1 else "multinomial"
            self.penalize_intercept = p.get("solver") == "liblinear"
        elif isinstance(estimator, LinearSVC):
            if p.get("penalty") != "l2" or p.get("multi_class") != "ovr":
                raise ConfigError(f"{owner}: the LinearSVC must use penalty='l2' and multi_class='ovr'")
            self.loss = str(p.get("loss"))
            self.penalize_intercept = True
        elif isinstance(estimator, SVC):
            if p.get("kernel") != "linear":
                raise ConfigError(f"{owner}: the SVC has kernel {p.get('kernel')!r}; method 'linear' needs kernel='linear' (or use LinearSVC)")
            if self.num_classes != 2:
                raise ConfigError(
                    f"{owner}: an SVC with {self.num_classes} classes is one-vs-one; attack a LinearSVC (one-vs-rest) instead"
                )
            self.loss = "hinge"
            self.penalize_intercept = False
            self.intercept_scaling = 1.0
        else:  # pragma: no cover - the caller checks the type first
            raise ConfigError(f"{owner}: method 'linear' needs {LINEAR_MODELS}, got {kind}")
        if not self.penalize_intercept:
            self.intercept_scaling = 1.0
        self.smooth = self.loss != "hinge"

    # -- scikit-learn ---------------------------------------------------------------------------
    def fit(self, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        """Refit the template's model on ``(x, y)`` (flattened) with per-row ``weight`` and return
        ``θ``.  A ``LogisticRegression`` is refitted warm-started from the previous fit (same
        optimum, fewer iterations)."""
        from sklearn.base import clone  # type: ignore[import-untyped]  # scikit-learn ships no type information
        from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]  # scikit-learn ships no type information

        est = getattr(self, "fitted", None)
        if est is None or "warm_start" not in est.get_params() or type(est).__name__ != "LogisticRegression":
            est = clone(self.template)
            if type(est).__name__ == "LogisticRegression":
                est.set_params(warm_start=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(x.reshape(x.shape[0], -1).double().cpu().numpy(), y.cpu().numpy(), sample_weight=weight.double().cpu().numpy())
        if not np.array_equal(np.asarray(est.classes_), np.arange(self.num_classes)):
            raise DataError("the attacker's training split lacks a class; use more training data or a smaller val_fraction")
        self.fitted = est
        return self.theta(est)

    def theta(self, est: Any) -> Tensor:
        w = torch.tensor(np.array(est.coef_, dtype=np.float64)).reshape(self.rows, -1)
        if not self.fit_intercept:
            return w.clone()
        w = w.clone()
        b = torch.tensor(np.array(est.intercept_, dtype=np.float64)).reshape(self.rows, 1) / self.intercept_scaling
        return torch.cat([w, b], dim=1)

    # -- the objective in torch -----------------------------------------------------------------
    def augment(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1).double()
        if not self.fit_intercept:
            return flat
        return torch.cat([flat, flat.new_full((flat.shape[0], 1), self.intercept_scaling)], dim=1)

    def signs(self, y: Tensor) -> Tensor:
        """``(n, R)``: +1 where a row's decision function should be positive, else -1."""
        if self.rows == 1:
            return (2 * y.double() - 1).unsqueeze(1)
        return 2 * F.one_hot(y, self.rows).double() - 1

    def scores(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.augment(x) @ theta.T

    def losses(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The per-sample training loss ``ℓ(x, y; θ)``, shape ``(n,)``."""
        z = self.scores(theta, x)
        if self.loss == "multinomial":
            return torch.logsumexp(z, dim=1) - z.gather(1, y.unsqueeze(1)).squeeze(1)
        margin = self.signs(y) * z
        if self.loss == "logistic":
            return F.softplus(-margin).sum(dim=1)
        hinge = torch.relu(1 - margin)
        return (hinge**2 if self.loss == "squared_hinge" else hinge).sum(dim=1)

    def outer(self, theta: Tensor, x: Tensor, y: Tensor, objective: str) -> Tensor:
        """The attacker's validation objective: the mean training loss (``"loss"``, the papers'
        choice) or the mean soft error ``1 - p(y)`` (``"error"``: softmax, or the sigmoid of
        the binary decision value), a bounded stand-in for the error rate."""
        if objective == "loss":
            return self.losses(theta, x, y).mean()
        z = self.scores(theta, x)
        if self.rows == 1:
            return torch.sigmoid(-self.signs(y)[:, 0] * z[:, 0]).mean()
        return 1 - torch.softmax(z, dim=1).gather(1, y.unsqueeze(1)).mean()

    def regulariser(self, theta: Tensor) -> Tensor:
        w = theta if (self.penalize_intercept or not self.fit_intercept) else theta[:, :-1]
        return 0.5 * (w**2).sum()

    def objective(self, theta: Tensor, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        return self.regulariser(theta) + self.C * (weight * self.losses(theta, x, y)).sum()

    # -- exact gradients of the validation loss w.r.t. training points --------------------------
    def hessian(self, theta: Tensor, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        """The Hessian of the training objective w.r.t. ``θ`` (flattened row-major), ``(R·D, R·D)``."""
        if self.loss == "multinomial":  # closed form: C Σ w (diag p - p pᵀ) ⊗ x̃ x̃ᵀ + the penalty
            xa = self.augment(x)
            p = torch.softmax(xa @ theta.detach().T, dim=1)
            wp = weight.double().unsqueeze(1) * p
            blocks = torch.einsum("nk,na,nb->kab", wp, xa, xa)
            z = (torch.sqrt(weight.double()).unsqueeze(1) * p).unsqueeze(2) * xa.unsqueeze(1)
            z = z.reshape(z.shape[0], -1)
            h = -(z.T @ z)
            r, d = theta.shape
            h = h.reshape(r, d, r, d)
            h[torch.arange(r), :, torch.arange(r), :] += blocks
            h = self.C * h.reshape(r * d, r * d)
            pen = torch.ones(r, d, dtype=h.dtype)
            if self.fit_intercept and not self.penalize_intercept:
                pen[:, -1] = 0
            return h + torch.diag(pen.reshape(-1))
        flat = theta.detach().reshape(-1)

        def f(t: Tensor) -> Tensor:
            return self.objective(t.reshape(theta.shape), x, y, weight)

        return torch.autograd.functional.hessian(f, flat, vectorize=True)

    #: above this many parameters a multinomial model's Hessian is never formed: ``H⁻¹ rhs`` is
    #: solved by conjugate gradient on exact Hessian-vector products (MNIST's 7,850 parameters)
    EXPLICIT_MAX = 3000

    def hvp(self, theta: Tensor, x: Tensor, y: Tensor, weight: Tensor, v: Tensor) -> Tensor:
        """``H v`` for the multinomial objective, in closed form without forming ``H``:
        ``C Σ w ((diag p - p pᵀ)(V x̃)) x̃ᵀ`` plus the penalty."""
        xa = self.augment(x)
        p = torch.softmax(xa @ theta.detach().T, dim=1)
        s = xa @ v.T
        t = p * s - p * (p * s).sum(dim=1, keepdim=True)
        out = self.C * (weight.double().unsqueeze(1) * t).T @ xa
        pen = torch.ones_like(v)
        if self.fit_intercept and not self.penalize_intercept:
            pen[:, -1] = 0
        return out + pen * v

    def solve_hessian(self, theta: Tensor, x: Tensor, y: Tensor, weight: Tensor, rhs: Tensor) -> Tensor:
        """``H⁻¹ rhs`` for the Hessian ``H`` of the training objective at ``θ`` (a tiny ridge
        keeps the multinomial model's flat direction, a common shift of all intercepts,
        solvable; ``rhs`` is orthogonal to it).  Large multinomial models use conjugate gradient
        to a relative residual of 1e-10 instead of forming ``H``."""
        if self.loss == "multinomial" and theta.numel() > self.EXPLICIT_MAX:
            return self._cg(theta, x, y, weight, rhs)
        h = self.hessian(theta, x, y, weight)
        ridge = 1e-8 * float(h.diagonal().abs().mean()) + 1e-12
        h = h + ridge * torch.eye(h.shape[0], dtype=h.dtype)
        return torch.linalg.solve(h, rhs.reshape(-1)).reshape(theta.shape)

    def _cg(self, theta: Tensor, x: Tensor, y: Tensor, weight: Tensor, rhs: Tensor) -> Tensor:
        b = rhs.detach().double().reshape(theta.shape)
        ridge = 1e-8
        sol = torch.zeros_like(b)
        r = b.clone()
        d = r.clone()
        rr = float((r * r).sum())
        target = 1e-20 * max(rr, 1e-300)
        for _ in range(10 * theta.numel()):
            if rr <= target:
                break
            hd = self.hvp(theta, x, y, weight, d) + ridge * d
            alpha = rr / float((d * hd).sum())
            sol += alpha * d
            r -= alpha * hd
            rr_new = float((r * r).sum())
            d = r + (rr_new / rr) * d
            rr = rr_new
        return sol

    def kkt_theta(self, theta: Tensor, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        """The hinge-loss solution rebuilt from its KKT conditions as a differentiable function of
        ``x`` (Biggio et al. 2012): with the margin support vectors ``S`` (``s·f(x) = 1``) and the
        error vectors ``E`` (``α = C·weight``) of the fitted model held fixed, ``w = Σ_S α s x̃ +
        C Σ_E weight·s x̃``, ``Σ_S α s + C Σ_E weight·s = 0`` for a free intercept, and
        ``s_j f(x_j) = 1`` on ``S`` determine ``θ`` by one linear solve."""
        xa = self.augment(x)
        s_all = self.signs(y)
        wt = weight.double()
        d_all = int(xa.shape[1])
        free_b = self.fit_intercept and not self.penalize_intercept
        d = d_all - 1 if free_b else d_all
        out = []
        for r in range(self.rows):
            s = s_all[:, r]
            m = (s * (xa.detach() @ theta[r])).detach()
            on, err = self._sets(m, wt)
            xs, ss = xa[on], s[on]
            cs = self.C * wt[err] * s[err]
            rhs_w = (cs.unsqueeze(1) * xa[err][:, :d]).sum(dim=0)
            k = int(on.sum())
            if k == 0:  # no margin support vector: w from the error vectors, the intercept stays
                out.append(torch.cat([rhs_w, theta[r, d:].detach()]) if free_b else rhs_w)
                continue
            blocks = [torch.cat([torch.eye(d_all, dtype=xa.dtype)[:d], -(ss.unsqueeze(1) * xs[:, :d]).T], dim=1)]  # w - Σ α s x = rhs
            rhs = [rhs_w]
            if free_b:  # Σ_S α s = -C Σ_E weight s
                blocks.append(torch.cat([torch.zeros(d_all, dtype=xa.dtype), ss]).unsqueeze(0))
                rhs.append(-cs.sum().reshape(1))
            blocks.append(torch.cat([ss.unsqueeze(1) * xs, torch.zeros(k, k, dtype=xa.dtype)], dim=1))  # s f(x) = 1 on S
            rhs.append(torch.ones(k, dtype=xa.dtype))
            sol = torch.linalg.pinv(torch.cat(blocks, dim=0)) @ torch.cat(rhs)
            out.append(sol[:d_all])
        return torch.stack(out)

    def _sets(self, margin: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The margin support vectors and the error vectors of the fitted hinge model: from
        libsvm's dual coefficients for a binary ``SVC``, else from the margins."""
        est = getattr(self, "fitted", None)
        if est is not None and hasattr(est, "dual_coef_") and self.rows == 1:
            alpha = torch.zeros(margin.shape[0], dtype=torch.float64)
            alpha[torch.as_tensor(est.support_)] = torch.as_tensor(np.abs(est.dual_coef_[0]), dtype=torch.float64)
            at_c = alpha >= self.C * weight * (1 - 1e-6)
            return (alpha > 0) & ~at_c, at_c
        tol = 1e-3
        return (margin - 1).abs() <= tol, margin < 1 - tol


def flip_gains(sur: LinearSurrogate, x_tr: Tensor, y_tr: Tensor, weight: Tensor, x_val: Tensor, y_val: Tensor) -> tuple[Tensor, float]:
    """The first-order increase of the validation loss when one training row's label is changed,
    for every row and label, ``(n_tr, K)`` (``-inf`` at the row's own label), and the current
    validation loss.  The surrogate is fitted on ``(x_tr, y_tr)`` with ``weight``; replacing
    ``ℓ(x_i, y_i)`` by ``ℓ(x_i, l)`` moves the optimum by ``-H⁻¹ C w_i (∇ℓ(x_i, l) - ∇ℓ(x_i, y_i))``,
    so ``ΔA ≈ -C w_i vᵀ(∇ℓ(x_i, l) - ∇ℓ(x_i, y_i))`` with ``v = H⁻¹ ∇A`` (one Hessian solve, one
    forward-mode product per label)."""
    from torch.func import jvp

    theta = sur.fit(x_tr, y_tr, weight)
    th = theta.clone().requires_grad_(True)
    a = sur.outer(th, x_val, y_val, "loss")
    (g_val,) = torch.autograd.grad(a, th)
    v = sur.solve_hessian(theta, x_tr, y_tr, weight, g_val)
    u = torch.stack([
        jvp(lambda t, lab=lab: sur.losses(t, x_tr, torch.full_like(y_tr, lab)), (theta,), (v,))[1]  # type: ignore[misc]
        for lab in range(sur.num_classes)
    ], dim=1)
    gain = -sur.C * weight.unsqueeze(1) * (u - u.gather(1, y_tr.unsqueeze(1)))
    gain[torch.arange(gain.shape[0]), y_tr] = -math.inf
    return gain, float(a.detach())


def _row_normalised(g: Tensor) -> Tensor:
    norms = g.reshape(g.shape[0], -1).norm(dim=1).clamp_min(1e-12)
    return g / norms.view(-1, *([1] * (g.dim() - 1)))


@register
class Availability(PoisoningAttack):
    """Availability poisoning (Biggio et al. 2012; Muñoz-González et al. 2017): insert
    ``round(fraction * N)`` points, initialised from random training points with their labels
    flipped to a random other class, and move their features by projected gradient ascent on the
    validation loss of the model trained on the poisoned set; or (``method="kkt"``) solve for
    poison that makes a high-error decoy model the victim's optimum (see the module docstring).

    Args:
        fraction: poison points inserted, as a share of the clean training set ``N``, in (0, 1).
        method: ``"auto"`` (``"linear"`` for an :class:`SklearnModel`, ``"back_gradient"`` for a
            :class:`TorchModel`), ``"linear"``, ``"back_gradient"`` or ``"kkt"`` (never chosen by
            ``"auto"``).
        steps: gradient-ascent iterations (each refits the linear model, or unrolls training once).
        step_size: L2 length of each poison point's first step in input units (per point, the
            gradient is normalised); ``"linear"`` backtracks: a step that does not raise the
            validation loss is undone and the step halved, a successful one grows it by 1.25.
        val_fraction: share of the given training data the attacker holds out as its validation split.
        inner_steps: ``"back_gradient"``: SGD steps unrolled per iteration, from the given weights.
        inner_lr: ``"back_gradient"``: their learning rate.
        batch_size: ``"back_gradient"``: rows per unrolled step (clean and poison in proportion;
            ``None`` = full batch); the poison points are updated in chunks of that share.
        decoy: ``"kkt"``: ``"joint"`` (decoy and poison found together) or ``"flip"`` (decoys fitted
            on label-flipped copies of ``0.1 · 2^s`` of the rows, stage ``s``; Koh et al.).
        locations_per_class: ``"kkt"``: distinct poison points per label (their copy counts are
            solved for; ``k`` rows in all).
        stages: ``"kkt"``: decoys tried (``"joint"``: the penalty grows by √10 per stage).
        solver_steps: ``"kkt"``: Adam iterations per stage.
        penalty: ``"kkt"``, ``"joint"``: the first stage's weight on the squared KKT residual
            (the gradient of the victim's objective at the decoy, over ``C`` times the rows).
        temperature: ``"kkt"``, ``"joint"``: the smooth error's temperature on the score margin.
        bounds: the inputs' value range (poison stays inside it).
    """

    name = "availability"
    description = "availability poisoning by gradient ascent on the validation loss (Biggio et al. 2012; back-gradient, Muñoz-González et al. 2017)"
    reference = (
        'Biggio, Nelson and Laskov, "Poisoning Attacks against Support Vector Machines", ICML 2012, '
        "https://arxiv.org/abs/1206.6389; Muñoz-González et al., \"Towards Poisoning of Deep Learning Algorithms "
        'with Back-gradient Optimization", AISec 2017, https://arxiv.org/abs/1708.08689'
    )
    needs_model: ClassVar[bool] = True
    goal: ClassVar[str] = "availability"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "method": [Options(("auto", "linear", "back_gradient", "kkt"))],
        "objective": [Options(("loss", "error"))],
        "steps": [Interval(int, 1, None)],
        "step_size": [Interval(float, 0, None, closed="neither")],
        "val_fraction": [Interval(float, 0, 1, closed="neither")],
        "inner_steps": [Interval(int, 1, None)],
        "inner_lr": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 2, None), IsNone()],
        "decoy": [Options(("joint", "flip"))],
        "locations_per_class": [Interval(int, 1, None)],
        "stages": [Interval(int, 1, None)],
        "solver_steps": [Interval(int, 1, None)],
        "penalty": [Interval(float, 0, None, closed="neither")],
        "temperature": [Interval(float, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.05,
        method: str = "auto",
        objective: str = "loss",
        steps: int = 60,
        step_size: float = 1.0,
        val_fraction: float = 0.25,
        inner_steps: int = 20,
        inner_lr: float = 0.05,
        batch_size: int | None = 256,
        decoy: str = "joint",
        locations_per_class: int = 3,
        stages: int = 4,
        solver_steps: int = 3000,
        penalty: float = 18.0,
        temperature: float = 1.0,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.method = method
        self.objective = objective
        self.steps = steps
        self.step_size = step_size
        self.val_fraction = val_fraction
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.batch_size = batch_size
        self.decoy = decoy
        self.locations_per_class = locations_per_class
        self.stages = stages
        self.solver_steps = solver_steps
        self.penalty = penalty
        self.temperature = temperature
        self.bounds = bounds
        self._validate()

    # -- which gradient --------------------------------------------------------------------------
    def _method(self, model: Any) -> str:
        from gauntlet.models import SklearnModel, TorchModel

        kind = type(model).__name__
        if self.method == "kkt":
            from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # scikit-learn ships no type information
            from sklearn.svm import LinearSVC  # type: ignore[import-untyped]  # scikit-learn ships no type information

            est = getattr(model, "estimator", None)
            smooth = isinstance(est, LogisticRegression) or (isinstance(est, LinearSVC) and est.get_params().get("loss") == "squared_hinge")
            if not isinstance(model, SklearnModel) or not smooth:
                got = type(est).__name__ if isinstance(model, SklearnModel) else kind
                raise ConfigError(
                    f"{self.name}: method 'kkt' needs an SklearnModel around a LogisticRegression or a squared-hinge LinearSVC "
                    f"(a smooth convex objective), got {got}"
                )
            return "kkt"
        if self.method in ("auto", "linear") and isinstance(model, SklearnModel):
            from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # scikit-learn ships no type information
            from sklearn.svm import SVC, LinearSVC  # type: ignore[import-untyped]  # scikit-learn ships no type information

            est = model.estimator
            if not isinstance(est, (LogisticRegression, LinearSVC, SVC)):
                raise ConfigError(
                    f"{self.name}: method 'linear' needs {LINEAR_MODELS} in an SklearnModel, got {type(est).__name__}; "
                    "for a network use a TorchModel (method 'back_gradient')"
                )
            return "linear"
        if self.method in ("auto", "back_gradient") and isinstance(model, TorchModel):
            return "back_gradient"
        wanted = {
            "linear": f"an SklearnModel around {LINEAR_MODELS}",
            "back_gradient": "a TorchModel (a differentiable network to unroll)",
            "auto": f"an SklearnModel around {LINEAR_MODELS} or a TorchModel",
        }[self.method]
        raise ConfigError(f"{self.name}: method {self.method!r} needs {wanted}, got {kind}")

    # -- the attack ------------------------------------------------------------------------------
    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        method = self._method(model)
        n = int(x.shape[0])
        num_classes = max(int(y.max()) + 1, int(getattr(model, "num_classes", 0) or 0))
        k = self.n_poison(n)
        if method == "kkt":
            return self._kkt(model, x, y, k, generator)
        n_val = round(float(self.val_fraction) * n)
        if n_val < 1 or n - n_val < 2:
            raise DataError(f"{self.name}: {n} training rows leave no validation split at val_fraction={self.val_fraction}; give more data")
        perm = torch.randperm(n, generator=generator, device=x.device)
        val_rows, tr_rows = perm[:n_val].sort().values, perm[n_val:].sort().values
        init_rows = self.choose(tr_rows, k, generator)
        yp = other_labels(y[init_rows], num_classes, generator)
        xp0 = x[init_rows].clone()
        split = (x[tr_rows], y[tr_rows], x[val_rows], y[val_rows])
        if method == "linear":
            xp, info = self._linear(model, xp0, yp, *split)
        else:
            xp, info = self._back_gradient(model, xp0, yp, generator, *split)
        px = torch.cat([x, xp.to(x.dtype)])
        py = torch.cat([y, yp])
        mask = torch.zeros(n + k, dtype=torch.bool, device=x.device)
        mask[n:] = True
        info = {"method": method, "init_rows": init_rows.cpu(), "val_rows": val_rows.cpu(), **info}
        return px, py, mask, info

    def _linear(
        self, model: Any, xp: Tensor, yp: Tensor, x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor
    ) -> tuple[Tensor, dict[str, Any]]:
        sur = LinearSurrogate(model.estimator, self.name)
        if int(max(int(y_tr.max()), int(y_val.max()))) >= sur.num_classes:
            raise DataError(f"{self.name}: the labels go up to {int(max(y_tr.max(), y_val.max()))} but the model has {sur.num_classes} classes")
        lo, hi = self._bounds()
        dev, dt = xp.device, xp.dtype
        xp = xp.detach().double().cpu()
        yp, x_tr, y_tr = yp.cpu(), x_tr.double().cpu(), y_tr.cpu()
        x_val, y_val = x_val.double().cpu(), y_val.cpu()
        n_all = x_tr.shape[0] + x_val.shape[0]

        # the clean rows weigh n / n_tr, so the surrogate sees the poison at the share the victim
        # will (k among n + k) although the validation rows are held out of its training
        weight = torch.cat([torch.full((x_tr.shape[0],), n_all / x_tr.shape[0], dtype=torch.float64), torch.ones(xp.shape[0], dtype=torch.float64)])

        objective = str(self.objective)

        def fit(p: Tensor) -> tuple[Tensor, float]:
            theta = sur.fit(torch.cat([x_tr, p]), torch.cat([y_tr, yp]), weight)
            with torch.no_grad():
                return theta, float(sur.outer(theta, x_val, y_val, objective))

        theta, loss = fit(xp)
        history = [loss]
        acc0 = self._val_accuracy(sur, theta, x_val, y_val)
        eta, accepted = float(self.step_size), 0
        grad = self._linear_grad(sur, theta, xp, yp, x_tr, y_tr, weight, x_val, y_val, str(self.objective))
        for _ in range(int(self.steps)):
            cand = (xp + eta * _row_normalised(grad)).clamp(lo, hi)
            theta_c, loss_c = fit(cand)
            if loss_c > loss:
                xp, theta, loss, accepted = cand, theta_c, loss_c, accepted + 1
                history.append(loss)
                eta *= 1.25
                grad = self._linear_grad(sur, theta, xp, yp, x_tr, y_tr, weight, x_val, y_val, str(self.objective))
            else:
                eta *= 0.5
                if eta < 1e-3:
                    break
        info = {
            "surrogate": type(model.estimator).__name__, "val_loss": history, "accepted_steps": accepted,
            "val_accuracy": (acc0, self._val_accuracy(sur, theta, x_val, y_val)),
        }
        return xp.to(dev, dt), info

    def _kkt(self, model: Any, x: Tensor, y: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        from gauntlet.attacks.poisoning._kkt import kkt_poison

        sur = LinearSurrogate(model.estimator, self.name)
        if int(y.max()) >= sur.num_classes:
            raise DataError(f"{self.name}: the labels go up to {int(y.max())} but the model has {sur.num_classes} classes")
        n = int(x.shape[0])
        xf = x.reshape(n, -1).double().cpu()
        xp, yp, info = kkt_poison(
            sur, xf, y.cpu(), k, decoy=str(self.decoy), locations_per_class=int(self.locations_per_class), stages=int(self.stages),
            steps=int(self.solver_steps), penalty=float(self.penalty), temperature=float(self.temperature), bounds=self._bounds(),
            generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator, device=generator.device))),
        )
        px = torch.cat([x, xp.reshape(k, *x.shape[1:]).to(x.device, x.dtype)])
        py = torch.cat([y, yp.to(y.device)])
        mask = torch.zeros(n + k, dtype=torch.bool, device=x.device)
        mask[n:] = True
        return px, py, mask, {"method": "kkt", "surrogate": type(model.estimator).__name__, **info}

    @staticmethod
    def _val_accuracy(sur: LinearSurrogate, theta: Tensor, x_val: Tensor, y_val: Tensor) -> float:
        with torch.no_grad():
            z = sur.scores(theta, x_val)
            pred = (z[:, 0] > 0).long() if sur.rows == 1 else z.argmax(dim=1)
        return float((pred == y_val).double().mean())

    @staticmethod
    def _linear_grad(
        sur: LinearSurrogate, theta: Tensor, xp: Tensor, yp: Tensor, x_tr: Tensor, y_tr: Tensor, weight: Tensor,
        x_val: Tensor, y_val: Tensor, objective: str,
    ) -> Tensor:
        """``dA/dx_p``: the exact gradient of the validation loss through the training optimum."""
        xp = xp.detach().clone().requires_grad_(True)
        if sur.smooth:
            th = theta.detach().clone().requires_grad_(True)
            (g_val,) = torch.autograd.grad(sur.outer(th, x_val, y_val, objective), th)
            v = sur.solve_hessian(theta, torch.cat([x_tr, xp.detach()]), torch.cat([y_tr, yp]), weight, g_val)
            wp = weight[x_tr.shape[0]:]
            (g_p,) = torch.autograd.grad(sur.C * (wp * sur.losses(th, xp, yp)).sum(), th, create_graph=True)
            (grad,) = torch.autograd.grad(-(g_p * v).sum(), xp)
            return grad
        th = sur.kkt_theta(theta, torch.cat([x_tr, xp]), torch.cat([y_tr, yp]), weight)
        (grad,) = torch.autograd.grad(sur.outer(th, x_val, y_val, objective), xp, allow_unused=True)
        return torch.zeros_like(xp) if grad is None else grad

    def _back_gradient(
        self, model: Any, xp: Tensor, yp: Tensor, generator: torch.Generator,
        x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor,
    ) -> tuple[Tensor, dict[str, Any]]:
        from torch.func import functional_call

        module = copy.deepcopy(model.module).eval()  # eval: no dropout noise, batch-norm statistics frozen
        dev = next(iter(module.parameters())).device
        for p in module.parameters():
            p.requires_grad_(False)
        theta0 = {name: p.detach() for name, p in module.named_parameters()}
        buffers = {name: b for name, b in module.named_buffers()}
        lo, hi = self._bounds()
        x_tr, y_tr, x_val, y_val = x_tr.to(dev), y_tr.to(dev), x_val.to(dev), y_val.to(dev)
        xp, yp = xp.detach().to(dev).clone(), yp.to(dev)
        n_tr, k = int(x_tr.shape[0]), int(xp.shape[0])
        if self.batch_size is None:
            chunk, clean = k, n_tr
        else:
            chunk = max(1, min(k, round(int(self.batch_size) * k / (n_tr + k))))
            clean = max(1, min(n_tr, int(self.batch_size) - chunk))
        n_val = min(int(x_val.shape[0]), 1024 if self.batch_size is None else max(int(self.batch_size), 256))

        def forward(theta: dict[str, Tensor], inp: Tensor) -> Tensor:
            return functional_call(module, {**theta, **buffers}, (model._normalize(inp),))

        def val_loss(theta: dict[str, Tensor], vi: Tensor) -> Tensor:
            return F.cross_entropy(forward(theta, x_val[vi]), y_val[vi])

        history: list[float] = []
        cursor = 0
        for _ in range(int(self.steps)):
            idx = torch.arange(cursor, cursor + chunk, device=dev) % k
            cursor = (cursor + chunk) % k
            pc = xp[idx].clone().requires_grad_(True)
            theta = {name: t.clone().requires_grad_(True) for name, t in theta0.items()}
            for _t in range(int(self.inner_steps)):
                ci = torch.randperm(n_tr, generator=generator, device=dev)[:clean] if clean < n_tr else torch.arange(n_tr, device=dev)
                loss = F.cross_entropy(forward(theta, torch.cat([x_tr[ci], pc])), torch.cat([y_tr[ci], yp[idx]]))
                grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
                theta = {name: t - float(self.inner_lr) * g for (name, t), g in zip(theta.items(), grads)}
            vi = torch.randperm(int(x_val.shape[0]), generator=generator, device=dev)[:n_val]
            a = val_loss(theta, vi)
            (g,) = torch.autograd.grad(a, pc)
            history.append(float(a.detach()))
            xp[idx] = (pc.detach() + float(self.step_size) * _row_normalised(g)).clamp(lo, hi)
        return xp, {"surrogate": type(module).__name__, "val_loss": history}

