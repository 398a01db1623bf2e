"""PRADA: detect model-extraction query streams from the distribution of their distances.

Juuti, Szyller, Marchal and Asokan (2019) observe that a benign client's queries, natural
inputs drawn independently, have minimum distances to the earlier queries of the same predicted
class that are close to normally distributed, while an extraction attack's synthetic or crafted
queries (Jacobian augmentation, noise, perturbed seeds) produce a skewed, multi-modal
distribution.  Per client and per predicted class ``c`` the monitor keeps a growing set
``G_c``; each new query ``x`` predicted ``c`` contributes its minimum L2 distance ``d`` to
``G_c`` to the client's distance set ``D``; ``x`` joins ``G_c`` when ``d`` exceeds the class
threshold ``T_c = max(T_c, mean(D_c) - std(D_c))`` (``D_c``: distances of the points that
joined ``G_c``).  Once ``D`` holds ``min_queries`` distances, the Shapiro–Wilk statistic ``W``
of ``D`` is tested after every query and the alarm fires when ``W < delta``.

:class:`Prada` is the registered defense (``kind`` ``"monitor"``): ``wrap(model)`` returns a
:class:`MonitoredModel` that answers exactly like ``model`` and watches the stream it sees
(``alarm``, ``fired_at``: the query count at the first alarm), and ``monitor()`` returns a
:class:`PradaMonitor` that a server keeps for many clients (``observe(x, labels, client=...)``).
``calibrate(model, streams, fpr=...)`` picks ``delta`` from benign streams so that at most a
share ``fpr`` of them would be flagged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.base import Defense
from gauntlet.defenses.registry import register
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.wrapped import WrappedModel

__all__ = ["MonitoredModel", "Prada", "PradaMonitor"]

log = logging.getLogger("gauntlet")


def _shapiro_w(d: np.ndarray) -> float:
    from scipy import stats  # type: ignore[import-untyped]  # SciPy ships partial type information

    if d.size < 3 or float(d.max() - d.min()) == 0.0:
        return 0.0 if d.size >= 3 else 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy warns that its p-value is approximate past 5,000 points; W is what we use
        return float(stats.shapiro(d).statistic)


@dataclass
class _Client:
    growing: dict[int, Tensor] = field(default_factory=dict)      # G_c, (m, D) flattened inputs
    joined: dict[int, list[float]] = field(default_factory=dict)  # D_c, distances of points that joined G_c
    threshold: dict[int, float] = field(default_factory=dict)     # T_c
    distances: list[float] = field(default_factory=list)          # D
    queries: int = 0
    statistic: float = 1.0
    fired_at: int | None = None


class PradaMonitor:
    """PRADA's state for any number of clients (one :class:`Prada`'s ``delta``/``min_queries``).

    ``observe(x, labels, client=...)`` feeds one batch of a client's queries in order and
    returns whether that client's alarm is raised; ``fired_at(client)`` is the number of that
    client's queries at the first alarm (``None`` if never), ``statistic(client)`` the latest W.
    """

    def __init__(self, prada: Prada) -> None:
        self.prada = prada
        self._clients: dict[str, _Client] = {}

    def _client(self, client: str) -> _Client:
        if not isinstance(client, str):
            raise ConfigError(f"prada: client must be a string id, got {type(client).__name__}")
        return self._clients.setdefault(client, _Client())

    def observe(self, x: Tensor, labels: Tensor, *, client: str = "default") -> bool:
        if not isinstance(x, Tensor) or x.dim() < 1 or not x.dtype.is_floating_point:
            raise DataError("prada.observe: x must be a float tensor (N, ...) of queries")
        if not isinstance(labels, Tensor) or labels.shape != (x.shape[0],):
            raise DataError(f"prada.observe: labels must have shape ({x.shape[0]},) to match x, got {tuple(getattr(labels, 'shape', ()))}")
        state = self._client(client)
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu()
        for row, c in zip(flat, labels.tolist(), strict=True):
            self._one(state, row, int(c))
        return state.fired_at is not None

    def _one(self, s: _Client, row: Tensor, c: int, *, quiet: bool = False) -> None:
        s.queries += 1
        grow = s.growing.get(c)
        if grow is None:
            s.growing[c] = row[None]
            s.joined[c] = []
            s.threshold[c] = 0.0
        else:
            d = float(torch.cdist(row[None], grow).min())
            s.distances.append(d)
            if d > s.threshold[c]:
                s.growing[c] = torch.cat([grow, row[None]])
                dc = s.joined[c]
                dc.append(d)
                s.threshold[c] = max(s.threshold[c], float(np.mean(dc) - np.std(dc)))
        if len(s.distances) >= self.prada.min_queries:
            s.statistic = _shapiro_w(np.asarray(s.distances))
            if s.fired_at is None and s.statistic < self.prada.delta:
                s.fired_at = s.queries
                if not quiet:
                    log.warning(
                        "prada: extraction alarm after %d queries of one client (W = %.3f < delta = %.3f)",
                        s.queries, s.statistic, self.prada.delta,
                    )

    def fired_at(self, client: str = "default") -> int | None:
        return self._client(client).fired_at

    def statistic(self, client: str = "default") -> float:
        return self._client(client).statistic

    def queries(self, client: str = "default") -> int:
        return self._client(client).queries

    @property
    def clients(self) -> list[str]:
        return sorted(self._clients)

    def min_statistic(self, x: Tensor, labels: Tensor) -> float:
        """The smallest W over a whole stream fed in order to a fresh client (what
        :meth:`Prada.calibrate` needs: the stream is flagged for every ``delta`` above it)."""
        s = _Client()
        lowest = math.inf
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu()
        for row, c in zip(flat, labels.tolist(), strict=True):
            self._one(s, row, int(c), quiet=True)
            if len(s.distances) >= self.prada.min_queries:
                lowest = min(lowest, s.statistic)
        return lowest


@register
class Prada(Defense):
    """Query monitoring against model extraction (PRADA).

    Args:
        delta: the alarm fires when the Shapiro–Wilk statistic W of a client's minimum
            distances falls below it (the paper tunes it per dataset; :meth:`calibrate` picks it
            from benign streams at a false-alarm rate).
        min_queries: distances collected before the test runs (the paper: 100).
    """

    name = "prada"
    description = "query monitor: flags model-extraction query streams (Shapiro-Wilk test on query distances)"
    reference = "Juuti et al., 'PRADA: Protecting Against DNN Model Stealing Attacks', IEEE EuroS&P 2019, https://arxiv.org/abs/1805.02628"
    kind: ClassVar[str] = "monitor"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "delta": [Interval(float, 0, 1, closed="neither")],
        "min_queries": [Interval(int, 3, None)],
    }

    def __init__(self, *, delta: float = 0.9, min_queries: int = 100) -> None:
        self.delta = delta
        self.min_queries = min_queries
        self._validate()

    def monitor(self) -> PradaMonitor:
        """A fresh monitor (per-client state) using this defense's settings."""
        return PradaMonitor(self)

    def wrap(self, model: Model) -> MonitoredModel:
        """``model`` answering as before, with every query it receives watched as one client's stream."""
        return MonitoredModel(self, model)

    def calibrate(self, model: Model, streams: Sequence[Tensor], *, fpr: float = 0.01) -> float:
        """Set ``delta`` from benign query streams: the largest value that flags at most a share
        ``fpr`` of them (each stream fed in order to a fresh client, labels from ``model``,
        uncounted).  Returns the new ``delta`` (also stored on this defense)."""
        if not isinstance(fpr, (int, float)) or isinstance(fpr, bool) or not 0 <= fpr < 1:
            raise ConfigError(f"prada.calibrate: fpr must be in [0, 1), got {fpr!r}")
        if not streams:
            raise DataError("prada.calibrate: give at least one benign stream (a tensor of queries, in order)")
        mon = self.monitor()
        lows = []
        for s in streams:
            if not isinstance(s, Tensor) or s.shape[0] <= self.min_queries:
                raise DataError(f"prada.calibrate: each stream must be a tensor of more than min_queries={self.min_queries} queries")
            with torch.no_grad():
                labels = model.predict(s, count=False)
            lows.append(mon.min_statistic(s, labels))
        lows_arr = np.sort(np.asarray(lows))
        allowed = math.floor(fpr * len(lows_arr))  # streams that may be flagged
        delta = float(lows_arr[allowed]) if allowed < len(lows_arr) else 1.0
        # flag a stream when its W falls strictly below delta: the allowed lowest ones
        self.delta = min(max(delta, 1e-9), 1 - 1e-9)
        return self.delta


