"""The likelihood-ratio attack, LiRA (Carlini et al. 2022)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, IsNone
from gauntlet.attacks.inference._base import REFERENCE_CONSTRAINTS, ReferenceAttack, logit_confidence, query_scores
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError
from gauntlet.models.base import Model


def _normal_logpdf(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    return -0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


@register
class LiRA(ReferenceAttack):
    """Per-example Gaussians of the logit-scaled confidence under IN and OUT reference models.

    ``reference_models`` models are trained like the target on random halves of the candidates,
    each candidate IN for exactly half of them (a balanced design; ``population`` is not used).  For a candidate ``(x, y)`` the statistic is ``φ = log p_y - log(1 - p_y)`` (from
    logits, stably).  **Online**: fit ``N(μ_in, σ_in²)`` to ``φ`` under the models that trained on
    it and ``N(μ_out, σ_out²)`` under those that did not, and score the target's ``φ`` by the log
    likelihood ratio.  **Offline** (``online=False``): only the OUT models are used and the score
    is the one-sided ``Φ((φ - μ_out) / σ_out)``.  With few models the variance is pooled over all
    candidates (``global_variance``, the paper's advice below 64 models).

    Args:
        reference_models: number of reference models (even; 2 at least; the paper uses 16–256).
        online: use IN and OUT models (stronger) or OUT models only.
        global_variance: one σ per side for all candidates instead of one per candidate;
            ``None`` = pooled when fewer than 64 models.
        architecture: the network reference models are trained as (default: the target's own,
            re-initialised; required when the target is not a TorchModel).
        train: training method and hyperparameters for the reference models, like the
            target's training (``{"method": "standard", "epochs": 30, ...}``).
        cache_dir: where reference models are checkpointed (default ``$GAUNTLET_CACHE/membership``).
    """

    name = "lira"
    description = "membership inference: likelihood ratio of per-example Gaussians under IN/OUT reference models"
    reference = "Carlini et al., 'Membership Inference Attacks From First Principles', IEEE S&P 2022, https://arxiv.org/abs/2112.03570"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **REFERENCE_CONSTRAINTS,
        "online": [Boolean()],
        "global_variance": [Boolean(), IsNone()],
    }

    def __init__(
        self,
        *,
        reference_models: int = 16,
        online: bool = True,
        global_variance: bool | None = None,
        architecture: nn.Module | None = None,
        train: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.reference_models = reference_models
        self.online = online
        self.global_variance = global_variance
        self.architecture = architecture
        self.train = train if train is not None else {"method": "standard", "epochs": 10}
        self.cache_dir = cache_dir
        self._validate()

    def _scores(
        self, model: Model, x: Tensor, y: Tensor, population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator, seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        if self.reference_models < 2:  # pragma: no cover - the constraint refuses it
            raise ConfigError(f"{self.name}: reference_models must be >= 2")
        models, masks = self._references(model, x, y, generator, seed)
        n = x.shape[0]
        masks = masks[:, :n]
        phi_ref = torch.stack([logit_confidence(m, query_scores(m, x), y) for m in models])  # (R, n)
        phi = logit_confidence(model, query_scores(model, x), y)
        pooled = self.global_variance if self.global_variance is not None else self.reference_models < 64
        out_mu, out_sd = _moments(phi_ref, ~masks, pooled)
        if self.online:
            in_mu, in_sd = _moments(phi_ref, masks, pooled)
            score = _normal_logpdf(phi, in_mu, in_sd) - _normal_logpdf(phi, out_mu, out_sd)
        else:
            # the one-sided test's p-value is 1 - Φ(z): ranking by z itself is the same ranking
            # without Φ saturating at 1 far in the tail
            score = (phi - out_mu) / out_sd
        return score, {"reference_models": len(models), "online": self.online, "global_variance": bool(pooled)}


def _moments(phi: Tensor, use: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
    """Per-candidate mean of ``phi`` over the models in ``use`` and its standard deviation
    (per candidate, or pooled over all candidates), floored to stay positive."""
    w = use.double()
    cnt = w.sum(dim=0).clamp_min(1)
    mu = (phi * w).sum(dim=0) / cnt
    dev2 = ((phi - mu) ** 2 * w)
    if pooled:
        var = dev2.sum() / (w.sum() - w.shape[1]).clamp_min(1)
        sd = var.sqrt().expand_as(mu)
    else:
        sd = (dev2.sum(dim=0) / (cnt - 1).clamp_min(1)).sqrt()
    return mu, sd.clamp_min(1e-3)
