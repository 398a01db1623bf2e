"""The ``Model`` protocol every attack, defense and metric talks to.

A model declares its **capabilities** (``"gradients"``, ``"scores"``, ``"labels"``), its
:class:`InputSpec` (per-sample shape, dtype, value bounds), its number of classes and what its
scores are (``"logits"`` or ``"probabilities"``), and counts every query.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from gauntlet._validation import parse_bounds
from gauntlet.errors import CapabilityError, ConfigError, DataError, GauntletError

Capability = Literal["gradients", "scores", "labels"]
Output = Literal["logits", "probabilities", "labels"]


def predict_batched(model: Model, x: Tensor, batch_size: int = 1024, *, count: bool = False) -> Tensor:
    """``model``'s labels for ``x``, ``batch_size`` rows per call, without gradients; queries are
    counted only with ``count`` (an empty ``x`` gives an empty int64 tensor)."""
    with torch.no_grad():
        parts = [model.predict(x[s : s + batch_size], count=count).to(torch.int64) for s in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=x.device)


@dataclass(frozen=True)
class InputSpec:
    """What a model accepts: per-sample ``shape`` (``None`` = any), ``dtype`` and value ``bounds``."""

    shape: tuple[int, ...] | None = None
    dtype: torch.dtype = torch.float32
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        parse_bounds("InputSpec", self.bounds, finite=False, error=DataError, expected="(low, high) with low < high")


class Model(abc.ABC):
    """Base class of model adapters.

    Subclasses implement :meth:`_forward` (a batch in, scores or labels out) and set
    ``capabilities``, ``input_spec``, ``output`` and ``num_classes``.  The public
    :meth:`scores` / :meth:`predict` count queries (one per sample); attacks obtain gradients
    through :meth:`scores` on a tensor that requires grad, which only models with the
    ``"gradients"`` capability support.
    """

    capabilities: frozenset[str]
    input_spec: InputSpec
    output: Output
    _num_classes: int | None
    #: True when the model's output is random (e.g. a noise-injecting preprocessing defense):
    #: a gradient attack on it needs expectation over transformation (EOT), and audits flag
    #: runs that attack it without.
    randomized: bool = False
    #: set once the scores' width has been checked against ``num_classes`` (at construction
    #: where the input shape is known, else on the first query), so the check costs one flag test
    _outputs_checked: bool = False

    def __init__(self) -> None:
        self.queries = 0
        self.grad_evals = 0

    # -- description -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    @property
    def bounds(self) -> tuple[float, float]:
        return self.input_spec.bounds

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def execution(self) -> dict[str, Any] | None:
        """How this adapter's queries run in this process (its fast paths and what building them
        cost, as :meth:`TorchModel.execution <gauntlet.models.TorchModel.execution>` reports);
        ``None``: an adapter without fast paths."""
        return None

    def warm_up(self, x: Tensor) -> dict[str, Any] | None:
        """Build the adapter's fast paths on (part of) ``x`` now, before the first real query, and
        return :meth:`execution`; an audit calls it once per model and process.  Nothing to build
        here."""
        return self.execution()

    def reset_counters(self) -> None:
        self.queries = 0
        self.grad_evals = 0

    # -- queries -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _forward(self, x: Tensor) -> Tensor:
        """Scores ``(N, C)`` (or labels ``(N,)`` for labels-only models) for a batch."""

    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        """Logits or probabilities, shape ``(N, num_classes)``; one query per sample."""
        if "scores" not in self.capabilities:
            raise CapabilityError(
                f"{type(self).__name__} returns labels only, not scores; use a decision-based attack"
            )
        if count:
            self.queries += int(x.shape[0])
        out = self._forward(x)
        if not self._outputs_checked:
            self._check_outputs(out)
        return out

    __call__ = scores

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        """Predicted labels, shape ``(N,)``, int64; one query per sample."""
        if count:
            self.queries += int(x.shape[0])
        with torch.no_grad():
            out = self._forward(x)
        if not self._outputs_checked:
            self._check_outputs(out)
        return out.argmax(dim=1) if out.dim() == 2 else out.to(torch.int64)

    def _check_outputs(self, out: object) -> None:
        """Scores ``(N, C)`` must have ``C == num_classes`` when it is declared (checked once)."""
        k = self._num_classes
        if k is not None and isinstance(out, Tensor) and out.dim() == 2 and int(out.shape[1]) != k:
            c = int(out.shape[1])
            raise ConfigError(
                f"{type(self).__name__}: num_classes={k} but the model outputs {c} scores per input; "
                f"pass num_classes={c} or check the model"
            )
        self._outputs_checked = True

    def _probe_outputs(self) -> None:
        """At construction: when both the per-sample shape and ``num_classes`` are declared, one
        uncounted forward pass of a mid-range input (in attack mode, without gradients, leaving the
        global RNG as it was) checks the scores' width; otherwise the first query checks it."""
        shape = self.input_spec.shape
        if shape is None or self._num_classes is None or "scores" not in self.capabilities:
            return
        lo, hi = self.bounds
        fill = (lo + hi) / 2 if math.isfinite(lo) and math.isfinite(hi) else min(max(0.0, lo), hi)
        device = self.device
        x = torch.full((1, *shape), fill, dtype=self.input_spec.dtype, device=device)
        cuda = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), torch.no_grad(), self.attack_mode():
                out = self._forward(x)
        except GauntletError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the network raises on a wrong shape
            line = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ConfigError(
                f"{type(self).__name__}: the model fails on one input of per-sample shape {shape} "
                f"({type(exc).__name__}: {line}); check input_shape or the model"
            ) from None
        self._check_outputs(out)

    # -- attack support ----------------------------------------------------------------------
    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Context in which attacks run (eval mode, frozen parameters); restores state on exit."""
        yield

    @contextlib.contextmanager
    def search_precision(self, dtype: torch.dtype | None) -> Iterator[bool]:
        """Context in which an attack's *search* may query in reduced precision (``dtype``, e.g.
        ``torch.bfloat16``; ``None``: full precision, also inside an outer reduced context).  It
        yields whether reduced precision is in effect.  Such scores are approximate: the attack
        must re-verify every success in full precision
        (:meth:`gauntlet.attacks.base.Context.confirm`).  The default adapter never reduces."""
        yield False

    def infer_num_classes(self, x: Tensor) -> int:
        """Number of classes, found with one uncounted query on ``x[:1]`` if not declared."""
        if self._num_classes is None:
            with torch.no_grad():
                out = self._forward(x[:1])
            if out.dim() != 2:
                raise DataError(
                    f"{type(self).__name__}: cannot infer num_classes from a labels-only model; pass num_classes="
                )
            self._num_classes = int(out.shape[1])
            self._outputs_checked = True
        return self._num_classes

    def __repr__(self) -> str:
        caps = ",".join(sorted(self.capabilities))
        return f"{type(self).__name__}(capabilities={caps}, num_classes={self._num_classes}, bounds={self.bounds})"
