"""Attribute inference: a sensitive column of a training record, read off the model's outputs.

The attacker knows every column of a record but one sensitive categorical column, knows the
record's label, and can query the model (Fredrikson et al. 2014, the "model inversion" of
pharmacogenetic models; Yeom et al. 2018, the attribute adversary of Section 4).  For each
candidate value ``v`` of the sensitive column it queries the model on the record completed with
``v`` and picks the value under which the model gives the true label the highest probability
(equivalently the lowest loss), optionally weighted by the prior ``π(v)`` of the value
(``prior=True``: maximise ``log p_y(x_v) + log π(v)``, Fredrikson et al.'s MAP estimate with the
marginal as prior).  An overfit model remembers its members, so the true value of a member
explains its label best; on non-members the attack does little better than guessing from the
prior.

The baseline ignores the model: ``baseline="majority"`` predicts the most frequent value in the
attacker's data, ``baseline="classifier"`` a logistic regression trained on the attacker's data
from the other columns and the label.  The attack leaks something only where it beats the
baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Hyperparameters, Interval, Options, validate_params
from gauntlet.attacks.registry import register
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model

__all__ = ["AttributeInference", "AttributeResult"]


@dataclass(frozen=True)
class AttributeResult:
    """The inferred sensitive values and the baseline's.

    Attributes:
        predicted: ``(N,)`` the value the attack infers for each record (one of ``values``).
        predicted_index: int64 ``(N,)``, its index in ``values``.
        scores: float64 ``(N, V)``, ``log p_y`` of each record completed with each value (plus
            ``log π(v)`` with ``prior=True``).
        values: ``(V,)`` the candidate values.
        baseline_predicted: ``(N,)`` the baseline's guess, or ``None`` without ``baseline_data``.
        truth: ``(N,)`` the true values when the records given carried them in the column (used
            only for scoring, never by the attack), else ``None``.
        queries: queries sent to the target (``N · V``).
    """

    predicted: Tensor
    predicted_index: Tensor
    scores: Tensor
    values: Tensor
    baseline_predicted: Tensor | None
    truth: Tensor | None
    column: int
    queries: int = 0
    attack: str = "attribute_inference"
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def _truth(self, truth: Tensor | Sequence[float] | None) -> Tensor:
        if truth is None:
            if self.truth is None:
                raise DataError(
                    "attribute_inference: no true values to score against: the records' sensitive column did not hold "
                    "the candidate values; pass accuracy(truth=...)"
                )
            return self.truth
        t = torch.as_tensor(truth, dtype=torch.float64).reshape(-1)
        if t.shape != self.predicted.shape:
            raise DataError(f"attribute_inference: truth has {t.numel()} values but {self.predicted.numel()} records were attacked")
        return t

    def accuracy(self, truth: Tensor | Sequence[float] | None = None) -> float:
        """Share of records whose sensitive value the attack inferred (default: against the
        values the records carried)."""
        t = self._truth(truth)
        return float((self.predicted.double() == t).double().mean())

    def baseline_accuracy_against(self, truth: Tensor | Sequence[float] | None = None) -> float:
        """The baseline's accuracy against ``truth`` (default: the values the records carried)."""
        if self.baseline_predicted is None:
            raise ConfigError("attribute_inference: no baseline was computed; pass run(..., baseline_data=(x, y))")
        t = self._truth(truth)
        return float((self.baseline_predicted.double() == t).double().mean())

    @property
    def baseline_accuracy(self) -> float:
        """The baseline's accuracy against the values the records carried."""
        return self.baseline_accuracy_against(None)


