"""STRIP (Gao et al. 2019): superimpose an input with random clean images and look at the entropy
of the model's predictions; a trojaned input keeps being sent to the target class whatever it
is blended with (low entropy), a clean one does not."""

from __future__ import annotations

import math
import statistics
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet._batch import check_input_batch
from gauntlet._validation import Constraint, Interval, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import Sanitizer
from gauntlet.errors import CapabilityError, ConfigError, DataError

__all__ = ["Strip"]

#: how an input and an overlay image are superimposed: ``"add"`` sums them and clips to the
#: bounds (Gao et al.'s code: ``cv2.addWeighted(x, 1, overlay, 1, 0)``), ``"average"`` takes their mean
BLENDS = ("add", "average")


@register
class Strip(Sanitizer):
    """STRIP: STRong Intentional Perturbation (Gao et al. 2019).

    An input ``x`` is superimposed with ``n_samples`` images drawn at random from a pool of clean
    images; the model classifies each blend and the Shannon entropy (bits) of each prediction is
    averaged over the blends.  A blend of two clean images is ambiguous, so clean inputs get high
    entropy; a trigger survives the blend and keeps dragging the prediction to the target class,
    so triggered inputs get low entropy.  Following the paper, the clean entropies are fitted with
    a normal distribution and the threshold is its ``false_rejection_rate`` quantile: an input
    with entropy below it is flagged, so about that share of clean inputs is flagged (rejected).

    Two ways to use it:

    * **At inference time** (the paper's setting): ``fit(model, x_clean)`` takes a held-out clean
      set as the overlay pool and calibrates the threshold on its entropies (each image blended
      with the *other* pool images); then ``check(x)`` returns per-input flags and entropies of
      test inputs, ``is_triggered(x)`` the flags alone.
    * **As a training-data sanitizer**: ``detect(model, x, y)`` on the training rows, with
      ``model`` trained on them.  After ``fit`` it uses the fitted pool and threshold (the model
      must be the fitted one).  Without ``fit`` the training rows are their own overlay pool
      (each row blended with other rows; most of them are clean) and the threshold is the same
      normal quantile, fitted robustly (median and 1.4826 × MAD instead of mean and standard
      deviation) so the low-entropy poison does not drag it down.  ``scores`` are ``-entropy``.

    Args:
        n_samples: overlay images per input (the paper uses 100 at inference, 20 suffices on MNIST).
        false_rejection_rate: share of clean inputs flagged at the threshold, in (0, 1).
        blend: ``"add"`` (x + overlay, clipped to the bounds; the authors' code) or ``"average"``.
        batch_size: blends per forward pass.
    """

    name: ClassVar[str] = "strip"
    description: ClassVar[str] = "STRIP: low prediction entropy under superimposed clean images flags triggered inputs"
    reference: ClassVar[str] = (
        'Gao, Xu, Wang, Chen, Ranasinghe and Nepal, "STRIP: A Defence Against Trojan Attacks on Deep Neural '
        'Networks", ACSAC 2019, https://arxiv.org/abs/1902.06531'
    )
    needs_model: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "n_samples": [Interval(int, 1, None)],
        "false_rejection_rate": [Interval(float, 0, 1, closed="neither")],
        "blend": [Options(BLENDS)],
        "batch_size": [Interval(int, 1, None)],
    }

    #: fitted state (``None`` before :meth:`fit`)
    model_: Any = None
    pool_: Tensor | None = None
    threshold_: float | None = None
    calibration_entropy_: Tensor | None = None
    entropy_mean_: float | None = None
    entropy_std_: float | None = None

    def __init__(
        self,
        *,
        n_samples: int = 20,
        false_rejection_rate: float = 0.01,
        blend: str = "add",
        batch_size: int = 512,
    ) -> None:
        self.n_samples = n_samples
        self.false_rejection_rate = false_rejection_rate
        self.blend = blend
        self.batch_size = batch_size
        self._validate()

    # -- the statistic -----------------------------------------------------------------------------
    def _check_model(self, model: Any, where: str) -> None:
        from gauntlet.models.base import Model

        if not isinstance(model, Model):
            hint = "; wrap it first: gauntlet.models.TorchModel(module, bounds=(0, 1))" if isinstance(model, torch.nn.Module) else ""
            raise ConfigError(f"{where}: model must be a gauntlet Model, got {type(model).__name__}{hint}")
        if not model.has("scores"):
            raise CapabilityError(f"{where}: STRIP reads the model's class probabilities but {type(model).__name__} returns labels only")

    def _check_x(self, model: Any, x: Any, where: str, what: str = "x") -> Tensor:
        spec = model.input_spec
        check_input_batch(x, where=where, what=what, shape=spec.shape, bounds=spec.bounds)
        return x.detach().to(model.device)

    def _entropy(self, model: Any, x: Tensor, pool: Tensor, generator: torch.Generator, *, same: bool = False) -> Tensor:
        """Mean prediction entropy (bits) of every row of ``x`` over ``n_samples`` blends with
        images drawn uniformly from ``pool``; ``same=True`` when ``x`` *is* the pool, so a row is
        never blended with itself.  No validation: the public methods check their inputs."""
        n, p, k = int(x.shape[0]), int(pool.shape[0]), int(self.n_samples)
        if same:
            if p < 2:
                raise DataError(f"{self.name}: blending every row with other rows needs at least 2 rows, got {p}")
            idx = torch.randint(0, p - 1, (n, k), generator=generator)
            idx = idx + (idx >= torch.arange(n)[:, None]).long()  # skip the row itself
        else:
            idx = torch.randint(0, p, (n, k), generator=generator)
        idx = idx.to(pool.device).flatten()
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
        lo, hi = (float(b) for b in model.input_spec.bounds)
        out = torch.empty(n * k, dtype=torch.float64)
        bs = int(self.batch_size)
        with torch.no_grad():
            for s in range(0, n * k, bs):
                a, b = x[rows[s : s + bs]], pool[idx[s : s + bs]]
                blend = (a + b).clamp(lo, hi) if self.blend == "add" else 0.5 * (a + b)
                sc = model.scores(blend, count=False)
                logp = F.log_softmax(sc, dim=1) if model.output == "logits" else sc.clamp_min(1e-30).log()
                ent = -(logp.exp() * logp).sum(1) / math.log(2)
                out[s : s + bs] = ent.double().cpu()
        return out.view(n, k).mean(1).float()

    def _threshold(self, entropy: Tensor, robust: bool) -> tuple[float, float, float]:
        e = entropy.double()
        if robust:
            med = float(e.median())
            mu, sigma = med, 1.4826 * float((e - med).abs().median())
        else:
            mu, sigma = float(e.mean()), float(e.std(unbiased=False))  # scipy.stats.norm.fit: the MLE
        if sigma <= 0:  # every entropy equal: nothing to calibrate a spread on
            return mu, mu, 0.0
        return mu + sigma * statistics.NormalDist().inv_cdf(float(self.false_rejection_rate)), mu, sigma

    # -- inference time ----------------------------------------------------------------------------
    def fit(self, model: Any, x_clean: Tensor, *, seed: int = 0) -> Strip:
        """Keep ``x_clean`` (held-out clean inputs) as the overlay pool and set the threshold to
        the ``false_rejection_rate`` quantile of a normal fitted to their entropies."""
        where = f"{self.name}.fit"
        self._validate()
        self._check_model(model, where)
        x_clean = self._check_x(model, x_clean, where, "x_clean")
        if x_clean.shape[0] < 2:
            raise DataError(f"{where}: x_clean needs at least 2 clean inputs to blend and calibrate on, got {x_clean.shape[0]}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        g = torch.Generator().manual_seed(seed)
        ent = self._entropy(model, x_clean, x_clean, g, same=True)
        self.threshold_, self.entropy_mean_, self.entropy_std_ = self._threshold(ent, robust=False)
        self.model_, self.pool_, self.calibration_entropy_ = model, x_clean, ent
        return self

    def check(self, x: Tensor, *, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``(flagged, entropy)`` of test inputs ``x``: bool ``(N,)`` (True = triggered, entropy
        below the threshold) and the mean entropy in bits ``(N,)``."""
        where = f"{self.name}.check"
        if self.model_ is None or self.pool_ is None or self.threshold_ is None:
            raise ConfigError(f"{where}: STRIP is not fitted; call fit(model, x_clean) with held-out clean inputs first")
        x = self._check_x(self.model_, x, where)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        ent = self._entropy(self.model_, x, self.pool_, torch.Generator().manual_seed(seed))
        return ent < self.threshold_, ent

    def is_triggered(self, x: Tensor, *, seed: int = 0) -> Tensor:
        """Bool ``(N,)``: which test inputs STRIP flags as carrying a trigger."""
        return self.check(x, seed=seed)[0]

    # -- training data -----------------------------------------------------------------------------
    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        where = f"{self.name}.detect"
        self._check_model(model, where)
        x = self._check_x(model, x, where)
        if self.model_ is not None:
            if model is not self.model_:
                raise ConfigError(
                    f"{where}: STRIP was fitted on another model; fit(model, x_clean) on this one, "
                    "or use an unfitted STRIP (the training rows are then the overlay pool)"
                )
            assert self.pool_ is not None and self.threshold_ is not None
            ent = self._entropy(model, x, self.pool_, generator)
            threshold, pool = float(self.threshold_), "fitted"
            mu, sigma = self.entropy_mean_, self.entropy_std_
        else:
            ent = self._entropy(model, x, x, generator, same=True)
            threshold, mu, sigma = self._threshold(ent, robust=True)
            pool = "training rows"
        flagged = ent < threshold
        info = {"entropy": ent, "threshold": threshold, "pool": pool, "entropy_mean": mu, "entropy_std": sigma}
        return -ent, flagged, info
