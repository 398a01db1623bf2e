"""Score-based gradient estimation: gradient attacks on a model that answers only with scores.

:class:`EstimatedGradients` wraps a scores-only model (:class:`SklearnModel`,
:class:`OnnxModel`, a :class:`CallableModel`, a remote endpoint, ...) and gives it the
``"gradients"`` capability.  Its ``scores(x)`` on an ``x`` that requires grad returns the real
scores, but their backward pass is a **zeroth-order estimate** of the vector-Jacobian product:
for the upstream gradient ``g`` on the scores (whatever loss the attack built on them — PGD's
cross-entropy, APGD's DLR, a margin), it estimates ``∇_x ⟨g, f(x)⟩`` from antithetic finite
differences of ``⟨g, f(x ± σu)⟩`` along random directions ``u``:

* ``method="nes"``: Gaussian directions, ``u ~ N(0, I)`` (natural evolution strategies, Ilyas,
  Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and
  Information", ICML 2018);
* ``method="spsa"``: Rademacher directions, ``u ∈ {−1, +1}^d`` (simultaneous perturbation
  stochastic approximation, as in Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial Risk and
  the Dangers of Evaluating Against Weak Attacks", ICML 2018).

Both give ``ĝ = 1/(2σP) Σ_{j=1..P} (h(x + σu_j) − h(x − σu_j)) u_j`` with ``P = samples / 2``
pairs, an unbiased estimate of the gradient of the σ-smoothed ``h`` (Gaussian) or, to first order
in σ, of ``∇h`` itself.  So ``gt.attacks.create("pgd", eps=0.1).run(EstimatedGradients(m), x, y)``
runs PGD as a black-box attack (NES-PGD), and every gradient attack can do the same.

Costs are real: each estimate queries the wrapped model ``samples`` times per sample, in large
batches (all samples × all directions at once, split into calls of at most ``max_batch_size``
inputs) under :func:`torch.inference_mode`, and those queries are counted on the wrapped model
and on the wrapper (``queries``), so an attack's ``AttackResult.queries`` says what it cost.
The queried points are clipped into the model's input bounds.

:func:`estimate_gradient` is the same estimator as a function, for attacks that estimate the
gradient of their own loss directly (the ``nes`` and ``spsa`` attacks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Check, Constraint, Interval, Options, validate_params
from gauntlet.errors import CapabilityError, ConfigError
from gauntlet.models.base import Model
from gauntlet.models.wrapped import WrappedModel

METHODS = ("nes", "spsa")

#: the hyperparameters shared by the wrapper and the ``nes``/``spsa`` attacks
SAMPLES: list[Constraint] = [
    Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2 and v % 2 == 0, "an even int >= 2")
]
SIGMA: list[Constraint] = [Interval(float, 0, None, closed="neither")]
MAX_BATCH: list[Constraint] = [Interval(int, 2, None)]


def _directions(method: str, shape: tuple[int, ...], gen: torch.Generator, like: Tensor) -> Tensor:
    if method == "nes":
        return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)
    u = torch.empty(shape, device=like.device, dtype=like.dtype).bernoulli_(0.5, generator=gen)
    return u.mul_(2).sub_(1)


def estimate_gradient(
    model: Model,
    x: Tensor,
    value_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    method: str,
    pairs: int,
    sigma: float,
    generator: torch.Generator,
    max_batch_size: int = 4096,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Antithetic NES/SPSA estimate of ``∇_x value`` for every sample of ``x``.

    Args:
        model: queried with ``2 · pairs`` inputs per sample (counted on the model), in calls of
            at most ``max_batch_size`` inputs, under :func:`torch.inference_mode`.
        x: the points ``(N, ...)``.
        value_fn: ``value_fn(scores, owner) -> (K,)``: the function whose gradient is wanted,
            from the scores of ``K`` queried points and the index in ``x`` of the sample each
            point belongs to.
        method: ``"nes"`` (Gaussian directions) or ``"spsa"`` (Rademacher directions).
        pairs: antithetic pairs ``±σu`` per sample.
        sigma: the finite-difference scale.
        generator: the source of the random directions (no global RNG).
        bounds: the queried points are clipped into these (default: the model's bounds).

    Returns:
        The estimate, shaped like ``x`` (a normal tensor, usable outside inference mode).
    """
    lo, hi = bounds if bounds is not None else model.bounds
    n = int(x.shape[0])
    feat = tuple(x.shape[1:])
    total = n * pairs
    chunk = max(max_batch_size // 2, 1)
    with torch.inference_mode():
        xf = x.detach().reshape(n, -1)
        grad = torch.zeros_like(xf)
        for s in range(0, total, chunk):
            e = min(s + chunk, total)
            k = e - s
            owner = torch.arange(s, e, device=x.device) // pairs
            u = _directions(method, (k, xf.shape[1]), generator, xf)
            base = xf.index_select(0, owner)
            step = u * sigma
            xq = torch.cat([base + step, base - step]).clamp_(lo, hi)
            scores = model.scores(xq.view(2 * k, *feat))
            vals = value_fn(scores, torch.cat([owner, owner])).to(xf.dtype)
            diff = vals[:k] - vals[k:]
            grad.index_add_(0, owner, u.mul_(diff[:, None]))
        grad.div_(2.0 * sigma * pairs)
    return grad.clone().view_as(x)


class _Estimate(torch.autograd.Function):
    """Identity on the scores forward; backward is the NES/SPSA estimate of the VJP."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, wrapper: EstimatedGradients, count: bool) -> Tensor:  # type: ignore[override]
        ctx.wrapper = wrapper
        ctx.save_for_backward(x)
        with torch.no_grad():
            return wrapper.model.scores(x.detach(), count=count)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        w: EstimatedGradients = ctx.wrapper
        g = g.detach()
        if not bool(g.any()):
            return torch.zeros_like(x), None, None
        q0 = w.model.queries
        est = estimate_gradient(
            w.model,
            x,
            lambda s, owner: (s * g.index_select(0, owner).to(s.dtype)).sum(dim=1),
            method=w.method,
            pairs=w.samples // 2,
            sigma=w.sigma,
            generator=w.generator,
            max_batch_size=w.max_batch_size,
        )
        w.queries += w.model.queries - q0
        w.estimates += int(x.shape[0])
        return est, None, None


class EstimatedGradients(WrappedModel):
    """A scores-only model with zeroth-order (NES or SPSA) gradients: gradient attacks run black-box.

    ``EstimatedGradients(model).scores(x)`` returns ``model``'s scores; when ``x`` requires grad,
    their backward pass estimates the input gradient of whatever loss was built on them from
    ``samples`` queries per sample (see the module docstring).  Every white-box attack then runs
    on the black box, e.g. NES-PGD::

        bb = gt.models.EstimatedGradients(gt.models.SklearnModel(forest, input_shape=(1, 8, 8)), sigma=0.05)
        gt.attacks.create("pgd", eps=0.1, steps=20).run(bb, x, y)

    Args:
        model: a :class:`~gauntlet.models.Model` with the ``"scores"`` capability (a labels-only
            model needs a decision-based attack such as HopSkipJump instead).
        method: ``"nes"`` (antithetic Gaussian directions, Ilyas et al. 2018) or ``"spsa"``
            (antithetic Rademacher directions, Uesato et al. 2018).
        samples: queries per sample and per gradient estimate (``samples / 2`` antithetic pairs);
            an even int.  50 is Ilyas et al.'s choice; more samples, less noise.
        sigma: finite-difference scale in input units (0.001, Ilyas et al.'s, suits smooth
            networks on inputs in [0, 1]; piecewise-constant models such as tree ensembles need a
            scale at which their scores change, e.g. 0.05).
        seed: seeds the wrapper's own ``torch.Generator`` for the directions (no global RNG).  It
            is reseeded each time an attack enters the model's attack mode, so
            ``attack.run(wrapper, x, y, seed=s)`` is reproducible from ``(seed, s)``.
        max_batch_size: the most inputs sent to ``model`` in one call.

    Counters: ``queries`` counts every query the wrapped model answered for the wrapper (the
    plain forward passes and the estimation queries alike, equal to the growth of
    ``model.queries``); ``estimates`` counts estimated per-sample gradients; attacks add their
    gradient evaluations to ``grad_evals`` as on any model.
    """

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "method": [Options(METHODS)],
        "samples": SAMPLES,
        "sigma": SIGMA,
        "seed": [Interval(int, 0, None)],
        "max_batch_size": MAX_BATCH,
    }

    def __init__(
        self,
        model: Model,
        *,
        method: str = "nes",
        samples: int = 50,
        sigma: float = 0.001,
        seed: int = 0,
        max_batch_size: int = 4096,
    ) -> None:
        if not isinstance(model, Model):
            raise ConfigError(
                f"EstimatedGradients: model must be a gauntlet Model, got {type(model).__name__}; "
                "wrap it first, e.g. gauntlet.models.CallableModel(fn) or SklearnModel(estimator)"
            )
        validate_params(
            "EstimatedGradients",
            {"method": method, "samples": samples, "sigma": sigma, "seed": seed, "max_batch_size": max_batch_size},
            self._parameter_constraints,
        )
        if "scores" not in model.capabilities:
            raise CapabilityError(
                f"EstimatedGradients needs a model with scores but {type(model).__name__} offers only "
                f"{', '.join(sorted(model.capabilities))}; a labels-only model needs a decision-based "
                "attack such as HopSkipJump"
            )
        super().__init__(model)
        self.model = model
        self.method = method
        self.samples = samples
        self.sigma = float(sigma)
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.capabilities = frozenset(model.capabilities | {"gradients"})
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.estimates = 0

    def reset_counters(self) -> None:
        super().reset_counters()
        self.estimates = 0

    # -- queries ---------------------------------------------------------------------------------
    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        """The wrapped model's scores; differentiable (by estimation) when ``x`` requires grad.

        The forward pass is one query per sample; the backward pass ``samples`` more per sample.
        """
        q0 = self.model.queries
        if torch.is_grad_enabled() and x.requires_grad:
            out = _Estimate.apply(x, self, count)
        else:
            out = self.model.scores(x, count=count)
        self.queries += self.model.queries - q0
        return out

    __call__ = scores

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        q0 = self.model.queries
        out = self.model.predict(x, count=count)
        self.queries += self.model.queries - q0
        return out

    def _forward(self, x: Tensor) -> Tensor:
        return self.model.scores(x, count=False)

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """The wrapped model's attack mode, with the direction generator reseeded."""
        self.generator.manual_seed(self.seed)
        with super().attack_mode():
            yield

    def __repr__(self) -> str:
        return (
            f"EstimatedGradients(method={self.method!r}, samples={self.samples}, sigma={self.sigma}, "
            f"seed={self.seed}, model={self.model!r})"
        )


__all__ = ["EstimatedGradients", "estimate_gradient"]
