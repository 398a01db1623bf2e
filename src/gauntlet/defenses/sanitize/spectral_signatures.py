"""Spectral signatures (Tran, Li and Madry 2018): a backdoor leaves a trace along the top singular
vector of a class's learned representations, so rows that project far along it are removed.

Algorithm 1 of the paper, for every label ``y``: take the penultimate-layer representations
``R`` of the rows labelled ``y``, centre them (``R - mean``), take the top right singular vector
``v`` of the centred matrix, score each row by its squared projection on ``v`` and remove the
``1.5 ε`` highest-scoring rows, ``ε`` being an upper bound on the poison; retrain on the rest.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import EXPECTED_FRACTION, LAYER, REMOVAL_FACTOR, Sanitizer, read_features

__all__ = ["SpectralSignatures", "pooled_whitener", "robust_scale"]


def robust_scale(values: Tensor) -> tuple[Tensor, Tensor]:
    """``(median, spread)`` of a 1-D tensor: the spread is 1.4826 × the median absolute deviation
    (the standard deviation for Gaussian data, unmoved by a minority of outliers); it falls back to
    the standard deviation, then to 1, when the MAD is 0."""
    med = values.median()
    spread = 1.4826 * (values - med).abs().median()
    if not float(spread) > 0:
        spread = values.std(correction=0) if values.numel() > 1 else values.new_tensor(0.0)
    if not float(spread) > 0:
        spread = values.new_tensor(1.0)
    return med, spread


def pooled_whitener(feats: Tensor, y: Tensor, shrinkage: float = 1e-3) -> Tensor:
    """``W`` (D × D) with ``W Σ W = I`` for the pooled within-class covariance ``Σ`` (every row
    centred at its class mean, all classes together), ``shrinkage`` × its mean eigenvalue added so
    dead units stay finite.  Poison is a small share of the whole training set, so ``Σ`` is the
    clean data's spread, and after whitening no clean direction dominates a class's spectrum."""
    classes, index = torch.unique(y, return_inverse=True)
    sums = torch.zeros(classes.numel(), feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, index, feats)
    counts = torch.bincount(index, minlength=classes.numel()).to(feats.dtype)
    centred = feats - (sums / counts[:, None])[index]
    cov = centred.T @ centred / max(1, feats.shape[0])
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0.0)
    floor = shrinkage * float(evals.mean()) if float(evals.mean()) > 0 else 1.0
    return (evecs * (evals + floor).rsqrt()) @ evecs.T


@register
class SpectralSignatures(Sanitizer):
    """Spectral signatures: per class, the top singular vector of the centred penultimate-layer
    representations; rows with a large projection on it are flagged (Tran et al. 2018).

    Whitening (``whiten=True``, default; not in the paper): the representations are first
    multiplied by ``Σ^(-1/2)``, ``Σ`` being the pooled within-class covariance of the whole training
    set (every row centred at its class mean).  Without it, the top singular vector of a class is
    often the clean data's own largest direction (on a LeNet5 trained on 1% BadNets MNIST the
    poison lies along the *second* one and the first ranks it no better than chance, see
    ``benchmarks/bench_sanitize.py``); the poison, a small share of the set, hardly moves ``Σ``, so
    after whitening it is what stands out.  ``whiten=False`` is the paper's method as written.

    Scores: per class (by the given labels) the representations are centred at their mean and the
    top right singular vector ``v`` taken, as in the paper; a row's score is its squared *robust
    z-score* along ``v``: ``((r·v − median) / (1.4826·MAD))²`` over the class's projections ``r·v``.
    A clean class then scores like a χ²₁ variable (about 1 on average, whatever the class's spread),
    and poison, which sits far out along ``v``, scores in the hundreds, so scores are comparable
    across classes.  (The paper's ``((r − mean)·v)²`` is kept in ``info["tau"]``; centring at the
    median rather than the mean keeps the poison from pulling the centre towards itself.)

    Removal (``budget``):

    * ``"global"`` (default): flag the ``⌈removal_factor·expected_fraction·N⌉`` highest scores over
      the whole training set, ``expected_fraction`` being the expected share of poison in it.  An
      all-to-one backdoor puts all its poison in one class, and this spends the removal budget there;
    * ``"per_class"``: the paper's rule, the ``⌈removal_factor·expected_fraction·n_c⌉`` highest
      scores of every class ``c`` (``expected_fraction``: an upper bound on the share of poison in a
      class); this removes that share of every class, poisoned or not.

    Args:
        expected_fraction: ε, the expected (upper bound on the) share of poison, in (0, 1).
        removal_factor: how many more rows than ε to remove (the paper's 1.5).
        budget: ``"global"`` or ``"per_class"`` (see above).
        whiten: whiten by the pooled within-class covariance first (see above).
        layer: the submodule whose output is the representation (``None``: the input of the last
            ``nn.Linear``, the penultimate layer).
        batch_size: rows per forward pass when reading the representations.
    """

    name = "spectral_signatures"
    description = "Spectral signatures: outliers along each class's top singular vector of penultimate features (Tran et al. 2018)"
    reference = (
        'Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018, https://arxiv.org/abs/1811.00636'
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "expected_fraction": EXPECTED_FRACTION,
        "removal_factor": REMOVAL_FACTOR,
        "budget": [Options(("global", "per_class"))],
        "whiten": [Boolean()],
        "layer": LAYER,
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        *,
        expected_fraction: float = 0.05,
        removal_factor: float = 1.5,
        budget: str = "global",
        whiten: bool = True,
        layer: str | None = None,
        batch_size: int = 256,
    ) -> None:
        self.expected_fraction = expected_fraction
        self.removal_factor = removal_factor
        self.budget = budget
        self.whiten = whiten
        self.layer = layer
        self.batch_size = batch_size
        self._validate()

    def _removals(self, n: int) -> int:
        """Rows to remove out of ``n``: ⌈removal_factor·ε·n⌉ (float noise aside), at most ``n``."""
        k = float(self.removal_factor) * float(self.expected_fraction) * n
        return min(n, max(0, math.ceil(k - 1e-9)))

    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        feats = read_features(self.name, model, x, self.layer, int(self.batch_size))
        y = y.to(feats.device)
        if self.whiten:
            feats = feats @ pooled_whitener(feats, y)
        n = int(feats.shape[0])
        scores = torch.zeros(n, dtype=torch.float64)
        tau = torch.zeros(n, dtype=torch.float64)
        flagged = torch.zeros(n, dtype=torch.bool)
        per_class: dict[int, dict[str, float | int]] = {}
        for c in torch.unique(y).tolist():
            idx = (y == c).nonzero().flatten()
            rows = feats[idx]
            centred = rows - rows.mean(dim=0)
            if idx.numel() < 2 or not bool(centred.abs().max() > 0):
                s = torch.zeros(idx.numel(), dtype=torch.float64)
                t = s
                top = 0.0
            else:
                _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
                v = vh[0]
                proj = rows @ v
                t = (centred @ v) ** 2
                med, spread = robust_scale(proj)
                s = ((proj - med) / spread) ** 2
                top = float(sv[0] ** 2 / (sv**2).sum())
            scores[idx.cpu()] = s.cpu()
            tau[idx.cpu()] = t.cpu()
            k = self._removals(int(idx.numel())) if self.budget == "per_class" else 0
            if k:
                order = torch.sort(s, descending=True, stable=True).indices[:k]
                flagged[idx[order].cpu()] = True
            per_class[int(c)] = {"rows": int(idx.numel()), "top_variance_share": top, "max_score": float(s.max()) if s.numel() else 0.0}
        if self.budget == "global":
            k = self._removals(n)
            flagged[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
        for c, d in per_class.items():
            d["flagged"] = int(flagged[(y == c).cpu()].sum())
        return scores, flagged, {"tau": tau.float(), "per_class": per_class, "feature_dim": int(feats.shape[1])}

