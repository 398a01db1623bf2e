"""Label flipping: the attacker changes the labels of a share of the training rows, never the inputs.

Three strategies:

* ``"random"``: ``round(fraction * N)`` rows, each relabelled to a uniformly drawn other class
  (the classic label-noise baseline);
* ``"targeted"``: rows of ``source_class`` relabelled ``target_class``, so the model learns to
  send the source class there (success: the share of test inputs of ``source_class``
  classified as ``target_class``);
* ``"greedy"``: loss-maximising flips in the spirit of Biggio et al. (2011) and Xiao et al.
  (2012): in ``rounds`` rounds, a linear surrogate is fitted to the current labels and every
  candidate flip ``(row i, label l)`` is scored by the increase of the surrogate's loss on the
  attacker's held-out validation split that it causes to first order (the influence of
  replacing ``ℓ(x_i, y_i)`` by ``ℓ(x_i, l)`` through the training optimum:
  ``ΔA ≈ -C w_i vᵀ(∇_θ ℓ(x_i, l) - ∇_θ ℓ(x_i, y_i))`` with ``v = H⁻¹ ∇_θ A``); the best-scoring
  rows, each with its best label, are flipped and the surrogate refitted.  The surrogate is the
  given :class:`~gauntlet.models.SklearnModel`'s ``LogisticRegression`` or squared-hinge
  ``LinearSVC`` itself, or, for a :class:`~gauntlet.models.TorchModel`, a multinomial logistic
  regression on the network's penultimate features.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import PoisonedDataset, PoisoningAttack
from gauntlet.attacks.poisoning.availability import LinearSurrogate, flip_gains, other_labels
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError

__all__ = ["LabelFlip"]


@register
class LabelFlip(PoisoningAttack):
    """Label flipping (random, targeted or greedy loss-maximising; see the module docstring).

    Args:
        fraction: share of the training rows whose label is flipped, in (0, 1).
        strategy: ``"random"`` (default), ``"targeted"`` or ``"greedy"``.
        source_class: ``"targeted"``: the class whose rows are relabelled.
        target_class: ``"targeted"``: the label they get.
        rounds: ``"greedy"``: refits of the surrogate (each round flips an equal share of the
            budget; ``rounds = k`` is the one-flip-at-a-time greedy).
        val_fraction: ``"greedy"``: share of the training data held out as the attacker's
            validation split (its rows are never flipped).
        bounds: the inputs' value range (checked; inputs are not modified).

    ``poison(..., model=...)`` is needed by ``"greedy"`` only.
    """

    name = "label_flip"
    description = "label flipping: random, targeted (source -> target) or greedy loss-maximising (Biggio et al. 2011; Xiao et al. 2012)"
    reference = (
        'Biggio, Nelson and Laskov, "Support Vector Machines Under Adversarial Label Noise", ACML 2011; '
        'Xiao, Xiao and Eckert, "Adversarial Label Flips Attack on Support Vector Machines", ECAI 2012'
    )
    needs_model: ClassVar[bool] = False  # only strategy "greedy" needs one; poison says so
    goal: ClassVar[str] = "availability"  # "targeted" measures source -> target instead (success_rate)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "strategy": [Options(("random", "targeted", "greedy"))],
        "source_class": [Interval(int, 0, None), IsNone()],
        "rounds": [Interval(int, 1, None)],
        "val_fraction": [Interval(float, 0, 1, closed="neither")],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.05,
        strategy: str = "random",
        source_class: int | None = None,
        target_class: int | None = None,
        rounds: int = 10,
        val_fraction: float = 0.25,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.strategy = strategy
        self.source_class = source_class
        self.target_class = target_class
        self.rounds = rounds
        self.val_fraction = val_fraction
        self.bounds = bounds
        self._validate()
        if strategy == "targeted":
            if source_class is None or target_class is None:
                raise ConfigError("label_flip: strategy 'targeted' needs source_class and target_class (e.g. source_class=7, target_class=1)")
            if source_class == target_class:
                raise ConfigError(f"label_flip: source_class and target_class are both {source_class}; pick two different classes")
        elif source_class is not None or target_class is not None:
            raise ConfigError(f"label_flip: source_class and target_class are for strategy 'targeted'; drop them for strategy {strategy!r}")

    # -- the attack ------------------------------------------------------------------------------
    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        n = int(y.shape[0])
        num_classes = max(int(y.max()) + 1, int(getattr(model, "num_classes", 0) or 0))
        if num_classes < 2:
            raise DataError(f"{self.name}: the labels hold one class only; flipping needs at least two")
        k = self.n_poison(n)
        py = y.clone()
        info: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "random":
            rows = self.choose(torch.arange(n, device=y.device), k, generator)
            py[rows] = other_labels(y[rows], num_classes, generator)
        elif self.strategy == "targeted":
            src = int(self.source_class)  # type: ignore[arg-type]
            eligible = (y == src).nonzero().flatten()
            if eligible.numel() == 0:
                raise DataError(f"{self.name}: no training row has the source_class {src}; the labels are in [0, {int(y.max())}]")
            if k > eligible.numel():
                raise DataError(
                    f"{self.name}: the budget flips {k} rows but only {eligible.numel()} have source_class {src}; "
                    f"lower fraction to at most {eligible.numel() / n:.3f}"
                )
            rows = self.choose(eligible, k, generator)
            py[rows] = int(self.target_class)  # type: ignore[arg-type]
        else:
            if model is None:
                raise ConfigError(f"{self.name}: strategy 'greedy' needs a model to choose the flips: poison(x, y, model=...)")
            rows, labels, extra = self._greedy(x, y, k, num_classes, generator, model)
            py[rows] = labels
            info.update(extra)
        mask = py != y
        info.update({"rows": rows.cpu(), "source_labels": y[rows].cpu()})
        return x.clone(), py, mask, info

    def _greedy(
        self, x: Tensor, y: Tensor, k: int, num_classes: int, generator: torch.Generator, model: Any
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        sur, feats = self._surrogate(model, x)
        if sur.num_classes != num_classes:
            raise DataError(f"{self.name}: the labels have {num_classes} classes but the model {sur.num_classes}")
        n = int(y.shape[0])
        n_val = round(float(self.val_fraction) * n)
        if n_val < 1 or n - n_val < k:
            raise DataError(f"{self.name}: {n} rows at val_fraction={self.val_fraction} leave too few rows to flip {k}; lower fraction or val_fraction")
        perm = torch.randperm(n, generator=generator, device=y.device).cpu()
        val_rows, tr_rows = perm[:n_val].sort().values, perm[n_val:].sort().values
        f_tr, f_val = feats[tr_rows], feats[val_rows]
        y_tr, y_val = y.cpu()[tr_rows].clone(), y.cpu()[val_rows]
        weight = torch.full((f_tr.shape[0],), n / f_tr.shape[0], dtype=torch.float64)
        flipped = torch.zeros(f_tr.shape[0], dtype=torch.bool)
        rounds = min(int(self.rounds), k)
        history: list[float] = []
        for r in range(rounds):
            gain, loss = flip_gains(sur, f_tr, y_tr, weight, f_val, y_val)
            history.append(loss)
            gain[flipped] = -math.inf
            best, label = gain.max(dim=1)
            b = math.ceil((k - int(flipped.sum())) / (rounds - r))
            pick = best.topk(b).indices
            y_tr[pick] = label[pick]
            flipped[pick] = True
        final = sur.outer(sur.fit(f_tr, y_tr, weight), f_val, y_val, "loss")
        history.append(float(final))
        rows = tr_rows[flipped].to(y.device)
        return rows, y_tr[flipped].to(y.device), {"val_rows": val_rows, "val_loss": history}

    def _surrogate(self, model: Any, x: Tensor) -> tuple[LinearSurrogate, Tensor]:
        from gauntlet.models import SklearnModel, TorchModel

        if isinstance(model, SklearnModel):
            from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # scikit-learn ships no type information
            from sklearn.svm import LinearSVC  # type: ignore[import-untyped]  # scikit-learn ships no type information

            est = model.estimator
            ok = isinstance(est, LogisticRegression) or (isinstance(est, LinearSVC) and est.loss == "squared_hinge")
            if not ok:
                raise ConfigError(
                    f"{self.name}: strategy 'greedy' needs a LogisticRegression or squared-hinge LinearSVC in the SklearnModel "
                    f"(a twice-differentiable surrogate), got {type(est).__name__}; or pass a TorchModel"
                )
            return LinearSurrogate(est, self.name), x.detach().reshape(x.shape[0], -1).double().cpu()
        if isinstance(model, TorchModel):
            from sklearn.linear_model import LogisticRegression

            from gauntlet.models.features import features

            f = features(model, x).detach().reshape(x.shape[0], -1).double().cpu()
            return LinearSurrogate(LogisticRegression(max_iter=1000), self.name, num_classes=int(model.num_classes or 0)), f
        raise ConfigError(f"{self.name}: strategy 'greedy' needs an SklearnModel (LogisticRegression, LinearSVC) or a TorchModel, got {type(model).__name__}")

    # -- what the attacker achieved ----------------------------------------------------------
    def success_rate(self, model: Any, x_test: Tensor, y_test: Tensor, poisoned: PoisonedDataset) -> float:
        """``"targeted"``: the share of the test inputs of ``source_class`` that ``model``
        classifies as ``target_class``; otherwise the test error (``goal`` ``"availability"``)."""
        if self.strategy != "targeted":
            return super().success_rate(model, x_test, y_test, poisoned)
        x_test, y_test = self._check_data(x_test, y_test, what="x_test")
        keep = y_test.eq(int(self.source_class))  # type: ignore[arg-type]
        if not bool(keep.any()):
            raise DataError(f"{self.name}: no test input has the source_class {self.source_class}; targeted success is measured on them")
        pred = model.predict(x_test[keep], count=False)
        return float((pred == int(self.target_class)).double().mean())  # type: ignore[arg-type]
