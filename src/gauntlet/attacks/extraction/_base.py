"""The model-extraction base class and what every extraction attack returns.

An extraction (model-stealing) attack has query access to a target model and builds a copy of
it: ``run(target, seed=...)`` returns an :class:`ExtractionResult` whose ``model`` is the stolen
copy (a :class:`~gauntlet.models.Model`, attackable like any other) and whose ``queries`` is
what the theft cost.

The base class owns the invariants: the target must be a :class:`~gauntlet.models.Model` with
the access the attack needs (``needs``: ``"scores"`` or ``"labels"``; a labels-only target
given to a score-based attack is told which attack works with labels), every query goes through
a :class:`QueryBudget` that counts it and refuses a query past ``max_queries`` (so the budget
holds by construction, not by each attack's bookkeeping), an explicit ``torch.Generator`` is
seeded from ``seed`` (the global RNG is never used), and the result's query count is the
target's own count of what was asked.  Subclasses implement :meth:`ExtractionAttack._extract`.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Hyperparameters, Interval, IsNone, validate_params
from gauntlet.errors import BudgetExceeded, CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model, predict_batched
from gauntlet.models.wrapped import WrappedModel

__all__ = ["MAX_QUERIES", "OPTIONAL_MAX_QUERIES", "ExtractionAttack", "ExtractionResult", "QueryBudget", "agreement", "predict_labels"]

#: a query budget: a positive number of queries (one per input sent to the target)
MAX_QUERIES: list[Constraint] = [Interval(int, 1, None)]
OPTIONAL_MAX_QUERIES: list[Constraint] = [Interval(int, 1, None), IsNone()]


def predict_labels(model: Model, x: Tensor, *, batch_size: int = 1024, count: bool = False) -> Tensor:
    """``model``'s labels for ``x`` in batches, on the CPU (uncounted unless ``count``)."""
    return predict_batched(model, x, batch_size, count=count).cpu()


