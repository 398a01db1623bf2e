"""Universal adversarial perturbations (Moosavi-Dezfooli et al., CVPR 2017): one ``v`` for all inputs.

A universal perturbation is a single tensor ``v`` of the per-sample shape with ``‖v‖_p ≤ ε``
that, added to *every* input, changes the model's label on a large share of them.  It is learned
on one set of inputs and applied to others, so besides the usual ``run`` (learn on ``x``, return
``x + v`` clipped to the bounds) the attack has :meth:`UniversalPerturbationAttack.fit`, which
returns a :class:`UniversalPerturbation` holding ``v`` with ``apply(x)`` and
``evaluate(model, x, y)`` for held-out data.

Two learning methods (``method``):

* ``"sgd"`` (the default): projected stochastic gradient ascent on a batch loss, as in Shafahi et
  al. 2020 ("Universal adversarial training", AAAI 2020) and most later work.  Each epoch visits
  the inputs in a random order, ``minibatch`` at a time; the gradient of the summed, *clipped*
  per-sample loss with respect to ``v`` (the gradient at ``clip(x + v)``, zero where the clip is
  active) takes a steepest-ascent step (sign for L∞, normalised for L2) of a length that decays
  linearly from ``step_size`` to zero, and ``v`` is projected back onto the ε-ball.  The loss is
  the C&W margin ``max_{j≠y} z_j − z_y`` clipped at ``kappa`` (targeted: ``z_t − max_{j≠t} z_j``),
  so points already fooled with margin ``kappa`` stop pulling ``v`` (Shafahi et al. clip the
  cross-entropy for the same reason).  The batch loss has a few basins of quite different
  strength (on the digits CNN, runs from ``v = 0`` ended at a 23% or a 40% fooling rate depending
  on the input order), so ``restarts`` random starts in the ball each get the first epoch and
  the one that fools the most inputs continues.
* ``"deepfool"``: the paper's Algorithm 1.  Each pass visits the inputs in a random order; for a
  point ``x_i`` that ``x_i + v`` does not fool yet, DeepFool (``deepfool_steps`` linearisation
  steps, ``overshoot``) finds the minimal ``Δv_i`` that sends ``x_i + v`` across the closest
  boundary, and ``v ← P_{p,ε}(v + Δv_i)``.  Untargeted only.

Both stop after ``steps`` passes over the data, or earlier once the share of fooled training
points reaches ``1 − delta`` (the paper's stopping rule; ``delta=0`` runs every pass).  "Fooled"
means ``prediction ≠ y`` (a clean mistake counts, as in every ``AttackResult``); targeted,
``prediction == target``.  On MNIST LeNet5 the SGD method reaches a higher held-out fooling
rate than the DeepFool method at a fraction of its gradient evaluations (see BENCHMARKS.md),
which is why it is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from gauntlet import norms as N
from gauntlet._batch import check_input_batch
from gauntlet._validation import Constraint, Interval, Options
from gauntlet.attacks.base import OPTIONAL_POSITIVE, STEPS, Attack, Context, check_batch, loss_and_grad
from gauntlet.attacks.losses import margin
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.threat import as_eps_tuple

METHODS = ("sgd", "deepfool")
EVAL_CHUNK = 1024


# ------------------------------------------------------------------------------------------------
# helpers shared with the patch and sticker attacks
def check_seed(owner: str, seed: object) -> int:
    """``seed`` as an int >= 0 (the same rule and message as ``Attack.run``)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{owner}: seed must be an int >= 0, got {seed!r}")
    return seed


