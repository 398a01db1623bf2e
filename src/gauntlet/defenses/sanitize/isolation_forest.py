"""Isolation-forest sanitizer: training rows that random axis-parallel splits isolate quickly are
anomalies (Liu, Ting and Zhou 2008), fitted per class (default) on the inputs or on a network's
penultimate features.

The pieces the sanitizers share (the rows in input or feature space, the removal set, the budget
constraints) live in :mod:`gauntlet.defenses.sanitize._base`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, IsNone, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import (
    EXPECTED_FRACTION,
    LAYER,
    REMOVAL_FACTOR,
    SPACES,
    Sanitizer,
    check_removal,
    flag_top,
    representation,
    seed_from,
)
from gauntlet.errors import ConfigError

__all__ = ["IsolationForestSanitizer"]

@register
class IsolationForestSanitizer(Sanitizer):
    """Isolation forest over the training rows (Liu, Ting and Zhou 2008, scikit-learn's
    ``IsolationForest``): a row's score is ``-score_samples``, i.e. ``2^(-E[h(x)] / c(ψ))`` with
    ``E[h(x)]`` its mean path length over the trees and ``c(ψ)`` the mean path length of an
    unsuccessful search in a tree built on ``ψ`` rows: near 1 for rows isolated quickly, about 0.5
    or less for ordinary ones.  Because ``c(ψ)`` normalises the path length, the scores of the
    per-class forests are on one scale and the removal set is the top
    ``expected_fraction × removal_factor`` of all rows together (a backdoor puts all its poison in
    the target class, so a per-class quota would miss most of it).

    With ``per_class=True`` (default) one forest is fitted on each class's rows: BadNets-style
    poison is a digit of another class relabelled, so it is an outlier *within* its new class.
    In input space this works while the poison is a minority of its target class (on 8×8 digits
    up to ~5% overall poison into one class); beyond that the poison is no longer anomalous there
    and ``space="features"`` on a model trained on the data is the better view.

    Args:
        space: ``"input"`` (the flattened inputs; ``model`` may be ``None``) or ``"features"``
            (the penultimate layer, or ``layer``, of a gauntlet ``TorchModel`` passed to ``detect``).
        per_class: one forest per class (default) or one over all rows.
        n_estimators: trees per forest.
        max_samples: rows drawn to build each tree (``None``: scikit-learn's ``"auto"``, min(256, n)).
        expected_fraction: the share of poison the defender expects, in (0, 1).
        removal_factor: how many times ``expected_fraction`` is flagged (1.5, as Tran et al. 2018).
        layer: the submodule whose output is the feature space (``None``: the input of the last
            ``nn.Linear``).
        batch_size: inputs per forward pass when reading features.
    """

    name: ClassVar[str] = "isolation_forest"
    description: ClassVar[str] = "isolation forest per class on inputs or penultimate features; flags the most isolated rows"
    reference: ClassVar[str] = (
        'Liu, Ting and Zhou, "Isolation Forest", ICDM 2008, https://doi.org/10.1109/ICDM.2008.17'
    )
    needs_model: ClassVar[bool] = False  # only space="features" reads a model (checked in detect)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "space": [Options(SPACES)],
        "per_class": [Boolean()],
        "n_estimators": [Interval(int, 1, None)],
        "max_samples": [Interval(int, 2, None), IsNone()],
        "expected_fraction": EXPECTED_FRACTION,
        "removal_factor": REMOVAL_FACTOR,
        "layer": LAYER,
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        *,
        space: str = "input",
        per_class: bool = True,
        n_estimators: int = 100,
        max_samples: int | None = None,
        expected_fraction: float = 0.05,
        removal_factor: float = 1.5,
        layer: str | None = None,
        batch_size: int = 256,
    ) -> None:
        self.space = space
        self.per_class = per_class
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.expected_fraction = expected_fraction
        self.removal_factor = removal_factor
        self.layer = layer
        self.batch_size = batch_size
        self._validate()
        check_removal(self.name, expected_fraction, removal_factor)

    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]  # scikit-learn ships no type information

        where = f"{self.name}.detect"
        feats = representation(where, self.space, model, x, layer=self.layer, batch_size=int(self.batch_size))
        labels = y.cpu().numpy()
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if self.per_class else [np.arange(len(labels))]
        scores = np.full(len(labels), 0.5)  # 0.5: "no distinct anomaly" on the isolation-forest scale
        skipped: list[int] = []
        for rows in groups:
            state = seed_from(generator)
            if rows.size < 2:  # one row cannot be isolated from anything
                skipped.append(int(labels[rows[0]]))
                continue
            ms: int | str = "auto" if self.max_samples is None else min(int(self.max_samples), int(rows.size))
            forest = IsolationForest(n_estimators=int(self.n_estimators), max_samples=ms, random_state=state)
            forest.fit(feats[rows])
            scores[rows] = -forest.score_samples(feats[rows])
        s = torch.from_numpy(scores).float()
        if not bool(torch.isfinite(s).all()):  # pragma: no cover - sklearn returns finite scores on finite data
            raise ConfigError(f"{where}: the isolation forest returned non-finite scores")
        flagged, k = flag_top(s, self.expected_fraction, self.removal_factor)
        info: dict[str, Any] = {"space": self.space, "per_class": self.per_class, "n_flagged": k}
        if skipped:
            info["single_row_classes"] = skipped
        return s, flagged, info
