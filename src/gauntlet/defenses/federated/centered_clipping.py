"""Centered clipping: updates clipped to a radius around the previous aggregate, then averaged."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.defenses.federated._base import Aggregation, Aggregator
from gauntlet.defenses.registry import register


@register
class CenteredClipping(Aggregator):
    """Karimireddy, He & Jaggi's centered clipping (CC).  Starting from a center ``v`` (the
    previous round's aggregate, the server's momentum, given as ``reference``; zero in the first
    round), each of ``iters`` steps moves ``v`` by the mean of the client deviations ``x_i − v``,
    each clipped to norm ``tau``:  v ← v + (1/n) Σ (x_i − v)·min(1, τ/‖x_i − v‖).

    A Byzantine client moves the aggregate by at most τ/n per step whatever it sends, and because
    the center carries history, small consistent shifts ("a little is enough") that fool the
    median and Krum average out instead of being selected.

    Args:
        tau: the clipping radius; ``None`` takes the median distance of the updates to the center
            each step (scale-free: a half of the clients are never clipped).
        iters: clipping iterations per round (the paper uses 1 with momentum).
    """

    name = "centered_clipping"
    description = "centered clipping: client deviations from the last aggregate clipped to tau, then averaged"
    reference = (
        "Karimireddy, He, Jaggi, 'Learning from History for Byzantine Robust Optimization', ICML 2021, "
        "https://arxiv.org/abs/2012.10333"
    )
    stateful = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "tau": [Interval(float, 0, None, closed="neither"), IsNone()],
        "iters": [Interval(int, 1, None)],
    }

    def __init__(self, *, tau: float | None = None, iters: int = 3) -> None:
        self.tau = tau
        self.iters = iters
        self._validate()

    def _aggregate(self, u: Tensor, w: Tensor, reference: Tensor | None) -> Aggregation:
        v = torch.zeros(u.shape[1], dtype=u.dtype, device=u.device) if reference is None else reference.clone()
        clipped = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
        radii = []
        for _ in range(self.iters):
            dev = u - v
            norms = dev.norm(dim=1)
            tau = float(norms.median()) if self.tau is None else float(self.tau)
            radii.append(tau)
            scale = (tau / norms.clamp_min(1e-12)).clamp(max=1.0)
            clipped |= scale < 1.0
            v = v + (scale[:, None] * dev).mean(dim=0)
        keep = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        return Aggregation(v, keep, info={"clipped": [int(i) for i in clipped.nonzero().flatten()], "tau": radii})
