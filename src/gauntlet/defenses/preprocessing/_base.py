"""Input-preprocessing defenses and the model they wrap, with the naive and the adaptive
(BPDA + EOT) view of the transform for gradient attacks.

A :class:`Preprocessor` is a transform ``x ↦ t(x)`` put in front of a classifier.  Its
:meth:`~Preprocessor.wrap` returns a :class:`PreprocessedModel`: a :class:`~gauntlet.models.Model`
whose predictions are ``f(t(x))``.  What gradient an attack sees depends on ``adaptive``:

* **adaptive** (default) — the view an evaluation must use (Athalye, Carlini & Wagner 2018,
  "Obfuscated Gradients Give a False Sense of Security"):

  - *BPDA* (Backward Pass Differentiable Approximation): the forward pass runs the real
    transform, the backward pass runs through a differentiable stand-in ``g ≈ t``
    (:meth:`Preprocessor.approximation`, the identity unless a defense says otherwise), built as
    ``g(x) + (t(x) − g(x)).detach()``.  Defenses whose transform is already differentiable
    (``differentiable = True``) are backpropagated through exactly instead.
  - *EOT* (Expectation over Transformation, Athalye et al. 2018, "Synthesizing Robust
    Adversarial Examples"): for randomized transforms the output is averaged over
    ``eot_samples`` independent draws (see :meth:`PreprocessedModel.scores` for what is averaged).

* **naive** (``adaptive=False``) — what a user gets who attacks the defended pipeline without
  thinking: autograd through the transform exactly as implemented (rounding, Pillow's JPEG and
  other non-differentiable steps contribute a zero gradient), one random draw, no EOT.

Predictions without a gradient request (``predict``, and ``scores`` outside autograd) always run
the real transform with one random draw, which is what the deployed defense does.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._validation import parse_bounds
from gauntlet.defenses.base import Defense
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.wrapped import WrappedModel

Bounds = tuple[float, float]

#: EOT draws used by the adaptive view of a randomized transform when ``eot_samples`` is omitted.
DEFAULT_EOT_SAMPLES = 10


# ------------------------------------------------------------------------------------------------
# shared checks and helpers (used by the defense modules and by the feature-squeezing detector)
def check_bounds(bounds: object, where: str) -> Bounds:
    """``bounds`` as a finite float pair ``(low, high)`` with ``low < high``, else :class:`ConfigError`."""
    return parse_bounds(where, bounds)


def check_int_param(value: object, name: str, low: int, high: int | None, where: str) -> int:
    """An int hyperparameter of a pure function in ``[low, high]``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{where}: {name} must be an int {rng}, got {value!r}")
    return int(value)


