"""Which thread layout runs an audit fastest on this machine: this process on one thread, this
process with every core as intra-op threads, or one-thread units side by side on a local Ray
cluster (inter-op).

Measured here (BENCHMARKS §36, 2 cores): two one-thread processes ran PGD-40 2.0× faster than
one thread where one process with two threads ran it 1.7× faster, and the two tied on APGD-CE
with early stop; a local Ray cluster costs ≈ 6 s to start and stop and ≈ 0.2 s per unit (§9).  So
the answer depends on the model, the machine, its load and the audit's length, and :class:`AutoExecutor
<gauntlet.audit.executors.AutoExecutor>` decides it per audit from two things:

* :func:`measure_layouts`: the model's input-gradient pass (the bulk of an attack's work) timed
  three ways on a batch of the audit's data — one thread, ``cores`` intra-op threads, and
  ``cores`` one-thread copies of the network at once in Python threads (each on its own deep
  copy, no state shared; PyTorch releases the GIL inside its kernels).  The last stands in for
  Ray's worker processes: it under-rates them where Python's own work between kernels matters
  (the GIL serialises it) and over-rated them on a busy machine (BENCHMARKS §37), hence
  :data:`RAY_MARGIN`.
* :func:`choose_layout`: the first unit's time on one thread, times the units still to run
  (cheapest first, so a lower bound of the work left; whether to measure at all is decided on the
  cost-scaled estimate, see ``AutoExecutor``), predicts each layout's remaining time —
  this process on one thread, this process on every core (on a busy machine that can be several
  times slower than one thread: BENCHMARKS §37), and a local Ray cluster, whose start-up and
  per-unit overhead are added — and takes the shortest.  An audit with less than
  :data:`MEASURE_MIN_S` of one-thread work left stays on one thread without measuring anything.

Everything decided is recorded in the manifest (``manifest.executor``): the layout, why, the
measured speed-ups and both predictions.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MEASURE_MIN_S", "RAY_FIXED_S", "RAY_MARGIN", "RAY_UNIT_S", "LayoutChoice", "LayoutTimes", "choose_layout", "measure_layouts",
    "worth_measuring",
]

#: a local Ray cluster's start plus shutdown, seconds (BENCHMARKS §9: 3.8–4.7 s start, 1.4 s
#: shutdown on the idle 2-core machine; more under load)
RAY_FIXED_S = 6.0
#: Ray's overhead per unit, seconds (BENCHMARKS §9: +0.22 s per unit, mostly units running slower
#: in fresh worker processes; scheduling and the object store ≈ 0.04 s)
RAY_UNIT_S = 0.2
#: Ray is chosen only when predicted at least this much faster than staying in process: its
#: overheads grow with the machine's load (§9: 3.8–7.9 s to start), and the side-by-side threads
#: that stand in for its workers share one process
RAY_MARGIN = 0.1


@dataclass(frozen=True)
class LayoutTimes:
    """Wall seconds of the same per-copy work: ``one`` on one thread, ``intra`` on ``cores``
    threads, ``inter`` for ``cores`` copies of it at once, one thread each."""

    cores: int
    one: float
    intra: float
    inter: float
    batch: int
    passes: int

    @property
    def intra_speedup(self) -> float:
        """Work per second with ``cores`` intra-op threads, relative to one thread."""
        return self.one / self.intra if self.intra > 0 else 1.0

    @property
    def inter_speedup(self) -> float:
        """Work per second with ``cores`` one-thread workers side by side, relative to one thread."""
        return self.cores * self.one / self.inter if self.inter > 0 else 1.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["intra_speedup"] = round(self.intra_speedup, 3)
        out["inter_speedup"] = round(self.inter_speedup, 3)
        return out


@dataclass(frozen=True)
class LayoutChoice:
    """The layout (``"local"``: this process on ``threads`` torch threads; ``"ray"``: ``threads``
    is 1 and the units run side by side on the cores), why, and the predictions it rests on
    (``None`` where nothing was predicted)."""

    layout: str
    threads: int
    why: str
    predicted_local_s: float | None = None
    predicted_ray_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layout": self.layout, "threads": self.threads, "why": self.why}
        if self.predicted_local_s is not None:
            out["predicted_local_s"] = round(self.predicted_local_s, 2)
        if self.predicted_ray_s is not None:
            out["predicted_ray_s"] = round(self.predicted_ray_s, 2)
        return out


#: measure the layouts only when the work left is predicted to take at least this long on one
#: thread (seconds): the measurement costs about a second
MEASURE_MIN_S = 5.0


def worth_measuring(unit_s: float, units_left: int, cores: int) -> bool:
    """Whether the units left (``units_left`` of about ``unit_s`` seconds each on one thread) are
    long enough for :func:`measure_layouts` to be worth its time."""
    return cores >= 2 and units_left >= 1 and unit_s * units_left >= MEASURE_MIN_S


def choose_layout(unit_s: float, units_left: int, times: LayoutTimes, *, ray: bool = True) -> LayoutChoice:
    """Pick the fastest layout for ``units_left`` more units that each took about ``unit_s`` wall
    seconds in this process on one thread, given the measured speed-ups: this process on one
    thread, or on ``cores`` threads, or — if ``ray`` — ``cores`` one-thread units side by side on
    a local Ray cluster, start-up and per-unit overhead included (:data:`RAY_FIXED_S`,
    :data:`RAY_UNIT_S`), when predicted at least :data:`RAY_MARGIN` faster."""
    cores, s_intra, s_inter = times.cores, times.intra_speedup, times.inter_speedup
    one = unit_s * units_left
    threads, local = (cores, one / s_intra) if s_intra > 1.0 else (1, one)
    gain = f"{cores} one-thread workers {s_inter:.2f}× one thread, {cores} threads {s_intra:.2f}×"
    if not ray:
        return LayoutChoice("local", threads, f"{gain}; Ray is not installed", local)
    ray_s = one / max(s_inter, 1e-9) + RAY_FIXED_S + RAY_UNIT_S * units_left
    if ray_s < (1.0 - RAY_MARGIN) * local:
        return LayoutChoice("ray", 1, f"{gain}: about {local - ray_s:.0f} s saved on {units_left} units, Ray's start included", local, ray_s)
    return LayoutChoice(
        "local", threads,
        f"{gain}: Ray would not be {RAY_MARGIN:.0%} faster, its start and per-unit overhead included, on {units_left} units",
        local, ray_s,
    )


def measure_layouts(net: nn.Module, x: Tensor, cores: int, *, budget_s: float = 0.5) -> LayoutTimes:
    """Time ``net``'s input-gradient pass on ``x`` (one batch) in the three layouts, about
    ``budget_s`` seconds in all (a pass is repeated until one layout's share is measurable).

    ``net`` is copied (``copy.deepcopy``, eval mode, parameters frozen), never run itself; the
    process's torch thread count is restored.  Each layout is timed twice, alternating, and the
    shorter time kept (a shared machine's interference only ever adds time)."""
    if cores < 2:
        raise ValueError(f"measure_layouts needs cores >= 2, got {cores}")
    nets = [_frozen_copy(net) for _ in range(cores)]
    xs = [x.detach().clone() for _ in range(cores)]
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _grad_pass(nets[0], xs[0])  # warm-up: allocator, kernel selection
        t = _timed(lambda: _grad_pass(nets[0], xs[0]))
        # about 7 passes-worth per repetition: warm-up, probe, then twice one + intra + inter (≈ 1 + 0.5 + 1)
        passes = max(1, min(20, int(budget_s / 7 / max(t, 1e-4))))
        best = {"one": float("inf"), "intra": float("inf"), "inter": float("inf")}
        for _ in range(2):
            torch.set_num_threads(1)
            best["one"] = min(best["one"], _timed(lambda: _repeat(nets[0], xs[0], passes)))
            torch.set_num_threads(cores)
            best["intra"] = min(best["intra"], _timed(lambda: _repeat(nets[0], xs[0], passes)))
            torch.set_num_threads(1)
            best["inter"] = min(best["inter"], _timed(lambda: _side_by_side(nets, xs, passes)))
    finally:
        torch.set_num_threads(saved)
    return LayoutTimes(cores=cores, one=best["one"], intra=best["intra"], inter=best["inter"], batch=int(x.shape[0]), passes=passes)


def _frozen_copy(net: nn.Module) -> nn.Module:
    c = copy.deepcopy(net).eval()
    for p in c.parameters():
        p.requires_grad_(False)
    return c


def _grad_pass(net: nn.Module, x: Tensor) -> None:
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = net(xg)
        torch.autograd.grad(out.float().sum(), xg)


def _repeat(net: nn.Module, x: Tensor, passes: int) -> None:
    for _ in range(passes):
        _grad_pass(net, x)


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _side_by_side(nets: list[nn.Module], xs: list[Tensor], passes: int) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            _repeat(nets[i], xs[i], passes)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(1, len(nets))]
    for th in threads:
        th.start()
    work(0)
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
