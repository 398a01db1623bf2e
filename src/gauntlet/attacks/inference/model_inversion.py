"""Model inversion: a representative input of each class, reconstructed from the model's gradients.

Fredrikson, Jha & Ristenpart (CCS 2015), Algorithm 1 (MI-FACE): from a start image ``x_0``,
descend the cost ``c(x) = 1 - p_c(x)`` (plus an optional auxiliary term) with step ``λ``,

    x_i = Process(x_{i-1} - λ ∇c(x_{i-1})),

where ``Process`` is the paper's post-processing between iterations (denoising and sharpening of
the image), stop after ``α`` (``steps``) iterations, when the cost has not improved for ``β``
(``patience``) iterations, or when it falls to ``γ`` (``gamma``) or below, and return the image of
lowest cost.  Here ``Process`` is a configurable chain in torch: a denoising filter (``"median"`` or
``"gaussian"``), then unsharp-mask sharpening, then a clip into the model's bounds; a total-variation
penalty (``tv``) can join the cost as the auxiliary term, and ``loss="cross_entropy"`` replaces
``1 - p_c`` by ``-log p_c`` (whose gradient does not vanish where ``p_c`` is tiny, as it does for a
deep network started from a blank image).

``run(model, classes=None, seed=0)`` returns an :class:`InversionResult`: one reconstruction per
class (the best of ``restarts`` starts), the target's confidence in each, and the queries and
gradient evaluations spent; ``result.evaluate(judge)`` is the share of reconstructions an
independent classifier assigns to the intended class, the paper's measure of success.

The attack needs the target's gradients (white box).  A target with scores only is refused
unless ``gradients="estimated"``, which wraps it in
:class:`~gauntlet.models.EstimatedGradients` (NES/SPSA zeroth-order estimates; every gradient
step then costs ``samples`` queries per image, counted in ``queries``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import Boolean, Check, Constraint, Hyperparameters, Interval, IsNone, Options, validate_params
from gauntlet.attacks.registry import register
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model

__all__ = [
    "InversionResult",
    "ModelInversion",
    "gaussian_filter",
    "median_filter",
    "sharpen",
    "total_variation",
]


# ------------------------------------------------------------------------------------------------
# the "Process" filters, on image batches (N, C, H, W) or any (N, ..., H, W)
def _as_nchw(x: Tensor, owner: str) -> tuple[Tensor, torch.Size]:
    if x.dim() < 3:
        raise DataError(f"{owner}: needs images (N, ..., H, W), got shape {tuple(x.shape)}")
    shape = x.shape
    return x.reshape(-1, 1, shape[-2], shape[-1]), shape


def _odd_size(size: int, owner: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ConfigError(f"{owner}: size must be an odd int >= 1, got {size!r}")
    return size


def median_filter(x: Tensor, size: int = 3) -> Tensor:
    """Median of each ``size × size`` window (edges replicated), per channel; a constant image is
    returned unchanged and isolated outliers are removed."""
    k = _odd_size(size, "median_filter")
    if k == 1:
        return x.clone()
    flat, shape = _as_nchw(x, "median_filter")
    r = k // 2
    padded = F.pad(flat, (r, r, r, r), mode="replicate")
    windows = F.unfold(padded, kernel_size=k)  # (M, k*k, H*W)
    # the lower median of k*k (odd) values is the median
    med = windows.median(dim=1).values
    return med.reshape(shape)


def _gaussian_kernel(sigma: float, size: int | None, like: Tensor) -> Tensor:
    if size is None:
        size = 2 * max(1, math.ceil(3 * sigma)) + 1
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=like.dtype, device=like.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: Tensor, sigma: float = 0.5, size: int | None = None) -> Tensor:
    """Separable Gaussian blur of standard deviation ``sigma`` pixels (kernel ``size``, default
    ``2·ceil(3σ)+1``; edges replicated), per channel; the kernel sums to one, so a constant image
    is unchanged."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma):
        raise ConfigError(f"gaussian_filter: sigma must be a finite number > 0, got {sigma!r}")
    if size is not None:
        _odd_size(size, "gaussian_filter")
    flat, shape = _as_nchw(x, "gaussian_filter")
    k = _gaussian_kernel(float(sigma), size, flat)
    r = k.numel() // 2
    out = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return out.reshape(shape)