def _check_inputs(x: Any, model: Model, owner: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise DataError(f"{owner}: x must be a float torch.Tensor of inputs, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"{owner}: x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    shape = model.input_spec.shape
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"{owner}: inputs have per-sample shape {tuple(x.shape[1:])} but the model takes {tuple(shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{owner}: x holds NaN or inf values; clean the inputs first")
    return x


def agreement(copy: Model, target: Model, x: Tensor, *, batch_size: int = 1024) -> float:
    """Fidelity: the share of ``x`` on which ``copy`` and ``target`` predict the same label
    (neither model's query counter moves: measuring is not attacking)."""
    x = _check_inputs(x, target, "fidelity")
    a = predict_labels(copy, x, batch_size=batch_size, count=False)
    b = predict_labels(target, x, batch_size=batch_size, count=False)
    return float((a == b).double().mean())


@dataclass(frozen=True)
class ExtractionResult:
    """A stolen copy of a target model.

    Attributes:
        model: the copy, a :class:`~gauntlet.models.Model` (scores, and gradients where the copy
            is a torch network: a white-box surrogate for transfer attacks on the target).
        queries: inputs sent to the target (each ``scores``/``predict`` row counts one).
        attack: the attack's registry name; ``params`` its hyperparameters.
        info: attack-specific extras (e.g. recovered parameters, per-budget fidelity history).
        seconds: wall time of ``run``.
        target: the target model (kept to measure fidelity; not part of equality or repr).
    """

    model: Model
    queries: int
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    target: Model | None = field(default=None, repr=False, compare=False)

    def fidelity(self, x: Tensor, *, batch_size: int = 1024) -> float:
        """Share of ``x`` on which the copy predicts the target's label (uncounted queries)."""
        if self.target is None:
            raise ConfigError("ExtractionResult.fidelity: this result holds no target model to compare with")
        return agreement(self.model, self.target, x, batch_size=batch_size)

    def accuracy(self, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
        """The copy's accuracy on labelled data ``(x, y)``."""
        x = _check_inputs(x, self.model, "accuracy")
        if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
            raise DataError(f"accuracy: y must be a tensor of shape ({x.shape[0]},) to match x")
        pred = predict_labels(self.model, x, batch_size=batch_size, count=False)
        return float((pred == y.cpu().long()).double().mean())


class QueryBudget(WrappedModel):
    """The target as an extraction attack sees it: every query is counted and a query past
    ``max_queries`` raises :class:`~gauntlet.errors.BudgetExceeded` before reaching the target.

    Every query counts, including ``count=False`` calls and the one forward pass
    ``infer_num_classes`` makes: an attacker has no free queries.  ``used`` is the number of
    inputs asked so far and ``left`` what remains (``None``: no
    budget).  Attacks ask ``left`` before a batch and send at most that many inputs.
    """

    def __init__(self, model: Model, max_queries: int | None) -> None:
        super().__init__(model)
        self.max_queries = max_queries
        self.used = 0

    @property
    def target(self) -> Model:
        return self.inner_models[0]

    @property
    def left(self) -> int | None:
        return None if self.max_queries is None else self.max_queries - self.used

    def _spend(self, x: Tensor) -> None:
        n = int(x.shape[0])
        if self.max_queries is not None and self.used + n > self.max_queries:
            raise BudgetExceeded(
                f"internal error: {n} more queries past max_queries={self.max_queries} ({self.used} used) were attempted"
            )
        self.used += n
        self.queries += n

    # every way in counts: an attacker has no free queries (``count=False`` is ignored here)
    def _forward(self, x: Tensor) -> Tensor:
        self._spend(x)
        return self.target.scores(x) if self.target.has("scores") else self.target.predict(x)

    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        self._spend(x)
        return self.target.scores(x)

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        self._spend(x)
        return self.target.predict(x)


class ExtractionAttack(Hyperparameters, abc.ABC):
    """Base class of model-extraction attacks (registry ``kind`` ``"extraction"``).

    Subclasses set ``name``/``description``/``reference`` and ``needs`` (the target's access
    they require: ``"scores"`` or ``"labels"``; ``labels_alternative`` names the attack to use
    on a labels-only target), take their hyperparameters as keyword-only ``__init__`` arguments
    stored unchanged on ``self``, list constraints in ``_parameter_constraints``, call
    :meth:`_validate` at the end of ``__init__`` and implement :meth:`_extract`.  An attack
    with a ``max_queries`` hyperparameter gets it enforced by :class:`QueryBudget`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    kind: ClassVar[str] = "extraction"
    needs: ClassVar[str] = "scores"
    labels_alternative: ClassVar[str] = "knockoff"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def run(self, target: Model, *, seed: int = 0) -> ExtractionResult:
        """Steal ``target`` (a :class:`~gauntlet.models.Model` with the access in ``needs``)."""
        if not isinstance(target, Model):
            raise ConfigError(
                f"{self.name}: the target must be a gauntlet Model (TorchModel, SklearnModel, CallableModel, "
                f"RemoteModel, ...), got {type(target).__name__}"
            )
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be an int >= 0, got {seed!r}")
        if self.needs == "scores" and not target.has("scores"):
            raise CapabilityError(
                f"{self.name} needs the target's scores but this target returns labels only; "
                f"use {self.labels_alternative!r}, which works from labels"
            )
        budget = QueryBudget(target, getattr(self, "max_queries", None))
        generator = torch.Generator().manual_seed(seed)
        before = target.queries
        t0 = time.perf_counter()
        with _target_attack_mode(target):
            copy, info = self._extract(budget, generator)
        seconds = time.perf_counter() - t0
        asked = target.queries - before
        if asked != budget.used:  # pragma: no cover - a subclass bypassed the budget
            raise AssertionError(f"{self.name}: {asked} queries reached the target but {budget.used} were counted")
        return ExtractionResult(
            model=copy, queries=budget.used, attack=self.name, params=self.get_params(),
            info=info, seconds=seconds, target=target,
        )

    @abc.abstractmethod
    def _extract(self, target: QueryBudget, generator: torch.Generator) -> tuple[Model, dict[str, Any]]:
        """Query ``target`` (within its budget) and return ``(copy, info)``."""


@contextlib.contextmanager
def _target_attack_mode(target: Model) -> Iterator[None]:
    """The target in attack mode (eval, frozen parameters): extraction never trains it."""
    with target.attack_mode():
        yield
