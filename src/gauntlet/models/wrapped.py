"""The base of models that answer through other models (a defense in front of a classifier, a
classifier with a detector, an ensemble)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gauntlet.models.base import Model


class WrappedModel(Model):
    """A :class:`Model` built on one or more inner models (``inner_models``, the first one leads).

    What a wrapper does not change passes through from the inner models: by default it takes the
    first one's capabilities, input spec (per-sample shape, dtype, ``bounds``), output kind and
    number of classes, is ``randomized`` when any inner model is, runs on the first one's
    ``device``, and its ``attack_mode`` enters every inner model's attack mode (each restored on
    exit).  Subclasses set what they change after calling ``super().__init__(*models)`` and
    implement ``_forward`` (and usually ``scores``/``predict``, to count the inner queries).
    """

    inner_models: tuple[Model, ...]

    def __init__(self, *models: Model) -> None:
        super().__init__()
        if not models:
            raise TypeError(f"{type(self).__name__}: a wrapped model needs at least one inner model")
        self.inner_models = models
        first = models[0]
        self.capabilities = first.capabilities
        self.input_spec = first.input_spec
        self.output = first.output
        self._num_classes = first.num_classes
        self.randomized = any(m.randomized for m in models)

    @property
    def device(self) -> torch.device:
        return self.inner_models[0].device

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Every inner model's attack mode at once (each restored on exit)."""
        with contextlib.ExitStack() as stack:
            for m in self.inner_models:
                stack.enter_context(m.attack_mode())
            yield


__all__ = ["WrappedModel"]
