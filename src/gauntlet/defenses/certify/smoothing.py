"""Randomized smoothing with a certified L2 radius (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P_{δ ~ N(0, σ² I)}[f(x + δ) = c]`` of any base classifier
``f`` is constant on the L2 ball of radius ``σ Φ⁻¹(p_A)`` around ``x`` whenever the top class has
probability ``p_A > 1/2`` under the noise (Cohen et al. 2019, Theorem 1).  ``p_A`` is unknown, so
it is bounded from below by Monte Carlo sampling; the two algorithms of the paper (§3.2.2,
"Pseudocode for certification and prediction") are implemented exactly:

``PREDICT``  draw ``n`` noisy copies, count the base classifier's labels, return the top class
             ``c_A`` when the two-sided binomial test of ``n_A`` against ``n_A + n_B`` at ``1/2``
             rejects at level ``alpha``, else abstain (``-1``).  The returned class differs from
             ``g(x)`` with probability at most ``alpha`` (Theorem 2 of the paper).
``CERTIFY``  select ``c_A`` from ``n0`` draws, estimate with ``n`` fresh draws, take the one-sided
             ``(1 - alpha)`` Clopper–Pearson lower bound ``p_A`` of ``n_A / n`` and return
             ``(c_A, σ Φ⁻¹(p_A))`` if ``p_A > 1/2``, else abstain.  With probability at least
             ``1 - alpha`` the certificate is correct.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from gauntlet._batch import check_input_batch, module_dtype_device
from gauntlet._validation import Constraint, Interval, IsNone, validate_params
from gauntlet.defenses.base import check_labels
from gauntlet.defenses.certify._result import ABSTAIN, Certification, Certifier, check_seed
from gauntlet.defenses.registry import register
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model

SIGMA: list[Constraint] = [Interval(float, 0, None, closed="neither")]
COUNT: list[Constraint] = [Interval(int, 1, None)]
ALPHA: list[Constraint] = [Interval(float, 0, 1, closed="neither")]


def clopper_pearson_lower(count: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper–Pearson lower confidence bound of a binomial proportion:
    ``Beta(alpha; k, n - k + 1)`` quantile, ``0`` where ``k = 0`` (Clopper & Pearson 1934).

    Equals ``statsmodels.proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``, the bound
    Cohen et al.'s reference code uses.
    """
    from scipy.stats import beta  # type: ignore[import-untyped]  # stubs are the separate scipy-stubs package

    k = np.asarray(count, dtype=np.float64)
    safe = np.where(k > 0, k, 1.0)
    out = beta.ppf(alpha, safe, n - k + 1.0)
    return np.where(k > 0, out, 0.0)


