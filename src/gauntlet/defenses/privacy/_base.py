"""Output hardening: what a model releases per query, made less useful to a thief.

An :class:`OutputDefense` (registry ``kind`` ``"output"``) sits in front of a model that has
scores and changes what each query returns — fewer classes (``top_k``), fewer digits
(``rounding``), the label alone (``labels_only``) or noise that keeps the label
(``output_noise``).  ``wrap(model, seed=...)`` returns a :class:`HardenedModel`: a black box
(no gradients) that answers like the deployed API would, so extraction and membership attacks
are measured against what an attacker would really see, and the utility cost is the top-1
agreement with the bare model (exactly 1 for every defense here, which never changes the label).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from gauntlet.defenses.base import Defense
from gauntlet.errors import CapabilityError, ConfigError
from gauntlet.models.base import Model
from gauntlet.models.wrapped import WrappedModel

__all__ = ["HardenedModel", "OutputDefense", "probabilities"]


def probabilities(model: Model, scores: Tensor) -> Tensor:
    """The model's scores as probabilities (a softmax of logits; probabilities as they are)."""
    if model.output == "probabilities":
        return scores
    return torch.softmax(scores, dim=1)


class OutputDefense(Defense):
    """Base class of output-hardening defenses (registry ``kind`` ``"output"``).

    Subclasses implement :meth:`release`: the target's probabilities ``(N, C)`` in, what the API
    returns out (probabilities ``(N, C)``, or labels ``(N,)`` when ``releases == "labels"``).
    """

    kind: ClassVar[str] = "output"
    #: what the hardened model returns: ``"probabilities"`` or ``"labels"``
    releases: ClassVar[str] = "probabilities"
    #: the released output depends on a random draw (seeded per wrapper)
    randomized: ClassVar[bool] = False

    @abc.abstractmethod
    def release(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        """What the API returns for the target's probabilities ``probs``."""

    def wrap(self, model: Model, *, seed: int = 0) -> HardenedModel:
        """``model`` behind this defense (a black box that answers what the API would release)."""
        return HardenedModel(self, model, seed=seed)


class HardenedModel(WrappedModel):
    """A model whose answers pass through an :class:`OutputDefense`.

    Capabilities: ``scores`` and ``labels`` (or ``labels`` only for ``labels_only``); never
    ``gradients``: the hardened API is a black box.  Each query counts one on the wrapper and
    one on the inner model.
    """

    def __init__(self, defense: OutputDefense, model: Model, *, seed: int = 0) -> None:
        where = f"{defense.name}.wrap"
        if not isinstance(model, Model):
            raise ConfigError(f"{where}: model must be a gauntlet Model, got {type(model).__name__}")
        if not model.has("scores"):
            raise CapabilityError(f"{where}: the model returns labels only; there are no scores to harden")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        super().__init__(model)
        self.defense = defense
        self.model = model
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.randomized = model.randomized or defense.randomized
        if defense.releases == "labels":
            self.capabilities = frozenset({"labels"})
            self.output = "labels"
        else:
            self.capabilities = frozenset({"scores", "labels"})
            self.output = "probabilities"

    def _forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            probs = probabilities(self.model, self.model.scores(x, count=False))
            return self.defense.release(probs, self.generator)

    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        if self.defense.releases == "labels":
            raise CapabilityError(
                f"{type(self).__name__} behind {self.defense.name} returns labels only, not scores; use a decision-based attack"
            )
        if count:
            self.queries += int(x.shape[0])
            self.model.queries += int(x.shape[0])
        return self._forward(x)

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        if count:
            self.queries += int(x.shape[0])
            self.model.queries += int(x.shape[0])
        out = self._forward(x)
        return out.argmax(dim=1) if out.dim() == 2 else out.to(torch.int64)
