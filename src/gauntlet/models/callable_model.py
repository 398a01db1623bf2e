"""Adapter for any Python function from a batch to scores or labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Interval, IsNone, Options, parse_shape, validate_params
from gauntlet._validation import parse_bounds as _parse_bounds
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import InputSpec, Model

_OUTPUTS = ("scores", "logits", "probabilities", "labels")


def parse_bounds(owner: str, bounds: Any) -> tuple[float, float]:
    """A model adapter's ``(low, high)`` as floats with ``low < high`` (infinite ends allowed;
    raises :class:`ConfigError`); see :func:`gauntlet._validation.parse_bounds`."""
    return _parse_bounds(owner, bounds, finite=False)


class CallableModel(Model):
    """A Python function ``fn(x) -> scores (N, C) or labels (N,)`` as a model.

    Args:
        fn: called with a float32 batch ``(N, ...)``; may return a torch tensor, a NumPy array
            or anything :func:`torch.as_tensor` accepts.
        output: ``"scores"`` (or the more precise ``"logits"`` / ``"probabilities"``) for
            ``(N, C)`` scores, ``"labels"`` for ``(N,)`` integer labels (a decision-based,
            labels-only model). ``"scores"`` is reported as logits.
        bounds: the valid input range.
        num_classes: number of classes; inferred from one call when omitted (scores only).
        input_shape: per-sample input shape, checked on every attack call when given.
        differentiable: ``fn`` is built from torch operations end to end, so input gradients
            flow through it; adds the ``"gradients"`` capability (white-box attacks).

    Every result is checked (shape, dtype, finiteness), so a wrong function fails at the first
    query with a :class:`~gauntlet.errors.DataError` instead of deep inside an attack.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Any],
        *,
        output: str = "scores",
        bounds: tuple[float, float] = (0.0, 1.0),
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        differentiable: bool = False,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise ConfigError(
                f"CallableModel: fn must be callable (batch -> scores or labels), got {type(fn).__name__}"
            )
        validate_params(
            "CallableModel",
            {"output": output, "num_classes": num_classes, "differentiable": differentiable},
            {
                "output": [Options(_OUTPUTS)],
                "num_classes": [Interval(int, 2, None), IsNone()],
                "differentiable": [Boolean()],
            },
        )
        if differentiable and output == "labels":
            raise ConfigError(
                "CallableModel: differentiable=True needs scores, but output='labels'; "
                "return (N, C) scores from fn or drop differentiable"
            )
        self.fn = fn
        self.differentiable = differentiable
        self.output = "logits" if output == "scores" else output  # type: ignore[assignment]
        caps = {"labels"} if output == "labels" else {"scores", "labels"}
        if differentiable:
            caps.add("gradients")
        self.capabilities = frozenset(caps)
        self.input_spec = InputSpec(
            parse_shape("CallableModel", input_shape), torch.float32, parse_bounds("CallableModel", bounds)
        )
        self._num_classes = num_classes

    def _forward(self, x: Tensor) -> Tensor:
        if self.differentiable:
            out = self.fn(x)
        else:
            with torch.no_grad():
                out = self.fn(x.detach())
        return self._check(out, x)

    def _check(self, out: Any, x: Tensor) -> Tensor:
        n = int(x.shape[0])
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        if not isinstance(out, Tensor):
            if self.differentiable:
                raise DataError(
                    f"CallableModel: fn {name!r} returned {type(out).__name__}, not a torch.Tensor, but "
                    "differentiable=True; compute the scores with torch operations or set differentiable=False"
                )
            try:
                out = torch.as_tensor(out)
            except (TypeError, ValueError, RuntimeError):
                raise DataError(
                    f"CallableModel: fn {name!r} returned {type(out).__name__}; return a torch.Tensor or NumPy array"
                ) from None
        if self.output == "labels":
            if out.dim() == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.dim() != 1 or out.shape[0] != n:
                raise DataError(
                    f"CallableModel: fn {name!r} must return labels of shape ({n},) for a batch of {n}, "
                    f"got shape {tuple(out.shape)}; with output='labels' return one class index per sample"
                )
            if out.dtype.is_floating_point:
                if not bool((out == out.round()).all()):
                    raise DataError(
                        f"CallableModel: fn {name!r} returned non-integer labels; return class indices, "
                        "or use output='scores' for scores"
                    )
            elif out.dtype == torch.bool or out.is_complex():
                raise DataError(
                    f"CallableModel: fn {name!r} returned labels of dtype {out.dtype}; return int64 class indices"
                )
            out = out.to(device=x.device, dtype=torch.int64)
            k = self._num_classes
            if out.numel() and (int(out.min()) < 0 or (k is not None and int(out.max()) >= k)):
                top = f"{k - 1}" if k is not None else "num_classes - 1"
                raise DataError(
                    f"CallableModel: fn {name!r} returned labels in [{int(out.min())}, {int(out.max())}]; "
                    f"labels must be in [0, {top}]"
                )
            return out
        if out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
            hint = " (labels? pass output='labels')" if out.dim() == 1 else ""
            raise DataError(
                f"CallableModel: fn {name!r} must return scores of shape ({n}, num_classes) for a batch of {n}, "
                f"got shape {tuple(out.shape)}{hint}"
            )
        if not out.dtype.is_floating_point:
            raise DataError(f"CallableModel: fn {name!r} returned scores of dtype {out.dtype}; return float scores")
        if self._num_classes is not None and out.shape[1] != self._num_classes:
            raise DataError(
                f"CallableModel: fn {name!r} returned {out.shape[1]} scores per sample but num_classes="
                f"{self._num_classes}; fix fn or num_classes"
            )
        if not bool(torch.isfinite(out.detach()).all()):
            raise DataError(f"CallableModel: fn {name!r} returned NaN or inf scores; make fn numerically safe")
        return out.to(device=x.device, dtype=torch.float32)
