"""Adapter for a fitted scikit-learn classifier (black box: scores and labels, no gradients)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Interval, IsNone, validate_params
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import InputSpec, Model
from gauntlet.models.callable_model import parse_bounds, parse_shape


class SklearnModel(Model):
    """A fitted scikit-learn classifier (or pipeline) as a score-based black-box model.

    Inputs are torch tensors ``(N, ...)``; each sample is flattened (row-major) into the
    feature vector the estimator was fitted on, converted to float64 NumPy once per call, and
    the result comes back as a float32 tensor on the input's device.

    Scores are ``predict_proba`` (``output="probabilities"``) when the estimator has it,
    otherwise ``decision_function`` (``output="logits"``; a binary decision value ``d`` becomes
    the two columns ``[-d/2, d/2]``, so the argmax equals ``predict``).  An estimator with
    neither is labels-only.  No gradients: use score-based or decision-based attacks.

    Args:
        estimator: a fitted classifier whose ``classes_`` are the integers ``0 … K-1``.
        bounds: the valid input range.
        input_shape: per-sample input shape (e.g. ``(1, 8, 8)`` for images flattened to 64
            features); its product must equal the estimator's ``n_features_in_``.
        num_classes: checked against ``len(estimator.classes_)`` when given.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        from sklearn.base import BaseEstimator  # type: ignore[import-untyped]  # scikit-learn ships no type information
        from sklearn.exceptions import NotFittedError  # type: ignore[import-untyped]  # scikit-learn ships no type information
        from sklearn.utils.validation import check_is_fitted  # type: ignore[import-untyped]  # scikit-learn ships no type information

        validate_params(
            "SklearnModel", {"num_classes": num_classes}, {"num_classes": [Interval(int, 2, None), IsNone()]}
        )
        kind = type(estimator).__name__
        if not callable(getattr(estimator, "predict", None)):
            raise ConfigError(
                f"SklearnModel: estimator must be a fitted scikit-learn classifier with predict(), got {kind}; "
                "for other callables use gauntlet.models.CallableModel"
            )
        not_fitted = ConfigError(
            f"SklearnModel: the {kind} is not fitted; call estimator.fit(X, y) before attacking it"
        )
        if isinstance(estimator, BaseEstimator):
            try:
                check_is_fitted(estimator)
            except NotFittedError:
                raise not_fitted from None
        elif not any(k.endswith("_") and not k.startswith("__") for k in vars(estimator)):
            raise not_fitted  # a duck-typed estimator: sklearn's convention of fitted `attr_`s
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise ConfigError(
                f"SklearnModel: {kind} has no classes_ (is it a regressor?); gauntlet attacks classifiers"
            )
        classes = np.asarray(classes)
        k = int(classes.shape[0]) if classes.ndim == 1 else 0
        if classes.ndim != 1 or k < 2 or classes.dtype.kind not in "iub" or not np.array_equal(classes, np.arange(k)):
            shown = np.array2string(classes.ravel()[:6], separator=", ") + (" ..." if classes.size > 6 else "")
            raise ConfigError(
                f"SklearnModel: {kind}.classes_ is {shown}, but gauntlet needs the integer labels 0..K-1 in order; "
                "refit on y encoded with sklearn.preprocessing.LabelEncoder"
            )
        if num_classes is not None and num_classes != k:
            raise ConfigError(
                f"SklearnModel: num_classes={num_classes} but the {kind} has {k} classes; drop num_classes"
            )
        shape = parse_shape("SklearnModel", input_shape)
        self.n_features: int | None = getattr(estimator, "n_features_in_", None)
        if shape is not None and self.n_features is not None and int(np.prod(shape)) != self.n_features:
            raise ConfigError(
                f"SklearnModel: input_shape {shape} has {int(np.prod(shape))} features but the {kind} was fitted "
                f"on {self.n_features}; pass the shape of one sample before flattening"
            )
        self.estimator = estimator
        if callable(getattr(estimator, "predict_proba", None)):
            self._method, self.output = "predict_proba", "probabilities"
        elif callable(getattr(estimator, "decision_function", None)):
            self._method, self.output = "decision_function", "logits"
        else:
            self._method, self.output = "predict", "labels"
        self.capabilities = frozenset({"labels"} if self._method == "predict" else {"scores", "labels"})
        self.input_spec = InputSpec(shape, torch.float32, parse_bounds("SklearnModel", bounds))
        self._num_classes = k

    def _forward(self, x: Tensor) -> Tensor:
        n = int(x.shape[0])
        feats = x.detach().reshape(n, -1)
        if self.n_features is not None and feats.shape[1] != self.n_features:
            raise DataError(
                f"SklearnModel: a sample has {feats.shape[1]} values but the estimator expects {self.n_features} "
                "features; pass inputs of the shape it was fitted on (they are flattened per sample)"
            )
        arr = feats.to(device="cpu", dtype=torch.float64).numpy()
        out = np.asarray(getattr(self.estimator, self._method)(arr))
        if self._method == "predict":
            return torch.from_numpy(out.astype(np.int64, copy=False)).to(x.device)
        if out.ndim == 1:  # binary decision_function: signed distance to the boundary
            half = out / 2.0
            out = np.stack([-half, half], axis=1)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)
