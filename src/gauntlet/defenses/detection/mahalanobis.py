"""Mahalanobis-distance detection on penultimate features (Lee, Lee, Lee & Shin, "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018)."""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Check, Constraint, Interval, IsNone, Options
from gauntlet.attacks.base import check_batch
from gauntlet.defenses.detection._base import Detector
from gauntlet.defenses.registry import register
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.features import capture, hook_target
from gauntlet.models.torch_model import TorchModel


def ledoit_wolf(centered: Tensor) -> tuple[Tensor, float]:
    """Ledoit–Wolf shrinkage covariance of already centred rows ``(n, d)`` (Ledoit & Wolf 2004).

    ``S = XᵀX / n`` is shrunk towards ``μ I`` with ``μ = tr(S) / d``:
    ``Σ = (1 − α) S + α μ I`` with ``α = min(b̄², δ²) / δ²``, ``δ² = ||S − μI||²_F`` and
    ``b̄² = (1/n²) Σ_k ||x_k x_kᵀ − S||²_F`` (the same estimator as ``sklearn.covariance.ledoit_wolf``
    with ``assume_centered=True``).  Returns ``(Σ, α)``; computed in float64.
    """
    x = centered.to(torch.float64)
    n, d = x.shape
    s = x.T @ x / n
    mu = float(torch.trace(s)) / d
    delta2 = float(((s - mu * torch.eye(d, dtype=s.dtype, device=s.device)) ** 2).sum())
    if delta2 <= 0.0:  # S is already a multiple of the identity
        return s, 0.0
    sq = (x * x).sum(dim=1)
    b2 = (float((sq * sq).sum()) / n - float((s * s).sum())) / n
    alpha = min(max(b2, 0.0), delta2) / delta2
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    return (1.0 - alpha) * s + alpha * mu * eye, alpha