@register
class AttributeInference(Hyperparameters):
    """Infer a sensitive categorical column from the model's confidence in the true label.

    Hyperparameters (keyword-only, stored unchanged):
        prior: weight each value by its frequency in ``baseline_data`` (MAP instead of maximum
            likelihood); needs ``baseline_data``.
        baseline: ``"majority"`` (the most frequent value of the attacker's data) or
            ``"classifier"`` (logistic regression from the other columns and the label, trained on
            the attacker's data).
        batch_size: records per query batch (each sends ``V`` completed records).
    """

    name: ClassVar[str] = "attribute_inference"
    description: ClassVar[str] = (
        "attribute inference: the value of a sensitive column under which the model best explains a "
        "record's label, against a baseline that ignores the model"
    )
    reference: ClassVar[str] = (
        "Fredrikson et al., 'Privacy in Pharmacogenetics: An End-to-End Case Study of Personalized Warfarin "
        "Dosing', USENIX Security 2014; Yeom et al., 'Privacy Risk in Machine Learning: Analyzing the "
        "Connection to Overfitting', IEEE CSF 2018"
    )
    kind: ClassVar[str] = "inference"
    needs: ClassVar[str] = "scores"
    # no ``needs_population``: the audit's privacy block recognises membership attacks by that
    # attribute, and this attack's run() takes other arguments
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "prior": [Boolean()],
        "baseline": [Options(("majority", "classifier"))],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, *, prior: bool = False, baseline: str = "majority", batch_size: int = 1024) -> None:
        self.prior = prior
        self.baseline = baseline
        self.batch_size = batch_size
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    # -- checks ---------------------------------------------------------------------------------
    def _records(self, model: Model, x: Any, y: Any, what: str) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() != 2 or x.shape[0] == 0:
            raise DataError(f"{self.name}: {what} x must be a non-empty float tensor (N, d) of tabular records")
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (x.shape[0],):
            raise DataError(
                f"{self.name}: {what} y must be int64 labels of shape ({x.shape[0]},), "
                f"got {getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}"
            )
        shape = model.input_spec.shape
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise DataError(f"{self.name}: {what} records have {tuple(x.shape[1:])} columns but the model takes {tuple(shape)}")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{self.name}: {what} x holds NaN or inf values")
        k = model.num_classes
        if k is not None and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataError(f"{self.name}: {what} y has labels outside [0, {k - 1}]")
        return x, y.to(torch.int64)

    def _column(self, column: Any, d: int) -> int:
        if isinstance(column, bool) or not isinstance(column, int) or not -d <= column < d:
            raise ConfigError(f"{self.name}: column must be an int index of the sensitive column in [0, {d - 1}], got {column!r}")
        return column % d

    def _values(self, values: Any, model: Model) -> Tensor:
        try:
            v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"{self.name}: values must be a list of the sensitive column's candidate numbers, got {values!r}") from None
        if isinstance(values, (str, bytes)) or v.numel() < 2:
            raise ConfigError(f"{self.name}: values must list at least 2 candidate values of the sensitive column, got {values!r}")
        if not bool(torch.isfinite(v).all()):
            raise ConfigError(f"{self.name}: values must be finite numbers, got {values!r}")
        if torch.unique(v).numel() != v.numel():
            raise ConfigError(f"{self.name}: values has duplicates ({v.tolist()}); list each candidate once")
        lo, hi = model.bounds
        if float(v.min()) < lo or float(v.max()) > hi:
            raise ConfigError(f"{self.name}: values {v.tolist()} fall outside the model's bounds [{lo}, {hi}]")
        return v

    # -- the attack -----------------------------------------------------------------------------
    def _log_p(self, model: Model, x: Tensor, y: Tensor) -> Tensor:
        s = model.scores(x)
        if model.output == "probabilities":
            lp = s.double().clamp_min(1e-300).log()
            lp = lp - torch.logsumexp(lp, dim=1, keepdim=True)
        else:
            lp = torch.log_softmax(s.double(), dim=1)
        return lp.gather(1, y[:, None]).squeeze(1)

    def run(
        self,
        model: Model,
        *,
        x: Tensor,
        y: Tensor,
        column: int,
        values: Sequence[float] | Tensor,
        seed: int = 0,
        baseline_data: tuple[Tensor, Tensor] | None = None,
    ) -> AttributeResult:
        """Infer the sensitive ``column`` of each record ``x`` with label ``y``.

        Args:
            model: the target (scores needed).
            x: float ``(N, d)`` records; their sensitive column is overwritten by each candidate
                (if it holds the true values, the result keeps them to score against).
            y: int64 ``(N,)`` the records' labels.
            column: index of the sensitive column.
            values: the column's candidate values (at least two, distinct).
            seed: seeds the baseline classifier.
            baseline_data: attacker data ``(x_b, y_b)`` with the sensitive column filled in,
                disjoint from the records: the prior and the baseline are fitted on it.
        """
        if not isinstance(model, Model):
            raise ConfigError(f"{self.name}: the target must be a gauntlet Model, got {type(model).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be an int >= 0, got {seed!r}")
        if not model.has("scores"):
            raise CapabilityError(f"{self.name} needs the target's scores but this target returns labels only")
        x, y = self._records(model, x, y, "the records'")
        col = self._column(column, int(x.shape[1]))
        vals = self._values(values, model)
        V = int(vals.numel())
        carried = x[:, col].double()
        match = (carried[:, None] == vals[None, :])
        truth = carried.clone() if bool(match.any(dim=1).all()) else None
        bx = by = None
        if baseline_data is not None:
            if not isinstance(baseline_data, (tuple, list)) or len(baseline_data) != 2:
                raise DataError(f"{self.name}: baseline_data must be a pair (x, y) of attacker records and labels")
            bx, by = self._records(model, baseline_data[0], baseline_data[1], "baseline_data's")
            if bx.shape[1] != x.shape[1]:
                raise DataError(f"{self.name}: baseline_data has {bx.shape[1]} columns but the records {x.shape[1]}")
            bcol = bx[:, col].double()
            ok = (bcol[:, None] == vals[None, :]).any(dim=1)
            if not bool(ok.all()):
                raise DataError(
                    f"{self.name}: baseline_data's column {col} holds values outside {vals.tolist()} "
                    f"(e.g. {float(bcol[~ok][0])}); fill it with the candidate values"
                )
        elif self.prior:
            raise ConfigError(f"{self.name}: prior=True weights values by their frequency in the attacker's data; pass baseline_data=(x, y)")

        t0 = time.perf_counter()
        q0 = model.queries
        n = int(x.shape[0])
        scores = torch.empty((n, V), dtype=torch.float64)
        per = max(1, self.batch_size // V)
        with model.attack_mode(), torch.no_grad():
            for s in range(0, n, per):
                xb = x[s : s + per]
                m = xb.shape[0]
                filled = xb.repeat_interleave(V, dim=0).clone()
                filled[:, col] = vals.to(filled.dtype).repeat(m)
                lp = self._log_p(model, filled, y[s : s + per].repeat_interleave(V))
                scores[s : s + m] = lp.view(m, V).cpu()
        info: dict[str, Any] = {"records": n, "values": V}
        prior = None
        if bx is not None:
            counts = (bx[:, col].double()[:, None] == vals[None, :]).sum(dim=0).double()
            prior = (counts + 1.0) / (counts.sum() + V)  # Laplace-smoothed marginal
            info["prior"] = prior.tolist()
        if self.prior and prior is not None:
            scores = scores + prior.log()[None, :]
        scores = torch.nan_to_num(scores, nan=-math.inf)
        # ties (common with trees, whose probabilities are few fractions) go to the more frequent
        # value when the attacker's data gives frequencies, else to the first value listed
        tied = scores >= scores.max(dim=1, keepdim=True).values - 1e-12
        rank = prior if prior is not None else -torch.arange(V, dtype=torch.float64)
        idx = torch.where(tied, rank[None, :], torch.full_like(scores, -math.inf)).argmax(dim=1)
        info["ties"] = int((tied.sum(dim=1) > 1).sum())
        baseline_pred = None
        if bx is not None and by is not None and prior is not None:
            baseline_pred = self._baseline(x, y, bx, by, col, vals, prior, seed)
        return AttributeResult(
            predicted=vals[idx].to(x.dtype),
            predicted_index=idx,
            scores=scores,
            values=vals,
            baseline_predicted=baseline_pred,
            truth=truth,
            column=col,
            queries=model.queries - q0,
            attack=self.name,
            params=self.get_params(),
            info=info,
            seconds=time.perf_counter() - t0,
        )

    def _baseline(
        self, x: Tensor, y: Tensor, bx: Tensor, by: Tensor, col: int, vals: Tensor, prior: Tensor, seed: int
    ) -> Tensor:
        n = int(x.shape[0])
        if self.baseline == "majority":
            return vals[int(prior.argmax())].expand(n).clone().to(x.dtype)
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # scikit-learn ships no type information

        k = int(max(int(y.max()), int(by.max()))) + 1

        def features(xx: Tensor, yy: Tensor) -> np.ndarray:
            others = torch.cat([xx[:, :col], xx[:, col + 1 :]], dim=1).double()
            onehot = torch.nn.functional.one_hot(yy, k).double()
            return torch.cat([others, onehot], dim=1).numpy()

        target = (bx[:, col].double()[:, None] == vals[None, :]).double().argmax(dim=1).numpy()
        if np.unique(target).size < 2:
            return vals[int(target[0])].expand(n).clone().to(x.dtype)
        clf = LogisticRegression(max_iter=1000, random_state=seed)
        clf.fit(features(bx, by), target)
        pred = np.asarray(clf.predict(features(x, y)), dtype=np.int64)
        return vals[torch.from_numpy(pred)].to(x.dtype)
