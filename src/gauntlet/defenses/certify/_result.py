"""The typed result of every certification method, and the base class of certification defenses.

A :class:`Certification` holds, per sample, the certified prediction (``-1`` = abstain) and the
certified radius (``0`` where nothing is certified) in one norm, so that one call gives the whole
certified-accuracy-vs-radius curve (Cohen, Rosenfeld & Kolter 2019, Fig. 1/Table 1 style).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from gauntlet._validation import check_param_names
from gauntlet.defenses.base import Defense
from gauntlet.errors import ConfigError, DataError

#: the label a certifier gives when it abstains (no class is certified at any radius)
ABSTAIN = -1


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if hasattr(v, "item"):  # numpy scalars
        try:
            return _jsonable(v.item())
        except (TypeError, ValueError):
            pass
    return repr(v)


@dataclass
class Certification:
    """Per-sample certificates of one method on one batch.

    Attributes:
        method: the registered name of the method (``"randomized_smoothing"``, ``"ibp"``).
        norm: the norm the radii are measured in (``"l2"`` for smoothing, ``"linf"`` for IBP).
        prediction: ``(N,)`` int64, the certified class, ``-1`` where the method abstains.
        radius: ``(N,)`` float64, the certified radius: the prediction is guaranteed constant on
            the ``norm``-ball of this radius (for smoothing: with probability ``1 - alpha`` over
            the sampling); ``0`` where nothing is certified or the method abstains.
        y: ``(N,)`` int64 true labels, or ``None`` when certification ran without labels.
        params: the method's hyperparameters and the call's seed.
        seconds: wall time of the call.
        info: method-specific per-sample extras (e.g. smoothing's Monte Carlo counts and
            Clopper–Pearson bounds), tensors with a leading ``N`` axis where per-sample.
    """

    method: str
    norm: str
    prediction: Tensor
    radius: Tensor
    y: Tensor | None
    params: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> Tensor:
        """``(N,)`` bool, where the method abstained."""
        return self.prediction == ABSTAIN

    def _need_y(self, what: str) -> Tensor:
        if self.y is None:
            raise DataError(f"{self.method}: {what} needs the true labels, but y is missing; pass y= to certify()")
        return self.y

    def certified(self, radius: float) -> Tensor:
        """``(N,)`` bool: correct, not abstained, and certified at ``radius`` (``radius >= 0``)."""
        y = self._need_y("certified()")
        r = _check_radius(radius, self.method)
        ok = (self.prediction == y.to(self.prediction.device)) & ~self.abstained
        return ok & (self.radius >= r) if r > 0 else ok

    def certified_accuracy(self, radius: float = 0.0) -> float:
        """Fraction of samples whose prediction equals ``y`` with certified radius ``>= radius``.

        At ``radius = 0`` this is the accuracy of the certified classifier with abstentions
        counted as errors (the "approximate certified test accuracy" of Cohen et al. 2019 at 0).
        """
        if len(self) == 0:
            return 0.0
        return float(self.certified(radius).double().mean())

    def default_radii(self) -> list[float]:
        """Radii a curve uses when none are given: ``0`` and the method's ε list when it has one
        (IBP), else ``0, 0.25, 0.5, …`` up to the largest certified radius (rounded up)."""
        eps = self.params.get("eps")
        if eps is not None:
            vals = list(eps) if isinstance(eps, (list, tuple)) else [eps]
            return sorted({0.0, *(float(v) for v in vals)})
        top = float(self.radius.max()) if len(self) else 0.0
        steps = math.ceil(top / 0.25) if top > 0 else 0
        return [0.25 * i for i in range(steps + 1)]

    def curve(self, radii: Sequence[float] | None = None) -> list[tuple[float, float]]:
        """``[(radius, certified accuracy at radius), ...]`` over ``radii`` (default: :meth:`default_radii`)."""
        self._need_y("curve()")
        rs = self.default_radii() if radii is None else list(radii)
        if not rs:
            raise ConfigError(f"{self.method}: curve() needs at least one radius, got {radii!r}")
        return [(float(r), self.certified_accuracy(r)) for r in rs]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: per-sample lists, parameters, extras and (with labels) the curve."""
        return {
            "method": self.method,
            "norm": self.norm,
            "n": len(self),
            "seconds": self.seconds,
            "params": _jsonable(self.params),
            "prediction": self.prediction.detach().cpu().tolist(),
            "radius": self.radius.detach().cpu().double().tolist(),
            "y": self.y.detach().cpu().tolist() if self.y is not None else None,
            "abstained": int(self.abstained.sum()),
            "curve": [list(p) for p in self.curve()] if self.y is not None else None,
            "info": _jsonable(self.info),
        }


def _check_radius(radius: object, owner: str) -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(float(radius)) or radius < 0:
        raise ConfigError(f"{owner}: radius must be a finite number >= 0, got {radius!r}")
    return float(radius)


class Certifier(Defense, abc.ABC):
    """Base class of certification defenses (kind ``"certification"``).

    Hyperparameters are keyword-only ``__init__`` arguments; the model and data come at call
    time: ``certify(model, x, y, seed=...) -> Certification``.
    """

    kind: ClassVar[str] = "certification"
    #: the norm the method's radii are measured in
    norm: ClassVar[str] = ""

    def _reject_unknown(self, unknown: dict[str, Any]) -> None:
        """Raise a one-line :class:`ConfigError` for unknown keyword arguments (with a suggestion)."""
        check_param_names(self.name, unknown, self._param_names())

    @abc.abstractmethod
    def certify(self, model: Any, x: Tensor, y: Tensor | None = None, *, seed: int = 0) -> Certification:
        """Certify every sample of ``x``; ``y`` (optional) is stored for accuracy curves."""


def check_seed(seed: object, owner: str) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{owner}: seed must be an int >= 0, got {seed!r}")
    return int(seed)