def sharpen(x: Tensor, amount: float = 0.5, sigma: float = 1.0) -> Tensor:
    """Unsharp masking: ``x + amount · (x - gaussian_filter(x, sigma))``.  Edges gain contrast
    (each side overshoots away from the other); flat regions are unchanged.  Not clipped."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0 or not math.isfinite(amount):
        raise ConfigError(f"sharpen: amount must be a finite number >= 0, got {amount!r}")
    if amount == 0:
        return x.clone()
    return x + amount * (x - gaussian_filter(x, sigma))


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation per sample: the mean absolute difference between vertically
    and horizontally adjacent pixels, summed over both directions, ``(N,)``."""
    if x.dim() < 3:
        raise DataError(f"total_variation: needs images (N, ..., H, W), got shape {tuple(x.shape)}")
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return dh + dw


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InversionResult:
    """Reconstructions of class representatives and what they cost.

    Attributes:
        images: ``(C, *input_shape)``, one reconstruction per class of ``classes``, in the model's
            bounds.
        classes: int64 ``(C,)``, the class each image was reconstructed for.
        confidence: float64 ``(C,)``, the target's probability ``p_c`` of its class on each image.
        cost: float64 ``(C,)``, the final cost (``1 - p_c`` or ``-log p_c``, plus the TV term).
        iterations: int64 ``(C,)``, gradient steps taken for the kept start before it stopped.
        queries: queries answered by the target (one per image per forward pass, plus the
            estimation queries with ``gradients="estimated"``).
        grad_evals: per-image input gradients computed.
        attack, params: the attack's name and hyperparameters; ``info``: extras (stop reasons,
            the cost of every start); ``seconds``: wall time of ``run``.
    """

    images: Tensor
    classes: Tensor
    confidence: Tensor
    cost: Tensor
    iterations: Tensor
    queries: int = 0
    grad_evals: int = 0
    attack: str = "model_inversion"
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def judge(self, classifier: Model) -> Tensor:
        """The labels an independent ``classifier`` (a gauntlet Model) gives the images, ``(C,)``."""
        if not isinstance(classifier, Model):
            raise ConfigError(f"model_inversion: the judge must be a gauntlet Model, got {type(classifier).__name__}")
        shape = classifier.input_spec.shape
        if shape is not None and tuple(shape) != tuple(self.images.shape[1:]):
            raise DataError(
                f"model_inversion: the judge takes per-sample shape {tuple(shape)} but the images have "
                f"{tuple(self.images.shape[1:])}; judge with a classifier of the same input"
            )
        with classifier.attack_mode(), torch.no_grad():
            return classifier.predict(self.images.to(classifier.input_spec.dtype)).to(torch.int64).cpu()

    def evaluate(self, classifier: Model) -> float:
        """Share of the reconstructions that ``classifier`` assigns to their intended class."""
        if self.classes.numel() == 0:  # pragma: no cover - run never returns an empty result
            return float("nan")
        return float((self.judge(classifier) == self.classes.cpu()).double().mean())


def _int_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


