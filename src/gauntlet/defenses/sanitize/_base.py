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

import numpy as np
import torch
from torch import Tensor

from gauntlet._batch import check_input_batch
from gauntlet._validation import Check, Constraint, Interval, IsNone
from gauntlet.attacks.poisoning._base import precision_recall
from gauntlet.defenses.base import Defense, check_labels
from gauntlet.errors import CapabilityError, ConfigError

__all__ = [
    "EXPECTED_FRACTION",
    "LAYER",
    "REMOVAL_FACTOR",
    "SPACES",
    "SanitizationResult",
    "Sanitizer",
    "check_removal",
    "flag_top",
    "read_features",
    "representation",
    "seed_from",
]

# -- what several sanitizers share: the removal budget, the feature space, scikit-learn seeds ------
#: where the rows are compared: the raw inputs or the penultimate features of a TorchModel
SPACES = ("input", "features")
#: the share of poison the defender expects, in (0, 1)
EXPECTED_FRACTION: list[Constraint] = [Interval(float, 0, 1, closed="neither")]
#: how many times the expected poison share is removed (Tran et al. 2018 remove 1.5 ε)
REMOVAL_FACTOR: list[Constraint] = [Interval(float, 0, None, closed="neither")]
#: the submodule whose output is the feature space (None: the input of the last nn.Linear)
LAYER: list[Constraint] = [Check(lambda v: isinstance(v, str) and v != "", "a submodule name"), IsNone()]


def check_removal(owner: str, expected_fraction: float, removal_factor: float) -> None:
    """One-line :class:`ConfigError` when the removal set would be the whole training set."""
    if float(expected_fraction) * float(removal_factor) >= 1.0:
        raise ConfigError(
            f"{owner}: expected_fraction × removal_factor = {float(expected_fraction) * float(removal_factor):g} "
            "would flag every row; it must be < 1 (lower one of them)"
        )


def flag_top(scores: Tensor, expected_fraction: float, removal_factor: float) -> tuple[Tensor, int]:
    """The removal set: the ``k = round(expected_fraction × removal_factor × N)`` rows with the
    highest scores (at least one; ties broken by row order), and ``k``."""
    n = int(scores.shape[0])
    k = min(n, max(1, round(float(expected_fraction) * float(removal_factor) * n)))
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    flagged = torch.zeros(n, dtype=torch.bool)
    flagged[order[:k].cpu()] = True
    return flagged, k


def seed_from(generator: torch.Generator) -> int:
    """A non-negative 31-bit seed drawn from ``generator`` (for scikit-learn's ``random_state``)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def read_features(owner: str, model: Any, x: Tensor, layer: str | None, batch_size: int) -> Tensor:
    """The representations ``(N, D)`` (float64) a feature-space sanitizer works on: the input of
    the last ``nn.Linear`` of a gauntlet ``TorchModel`` (or the output of the submodule ``layer``),
    after checking that ``x`` fits the model (per-sample shape, dtype, device, bounds, finite)."""
    from gauntlet.attacks.base import check_batch
    from gauntlet.models.features import features
    from gauntlet.models.torch_model import TorchModel

    if not isinstance(model, TorchModel):
        raise CapabilityError(
            f"{owner}: reads the penultimate layer of the network trained on the data, so it needs a gauntlet "
            f"TorchModel (gt.models.TorchModel(net, ...)), got {type(model).__name__}"
        )
    check_batch(x, model, where=f"{owner}.detect")
    feats = features(model, x, layer=layer, batch_size=batch_size, owner=owner)
    if not bool(torch.isfinite(feats).all()):
        raise ConfigError(f"{owner}: the network's features hold NaN or inf; check the model (or pass another layer=)")
    return feats.to(torch.float64)


def representation(owner: str, space: str, model: Any, x: Tensor, *, layer: str | None, batch_size: int) -> np.ndarray:
    """The rows of ``x`` as float64 vectors ``(N, D)``: the flattened inputs (``space="input"``,
    ``model`` unused) or :func:`read_features` of ``model`` (``space="features"``)."""
    if space == "input":
        return x.detach().flatten(1).double().cpu().numpy()
    if model is None:
        raise ConfigError(
            f"{owner}: space='features' reads a network trained on the data: pass detect(model, x, y) "
            "with a gauntlet TorchModel, or use space='input'"
        )
    return read_features(owner, model, x, layer, batch_size).cpu().numpy()


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
