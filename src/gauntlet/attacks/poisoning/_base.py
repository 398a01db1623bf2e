"""The poisoning-attack base class and what every poisoning attack returns.

A poisoning attack controls a small share of the victim's *training* data.  ``poison(x, y)``
returns a :class:`PoisonedDataset` — the training set with the poison inserted or modified, a
mask of the poison rows and what the attacker aims at — and never sees the victim's test data.
Backdoor attacks (:class:`BackdoorAttack`) also stamp their trigger on any input
(``apply_trigger``), which is how their attack success rate (ASR) is measured on test inputs.

The base class owns the invariants: it validates the data (a float batch inside ``bounds``,
int64 labels of the same length, finite values), the poison budget and the target class; it
seeds an explicit ``torch.Generator`` (the global RNG is never used); the poisoned inputs are
clipped to ``bounds``; and the returned mask, counts and budget are checked against what the
subclass produced.  Subclasses implement :meth:`PoisoningAttack._poison`.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Check, Constraint, Hyperparameters, Interval, IsNone, validate_params
from gauntlet.errors import ConfigError, DataError

__all__ = ["FRACTION", "BackdoorAttack", "PoisonedDataset", "PoisoningAttack", "precision_recall"]

#: a poison budget: a share of the training set in (0, 1)
FRACTION: list[Constraint] = [Interval(float, 0, 1, closed="neither")]
TARGET_CLASS: list[Constraint] = [Interval(int, 0, None), IsNone()]
BOUNDS: list[Constraint] = [
    Check(
        lambda b: isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        and math.isfinite(b[0]) and math.isfinite(b[1]) and b[0] < b[1],
        "(low, high) with low < high",
    )
]


def precision_recall(flagged: Tensor, is_poison: Tensor) -> dict[str, float | int]:
    """How well a set of flagged rows matches the poison mask: precision (share of flagged rows
    that are poison), recall (share of poison rows flagged), F1, and the counts."""
    if not isinstance(flagged, Tensor) or not isinstance(is_poison, Tensor):
        raise DataError("precision_recall: flagged and is_poison must be bool tensors")
    if flagged.shape != is_poison.shape or flagged.dim() != 1:
        raise DataError(
            f"precision_recall: flagged has shape {tuple(flagged.shape)} but the poison mask {tuple(is_poison.shape)}; "
            "both must be (N,) over the same training rows"
        )
    f, p = flagged.bool().cpu(), is_poison.bool().cpu()
    tp = int((f & p).sum())
    n_flagged, n_poison = int(f.sum()), int(p.sum())
    precision = tp / n_flagged if n_flagged else (1.0 if not n_poison else 0.0)
    recall = tp / n_poison if n_poison else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": n_flagged, "poison": n_poison, "true_positives": tp}


@dataclass(frozen=True)
class PoisonedDataset:
    """A training set after a poisoning attack.

    Attributes:
        x, y: the training inputs and labels the victim trains on (poison included).
        is_poison: bool ``(N,)``, which rows the attacker inserted or modified.
        attack: the attack's registry name; ``params`` its hyperparameters.
        target_class: the class a targeted attack or backdoor aims at (``None``: untargeted).
        info: attack-specific extras (the trigger, the source rows of modified poison, ...).
        seconds: wall time of ``poison``.
    """

    x: Tensor
    y: Tensor
    is_poison: Tensor
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    target_class: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_poison(self) -> int:
        return int(self.is_poison.sum())

    @property
    def fraction(self) -> float:
        """Share of the training rows that are poison."""
        return self.n_poison / len(self) if len(self) else 0.0

    def precision_recall(self, flagged: Tensor) -> dict[str, float | int]:
        """Precision and recall of a sanitizer's flagged rows against this dataset's poison mask."""
        return precision_recall(flagged, self.is_poison)

    def without(self, flagged: Tensor) -> tuple[Tensor, Tensor]:
        """The training set with the ``flagged`` rows removed (what retraining after a
        sanitization defense uses)."""
        if not isinstance(flagged, Tensor) or flagged.dtype != torch.bool or flagged.shape != self.is_poison.shape:
            raise DataError(f"PoisonedDataset.without: flagged must be a bool tensor of shape ({len(self)},)")
        keep = ~flagged.to(self.x.device)
        return self.x[keep], self.y[keep]


class PoisoningAttack(Hyperparameters, abc.ABC):
    """Base class of poisoning attacks (registry ``kind`` ``"poisoning"``).

    Subclasses set ``name``/``description``/``reference``, take their hyperparameters as
    keyword-only ``__init__`` arguments stored unchanged on ``self``, list constraints in
    ``_parameter_constraints``, call :meth:`_validate` at the end of ``__init__`` and implement
    :meth:`_poison`.  ``needs_model`` says whether ``poison`` needs the victim's (or a surrogate)
    model, e.g. for gradient-based or clean-label poisons.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    kind: ClassVar[str] = "poisoning"
    needs_model: ClassVar[bool] = False
    #: what the attacker aims at, which fixes what :meth:`success_rate` measures:
    #: ``"backdoor"`` (triggered inputs of other classes go to ``target_class``), ``"targeted"``
    #: (chosen target inputs, passed to ``poison(x_target=...)``, go to ``target_class``) or
    #: ``"availability"`` (overall test accuracy falls; success is the test error)
    goal: ClassVar[str] = "availability"
    #: ``poison`` needs ``x_target`` (the attacker's target inputs; goal ``"targeted"``)
    needs_target: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    # -- hyperparameters ------------------------------------------------------------------------
    def _validate(self) -> None:
        constraints = {"fraction": FRACTION, "target_class": TARGET_CLASS, "bounds": BOUNDS, **self._parameter_constraints}
        validate_params(self.name, self.get_params(), constraints)

    # -- the front door -------------------------------------------------------------------------
    def poison(
        self, x: Tensor, y: Tensor, *, seed: int = 0, model: Any = None, x_target: Tensor | None = None
    ) -> PoisonedDataset:
        """Poison the training set ``(x, y)``.

        Args:
            x: float training inputs ``(N, ...)`` inside the attack's ``bounds``.
            y: int64 labels ``(N,)``.
            seed: seeds the attack's own ``torch.Generator`` (which rows, trigger positions, ...).
            model: the victim's or a surrogate model, for attacks with ``needs_model``.
            x_target: the attacker's target inputs ``(T, ...)`` (goal ``"targeted"``: the inputs
                it wants classified as ``target_class`` at test time); kept in ``info["x_target"]``.
        """
        x, y = self._check_data(x, y)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be an int >= 0, got {seed!r}")
        if self.needs_model and model is None:
            raise ConfigError(f"{self.name}: poison needs the victim's or a surrogate model: poison(x, y, model=...)")
        if self.needs_target:
            if x_target is None:
                raise ConfigError(f"{self.name}: poison needs the attacker's target inputs: poison(x, y, x_target=...)")
            x_target = self._check_target(x_target, x)
        elif x_target is not None:
            raise ConfigError(f"{self.name}: x_target is only for targeted attacks (goal 'targeted'), not goal {self.goal!r}")
        num_classes = int(y.max()) + 1
        target = getattr(self, "target_class", None)
        if target is not None and target >= max(num_classes, self._declared_classes()):
            raise DataError(
                f"{self.name}: target_class {target} does not exist: the labels are in [0, {num_classes - 1}]"
            )
        generator = torch.Generator(device=x.device).manual_seed(seed)
        t0 = time.perf_counter()
        self._x_target = x_target
        try:
            px, py, mask, info = self._poison(x, y, generator, model)
        finally:
            self._x_target = None
        if x_target is not None:
            info = {**info, "x_target": x_target.detach().cpu()}
        lo, hi = self._bounds()
        px = px.detach().clamp(lo, hi).to(x.dtype)
        if px.shape[1:] != x.shape[1:] or py.shape != (px.shape[0],) or mask.shape != (px.shape[0],) or mask.dtype != torch.bool:
            raise AssertionError(f"{self.name}: _poison returned inconsistent shapes")  # pragma: no cover - a bug
        return PoisonedDataset(
            x=px, y=py.to(torch.int64), is_poison=mask, attack=self.name, params=self.get_params(),
            target_class=target, info=info, seconds=time.perf_counter() - t0,
        )

    @abc.abstractmethod
    def _poison(
        self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        """Return ``(x_poisoned, y_poisoned, is_poison, info)`` for validated data (a targeted
        attack reads its validated target inputs from ``self._x_target``)."""

    # -- what the attacker achieved ----------------------------------------------------------
    def success_rate(self, model: Any, x_test: Tensor, y_test: Tensor, poisoned: PoisonedDataset) -> float:
        """How far the attacker got on a ``model`` trained on ``poisoned``, by :attr:`goal`:

        * ``"availability"``: the test error ``1 - accuracy`` on ``(x_test, y_test)``;
        * ``"targeted"``: the share of ``poisoned.info["x_target"]`` classified as ``target_class``;
        * ``"backdoor"``: the ASR (see :meth:`BackdoorAttack.attack_success_rate`).
        """
        if self.goal == "targeted":
            xt = poisoned.info.get("x_target")
            if xt is None or poisoned.target_class is None:
                raise DataError(f"{self.name}: this PoisonedDataset records no x_target/target_class to measure targeted success on")
            pred = model.predict(xt.to(x_test.device), count=False)
            return float((pred == int(poisoned.target_class)).double().mean())
        x_test, y_test = self._check_data(x_test, y_test, what="x_test")
        pred = model.predict(x_test, count=False)
        return float((pred != y_test).double().mean())

    # -- helpers for subclasses ----------------------------------------------------------------
    def _bounds(self) -> tuple[float, float]:
        b = getattr(self, "bounds", (0.0, 1.0))
        return float(b[0]), float(b[1])

    def _declared_classes(self) -> int:
        return int(getattr(self, "num_classes", 0) or 0)

    def n_poison(self, n: int) -> int:
        """Rows the budget allows on a training set of ``n`` (at least one)."""
        return max(1, round(float(self.fraction) * n))  # type: ignore[attr-defined]

    @staticmethod
    def choose(candidates: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """``k`` distinct entries of ``candidates`` drawn with ``generator``, in ascending order."""
        if k > candidates.numel():
            raise DataError(f"the poison budget needs {k} rows but only {candidates.numel()} are eligible; lower fraction")
        pick = torch.randperm(candidates.numel(), generator=generator, device=candidates.device)[:k]
        return candidates[pick].sort().values

    def _check_target(self, x_target: Any, x: Tensor) -> Tensor:
        from gauntlet._batch import check_input_batch

        where = f"{self.name}.poison"
        check_input_batch(x_target, where=where, owner="x_target")
        if tuple(x_target.shape[1:]) != tuple(x.shape[1:]):
            raise DataError(f"{where}: x_target has per-sample shape {tuple(x_target.shape[1:])} but x has {tuple(x.shape[1:])}")
        lo, hi = self._bounds()
        if float(x_target.min()) < lo or float(x_target.max()) > hi:
            raise DataError(f"{where}: x_target has values outside the bounds ({lo}, {hi}); scale it like the training data")
        return x_target.detach().to(x.device, x.dtype)

    def _check_data(self, x: Any, y: Any, what: str = "x") -> tuple[Tensor, Tensor]:
        from gauntlet.defenses.training._base import check_training_data

        where = f"{self.name}.poison"
        check_training_data(x, y, bounds=self._bounds(), where=where, what=what)
        if int(y.min()) < 0:
            raise DataError(f"{where}: y holds negative labels (min {int(y.min())}); labels must be in [0, num_classes)")
        return x.detach(), y.detach().to(torch.int64)


class BackdoorAttack(PoisoningAttack):
    """A poisoning attack that plants a trigger: inputs carrying it are classified as
    ``target_class`` by a model trained on the poison, while clean inputs are not affected."""

    goal: ClassVar[str] = "backdoor"

    def success_rate(self, model: Any, x_test: Tensor, y_test: Tensor, poisoned: PoisonedDataset) -> float:
        """The ASR on ``(x_test, y_test)`` (``poisoned`` is not needed: the trigger is the attack's)."""
        return self.attack_success_rate(model, x_test, y_test)

    @abc.abstractmethod
    def apply_trigger(self, x: Tensor) -> Tensor:
        """``x`` with the trigger stamped on (clipped to the bounds); ``x`` is not modified."""

    def attack_success_rate(self, model: Any, x: Tensor, y: Tensor) -> float:
        """ASR: the share of test inputs *not* of ``target_class`` that the model assigns to
        ``target_class`` once they carry the trigger."""
        target = getattr(self, "target_class", None)
        if target is None:
            raise ConfigError(f"{self.name}: attack_success_rate needs a target_class")
        x, y = self._check_data(x, y)
        keep = y != target
        if not bool(keep.any()):
            raise DataError(f"{self.name}: every test label is the target class {target}; ASR needs inputs of other classes")
        pred = model.predict(self.apply_trigger(x[keep]), count=False)
        return float((pred == target).double().mean())