def check_batch_tensor(
    x: object, where: str, *, images: bool = False, bounds: Bounds | None = None, finite: bool = True
) -> Tensor:
    """Check a batch for a transform: a finite float tensor ``(N, ...)``; with ``images`` it must
    be ``(N, C, H, W)``; with ``bounds`` every value must lie inside them; ``finite=False`` skips
    the scan for NaN/inf (for inputs already validated upstream). Raises :class:`DataError`."""
    if not isinstance(x, Tensor):
        raise DataError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise DataError(f"{where}: x must be a float tensor, got {x.dtype}; scale it into the bounds and use .float()")
    if images and x.dim() != 4:
        raise DataError(
            f"{where}: x must be a batch of images of shape (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if x.dim() < 1 or x.numel() == 0:
        raise DataError(f"{where}: x must be a non-empty batch of shape (N, ...), got shape {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x.detach()).all()):
        raise DataError(f"{where}: x contains NaN or inf; clean or drop those samples")
    if bounds is not None:
        lo, hi = bounds
        xmin, xmax = float(x.detach().min()), float(x.detach().max())
        if xmin < lo or xmax > hi:
            raise DataError(
                f"{where}: x has values in [{xmin:.4g}, {xmax:.4g}] outside the bounds [{lo:g}, {hi:g}]; "
                "pass the bounds the data lives in"
            )
    return x


def symmetric_index(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices into an axis of length ``n`` padded by ``before``/``after`` with half-sample
    symmetric reflection (``d c b a | a b c d | d c b a``), which is SciPy ``ndimage``'s
    ``mode="reflect"`` and NumPy's ``"symmetric"``; repeats the reflection for pads longer than ``n``."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def pad_symmetric(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Pad the last two axes of ``x`` with SciPy ``ndimage``'s ``mode="reflect"`` (see
    :func:`symmetric_index`); differentiable (an index gather)."""
    h, w = x.shape[-2], x.shape[-1]
    rows = symmetric_index(h, top, bottom, x.device)
    cols = symmetric_index(w, left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


# ------------------------------------------------------------------------------------------------
class Preprocessor(Defense, abc.ABC):
    """Base class of input-preprocessing defenses (kind ``"preprocessing"``).

    Subclasses implement :meth:`transform` (the real operation; it may be non-differentiable or
    random) and may override :meth:`approximation` (the differentiable stand-in BPDA uses on the
    backward pass; the identity by default, Athalye et al. 2018 §4.1).  Class attributes:

    ``randomized``      the transform draws randomness (from the generator it is given): the
                        adaptive view averages ``eot_samples`` draws (EOT).
    ``differentiable``  autograd through :meth:`transform` already gives the true gradient, so
                        the adaptive view backpropagates through it and needs no BPDA.
    ``image_only``      inputs must be images ``(N, C, H, W)`` (``channels`` restricts ``C``).
    """

    kind: ClassVar[str] = "preprocessing"
    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False
    image_only: ClassVar[bool] = False
    channels: ClassVar[tuple[int, ...] | None] = None

    @abc.abstractmethod
    def transform(self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
        """The real transform of a batch; ``generator`` drives any randomness, ``bounds`` is the
        valid input range. Returns a tensor of the same shape, inside ``bounds``."""

    def approximation(self, x: Tensor) -> Tensor:
        """The differentiable stand-in ``g(x) ≈ transform(x)`` BPDA backpropagates through
        (Athalye et al. 2018): the identity, which suits transforms that keep ``x`` close."""
        return x

    # -- validation ------------------------------------------------------------------------------
    def check_input(self, x: object, *, bounds: Bounds | None = None, finite: bool = True) -> Tensor:
        """Validate a batch for this transform (raises :class:`DataError`); ``finite=False`` checks
        type and shape only."""
        x = check_batch_tensor(x, self.name, images=self.image_only, bounds=bounds, finite=finite)
        if self.channels is not None and x.shape[1] not in self.channels:
            allowed = " or ".join(str(c) for c in self.channels)
            raise DataError(
                f"{self.name}: images must have {allowed} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        return x

    def check_model(self, model: Model) -> None:
        """Check at wrap time that the model's declared input shape suits this transform."""
        shape = model.input_spec.shape
        if shape is None:
            return
        if self.image_only and len(shape) != 3:
            raise ConfigError(
                f"{self.name}: needs image inputs (C, H, W) but the model's input shape is {shape}"
            )
        if self.channels is not None and shape[0] not in self.channels:
            allowed = " or ".join(str(c) for c in self.channels)
            raise ConfigError(f"{self.name}: needs {allowed} channels but the model's input shape is {shape}")

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, *, bounds: Bounds = (0.0, 1.0)
    ) -> Tensor:
        """Validate ``x`` and apply :meth:`transform` (deployment use, outside any model)."""
        b = check_bounds(bounds, self.name)
        return self.transform(self.check_input(x, bounds=b), generator, bounds=b)

    # -- the defended model ----------------------------------------------------------------------
    def wrap(
        self, model: Model, *, adaptive: bool = True, eot_samples: int | None = None, seed: int = 0
    ) -> PreprocessedModel:
        """The defended model ``f(transform(x))``.

        Args:
            model: the classifier to defend (a :class:`~gauntlet.models.Model`).
            adaptive: ``True`` gives gradient attacks the BPDA/EOT view, ``False`` the naive one
                (see the module docstring).
            eot_samples: draws averaged per gradient request in the adaptive view of a randomized
                transform; default :data:`DEFAULT_EOT_SAMPLES` (and 1 for deterministic ones).
            seed: seeds the wrapper's own ``torch.Generator`` (the global RNG is never used).
        """
        return PreprocessedModel(self, model, adaptive=adaptive, eot_samples=eot_samples, seed=seed)


class PreprocessedModel(WrappedModel):
    """A model behind a preprocessing defense: ``f(transform(x))``.

    It has the inner model's (``model``) capabilities, input spec, output kind, number of classes,
    device and attack mode (:class:`~gauntlet.models.WrappedModel`), and ``randomized`` equal to
    the transform's.

    **Counting.** Every forward pass the wrapper makes goes through the inner model's counted
    ``scores``/``predict``, and the wrapper adds the inner model's query increase to its own
    ``queries``: ``N`` per call for predictions, ``K·N`` for a gradient request averaged over ``K``
    EOT draws.  For a gradient request the caller (e.g. :func:`gauntlet.attacks.base.loss_and_grad`)
    counts one gradient evaluation per sample; the wrapper adds the other ``K − 1`` to
    ``grad_evals``.  Read the wrapper's counters (the inner model's ``grad_evals`` is not touched).
    """

    def __init__(
        self,
        preprocessor: Preprocessor,
        model: Model,
        *,
        adaptive: bool = True,
        eot_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        where = f"{getattr(preprocessor, 'name', type(preprocessor).__name__)}.wrap"
        if not isinstance(preprocessor, Preprocessor):
            raise ConfigError(
                f"PreprocessedModel: preprocessor must be a Preprocessor, got {type(preprocessor).__name__}"
            )
        if not isinstance(model, Model):
            hint = (
                "; wrap it first: gauntlet.models.TorchModel(module, bounds=(0, 1))"
                if isinstance(model, torch.nn.Module)
                else ""
            )
            raise ConfigError(f"{where}: model must be a gauntlet Model, got {type(model).__name__}{hint}")
        if not isinstance(adaptive, bool):
            raise ConfigError(f"{where}: adaptive must be True or False, got {adaptive!r}")
        if eot_samples is not None and (
            isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1
        ):
            raise ConfigError(f"{where}: eot_samples must be an int >= 1 or None, got {eot_samples!r}")
        if eot_samples is not None and eot_samples > 1 and not adaptive:
            raise ConfigError(f"{where}: eot_samples={eot_samples} needs adaptive=True (the naive view uses one draw)")
        if eot_samples is not None and eot_samples > 1 and not preprocessor.randomized:
            raise ConfigError(
                f"{where}: eot_samples={eot_samples} but {preprocessor.name} is deterministic; "
                "leave eot_samples unset (EOT only helps randomized transforms)"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        preprocessor.check_model(model)

        super().__init__(model)
        self.preprocessor = preprocessor
        self.model = model
        self.adaptive = adaptive
        if eot_samples is None:
            eot_samples = DEFAULT_EOT_SAMPLES if (adaptive and preprocessor.randomized) else 1
        self.eot_samples: int = eot_samples
        self.seed = seed
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.randomized = preprocessor.randomized

    # -- description -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    @property
    def _num_classes(self) -> int | None:  # type: ignore[override]
        return self.model.num_classes

    @_num_classes.setter
    def _num_classes(self, value: int | None) -> None:  # the inner model's count is the one kept
        pass

    def infer_num_classes(self, x: Tensor) -> int:
        return self.model.infer_num_classes(x)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the wrapper's random stream from ``seed`` (default: the seed given at wrap time)."""
        self.generator.manual_seed(self.seed if seed is None else seed)

    # -- the transform in each view --------------------------------------------------------------
    def _real(self, x: Tensor) -> Tensor:
        return self.preprocessor.transform(x, self.generator, bounds=self.bounds)

    def _view(self, x: Tensor) -> Tensor:
        """The transform as the backward pass should see it (``x`` requires grad)."""
        p = self.preprocessor
        if not self.adaptive or p.differentiable:
            t = self._real(x)
            if not t.requires_grad:  # the transform left autograd (e.g. Pillow): zero gradient
                t = t + 0.0 * x
            return t
        with torch.no_grad():
            real = self._real(x.detach())
        g = p.approximation(x)
        return g + (real - g).detach()  # BPDA: value of the real transform, gradient of g

    def _inner(self, x: Tensor, count: bool) -> Tensor:
        if "scores" in self.model.capabilities:
            return self.model.scores(x, count=count)
        return self.model.predict(x, count=count)

    def _run(self, x: Tensor, count: bool) -> tuple[Tensor, bool]:
        # type and shape only: this runs on every attack step, and attacks validate x's values once
        self.preprocessor.check_input(x, finite=False)
        grad = torch.is_grad_enabled() and x.requires_grad
        if not grad:
            return self._inner(self._real(x), count), False
        k = self.eot_samples
        if k == 1:
            return self._inner(self._view(x), count), True
        n = x.shape[0]
        xk = x.repeat(k, *([1] * (x.dim() - 1)))  # K independent draws per sample, one batch
        out = self._inner(self._view(xk), count)
        out = out.view(k, n, *out.shape[1:])
        if self.output == "probabilities":
            return out.mean(dim=0), True
        # logits: log of the mean softmax probability, i.e. valid logits whose softmax is the
        # EOT-averaged probability (see scores)
        return torch.logsumexp(F.log_softmax(out, dim=-1), dim=0) - math.log(k), True

    # -- queries ---------------------------------------------------------------------------------
    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        """Scores of ``f(transform(x))``; one query per sample and transform draw.

        Under a gradient request (``x.requires_grad`` with grad enabled) the transform is seen
        through the view chosen at wrap time.  With ``K > 1`` EOT draws the returned scores are
        the *log of the average softmax probability* over the draws (for an inner model with
        ``output="probabilities"``: the average probability).  Why probabilities and not logits:
        ``softmax`` of the result is exactly the expected prediction ``E_t[p(t(x))]``, so the
        cross-entropy an attack ascends is ``−log E_t[p_y(t(x))]``, the loss of the randomized
        classifier itself, and the gradient of any probability is exactly the mean of the
        per-draw gradients, as EOT prescribes; averaging raw logits would let a draw with large
        logits dominate and is not the classifier that is deployed.
        """
        if "scores" not in self.capabilities:
            raise CapabilityError(f"{type(self).__name__} wraps a labels-only model; use a decision-based attack")
        q0 = self.model.queries
        out, grad = self._run(x, count)
        if count:
            cost = self.model.queries - q0
            self.queries += cost
            if grad:
                self.grad_evals += max(cost - int(x.shape[0]), 0)
        return out

    __call__ = scores

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        """Labels of ``f(transform(x))`` with the real transform and one draw; one query per sample."""
        q0 = self.model.queries
        with torch.no_grad():
            out, _ = self._run(x, count)
        if count:
            self.queries += self.model.queries - q0
        return out.argmax(dim=1) if out.dim() == 2 else out.to(torch.int64)

    def _forward(self, x: Tensor) -> Tensor:
        return self._run(x, False)[0]

    def __repr__(self) -> str:
        view = "adaptive" if self.adaptive else "naive"
        return f"PreprocessedModel({self.preprocessor!r}, {view}, eot_samples={self.eot_samples}, model={self.model!r})"