class MonitoredModel(WrappedModel):
    """A model whose every query (``scores``/``predict`` rows, in order) is watched by PRADA as
    one client's stream; answers are the inner model's, unchanged.  ``alarm``: fired yet;
    ``fired_at``: the number of queries at the first alarm; ``statistic``: the latest W."""

    def __init__(self, prada: Prada, model: Model) -> None:
        if not isinstance(model, Model):
            raise ConfigError(f"prada.wrap: model must be a gauntlet Model, got {type(model).__name__}")
        super().__init__(model)
        self.model = model
        self.monitor = prada.monitor()

    @property
    def alarm(self) -> bool:
        return self.monitor.fired_at() is not None

    @property
    def fired_at(self) -> int | None:
        return self.monitor.fired_at()

    @property
    def statistic(self) -> float:
        return self.monitor.statistic()

    def _forward(self, x: Tensor) -> Tensor:
        return self.model._forward(x)

    def _watch(self, x: Tensor, out: Tensor) -> None:
        labels = out.argmax(dim=1) if out.dim() == 2 else out
        self.monitor.observe(x, labels.detach())

    def scores(self, x: Tensor, *, count: bool = True) -> Tensor:
        out = self.model.scores(x, count=count)
        if count:
            self.queries += int(x.shape[0])
            self._watch(x, out)
        return out

    def predict(self, x: Tensor, *, count: bool = True) -> Tensor:
        out = self.model.predict(x, count=count)
        if count:
            self.queries += int(x.shape[0])
            self._watch(x, out)
        return out