def check_eval_inputs(where: str, model: object, x: object, y: object) -> tuple[Tensor, Tensor]:
    """Validate ``model``/``x``/``y`` for evaluating a learned perturbation (as ``Attack.run`` does,
    but any model that predicts labels will do: a transfer target need not offer gradients)."""
    if not isinstance(model, Model):
        hint = " wrap it: gauntlet.models.TorchModel(module, bounds=(0, 1))" if isinstance(model, torch.nn.Module) else ""
        raise ConfigError(f"{where}: model must be a gauntlet Model, got {type(model).__name__};{hint}".rstrip(";"))
    check_batch(x, model, where=where)  # type: ignore[arg-type]
    assert isinstance(x, Tensor)
    if not isinstance(y, Tensor):
        raise DataError(f"{where}: y must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where}: y must hold integer class labels, got dtype {y.dtype}; use y.long()")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if y.device != x.device:
        raise DataError(f"{where}: x is on {x.device} but y on {y.device}; put both on one device")
    y = y.to(torch.int64)
    k = model.infer_num_classes(x)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(f"{where}: y holds labels in [{int(y.min())}, {int(y.max())}] but the model has {k} classes")
    return x.detach(), y


def check_target_class(owner: str, target: object, num_classes: int) -> int:
    """One target class for a universal perturbation or a patch: an int in ``[0, num_classes)``."""
    if isinstance(target, Tensor) and target.numel() == 1 and not target.dtype.is_floating_point:
        target = int(target)
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < num_classes:
        raise ConfigError(f"{owner}: target must be one class, an int in [0, {num_classes - 1}], got {target!r}")
    return target


def predict_chunked(model: Model, x: Tensor) -> Tensor:
    """Labels for ``x`` in chunks of at most ``EVAL_CHUNK`` (one counted query per sample)."""
    return torch.cat([model.predict(x[s : s + EVAL_CHUNK]) for s in range(0, x.shape[0], EVAL_CHUNK)])


def success_rate(pred: Tensor, y: Tensor, target: int | None) -> float:
    """Untargeted: share of ``pred ≠ y``; targeted: share of ``pred == target`` among the points
    whose true label is not the target (NaN when there is none)."""
    if target is None:
        return float((pred != y).float().mean())
    keep = y != target
    return float((pred[keep] == target).float().mean()) if bool(keep.any()) else math.nan


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UniversalPerturbation:
    """A learned universal perturbation ``v`` (the per-sample shape), ``‖v‖_norm ≤ eps``.

    ``apply(x)`` returns ``clip(x + v)``; ``evaluate(model, x, y)`` the share of ``x`` it fools
    (untargeted: prediction ≠ y; targeted: prediction == ``target`` among the points whose label
    is not ``target``).  ``train_success`` is that share on the inputs it was learned on.
    """

    perturbation: Tensor
    norm: str
    eps: float
    bounds: tuple[float, float]
    targeted: bool
    target: int | None
    train_success: float

    def apply(self, x: Tensor) -> Tensor:
        v = self.perturbation
        check_input_batch(
            x, where="UniversalPerturbation.apply", dtype=v.dtype, shape=tuple(v.shape), device=v.device,
            bounds=self.bounds, owner="the perturbation", dtype_owner="the perturbation has",
            bounds_name="the bounds",
        )
        return (x.detach() + v).clamp(self.bounds[0], self.bounds[1])

    def evaluate(self, model: Model, x: Tensor, y: Tensor) -> float:
        x, y = check_eval_inputs("UniversalPerturbation.evaluate", model, x, y)
        adv = self.apply(x)
        with model.attack_mode():
            pred = predict_chunked(model, adv)
        return success_rate(pred, y, self.target if self.targeted else None)


