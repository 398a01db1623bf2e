"""Activation clustering (Chen et al. 2018): a backdoored class is two populations to the network
(its own images, and other classes' images carrying the trigger), so its last-hidden-layer
activations split into two clusters, one of them small; clean classes do not split that way.

Per label: reduce the activations to ``nb_dims`` dimensions (the paper: independent component
analysis to 10), cluster them with 2-means, and call the smaller cluster poison when it is small
(relative size) and the split is a real one (silhouette score).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import LAYER, Sanitizer, read_features

__all__ = ["ActivationClustering"]

#: rows of a class on which the silhouette score is computed (sampled with the detect seed above it)
SILHOUETTE_SAMPLE = 10_000


@register
class ActivationClustering(Sanitizer):
    """Activation clustering: per class, reduce the penultimate-layer activations (FastICA or PCA
    to ``nb_dims``), split them with 2-means, and flag the smaller cluster when it looks poisonous
    (Chen et al. 2018).

    Criterion (``criterion``), with ``s`` the smaller cluster's share of its class:

    * ``"size"`` (the paper's relative size): poisonous when ``s < size_threshold``;
    * ``"silhouette"`` (default): poisonous when ``s < size_threshold`` *and* the silhouette score of
      the 2-means split exceeds ``silhouette_threshold`` (a clean class that 2-means cuts unevenly
      still splits poorly, so it is not removed wholesale).

    Score of a row (higher = more suspicious, comparable across classes):
    ``(1 − 2s) · max(silhouette, 0) · (1 + m) / 2``, where ``1 − 2s`` is the class's cluster-size
    gap (0 for an even split, towards 1 for a tiny cluster), and ``m = (d_large − d_small) /
    (d_large + d_small)`` in [−1, 1] says how much nearer the row is to the smaller cluster's centre
    than to the larger one's (``m > 0`` exactly for the rows 2-means put in the smaller cluster).

    Args:
        nb_dims: dimensions the activations are reduced to before clustering (the paper's 10).
        reduce: ``"ica"`` (FastICA, the paper) or ``"pca"``.
        criterion: ``"silhouette"`` or ``"size"`` (see above).
        size_threshold: the largest share of its class a poisonous cluster may hold (0.35).
        silhouette_threshold: the smallest silhouette score of a poisoned class's split (0.25; ART's
            default is 0.10, which on MNIST also removes a clean class's natural sub-population, the
            7s written with a crossbar: silhouette 0.19 there, 0.38 for the poisoned class).
        layer: the submodule whose output is read (``None``: the input of the last ``nn.Linear``).
        batch_size: rows per forward pass when reading the activations.
    """

    name = "activation_clustering"
    description = "Activation clustering: 2-means on ICA-reduced penultimate activations per class, small cluster = poison (Chen et al. 2018)"
    reference = (
        'Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy and Srivastava, "Detecting Backdoor Attacks on Deep '
        'Neural Networks by Activation Clustering", AAAI SafeAI workshop 2019, https://arxiv.org/abs/1811.03728'
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "nb_dims": [Interval(int, 1, None)],
        "reduce": [Options(("ica", "pca"))],
        "criterion": [Options(("silhouette", "size"))],
        "size_threshold": [Interval(float, 0, 0.5, closed="right")],
        "silhouette_threshold": [Interval(float, -1, 1, closed="left")],
        "layer": LAYER,
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        *,
        nb_dims: int = 10,
        reduce: str = "ica",
        criterion: str = "silhouette",
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.25,
        layer: str | None = None,
        batch_size: int = 256,
    ) -> None:
        self.nb_dims = nb_dims
        self.reduce = reduce
        self.criterion = criterion
        self.size_threshold = size_threshold
        self.silhouette_threshold = silhouette_threshold
        self.layer = layer
        self.batch_size = batch_size
        self._validate()

    def _reduced(self, rows: np.ndarray, seed: int) -> np.ndarray:
        import warnings

        from sklearn.decomposition import PCA, FastICA  # type: ignore[import-untyped]  # scikit-learn ships no type information

        dims = min(int(self.nb_dims), rows.shape[1], rows.shape[0] - 1)
        if self.reduce == "pca":
            return PCA(n_components=dims, random_state=seed).fit_transform(rows)
        with warnings.catch_warnings():  # FastICA warns when it stops at max_iter: the components are still usable
            warnings.simplefilter("ignore")
            ica = FastICA(n_components=dims, whiten="unit-variance", max_iter=1000, tol=0.005, random_state=seed)
            return ica.fit_transform(rows)

    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        from sklearn.cluster import KMeans  # type: ignore[import-untyped]  # scikit-learn ships no type information
        from sklearn.metrics import silhouette_score  # type: ignore[import-untyped]  # scikit-learn ships no type information

        feats = read_features(self.name, model, x, self.layer, int(self.batch_size)).cpu().numpy()
        labels = y.cpu().numpy()
        n = feats.shape[0]
        scores = np.zeros(n, dtype=np.float64)
        flagged = np.zeros(n, dtype=bool)
        per_class: dict[int, dict[str, Any]] = {}
        for c in np.unique(labels).tolist():
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            idx = np.flatnonzero(labels == c)
            rows = feats[idx]
            rows = rows[:, rows.std(axis=0) > 0]  # dead units carry nothing and upset ICA's whitening
            if idx.size < 4 or rows.shape[1] == 0:
                per_class[int(c)] = {"rows": int(idx.size), "poisonous": False, "skipped": "too few rows or constant activations"}
                continue
            red = self._reduced(rows, seed)
            km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(red)
            assign = km.labels_
            sizes = np.bincount(assign, minlength=2)
            if sizes.min() == 0:
                per_class[int(c)] = {"rows": int(idx.size), "poisonous": False, "skipped": "2-means found one cluster"}
                continue
            small = int(np.argmin(sizes))
            share = float(sizes[small] / idx.size)
            sample = None if idx.size <= SILHOUETTE_SAMPLE else SILHOUETTE_SAMPLE
            sil = float(silhouette_score(red, assign, sample_size=sample, random_state=seed))
            poisonous = share < float(self.size_threshold)
            if self.criterion == "silhouette":
                poisonous = poisonous and sil > float(self.silhouette_threshold)
            d = np.linalg.norm(red[:, None, :] - km.cluster_centers_[None, :, :], axis=2)
            d_small, d_large = d[:, small], d[:, 1 - small]
            margin = (d_large - d_small) / np.maximum(d_large + d_small, 1e-12)
            scores[idx] = (1.0 - 2.0 * share) * max(sil, 0.0) * (1.0 + margin) / 2.0
            if poisonous:
                flagged[idx[assign == small]] = True
            per_class[int(c)] = {"rows": int(idx.size), "smaller_share": share, "silhouette": sil, "poisonous": bool(poisonous),
                                 "dims": int(red.shape[1])}
        return torch.from_numpy(scores), torch.from_numpy(flagged), {"per_class": per_class, "feature_dim": int(feats.shape[1])}
