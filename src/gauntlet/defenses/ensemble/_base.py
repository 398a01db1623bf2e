"""Ensemble defenses: several models combined into one model that is attacked as a whole.

An :class:`Ensemble` defense combines its members' outputs (:meth:`Ensemble.combine`); its
:meth:`~Ensemble.wrap` returns an :class:`EnsembleModel`, an ordinary
:class:`~gauntlet.models.Model` (so every attack and the audit run on it unchanged).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet.defenses.base import Defense
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import InputSpec, Model, Output
from gauntlet.models.wrapped import WrappedModel


def log_probabilities(out: Tensor, output: str) -> Tensor:
    """Per-class log-probabilities of a member's scores: ``log_softmax`` of logits, the (floored)
    log of probabilities."""
    if output == "probabilities":
        return out.clamp_min(torch.finfo(out.dtype).tiny).log()
    return F.log_softmax(out, dim=-1)


class Ensemble(Defense, abc.ABC):
    """Base class of ensemble defenses (kind ``"ensemble"``).

    Subclasses implement :meth:`combine` and may restrict members in :meth:`check_members` and
    declare what the combined model offers in :meth:`capabilities_for` / :meth:`output_for`.
    """

    kind: ClassVar[str] = "ensemble"

    @abc.abstractmethod
    def combine(self, outs: Sequence[Tensor], members: Sequence[Model], grad: bool) -> Tensor:
        """The ensemble's scores ``(N, C)`` from each member's output (scores, or labels for a
        labels-only member); ``grad`` says a gradient was requested."""

    def check_members(self, members: Sequence[Model]) -> None:
        """Raise :class:`ConfigError` when a member cannot take part in this combination."""

    def capabilities_for(self, members: Sequence[Model]) -> frozenset[str]:
        caps = {"scores", "labels"}
        if all(m.has("gradients") and m.has("scores") for m in members):
            caps.add("gradients")
        return frozenset(caps)

    def output_for(self, members: Sequence[Model]) -> Output:
        return "logits"

    def wrap(self, models: Sequence[Model]) -> EnsembleModel:
        """The ensemble of ``models`` as one :class:`~gauntlet.models.Model`.

        All members must agree on the number of classes, the input bounds, dtype, device and the
        per-sample input shape (when declared); the first mismatch raises :class:`ConfigError`.
        """
        return EnsembleModel(self, models)


class EnsembleModel(WrappedModel):
    """Several models combined by an :class:`Ensemble` defense, attacked as one model.

    ``scores`` calls every member on the same batch (with grad when the caller asked for it) and
    combines; ``predict`` takes the argmax of the combined scores.  ``attack_mode`` enters every
    member's, the device is theirs (:class:`~gauntlet.models.WrappedModel`).  ``randomized`` is
    true when any member is.

    **Counting.** One query to the ensemble is one query to the deployed system: the ensemble's
    ``queries`` grows by ``N`` per call, or by the costliest member's query increase when a member
    spends more (an EOT-averaged member counts ``K·N``); under a gradient request the extra
    ``cost − N`` is added to ``grad_evals`` (the caller counts the first ``N``).  Members count
    their own queries as usual.
    """

    def __init__(self, ensemble: Ensemble, models: Sequence[Model]) -> None:
        where = f"{getattr(ensemble, 'name', type(ensemble).__name__)}.wrap"
        if isinstance(models, (Model, str, bytes)) or not isinstance(models, Sequence):
            raise ConfigError(f"{where}: models must be a list of gauntlet Models, got {type(models).__name__}")
        models = list(models)
        if len(models) < 2:
            raise ConfigError(f"{where}: an ensemble needs at least 2 models, got {len(models)}")
        for i, m in enumerate(models):
            if not isinstance(m, Model):
                hint = (
                    "; wrap it: gauntlet.models.TorchModel(module, bounds=(0, 1))"
                    if isinstance(m, torch.nn.Module)
                    else ""
                )
                raise ConfigError(f"{where}: model {i} must be a gauntlet Model, got {type(m).__name__}{hint}")
        first = models[0]
        for i, m in enumerate(models):
            if m.num_classes is None:
                raise ConfigError(f"{where}: model {i} does not declare num_classes; build it with num_classes=")
            if m.num_classes != first.num_classes:
                raise ConfigError(f"{where}: model {i} has {m.num_classes} classes but model 0 has {first.num_classes}")
            if tuple(map(float, m.bounds)) != tuple(map(float, first.bounds)):
                raise ConfigError(f"{where}: model {i} has bounds {m.bounds} but model 0 has {first.bounds}")
            if m.input_spec.dtype != first.input_spec.dtype:
                raise ConfigError(
                    f"{where}: model {i} takes {m.input_spec.dtype} but model 0 takes {first.input_spec.dtype}"
                )
            if m.device != first.device:
                raise ConfigError(
                    f"{where}: model {i} is on {m.device} but model 0 on {first.device}; move them to one device"
                )
        shapes = [(i, m.input_spec.shape) for i, m in enumerate(models) if m.input_spec.shape is not None]
        for i, s in shapes:
            if s != shapes[0][1]:
                raise ConfigError(
                    f"{where}: model {i} has input shape {s} but model {shapes[0][0]} has {shapes[0][1]}"
                )
        ensemble.check_members(models)

        super().__init__(*models)
        self.ensemble = ensemble
        self.members: tuple[Model, ...] = self.inner_models
        self.capabilities = ensemble.capabilities_for(self.members)
        self.output = ensemble.output_for(self.members)
        self.input_spec = InputSpec(shapes[0][1] if shapes else None, first.input_spec.dtype, first.bounds)

    def _check(self, x: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise DataError(f"{self.ensemble.name}: x must be a torch.Tensor, got {type(x).__name__}")
        shape = self.input_spec.shape
        if x.dim() < 2 or (shape is not None and tuple(x.shape[1:]) != shape):
            want = f"(N, {', '.join(map(str, shape))})" if shape is not None else "(N, ...)"
            raise DataError(f"{self.ensemble.name}: x must have shape {want}, got {tuple(x.shape)}")
        return x

    def _run(self, x: Tensor, count: bool) -> tuple[Tensor, int, bool]:
        x = self._check(x)
        grad = torch.is_grad_enabled() and x.requires_grad
        outs, cost = [], int(x.shape[0])
        for m in self.members:
            q0 = m.queries
            outs.append(m.scores(x, count=count) if m.has("scores") else m.predict(x, count=count))
            cost = max(cost, m.queries - q0)
        return self.ensemble.combine(outs, self.members, grad), cost, grad

    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        """The combined scores ``(N, C)``; see the class docstring for counting."""
        out, cost, grad = self._run(x, count)
        if count:
            self.queries += cost
            if grad:
                self.grad_evals += cost - int(x.shape[0])
        return out

    __call__ = scores

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        """Argmax of the combined scores (ties go to the lowest class index)."""
        with torch.no_grad():
            out, cost, _ = self._run(x, count)
        if count:
            self.queries += cost
        return out.argmax(dim=1)

    def _forward(self, x: Tensor) -> Tensor:
        return self._run(x, False)[0]

    def infer_num_classes(self, x: Tensor) -> int:
        return int(self._num_classes)  # type: ignore[arg-type]  # checked non-None at wrap time

    def __repr__(self) -> str:
        caps = ",".join(sorted(self.capabilities))
        return f"EnsembleModel({self.ensemble!r}, members={len(self.members)}, capabilities={caps})"


def require_scores(name: str, members: Sequence[Model]) -> None:
    for i, m in enumerate(members):
        if not m.has("scores"):
            raise ConfigError(f"{name}: model {i} returns labels only; use majority_vote, which needs only labels")


__all__ = ["Ensemble", "EnsembleModel", "log_probabilities", "require_scores"]
