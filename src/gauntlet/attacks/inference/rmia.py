"""The robust membership-inference attack, RMIA (Zarifzadeh et al. 2024)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, Interval
from gauntlet.attacks.inference._base import (
    REFERENCE_CONSTRAINTS,
    ReferenceAttack,
    query_scores,
    true_class_probability,
)
from gauntlet.attacks.registry import register
from gauntlet.models.base import Model


@register
class RMIA(ReferenceAttack):
    """Pairwise likelihood ratios against population points, calibrated by reference models.

    For a candidate ``x`` and a population point ``z`` (attacker data, not a candidate), with
    ``Pr(·|θ)`` the target's probability of the true class and ``Pr(·)`` its average over the
    reference models, ``LR(x, z) = [Pr(x|θ) / Pr(x)] / [Pr(z|θ) / Pr(z)]``; the score of ``x`` is
    the share of population points it dominates, ``LR(x, z) ≥ gamma``.  **Online** ``Pr(x)`` is
    the mean over all reference models (half of them trained on ``x``); **offline** only the
    models that did not train on ``x`` are averaged and the IN half is approximated linearly,
    ``Pr(x) = ½((1 + a)·Pr_OUT(x) + (1 - a))`` (the paper's offline rule, ``a`` = ``offline_a``).
    The reference models are the same as :class:`~gauntlet.attacks.inference.lira.LiRA`'s (random
    halves of the candidates; the cache is shared), and population points are OUT for all of them.

    Args:
        reference_models: number of reference models (even; the paper's point: strong with 1–4).
        online: average all reference models (True) or only the OUT ones with the linear
            approximation (False).
        gamma: the pairwise likelihood-ratio threshold (the paper uses 1–2).
        offline_a: ``a`` in the offline approximation (the paper tunes it per dataset; 0.3).
        population_size: population points ``z`` drawn (seeded) from ``population``; 0 = all.
        architecture, train, cache_dir: how reference models are trained (see LiRA).
    """

    name = "rmia"
    description = "membership inference: pairwise likelihood ratios vs population points, strong with few reference models"
    reference = "Zarifzadeh et al., 'Low-Cost High-Power Membership Inference Attacks', ICML 2024, https://arxiv.org/abs/2312.03262"
    needs_population = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **REFERENCE_CONSTRAINTS,
        "online": [Boolean()],
        "gamma": [Interval(float, 0, None, closed="neither")],
        "offline_a": [Interval(float, 0, 1)],
        "population_size": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        *,
        reference_models: int = 2,
        online: bool = False,
        gamma: float = 1.0,
        offline_a: float = 0.3,
        population_size: int = 0,
        architecture: nn.Module | None = None,
        train: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.reference_models = reference_models
        self.online = online
        self.gamma = gamma
        self.offline_a = offline_a
        self.population_size = population_size
        self.architecture = architecture
        self.train = train if train is not None else {"method": "standard", "epochs": 10}
        self.cache_dir = cache_dir
        self._validate()

    def _pr(self, p_ref: Tensor, out: Tensor) -> Tensor:
        """``Pr(·)`` from the reference models' probabilities ``(R, n)`` (``out``: which models
        did not train on each point)."""
        if self.online:
            return p_ref.mean(dim=0)
        w = out.double()
        p_out = (p_ref * w).sum(dim=0) / w.sum(dim=0).clamp_min(1)
        return 0.5 * ((1 + self.offline_a) * p_out + (1 - self.offline_a))

    def _scores(
        self, model: Model, x: Tensor, y: Tensor, population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator, seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert population is not None  # the base refuses a missing population (needs_population)
        zx, zy = population
        if self.population_size and self.population_size < zx.shape[0]:
            pick = torch.randperm(zx.shape[0], generator=generator)[: self.population_size]
            zx, zy = zx[pick], zy[pick]
        models, masks = self._references(model, x, y, generator, seed)
        tiny = torch.finfo(torch.float64).tiny
        p_ref_x = torch.stack([true_class_probability(m, query_scores(m, x), y) for m in models])
        p_ref_z = torch.stack([true_class_probability(m, query_scores(m, zx), zy) for m in models])
        ratio_x = true_class_probability(model, query_scores(model, x), y) / self._pr(p_ref_x, ~masks).clamp_min(tiny)
        ratio_z = true_class_probability(model, query_scores(model, zx), zy) / self._pr(
            p_ref_z, torch.ones_like(p_ref_z, dtype=torch.bool)
        ).clamp_min(tiny)
        # share of z with ratio_x / ratio_z >= gamma, i.e. ratio_z <= ratio_x / gamma
        sorted_z = torch.sort(ratio_z).values
        dominated = torch.searchsorted(sorted_z, ratio_x / self.gamma, right=True)
        score = dominated.double() / sorted_z.numel()
        # ties (common when many candidates dominate every z) broken by the candidate's own ratio
        score = score + 1e-9 * torch.tanh(torch.log(ratio_x.clamp_min(tiny)) / 50)
        return score, {"reference_models": len(models), "online": self.online, "population_points": int(zx.shape[0])}
