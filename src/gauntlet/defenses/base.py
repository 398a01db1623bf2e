"""The defense base class: hyperparameters as given, validated declaratively, one registry.

Every defense is a class registered under a lower_snake_case ``name`` with a ``kind`` that says
which interface it offers (each kind's own base class lives in its subpackage):

``"training"``       ``fit(module, x, y, ...)`` trains a ``torch.nn.Module`` robustly.
``"preprocessing"``  ``wrap(model, adaptive=True, ...)`` returns a :class:`~gauntlet.models.Model`
                     that transforms inputs first; ``adaptive=True`` gives attacks the BPDA/EOT
                     view of the transform, ``adaptive=False`` the naive one.
``"detector"``       ``fit(model, x_clean, fpr=...)`` calibrates, ``detect(x)`` flags inputs.
``"ensemble"``       ``wrap(models)`` combines several models into one attackable model.
``"certification"``  ``certify(model, x, y, seed=...)`` returns certified radii per sample.
``"sanitizer"``      ``detect(model, x_train, y_train, seed=...)`` scores every training row for
                     being poison and flags a removal set (training-data defenses).
``"output"``         ``wrap(model, seed=...)`` returns the model as a black box whose released
                     outputs are hardened against extraction and membership inference.
``"monitor"``        ``wrap(model)`` watches every query a model receives and raises an alarm on
                     an extraction-like stream (``fired_at``); ``monitor()`` for many clients.
``"watermark"``      ``embed(module, x, y)`` trains a secret trigger set into a model,
                     ``verify(model)`` tests a suspect for it (a binomial p-value).
``"aggregation"``    ``aggregate(updates)`` combines a ``(n_clients, d)`` stack of federated client
                     updates robustly (``defenses.federated``; also a Flower strategy).
``"staleness"``      bounds or down-weights stale updates of asynchronous SGD workers.
``"online"``         guards an online learner's updates (trusted holdout, drift detection).
``"profiles"``       scores a recommender's user profiles for being fake (shilling detection).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Hyperparameters, validate_params
from gauntlet.errors import DataError

Kind = Literal[
    "training", "preprocessing", "detector", "ensemble", "certification", "sanitizer", "output", "monitor", "watermark",
    "aggregation", "staleness", "online", "profiles",
]
KINDS: tuple[str, ...] = (
    "training", "preprocessing", "detector", "ensemble", "certification", "sanitizer", "output", "monitor", "watermark",
    "aggregation", "staleness", "online", "profiles",
)


class Defense(Hyperparameters):
    """Base class of every defense.

    Subclasses set ``name``, ``description`` and ``kind``, take their hyperparameters as
    keyword-only ``__init__`` arguments stored unchanged on ``self`` (so :meth:`get_params` can
    rebuild them), list constraints in ``_parameter_constraints`` and call :meth:`_validate` at
    the end of ``__init__``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the paper it follows: authors, "title", venue year, URL
    kind: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}


    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), self._parameter_constraints)


def check_labels(y: object, n: int, num_classes: int | None, device: torch.device, owner: str) -> Tensor:
    """Labels for a defense: ``y`` as int64 ``(n,)`` on ``device`` with labels in ``[0, num_classes)``
    (unchecked when ``num_classes`` is None), else :class:`DataError` naming ``owner``."""
    if not isinstance(y, Tensor):
        raise DataError(f"{owner}: y must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{owner}: y must hold integer class labels, got dtype {y.dtype}; use y.long()")
    if y.dim() != 1 or y.shape[0] != n:
        raise DataError(f"{owner}: y must have shape ({n},) to match x, got {tuple(y.shape)}")
    if n and num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{owner}: y holds labels in [{int(y.min())}, {int(y.max())}] but the model has {num_classes} classes"
        )
    return y.to(device=device, dtype=torch.int64)