@register
class MahalanobisDetector(Detector):
    """Flag inputs far from every class in feature space (Lee et al. 2018).

    On clean data with labels, :meth:`~Detector.fit` fits class-conditional Gaussians with one
    tied covariance to the network's features ``φ(x)``: class means ``μ_c`` and a covariance
    ``Σ`` of ``φ(x) − μ_y``.  The score is the distance to the closest class,
    ``score(x) = min_c (φ(x) − μ_c)ᵀ Σ⁻¹ (φ(x) − μ_c)``, i.e. minus Lee et al.'s confidence
    ``M(x) = max_c −(φ(x) − μ_c)ᵀ Σ⁻¹ (φ(x) − μ_c)``.  It is differentiable w.r.t. ``x``.

    Features: by default the input of the model's last ``nn.Linear`` (in ``named_modules()``
    order; the penultimate representation of a classifier ending in a linear layer), read with a
    forward pre-hook; ``layer="name"`` reads the flattened *output* of that named submodule
    instead.  Needs a :class:`~gauntlet.models.TorchModel`.

    Covariance: Lee et al. use the maximum-likelihood estimate and its pseudo-inverse
    (scikit-learn's ``EmpiricalCovariance``), which is singular whenever a feature never varies
    (dead ReLU units) or there are fewer samples than dimensions.  Here ``shrinkage="auto"``
    (default) uses the Ledoit–Wolf estimate (see :func:`ledoit_wolf`), a float in [0, 1] shrinks
    by that fixed amount towards ``tr(Σ)/d · I``, and ``0.0`` is the plain estimate; the precision
    matrix is always the Hermitian pseudo-inverse in float64, so ``0.0`` reproduces Lee et al.

    Input preprocessing (Lee et al. §2, optional): with ``noise_magnitude = ε > 0`` the score is
    read at ``x̂ = x − ε · sign(∇ₓ score(x))``, a small step towards the closest class that moves
    clean points more than adversarial ones.  ``x̂`` is not clipped to the input bounds (as in the
    paper); the step's direction is treated as a constant when differentiating the score.  Their
    layer ensemble with a logistic-regression combiner is not implemented (one layer).

    Args:
        layer: name of the submodule whose output is the feature (``None``: input of the last
            ``nn.Linear``).
        shrinkage: ``"auto"`` (Ledoit–Wolf) or a fixed shrinkage in [0, 1].
        noise_magnitude: ε of the input-preprocessing step, >= 0 (0 disables it).
    """

    name = "mahalanobis"
    description = "Mahalanobis distance to class-conditional Gaussians on penultimate features (Lee et al. 2018)"
    reference = (
        'Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", '
        "NeurIPS 2018, https://arxiv.org/abs/1807.03888"
    )
    needs_labels = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "layer": [IsNone(), Check(lambda v: isinstance(v, str) and v != "", "a submodule name (non-empty str)")],
        "shrinkage": [Options(("auto",)), Interval(float, 0.0, 1.0)],
        "noise_magnitude": [Interval(float, 0.0, None)],
    }

    means_: Tensor | None = None
    precision_: Tensor | None = None
    classes_: Tensor | None = None
    shrinkage_: float | None = None
    _mean_terms: Tensor | None = None

    def __init__(self, *, layer: str | None = None, shrinkage: float | str = "auto", noise_magnitude: float = 0.0) -> None:
        self.layer = layer
        self.shrinkage = shrinkage
        self.noise_magnitude = noise_magnitude
        self._validate()

    # -- features --------------------------------------------------------------------------------
    def _check_model(self, model: Model) -> None:
        if not isinstance(model, TorchModel):
            raise CapabilityError(
                f"{self.name}: reads a network's internal features, so it needs a gauntlet TorchModel, "
                f"got {type(model).__name__}"
            )
        self._hook_target(model.module)

    def _hook_target(self, module: nn.Module) -> nn.Module:
        return hook_target(module, self.layer, self.name)

    def _capture(self, module: nn.Module) -> contextlib.AbstractContextManager[list[Tensor]]:
        return capture(module, self.layer, self.name)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(φ(x) (N, D), model scores on x)`` from one forward pass (keeps autograd's graph)."""
        self._check_fitted(f"{self.name}.features")
        model = self.model_
        assert isinstance(model, TorchModel)
        check_batch(x, model, where=f"{self.name}.features")
        with model.attack_mode():
            return self._features(model, x)

    def _features(self, model: TorchModel, x: Tensor) -> tuple[Tensor, Tensor]:
        with self._capture(model.module) as seen:
            out = model.scores(x, count=False)
        if len(seen) != 1:
            where = "the last nn.Linear" if self.layer is None else f"submodule {self.layer!r}"
            raise ConfigError(
                f"{self.name}: {where} ran {len(seen)} times in one forward pass (expected once); pass layer='<name>'"
            )
        return seen[0].flatten(1), out

    # -- fitting ---------------------------------------------------------------------------------
    def _fit_statistics(self, model: Model, x: Tensor, y: Tensor | None) -> None:
        assert isinstance(model, TorchModel) and y is not None
        feats = torch.cat([self._features(model, x[s : s + self.batch_size_])[0] for s in range(0, x.shape[0], self.batch_size_)])
        feats = feats.to(torch.float64)
        classes = torch.unique(y)
        if classes.numel() < 2:
            raise DataError(f"{self.name}.fit: y_clean holds a single class; the detector needs clean examples of several classes")
        means = torch.stack([feats[y == c].mean(dim=0) for c in classes])
        index = torch.searchsorted(classes, y)
        centered = feats - means[index]
        if self.shrinkage == "auto":
            cov, alpha = ledoit_wolf(centered)
        else:
            alpha = float(self.shrinkage)
            s = centered.T @ centered / centered.shape[0]
            mu = float(torch.trace(s)) / s.shape[0]
            cov = (1.0 - alpha) * s + alpha * mu * torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
        self.means_ = means
        self.precision_ = torch.linalg.pinv(cov, hermitian=True)
        self._mean_terms = ((means @ self.precision_) * means).sum(dim=1)
        self.classes_ = classes
        self.shrinkage_ = alpha

    # -- scoring ---------------------------------------------------------------------------------
    def distances(self, feats: Tensor) -> Tensor:
        """Squared Mahalanobis distance ``(N, C)`` of features to every fitted class mean (float64)."""
        assert self.means_ is not None and self.precision_ is not None and self._mean_terms is not None
        f = feats.to(torch.float64)
        fp = f @ self.precision_  # (N, D): one D×D product per sample, not one per class
        # (f − μ)ᵀP(f − μ) = fᵀPf − 2 fᵀPμ + μᵀPμ  (P symmetric)
        d = (fp * f).sum(dim=1, keepdim=True) - 2.0 * fp @ self.means_.T + self._mean_terms[None, :]
        return d.clamp_min(0.0)

    def _score_at(self, x: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model_
        assert isinstance(model, TorchModel)
        feats, out = self._features(model, x)
        return self.distances(feats).amin(dim=1), out

    def _score_logits(self, x: Tensor, adaptive: bool) -> tuple[Tensor, Tensor]:
        eps = float(self.noise_magnitude)
        if eps == 0.0:
            s, out = self._score_at(x)
            return s.to(x.dtype), out
        # Lee et al.'s input preprocessing: one signed-gradient step towards the closest class
        xd = x.detach().requires_grad_(True)
        with torch.enable_grad():
            s0, out = self._score_at(xd)
            (g,) = torch.autograd.grad(s0.sum(), xd)
        s, _ = self._score_at(x - eps * g.sign())
        if torch.is_grad_enabled() and x.requires_grad:
            model = self.model_
            assert model is not None
            out = model.scores(x, count=False)  # differentiable logits on x itself
        else:
            out = out.detach()
        return s.to(x.dtype), out