@register
class ModelInversion(Hyperparameters):
    """Fredrikson et al.'s gradient-descent model inversion with denoising and sharpening.

    Hyperparameters (keyword-only, stored unchanged):
        steps: the most gradient steps per start (the paper's ``α``; it used 5000).
        lr: the step size ``λ`` (the paper's 0.1); with ``normalize=True`` the step's L2 norm
            per image, in input units.
        loss: ``"confidence"`` (the paper's ``1 - p_c``) or ``"cross_entropy"`` (``-log p_c``).
        normalize: divide each image's gradient by its L2 norm (a step of fixed length, so a
            tiny gradient far from the class does not stall the descent).
        patience: stop a start when its cost has not improved for this many steps (``β``,
            the paper's 100); ``None`` never.
        gamma: stop a start once its cost is ``<= gamma`` (``γ``).
        start: ``"zeros"`` (the paper's blank image: the lower bound), ``"mid"`` (the middle of
            the bounds) or ``"mean"`` (the mean of auxiliary data, ``run(..., auxiliary=x)``).
        init_noise: standard deviation of Gaussian noise added to the start (seeded); with
            ``restarts > 1`` it makes the starts differ.
        restarts: starts per class; the one of lowest cost is kept.
        denoise: ``"none"``, ``"median"`` or ``"gaussian"`` (the Process step's denoising).
        denoise_size: median window / Gaussian kernel size (odd).
        denoise_sigma: the Gaussian denoiser's standard deviation in pixels.
        sharpen: unsharp-mask amount after denoising (0: none).
        sharpen_sigma: the blur the unsharp mask subtracts, in pixels.
        process_every: apply Process every this many steps (1: every step, as in the paper).
        tv: weight of a total-variation penalty in the cost (0: none).
        gradients: ``"exact"`` (the model's own gradients, needs the ``"gradients"`` capability) or
            ``"estimated"`` (zeroth-order estimates through EstimatedGradients from scores only).
        estimator: keyword arguments of :class:`~gauntlet.models.EstimatedGradients` (``method``,
            ``samples``, ``sigma``, ``max_batch_size``) when ``gradients="estimated"``.
        batch_size: images optimised together.
    """

    name: ClassVar[str] = "model_inversion"
    description: ClassVar[str] = (
        "model inversion: gradient descent on 1 - p_c with denoising/sharpening reconstructs a "
        "representative input of each class"
    )
    reference: ClassVar[str] = (
        "Fredrikson, Jha & Ristenpart, 'Model Inversion Attacks that Exploit Confidence Information "
        "and Basic Countermeasures', ACM CCS 2015"
    )
    kind: ClassVar[str] = "inference"
    needs: ClassVar[str] = "gradients"
    # no ``needs_population``: the audit's privacy block recognises membership attacks by that
    # attribute, and this attack's run() takes other arguments
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "steps": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "loss": [Options(("confidence", "cross_entropy"))],
        "normalize": [Boolean()],
        "patience": [Interval(int, 1, None), IsNone()],
        "gamma": [Interval(float, None, None)],
        "start": [Options(("zeros", "mid", "mean"))],
        "init_noise": [Interval(float, 0, None)],
        "restarts": [Interval(int, 1, None)],
        "denoise": [Options(("none", "median", "gaussian"))],
        "denoise_size": [Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 2 == 1, "an odd int >= 1")],
        "denoise_sigma": [Interval(float, 0, None, closed="neither")],
        "sharpen": [Interval(float, 0, None)],
        "sharpen_sigma": [Interval(float, 0, None, closed="neither")],
        "process_every": [Interval(int, 1, None)],
        "tv": [Interval(float, 0, None)],
        "gradients": [Options(("exact", "estimated"))],
        "estimator": [
            Check(
                lambda v: isinstance(v, dict) and set(v) <= {"method", "samples", "sigma", "max_batch_size"},
                "a dict with keys among 'method', 'samples', 'sigma', 'max_batch_size'",
            ),
            IsNone(),
        ],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        *,
        steps: int = 500,
        lr: float = 0.1,
        loss: str = "confidence",
        normalize: bool = False,
        patience: int | None = 100,
        gamma: float = 0.0,
        start: str = "zeros",
        init_noise: float = 0.0,
        restarts: int = 1,
        denoise: str = "none",
        denoise_size: int = 3,
        denoise_sigma: float = 0.5,
        sharpen: float = 0.0,
        sharpen_sigma: float = 1.0,
        process_every: int = 1,
        tv: float = 0.0,
        gradients: str = "exact",
        estimator: dict[str, Any] | None = None,
        batch_size: int = 256,
    ) -> None:
        self.steps = steps
        self.lr = lr
        self.loss = loss
        self.normalize = normalize
        self.patience = patience
        self.gamma = gamma
        self.start = start
        self.init_noise = init_noise
        self.restarts = restarts
        self.denoise = denoise
        self.denoise_size = denoise_size
        self.denoise_sigma = denoise_sigma
        self.sharpen = sharpen
        self.sharpen_sigma = sharpen_sigma
        self.process_every = process_every
        self.tv = tv
        self.gradients = gradients
        self.estimator = estimator
        self.batch_size = batch_size
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    # -- the Process step ---------------------------------------------------------------------
    def _filters_apply(self) -> bool:
        return self.denoise != "none" or self.sharpen > 0 or self.tv > 0

    def process(self, x: Tensor, bounds: tuple[float, float]) -> Tensor:
        """The paper's Process step: denoise, sharpen, clip into ``bounds``."""
        if self.denoise == "median":
            x = median_filter(x, self.denoise_size)
        elif self.denoise == "gaussian":
            x = gaussian_filter(x, self.denoise_sigma, self.denoise_size)
        if self.sharpen > 0:
            x = sharpen(x, self.sharpen, self.sharpen_sigma)
        return x.clamp(bounds[0], bounds[1])

    # -- run ------------------------------------------------------------------------------------
    def _target(self, model: Model, seed: int) -> Model:
        if not isinstance(model, Model):
            raise ConfigError(f"{self.name}: the target must be a gauntlet Model, got {type(model).__name__}")
        if self.gradients == "estimated":
            if not model.has("scores"):
                raise CapabilityError(
                    f"{self.name} with gradients='estimated' needs the target's scores, but it returns labels only"
                )
            from gauntlet.models.estimated_gradients import EstimatedGradients

            return EstimatedGradients(model, **{**(self.estimator or {}), "seed": seed})
        if not model.has("gradients"):
            raise CapabilityError(
                f"{self.name} needs the target's gradients but {type(model).__name__} offers only "
                f"{', '.join(sorted(model.capabilities))}; pass gradients='estimated' to estimate them from scores "
                "(NES, many queries per step)"
            )
        return model

    def _classes(self, classes: Any, k: int) -> Tensor:
        if classes is None:
            return torch.arange(k, dtype=torch.int64)
        if isinstance(classes, Tensor):
            if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.dim() > 1:
                raise DataError(f"{self.name}: classes must be ints (a list or a 1-D int tensor), got {classes.dtype} {tuple(classes.shape)}")
            items = [int(c) for c in classes.reshape(-1).tolist()]
        elif isinstance(classes, int) and not isinstance(classes, bool):
            items = [classes]
        elif _int_list(classes) and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            items = list(classes)
        else:
            raise DataError(f"{self.name}: classes must be an int, a list of ints or None (all classes), got {classes!r}")
        if not items:
            raise DataError(f"{self.name}: classes is empty; pass None for all {k} classes")
        bad = [c for c in items if not 0 <= c < k]
        if bad:
            raise DataError(f"{self.name}: classes {bad} are outside [0, {k - 1}] (the target has {k} classes)")
        return torch.tensor(items, dtype=torch.int64)

    def _start(self, model: Model, shape: tuple[int, ...], auxiliary: Tensor | None) -> Tensor:
        lo, hi = model.bounds
        dtype = model.input_spec.dtype
        if self.start == "mean":
            if auxiliary is None:
                raise ConfigError(f"{self.name}: start='mean' needs auxiliary data: run(model, auxiliary=x)")
            if not isinstance(auxiliary, Tensor) or not auxiliary.dtype.is_floating_point or auxiliary.dim() < 2 or auxiliary.shape[0] == 0:
                raise DataError(f"{self.name}: auxiliary must be a non-empty float tensor (N, ...) of inputs")
            if tuple(auxiliary.shape[1:]) != shape:
                raise DataError(f"{self.name}: auxiliary has per-sample shape {tuple(auxiliary.shape[1:])} but the model takes {shape}")
            if not bool(torch.isfinite(auxiliary).all()):
                raise DataError(f"{self.name}: auxiliary holds NaN or inf values")
            return auxiliary.detach().to(dtype).mean(dim=0).clamp(lo, hi)
        if auxiliary is not None:
            raise ConfigError(f"{self.name}: auxiliary data is only used with start='mean', but start={self.start!r}")
        if self.start == "mid":
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ConfigError(f"{self.name}: start='mid' needs finite bounds, the model has [{lo}, {hi}]; use start='zeros'")
            return torch.full(shape, (lo + hi) / 2, dtype=dtype)
        fill = lo if math.isfinite(lo) else min(max(0.0, lo), hi)
        return torch.full(shape, fill, dtype=dtype)

    def _cost(self, model: Model, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image cost (for the descent) and ``p_c``."""
        s = model.scores(x)
        if model.output == "probabilities":
            logp = s.clamp_min(torch.finfo(s.dtype).tiny).log()
            logp = logp - torch.logsumexp(logp, dim=1, keepdim=True)
        else:
            logp = torch.log_softmax(s, dim=1)
        lp = logp.gather(1, c[:, None]).squeeze(1)
        p = lp.exp()
        cost = 1.0 - p if self.loss == "confidence" else -lp
        if self.tv > 0:
            cost = cost + self.tv * total_variation(x)
        return cost, p

    def run(
        self,
        model: Model,
        *,
        classes: int | Sequence[int] | Tensor | None = None,
        auxiliary: Tensor | None = None,
        seed: int = 0,
    ) -> InversionResult:
        """Reconstruct one representative input per class.

        Args:
            model: the target (white box: gradients; or scores with ``gradients="estimated"``).
            classes: the classes to invert (default: all).
            auxiliary: inputs whose mean is the start image with ``start="mean"``.
            seed: seeds the start noise (and the gradient estimator); same seed, same images.
        """
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be an int >= 0, got {seed!r}")
        target = self._target(model, seed)
        shape_spec = model.input_spec.shape
        if shape_spec is None:
            raise ConfigError(f"{self.name}: the target's input shape is unknown; build the model with input_shape=")
        shape = tuple(int(s) for s in shape_spec)
        if self._filters_apply() and len(shape) < 2:
            raise ConfigError(
                f"{self.name}: denoise/sharpen/tv filter images (..., H, W) but the target takes per-sample shape {shape}; "
                "use denoise='none', sharpen=0, tv=0"
            )
        lo, hi = model.bounds
        base = self._start(model, shape, auxiliary)
        k = model.num_classes or model.infer_num_classes(base[None])
        cls = self._classes(classes, k)
        C, R = int(cls.numel()), self.restarts
        gen = torch.Generator().manual_seed(seed)
        starts = base.expand(C * R, *shape).clone()
        if self.init_noise > 0:
            starts = starts + self.init_noise * torch.randn(starts.shape, generator=gen, dtype=starts.dtype)
        starts = starts.clamp(lo, hi)
        labels = cls.repeat_interleave(R)
        q0 = model.queries
        gt0 = target.grad_evals
        t0 = time.perf_counter()
        best_x, best_cost, best_p, iters, reasons = [], [], [], [], []
        with target.attack_mode():
            for s in range(0, C * R, self.batch_size):
                bx, bc, bp, it, why = self._descend(target, starts[s : s + self.batch_size], labels[s : s + self.batch_size], (lo, hi))
                best_x.append(bx)
                best_cost.append(bc)
                best_p.append(bp)
                iters.append(it)
                reasons += why
        xs = torch.cat(best_x).view(C, R, *shape)
        costs = torch.cat(best_cost).view(C, R)
        ps = torch.cat(best_p).view(C, R)
        its = torch.cat(iters).view(C, R)
        pick = costs.argmin(dim=1)
        rows = torch.arange(C)
        grad_evals = target.grad_evals - gt0
        info = {
            "stop_reasons": {r: reasons.count(r) for r in sorted(set(reasons))},
            "restart_costs": costs.tolist(),
            "kept_restart": pick.tolist(),
            "num_classes": k,
        }
        return InversionResult(
            images=xs[rows, pick].contiguous(),
            classes=cls,
            confidence=ps[rows, pick].double(),
            cost=costs[rows, pick].double(),
            iterations=its[rows, pick],
            queries=model.queries - q0,
            grad_evals=grad_evals,
            attack=self.name,
            params=self.get_params(),
            info=info,
            seconds=time.perf_counter() - t0,
        )

    def _descend(
        self, model: Model, x0: Tensor, c: Tensor, bounds: tuple[float, float]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
        """Algorithm 1 on a batch: the best image, its cost and ``p_c``, steps taken, stop reasons."""
        n = x0.shape[0]
        x = x0.clone()
        best_x = x0.clone()
        best_cost = torch.full((n,), float("inf"), dtype=torch.float64)
        best_p = torch.zeros(n, dtype=torch.float64)
        since = torch.zeros(n, dtype=torch.int64)  # steps since the best cost last improved
        iters = torch.zeros(n, dtype=torch.int64)
        active = torch.ones(n, dtype=torch.bool)
        reason = ["steps"] * n
        for i in range(self.steps + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa = x[idx].detach().requires_grad_(True)
            ca = c[idx]
            with torch.enable_grad():
                cost, p = self._cost(model, xa, ca)
                grad = None
                if i < self.steps:
                    (grad,) = torch.autograd.grad(cost.sum(), xa)
            if grad is not None:
                model.grad_evals += int(idx.numel())
            cd, pd = cost.detach().double(), p.detach().double()
            better = cd < best_cost[idx]
            imp = idx[better]
            best_cost[imp] = cd[better]
            best_p[imp] = pd[better]
            best_x[imp] = xa.detach()[better]
            since[idx] = torch.where(better, torch.zeros_like(since[idx]), since[idx] + 1)
            iters[idx] = i
            stop = torch.zeros(idx.numel(), dtype=torch.bool)
            done_gamma = cd <= self.gamma
            stop |= done_gamma
            if self.patience is not None:
                stop |= since[idx] >= self.patience
            for j in idx[stop].tolist():
                reason[j] = "gamma" if bool(best_cost[j] <= self.gamma) else "patience"
            if grad is None:
                break
            active[idx[stop]] = False
            keep = ~stop
            if not bool(keep.any()):
                break
            g = grad[keep]
            if not bool(torch.isfinite(g).all()):
                g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            if self.normalize:
                norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
                g = g / norm
            step = xa.detach()[keep] - self.lr * g
            if (i + 1) % self.process_every == 0 and (self.denoise != "none" or self.sharpen > 0):
                step = self.process(step, bounds)
            x[idx[keep]] = step.clamp(bounds[0], bounds[1]).to(x.dtype)
        return best_x, best_cost, best_p, iters, reason
