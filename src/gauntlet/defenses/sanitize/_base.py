"""The training-data defense base class (kind ``"sanitizer"``) and its result.

``detect(model, x, y, seed=...)`` returns a :class:`SanitizationResult`: a suspicion score per
training row (higher = more likely poison), the rows flagged for removal, and, given the poison
mask of a :class:`~gauntlet.attacks.poisoning.PoisonedDataset`, precision and recall in one call.
Methods that work on the inputs alone (isolation forest, clustering) ignore ``model``; the
feature-space ones (spectral signatures, activation clustering) read the penultimate layer of a
``TorchModel`` trained on the (possibly poisoned) data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._batch import check_input_batch
from gauntlet.attacks.poisoning._base import precision_recall
from gauntlet.defenses.base import Defense, check_labels
from gauntlet.errors import ConfigError

__all__ = ["SanitizationResult", "Sanitizer"]


@dataclass(frozen=True)
class SanitizationResult:
    """What a sanitizer found: ``scores`` (float ``(N,)``, higher = more suspicious), ``flagged``
    (bool ``(N,)``, the removal set), the method's name and parameters, and extras in ``info``."""

    scores: Tensor
    flagged: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.flagged.shape[0])

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def precision_recall(self, is_poison: Tensor) -> dict[str, float | int]:
        """Precision, recall and F1 of the flagged rows against a poison mask (and the counts)."""
        return precision_recall(self.flagged, is_poison)


class Sanitizer(Defense):
    """Base class of training-data defenses: subclasses implement :meth:`_detect`.

    ``needs_model``: the method reads a trained network (a ``TorchModel``), else it works on the
    inputs (and labels) alone and ``model`` may be ``None``.
    """

    kind: ClassVar[str] = "sanitizer"
    needs_model: ClassVar[bool] = True

    def detect(self, model: Any, x: Tensor, y: Tensor, *, seed: int = 0) -> SanitizationResult:
        """Score every row of the training set ``(x, y)`` and flag the suspected poison."""
        import time

        self._validate()
        where = f"{self.name}.detect"
        check_input_batch(x, where=where, owner="the data")
        y = check_labels(y, int(x.shape[0]), None, x.device, where)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        if self.needs_model and model is None:
            raise ConfigError(f"{where}: {self.name} reads a network trained on the data: pass detect(model, x, y)")
        generator = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        scores, flagged, info = self._detect(model, x.detach(), y, generator)
        assert scores.shape == flagged.shape == (x.shape[0],) and flagged.dtype == torch.bool
        return SanitizationResult(
            scores=scores.detach().float().cpu(), flagged=flagged.cpu(), method=self.name, params=self.get_params(),
            info=info, seconds=time.perf_counter() - t0,
        )

    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement _detect(model, x, y, generator)")