# ------------------------------------------------------------------------------------------------
@register
class UniversalPerturbationAttack(Attack):
    """One perturbation ``v`` with ``‖v‖_p ≤ ε`` for every input (see the module docstring).

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: budget, one value or a list (one ``v`` is learned per ε).
        method: ``"sgd"`` (projected SGD on a clipped margin loss, Shafahi et al. 2020) or
            ``"deepfool"`` (the paper's Algorithm 1).
        steps: passes (epochs) over the inputs.
        step_size: SGD: the first step's length in the norm (it decays linearly to zero);
            default ``ε / 4`` for L∞ and ``ε / 2`` for L2.
        restarts: SGD: random starts that each get the first epoch; the best continues.
        minibatch: SGD: inputs per gradient step.
        kappa: SGD: the margin at which a point's loss is clipped.
        delta: stop once a share ``1 − delta`` of the inputs is fooled (0: run every pass).
        deepfool_steps, overshoot: DeepFool method: its inner steps and overshoot.
        targeted: aim at ``target`` (SGD only); with ``fit`` one class for all inputs.
    """

    name = "universal_perturbation"
    description = "Universal adversarial perturbation: one L∞/L2 perturbation for every input (Moosavi-Dezfooli et al. 2017)"
    reference = (
        'Moosavi-Dezfooli et al., "Universal adversarial perturbations", CVPR 2017, https://arxiv.org/abs/1610.08401'
    )
    norms = ("linf", "l2")
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "method": [Options(METHODS)],
        "steps": STEPS,
        "step_size": OPTIONAL_POSITIVE,
        "restarts": [Interval(int, 1, None)],
        "minibatch": [Interval(int, 1, None)],
        "kappa": [Interval(float, 0, None, closed="neither")],
        "delta": [Interval(float, 0, 1, closed="left")],
        "deepfool_steps": STEPS,
        "overshoot": [Interval(float, 0, None)],
    }

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | list[float] | None = None,
        method: str = "sgd",
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 3,
        minibatch: int = 32,
        kappa: float = 5.0,
        delta: float = 0.0,
        deepfool_steps: int = 10,
        overshoot: float = 0.02,
        targeted: bool = False,
    ) -> None:
        self.norm = norm
        self.eps = eps
        self.method = method
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.minibatch = minibatch
        self.kappa = kappa
        self.delta = delta
        self.deepfool_steps = deepfool_steps
        self.overshoot = overshoot
        self.targeted = targeted
        self._validate()
        if method == "deepfool" and targeted:
            raise ConfigError(f"{self.name}: method 'deepfool' is untargeted; use method='sgd' for a targeted perturbation")

    # ---------------------------------------------------------------------------------------
    def fit(
        self, model: Model, x: Tensor, y: Tensor, *, seed: int = 0, target: int | None = None
    ) -> UniversalPerturbation:
        """Learn one perturbation on ``x`` (true labels ``y``) and return it.

        ``target`` (targeted attacks only, and then required): the one class every input should
        be sent to.  The model is in attack mode while learning; the only randomness (the order
        of the inputs) comes from a generator seeded with ``seed``.
        """
        x, y = self._check_inputs(model, x, y)
        check_seed(self.name, seed)
        eps = self._single_eps("fit")
        num_classes = model.infer_num_classes(x)
        self._check_labels(y, num_classes, "y")
        goal: Tensor | None = None
        cls: int | None = None
        if self.targeted:
            if target is None:
                raise ConfigError(f"{self.name}: a targeted universal perturbation needs target=<class> in fit")
            cls = check_target_class(self.name, target, num_classes)
            goal = torch.full_like(y, cls)
        elif target is not None:
            raise ConfigError(f"{self.name}: target was given but the attack is untargeted; pass targeted=True")
        generator = torch.Generator(device=x.device).manual_seed(seed)
        with model.attack_mode():
            ctx = Context(model, generator, self.targeted, num_classes, model.bounds, target=goal)
            v, rate = self._learn(ctx, x, y, eps)
        return UniversalPerturbation(
            perturbation=v[0].detach(), norm=self.norm, eps=eps, bounds=model.bounds, targeted=self.targeted,
            target=cls, train_success=rate,
        )

    def _single_eps(self, what: str) -> float:
        if self.eps is None:
            raise ConfigError(f"{self.name}: eps is required (a number > 0)")
        values = as_eps_tuple(self.eps, self.name)
        if len(values) != 1:
            raise ConfigError(f"{self.name}: {what} learns one perturbation; give one eps, got {list(values)}")
        return float(values[0])

    # ---------------------------------------------------------------------------------------
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        v, rate = self._learn(ctx, x, y, eps)
        ctx.info.setdefault("perturbation", {})[eps] = v[0]
        ctx.info.setdefault("train_success", {})[eps] = rate
        return (x + v).clamp(*ctx.bounds)

    def _learn(self, ctx: Context, x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, float]:
        """``v`` of shape ``(1, ...)`` and the share of ``x`` it fools."""
        if self.method == "deepfool":
            v = torch.zeros_like(x[:1])
            for epoch in range(self.steps):
                v = self._learn_deepfool(ctx, x, y, eps, v)
                if self.delta > 0 and self._fooled(ctx, x, y, v) >= 1.0 - self.delta:
                    break
            return v, self._fooled(ctx, x, y, v)
        # SGD: ``restarts`` random starts in the ball each get the first epoch; the one that fools
        # the most inputs continues (the batch loss has a few basins of quite different strength)
        best, best_rate = None, -1.0
        for _ in range(self.restarts):
            v = self._learn_sgd(ctx, x, y, eps, N.random_in_ball(x[:1], self.norm, eps, ctx.generator), 0)
            rate = self._fooled(ctx, x, y, v)
            if rate > best_rate:
                best, best_rate = v, rate
        assert best is not None
        v, rate = best, best_rate
        for epoch in range(1, self.steps):
            if self.delta > 0 and rate >= 1.0 - self.delta:
                break
            v = self._learn_sgd(ctx, x, y, eps, v, epoch)
            rate = self._fooled(ctx, x, y, v)
        return v, rate

    def _fooled(self, ctx: Context, x: Tensor, y: Tensor, v: Tensor) -> float:
        pred = predict_chunked(ctx.model, (x + v).clamp(*ctx.bounds))
        goal = ctx.target if ctx.targeted and ctx.target is not None else None
        return float((pred == goal).float().mean()) if goal is not None else float((pred != y).float().mean())

    def _loss(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        m = -margin(logits, target) if target is not None else margin(logits, y)
        return m.clamp(max=self.kappa)

    def _learn_sgd(self, ctx: Context, x: Tensor, y: Tensor, eps: float, v: Tensor, epoch: int) -> Tensor:
        lo, hi = ctx.bounds
        n = x.shape[0]
        mb = min(self.minibatch, n)
        per_epoch = math.ceil(n / mb)
        total = self.steps * per_epoch
        first = self.step_size if self.step_size is not None else eps / (4.0 if self.norm == "linf" else 2.0)
        target = ctx.target if ctx.targeted else None
        perm = torch.randperm(n, generator=ctx.generator, device=x.device)
        for b in range(per_epoch):
            idx = perm[b * mb : (b + 1) * mb]
            z = x[idx] + v
            tb = target[idx] if target is not None else None
            yb = y[idx]
            _, g, _ = loss_and_grad(ctx.model, z.clamp(lo, hi), partial(self._loss, y=yb, target=tb))
            g = (g * ((z > lo) & (z < hi)).to(g.dtype)).sum(dim=0, keepdim=True)
            t = epoch * per_epoch + b
            alpha = first * (1.0 - t / total)
            v = N.project(v + alpha * N.steepest_ascent(g, self.norm), self.norm, eps)
        return v

    def _learn_deepfool(self, ctx: Context, x: Tensor, y: Tensor, eps: float, v: Tensor) -> Tensor:
        from gauntlet.attacks.evasion.deepfool import DeepFool

        deepfool = DeepFool(norm=self.norm, steps=self.deepfool_steps, overshoot=float(self.overshoot))
        lo, hi = ctx.bounds
        perm = torch.randperm(x.shape[0], generator=ctx.generator, device=x.device)
        for i in perm.tolist():
            xi = (x[i : i + 1] + v).clamp(lo, hi)
            # DeepFool's first forward pass tells whether x_i + v is already fooled (then it
            # returns x_i + v unchanged); otherwise it returns the point past the closest boundary
            adv = deepfool._attack(ctx, xi, y[i : i + 1], None)
            dv = adv - xi
            if bool((dv != 0).any()):
                v = N.project(v + dv, self.norm, eps)
        return v
