"""Membership inference by shadow models (Shokri et al. 2017)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, Interval, Options
from gauntlet.attacks.inference._base import (
    REFERENCE_CONSTRAINTS,
    MembershipAttack,
    ReferenceModels,
    _logits_or_log_probs,
    default_cache_dir,
    query_scores,
    reference_architecture,
)
from gauntlet.attacks.registry import register
from gauntlet.errors import DataError
from gauntlet.models.base import Model

_MIN_PER_CLASS = 20  # shadow records of a class (with both IN and OUT among them) to fit its own model
_LOG_FLOOR = -1e4  # log-probabilities are floored here (a probability of exactly 0 has no log)


def _features(model: Model, scores: Tensor, order: str) -> np.ndarray:
    """The attack model's input: the log-probability vector (float64), raw or sorted descending."""
    logp = F.log_softmax(_logits_or_log_probs(model, scores).double(), dim=1).clamp_min(_LOG_FLOOR)
    if order == "sorted":
        logp = logp.sort(dim=1, descending=True).values
    return np.asarray(logp.cpu().numpy())


@register
class Shadow(MembershipAttack):
    """Shadow models trained like the target teach an attack model what members' outputs look like.

    The attacker owns ``population`` (data from the target's distribution, disjoint from the
    candidates).  ``shadow_models`` models are trained like the target (its architecture and a
    training recipe, through :class:`~gauntlet.attacks.inference._base.ReferenceModels`: seeded,
    each finished model cached, an interrupted run resumes), shadow ``r`` on a random half of the
    population (drawn from the attack's generator); the other half is its OUT data.  Every
    shadow's outputs on its IN and OUT halves, labelled 1 and 0, train the **attack model**: one
    per class as in the paper (``per_class=True``; a class with fewer than 20 shadow records, or
    without both IN and OUT ones, falls back to the global model), or one for all classes.  The
    target's outputs on the candidates go through the attack model of their class; the score is
    its ``P(member)``.

    The attack model's input is the log-probability vector (``features="raw"``: in class order,
    the paper's input, given to a per-class model that knows the class; ``"sorted"``: sorted
    descending, class-agnostic, Salem et al.'s ML-Leaks variant, better suited to one global
    model).  Log-probabilities rather than probabilities: members of an overfit model sit at
    ``p_y = 1 - 1e-7`` and non-members at ``1 - 1e-3``, which float32 probabilities round
    together and log-probabilities keep apart.

    The attack model is scikit-learn's ``GradientBoostingClassifier`` by default (seeded from the
    generator): boosted trees need no feature scaling, are invariant to monotone transforms of
    each feature (so the choice of log-probabilities costs nothing where probabilities would do),
    fit a few thousand records per class in a second, and do not need the tuning of learning
    rate and epochs that an MLP does on such small per-class sets.  ``attack_model="mlp"`` (the
    paper's choice, ``MLPClassifier`` with one hidden layer of 64 on standardised features) is
    available for comparison.

    Args:
        shadow_models: how many shadow models to train (the paper uses up to 100; 4–8 suffice
            on an overfit target).
        per_class: one attack model per class (the paper) or one global model.
        features: ``"raw"`` or ``"sorted"`` log-probability vectors.
        attack_model: ``"gradient_boosting"`` or ``"mlp"``.
        architecture: the shadows' untrained network; ``None``: the target's own (a
            ``TorchModel``).
        train: the shadows' training recipe (``{"method": "standard", "epochs": 10}`` by
            default; pass the target's).
        cache_dir: where finished shadow models are kept (default: the membership cache).
    """

    name = "shadow"
    description = "membership inference: an attack model trained on the outputs of shadow models trained like the target"
    reference = (
        "Shokri, Stronati, Song & Shmatikov, 'Membership Inference Attacks Against Machine Learning Models', "
        "IEEE S&P 2017, https://arxiv.org/abs/1610.05820"
    )
    needs_population = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "shadow_models": [Interval(int, 1, None)],
        "per_class": [Boolean()],
        "features": [Options(("raw", "sorted"))],
        "attack_model": [Options(("gradient_boosting", "mlp"))],
        "architecture": REFERENCE_CONSTRAINTS["architecture"],
        "train": REFERENCE_CONSTRAINTS["train"],
        "cache_dir": REFERENCE_CONSTRAINTS["cache_dir"],
    }

    def __init__(
        self,
        *,
        shadow_models: int = 4,
        per_class: bool = True,
        features: str = "raw",
        attack_model: str = "gradient_boosting",
        architecture: nn.Module | None = None,
        train: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.shadow_models = shadow_models
        self.per_class = per_class
        self.features = features
        self.attack_model = attack_model
        self.architecture = architecture
        self.train = train if train is not None else {"method": "standard", "epochs": 10}
        self.cache_dir = cache_dir
        self._validate()

    def _classifier(self, random_state: int) -> Any:
        if self.attack_model == "mlp":
            from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]  # no type information
            from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
            from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

            return make_pipeline(
                StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), early_stopping=True, max_iter=300, random_state=random_state)
            )
        from sklearn.ensemble import GradientBoostingClassifier  # type: ignore[import-untyped]

        return GradientBoostingClassifier(random_state=random_state)

    def _scores(
        self, model: Model, x: Tensor, y: Tensor, population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator, seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        assert population is not None  # the base refuses a missing population (needs_population)
        zx, zy = population
        n = zx.shape[0]
        if n < 4:
            raise DataError(f"{self.name}: the population has {n} points; shadow models need at least 4 (two IN, two OUT)")
        arch = reference_architecture(model, self.architecture, self.name)
        k = model.num_classes or model.infer_num_classes(x)
        shadows = ReferenceModels(
            arch, self.shadow_models, self.train, bounds=model.bounds, num_classes=k,
            cache_dir=Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir(),
        )
        masks = torch.zeros((self.shadow_models, n), dtype=torch.bool)
        for r in range(self.shadow_models):
            masks[r, torch.randperm(n, generator=generator)[: n // 2]] = True
        dtype = next(arch.parameters()).dtype
        with torch.enable_grad():
            models = shadows.fit(zx.to(dtype), zy, masks, seed)
        feats, labels, classes = [], [], []
        for m, mask in zip(models, masks):
            feats.append(_features(m, query_scores(m, zx), self.features))
            labels.append(mask.numpy())
            classes.append(zy.numpy())
        f_train, t_train, c_train = np.concatenate(feats), np.concatenate(labels).astype(int), np.concatenate(classes)
        random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        f_target = _features(model, query_scores(model, x), self.features)
        score = np.full(x.shape[0], np.nan)
        own: list[int] = []
        if self.per_class:
            yc = y.cpu().numpy()
            for c in range(k):
                pick = c_train == c
                tc = t_train[pick]
                if tc.size < _MIN_PER_CLASS or tc.min() == tc.max() or not (yc == c).any():
                    continue
                clf = self._classifier(random_state + c + 1).fit(f_train[pick], tc)
                score[yc == c] = clf.predict_proba(f_target[yc == c])[:, 1]
                own.append(c)
        rest = np.isnan(score)
        if rest.any():
            glob = self._classifier(random_state).fit(f_train, t_train)
            score[rest] = glob.predict_proba(f_target[rest])[:, 1]
        info = {
            "shadow_models": len(models),
            "shadow_records": int(t_train.size),
            "per_class": self.per_class,
            "classes_with_own_model": own,
        }
        return torch.as_tensor(score, dtype=torch.float64), info