def binomial_pvalue_half(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial test p-value of ``n_a`` successes in ``n_a + n_b`` trials against
    ``p = 1/2``: ``min(1, 2 · P[Bin(n_a + n_b, 1/2) ≤ min(n_a, n_b)])`` (the distribution is
    symmetric, so this is what ``scipy.stats.binomtest(...).pvalue`` returns)."""
    from scipy.stats import binom

    a = np.asarray(n_a, dtype=np.float64)
    b = np.asarray(n_b, dtype=np.float64)
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(a, b), a + b, 0.5))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, t in modes:
            m.training = t


class RandomizedSmoothing:
    """The Gaussian-smoothed classifier of a base classifier, with Cohen et al.'s (2019) PREDICT and
    CERTIFY.

    Args:
        module_or_model: the base classifier ``f``: a ``torch.nn.Module`` returning scores
            ``(N, C)``, or a :class:`gauntlet.models.Model` (any capability; labels suffice).  A
            Model's queries are counted: every noisy copy is one query.  The base classifier
            should have been trained with Gaussian noise of the same ``sigma``
            (``gaussian_augmentation`` training), otherwise ``g`` abstains almost everywhere.
        sigma: standard deviation of the isotropic Gaussian noise, in input units.
        num_classes: number of classes; taken from the model or one forward pass when omitted
            (required for a labels-only Model that does not declare it).
        batch_size: noisy copies per forward pass; bounds memory (copies of several inputs share a
            batch when ``n`` is small).
    """

    def __init__(
        self,
        module_or_model: nn.Module | Model,
        *,
        sigma: float,
        num_classes: int | None = None,
        batch_size: int = 1000,
    ) -> None:
        validate_params(
            "RandomizedSmoothing",
            {"sigma": sigma, "num_classes": num_classes, "batch_size": batch_size},
            {"sigma": SIGMA, "num_classes": [Interval(int, 2, None), IsNone()], "batch_size": COUNT},
        )
        if isinstance(module_or_model, Model):
            self.model: Model | None = module_or_model
            self.module: nn.Module | None = None
        elif isinstance(module_or_model, nn.Module):
            self.model, self.module = None, module_or_model
        else:
            raise ConfigError(
                "RandomizedSmoothing: the base classifier must be a torch.nn.Module or a gauntlet Model, "
                f"got {type(module_or_model).__name__}"
            )
        self.sigma = sigma
        self.num_classes = num_classes
        self.batch_size = batch_size

    # -- the base classifier ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        if self.model is not None:
            with self.model.attack_mode():
                yield
        else:
            assert self.module is not None
            with _eval_mode(self.module), torch.no_grad():
                yield

    def _labels(self, x: Tensor, num_classes: int, where: str) -> Tensor:
        if self.model is not None:
            pred = self.model.predict(x)
        else:
            assert self.module is not None
            out = self.module(x)
            if not isinstance(out, Tensor) or out.dim() != 2:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise DataError(f"{where}: the module must return scores of shape (N, C), got {shape}")
            pred = out.argmax(dim=1)
        pred = pred.to(torch.int64)
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
            raise DataError(
                f"{where}: the base classifier returned label {int(pred.max())} but num_classes is {num_classes}; "
                "pass the right num_classes="
            )
        return pred

    def _check_x(self, x: object, where: str) -> Tensor:
        if self.model is not None:
            from gauntlet.attacks.base import check_batch

            check_batch(x, self.model, where)  # type: ignore[arg-type]
            return x  # type: ignore[return-value]
        assert self.module is not None
        dtype, device = module_dtype_device(self.module)
        return check_input_batch(
            x, where=where, dtype=dtype, device=device, owner="the module", dtype_owner="the module's parameters are"
        )

    def _classes(self, x: Tensor, where: str) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        if self.model is not None:
            return self.model.infer_num_classes(x)
        assert self.module is not None
        with _eval_mode(self.module), torch.no_grad():
            out = self.module(x[:1])
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise DataError(f"{where}: the module must return scores of shape (N, C) with C >= 2, got {shape}")
        return int(out.shape[1])

    # -- Monte Carlo ---------------------------------------------------------------------------
    def sample_counts(self, x: Tensor, num: int, generator: torch.Generator, num_classes: int, where: str = "") -> Tensor:
        """``(N, C)`` int64: how often the base classifier returns each class on ``num`` noisy
        copies ``x_i + N(0, σ² I)`` of every input (``SampleUnderNoise`` of Cohen et al.).

        Copies are drawn from ``generator`` in chunks of ``batch_size`` over the flattened
        (input, draw) index, so memory stays bounded whatever ``N`` and ``num`` are.
        """
        where = where or "RandomizedSmoothing"
        n_inputs = x.shape[0]
        total = n_inputs * num
        counts = torch.zeros(n_inputs * num_classes, dtype=torch.int64, device=x.device)
        sigma = float(self.sigma)
        with self._session():
            for s in range(0, total, self.batch_size):
                e = min(s + self.batch_size, total)
                owner = torch.arange(s, e, device=x.device) // num
                xb = x[owner]
                noise = torch.randn(xb.shape, generator=generator, device=x.device, dtype=x.dtype)
                pred = self._labels(xb + sigma * noise, num_classes, where)
                counts += torch.bincount(owner * num_classes + pred, minlength=n_inputs * num_classes)
        return counts.view(n_inputs, num_classes)

    def _check_call(self, where: str, **params: Any) -> None:
        constraints = {"n": COUNT, "n0": COUNT, "alpha": ALPHA}
        validate_params(where, params, constraints)

    # -- the two algorithms of Cohen et al. --------------------------------------------------------
    def predict(self, x: Tensor, *, n: int = 10_000, alpha: float = 0.001, seed: int = 0) -> Tensor:
        """PREDICT (Cohen et al. 2019): the smoothed classifier's label per input, ``-1`` (abstain)
        unless the two-sided binomial test of the top two counts rejects at level ``alpha``.

        Returns ``(N,)`` int64.  A returned label differs from ``g(x)`` with probability ``<= alpha``.
        """
        where = "RandomizedSmoothing.predict"
        self._check_call(where, n=n, alpha=alpha)
        check_seed(seed, where)
        x = self._check_x(x, where)
        c = self._classes(x, where)
        g = torch.Generator(device=x.device).manual_seed(seed)
        counts = self.sample_counts(x, n, g, c, where)
        top = counts.topk(2, dim=1)
        n_a, n_b = top.values[:, 0].cpu().numpy(), top.values[:, 1].cpu().numpy()
        pvalue = torch.from_numpy(binomial_pvalue_half(n_a, n_b)).to(x.device)
        return torch.where(pvalue <= alpha, top.indices[:, 0], torch.full_like(top.indices[:, 0], ABSTAIN))

    def certify(
        self,
        x: Tensor,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        seed: int = 0,
        y: Tensor | None = None,
    ) -> Certification:
        """CERTIFY (Cohen et al. 2019): per input, the smoothed prediction and its certified L2 radius.

        ``c_A`` is the most frequent class over ``n0`` noisy copies; ``n_A`` its count over ``n``
        fresh copies; ``p_A`` the one-sided ``(1 - alpha)`` Clopper–Pearson lower bound of
        ``n_A / n``; the radius is ``σ Φ⁻¹(p_A)`` where ``p_A > 1/2``, else the input is abstained
        on (prediction ``-1``, radius ``0``).  With ``n`` draws no radius can exceed
        ``σ Φ⁻¹(alpha^(1/n))`` (stored as ``info["max_radius"]``).

        ``info`` holds ``counts0`` / ``counts`` ``(N, C)``, ``selected`` (``c_A``), ``count`` (``n_A``)
        and ``p_lower`` (``p_A``), so every radius can be recomputed from the counts.
        """
        from scipy.stats import norm as normal

        where = "RandomizedSmoothing.certify"
        self._check_call(where, n0=n0, n=n, alpha=alpha)
        check_seed(seed, where)
        x = self._check_x(x, where)
        c = self._classes(x, where)
        if y is not None:
            y = check_labels(y, x.shape[0], c, x.device, where)
        t0 = time.perf_counter()
        g = torch.Generator(device=x.device).manual_seed(seed)
        counts0 = self.sample_counts(x, n0, g, c, where)
        selected = counts0.argmax(dim=1)
        counts = self.sample_counts(x, n, g, c, where)
        n_a = counts.gather(1, selected[:, None])[:, 0]
        p_lower = clopper_pearson_lower(n_a.cpu().numpy(), n, float(alpha))
        ok = p_lower > 0.5
        radius = np.where(ok, float(self.sigma) * normal.ppf(np.where(ok, p_lower, 0.75)), 0.0)
        ok_t = torch.from_numpy(ok).to(x.device)
        prediction = torch.where(ok_t, selected, torch.full_like(selected, ABSTAIN))
        max_radius = float(self.sigma) * float(normal.ppf(float(alpha) ** (1.0 / n)))
        return Certification(
            method="randomized_smoothing",
            norm="l2",
            prediction=prediction,
            radius=torch.from_numpy(radius).to(device=x.device, dtype=torch.float64),
            y=y,
            params={
                "sigma": self.sigma, "n0": n0, "n": n, "alpha": alpha,
                "batch_size": self.batch_size, "seed": seed,
            },
            seconds=time.perf_counter() - t0,
            info={
                "counts0": counts0,
                "counts": counts,
                "selected": selected,
                "count": n_a,
                "p_lower": torch.from_numpy(p_lower).to(device=x.device, dtype=torch.float64),
                "max_radius": max_radius if math.isfinite(max_radius) and max_radius > 0 else 0.0,
            },
        )


@register
class RandomizedSmoothingCertifier(Certifier):
    """Certified L2 robustness by Gaussian randomized smoothing (Cohen, Rosenfeld & Kolter 2019).

    ``certify(model, x, y)`` runs CERTIFY on every input (see :meth:`RandomizedSmoothing.certify`):
    the smoothed prediction, ``-1`` where it abstains, and the L2 radius ``σ Φ⁻¹(p_A)`` within which
    it is guaranteed constant with probability ``>= 1 - alpha``.  The defaults are the paper's
    (``n0 = 100``, ``n = 100 000``, ``alpha = 0.001``); the base model should be trained with
    ``gaussian_augmentation`` at the same ``sigma``.

    Args:
        sigma: noise standard deviation in input units (the paper uses 0.12–1.0 on [0, 1] images).
        n0: noise draws used to select the top class.
        n: noise draws used to estimate its probability (bounds the largest certifiable radius:
            ``σ Φ⁻¹(alpha^(1/n))``, about 3.8 σ at the defaults).
        alpha: failure probability of each certificate.
        batch_size: noisy copies per forward pass.
    """

    name: ClassVar[str] = "randomized_smoothing"
    description: ClassVar[str] = "certified L2 radius by Gaussian randomized smoothing (Cohen et al. 2019)"
    reference: ClassVar[str] = (
        'Cohen et al., "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019, '
        "https://arxiv.org/abs/1902.02918"
    )
    norm: ClassVar[str] = "l2"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "sigma": SIGMA,
        "n0": COUNT,
        "n": COUNT,
        "alpha": ALPHA,
        "batch_size": COUNT,
    }

    def __init__(
        self,
        *,
        sigma: float = 0.25,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        **unknown: Any,
    ) -> None:
        self._reject_unknown(unknown)
        self.sigma = sigma
        self.n0 = n0
        self.n = n
        self.alpha = alpha
        self.batch_size = batch_size
        self._validate()

    def smoothed(self, model: nn.Module | Model, num_classes: int | None = None) -> RandomizedSmoothing:
        """The :class:`RandomizedSmoothing` classifier of ``model`` with this defense's ``sigma``."""
        return RandomizedSmoothing(model, sigma=self.sigma, num_classes=num_classes, batch_size=self.batch_size)

    def certify(self, model: Any, x: Tensor, y: Tensor | None = None, *, seed: int = 0) -> Certification:
        """CERTIFY every input of ``x`` against ``model`` (a gauntlet Model or a ``torch.nn.Module``)."""
        return self.smoothed(model).certify(x, n0=self.n0, n=self.n, alpha=self.alpha, seed=seed, y=y)


__all__ = [
    "RandomizedSmoothing",
    "RandomizedSmoothingCertifier",
    "binomial_pvalue_half",
    "clopper_pearson_lower",
]
