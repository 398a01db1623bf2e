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
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

from gauntlet._validation import Constraint, validate_params

Kind = Literal["training", "preprocessing", "detector", "ensemble", "certification"]
KINDS: tuple[str, ...] = ("training", "preprocessing", "detector", "ensemble", "certification")


class Defense:
    """Base class of every defense.

    Subclasses set ``name``, ``description`` and ``kind``, take their hyperparameters as
    keyword-only ``__init__`` arguments stored unchanged on ``self`` (so :meth:`get_params` can
    rebuild them), list constraints in ``_parameter_constraints`` and call :meth:`_validate` at
    the end of ``__init__``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters exactly as given (or defaulted) at construction."""
        return {k: getattr(self, k) for k in self._param_names()}

    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
