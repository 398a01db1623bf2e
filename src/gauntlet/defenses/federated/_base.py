"""The robust-aggregation base class (kind ``"aggregation"``) and what every rule returns.

A rule combines one round of federated client updates, a ``(n_clients, d)`` float tensor of
flattened model deltas (client model minus the global model it started from), into one ``(d,)``
update.  ``Aggregator.aggregate(updates, weights=..., reference=...)`` returns an
:class:`Aggregation`: the update, which clients it kept (``accepted``; the "rejected clients" of
a round), and rule-specific extras (Krum scores, trust scores, clipping counts).  The plain
function :func:`aggregate` is the front door: ``aggregate("krum", updates, f=2)`` returns the
``(d,)`` tensor.  The Flower strategy of :mod:`gauntlet.learning.federated` calls exactly this
code, so a rule measured here is the rule that ran in the federation.

The base class owns the checks every rule shares: ``updates`` is a finite floating 2-D tensor
with at least one client, ``weights`` (examples per client, FedAvg's weighting) are
non-negative and finite, and a rule that tolerates ``f`` Byzantine clients refuses a round with
too few clients for its bound (Krum: n > 2f + 2; Bulyan: n ≥ 4f + 3), saying the bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.defenses.base import Defense
from gauntlet.errors import ConfigError, DataError

__all__ = ["BYZANTINE", "Aggregation", "Aggregator", "aggregate", "check_updates"]

#: how many Byzantine clients a rule is built to tolerate
BYZANTINE: list[Constraint] = [Interval(int, 0, None)]


def check_updates(owner: str, updates: object) -> Tensor:
    """``updates`` as a ``(n_clients, d)`` floating tensor, else a one-line :class:`DataError`."""
    if not isinstance(updates, Tensor):
        raise DataError(f"{owner}: updates must be a torch.Tensor of shape (n_clients, d), got {type(updates).__name__}")
    if not updates.dtype.is_floating_point:
        raise DataError(f"{owner}: updates must be floating point, got dtype {updates.dtype}; use updates.float()")
    if updates.dim() != 2 or updates.shape[0] == 0 or updates.shape[1] == 0:
        raise DataError(
            f"{owner}: updates must have shape (n_clients, d) with n_clients, d >= 1 (one flattened update per row), "
            f"got {tuple(updates.shape)}"
        )
    if not bool(torch.isfinite(updates).all()):
        bad = (~torch.isfinite(updates)).any(dim=1).nonzero().flatten().tolist()
        raise DataError(f"{owner}: updates of clients {bad[:5]} hold NaN or inf; drop those clients' replies before aggregating")
    return updates


@dataclass(frozen=True)
class Aggregation:
    """One round's aggregate.

    Attributes:
        update: the aggregated ``(d,)`` update.
        accepted: bool ``(n_clients,)``, the clients whose update entered the aggregate
            (coordinate-wise rules that use every client in some coordinate accept all).
        weights: float ``(n_clients,)``, each client's share of the aggregate where the rule is a
            weighted mean (``None`` for coordinate-wise rules).
        info: rule-specific extras (``scores`` for Krum, ``trust`` for FLTrust, ...).
    """

    update: Tensor
    accepted: Tensor
    weights: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> list[int]:
        """Indices of the clients left out of the aggregate."""
        return [int(i) for i in (~self.accepted).nonzero().flatten()]


class Aggregator(Defense):
    """Base class of the robust aggregation rules.

    Subclasses implement :meth:`_aggregate` on checked inputs; ``min_clients(n)`` states the
    rule's bound.  ``stateful`` rules (centered clipping) read the previous round's aggregate
    as ``reference`` when the caller gives it; ``needs_reference`` rules (FLTrust) require the
    server's own update on its root data.
    """

    kind = "aggregation"
    needs_reference: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def min_clients(self) -> int:
        """The fewest clients a round needs for the rule's guarantee (1 for plain rules)."""
        return 1

    def _bound(self) -> str:
        return ""

    def aggregate(self, updates: Tensor, *, weights: Tensor | None = None, reference: Tensor | None = None) -> Aggregation:
        """Combine ``updates`` ``(n_clients, d)``; ``weights`` ``(n_clients,)`` are examples per
        client (uniform when None); ``reference`` ``(d,)`` is the server's update (FLTrust) or the
        previous aggregate (centered clipping)."""
        u = check_updates(self.name, updates)
        n = u.shape[0]
        if n < self.min_clients():
            raise ConfigError(
                f"{self.name}: {n} client updates are too few for {self._bound()}; "
                f"it needs at least {self.min_clients()} (lower f or add clients)"
            )
        w = self._check_weights(weights, n, u)
        ref = None
        if reference is not None:
            if not isinstance(reference, Tensor) or reference.shape != (u.shape[1],):
                got = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__
                raise DataError(f"{self.name}: reference must be a ({u.shape[1]},) tensor like one update, got {got}")
            if not bool(torch.isfinite(reference).all()):
                raise DataError(f"{self.name}: reference holds NaN or inf")
            ref = reference.to(u)
        elif self.needs_reference:
            raise ConfigError(
                f"{self.name}: needs reference=, the server's own update computed on its trusted root data this round"
            )
        out = self._aggregate(u, w, ref)
        return out

    def _check_weights(self, weights: Tensor | None, n: int, u: Tensor) -> Tensor:
        if weights is None:
            return torch.full((n,), 1.0 / n, dtype=u.dtype, device=u.device)
        if not isinstance(weights, Tensor) or weights.shape != (n,):
            got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise DataError(f"{self.name}: weights must be a ({n},) tensor (examples per client), got {got}")
        w = weights.to(dtype=u.dtype, device=u.device)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise DataError(f"{self.name}: weights must be finite, non-negative and not all zero")
        return w / w.sum()

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:  # pragma: no cover - interface
        raise NotImplementedError


def weighted_mean(u: Tensor, w: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The mean of the kept rows, weighted by ``w`` renormalised over them; and those weights."""
    ww = torch.where(keep, w, torch.zeros_like(w))
    ww = ww / ww.sum() if float(ww.sum()) > 0 else keep.to(w.dtype) / keep.sum()
    return ww @ u, ww


def krum_scores(u: Tensor, f: int) -> Tensor:
    """Krum's score per client: the sum of squared distances to its n − f − 2 nearest others."""
    d2 = torch.cdist(u.double(), u.double()).pow(2)
    n = u.shape[0]
    k = max(1, n - f - 2)
    d2.fill_diagonal_(float("inf"))
    return d2.topk(min(k, n - 1), dim=1, largest=False).values.sum(dim=1) if n > 1 else torch.zeros(1, dtype=torch.float64)


def aggregate(name: str, updates: Tensor, *, weights: Tensor | None = None, reference: Tensor | None = None, **params: Any) -> Tensor:
    """``aggregate("krum", updates, f=2)``: the registered rule ``name`` built with ``params``
    applied to ``updates`` ``(n_clients, d)``; returns the ``(d,)`` aggregate."""
    from gauntlet.defenses.registry import create

    rule = create(name, **params)
    if not isinstance(rule, Aggregator):
        raise ConfigError(f"{name!r} is a {rule.kind} defense, not an aggregation rule (gauntlet defenses --kind aggregation)")
    return rule.aggregate(updates, weights=weights, reference=reference).update
