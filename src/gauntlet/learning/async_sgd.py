"""Asynchronous SGD on a shared parameter vector, simulated event by event: the learner the
Game-of-Threads attack schedules.

``W`` workers share one parameter vector (a parameter server, or Hogwild threads).  A worker
*reads* the shared parameters at version ``v``, draws its next mini-batch uniformly from the
training set with its own seeded generator, computes the gradient there, and later *applies* it
(``θ ← θ − lr·g``, version ``v + 1``).  The update's staleness is the number of updates applied
between its read and its apply.  A *scheduler* decides, at every step, which worker holding a
computed gradient applies next; after applying, the worker reads again at once.  The default
scheduler is fair round-robin (oldest read first), under which every update has staleness
``W − 1``: the benign run.  An adversarial scheduler (the OS, in the Game of Threads threat
model) may hold workers and release their stale updates when it likes; it never chooses the
data: each worker's sequence of mini-batches is fixed by ``seed`` and the worker's index.

A staleness defense (``gauntlet.defenses.federated``, kind ``"staleness"``) scales each update
by ``defense.scale(staleness)``; a scale of 0 rejects it (dropped, or recomputed on the same
mini-batch at the current parameters when ``defense.on_reject == "recompute"``).

Entry point::

    sim = AsyncSGD(module, x, y, workers=8, batch_size=16, lr=0.1, seed=0)
    res = sim.run(steps=600, scheduler=attack.scheduler(), defense=defense, eval_x=xe, eval_y=ye)
    res.final_accuracy, res.final_share[target], res.staleness_histogram()
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from gauntlet.errors import ConfigError, DataError

__all__ = ["AsyncRunResult", "AsyncSGD", "PendingUpdate", "RoundRobin", "Scheduler", "SchedulerView", "StalenessRule"]


@dataclass(frozen=True)
class PendingUpdate:
    """A gradient a worker has computed and not yet applied, as a scheduler sees it.

    Attributes:
        worker: the worker's index.
        read_version: the parameter version the gradient was computed at.
        labels: the labels of its mini-batch (the attacker's side channel on batch composition).
    """

    worker: int
    read_version: int
    labels: np.ndarray


@dataclass(frozen=True)
class SchedulerView:
    """What a scheduler sees before each step: ``step`` of ``steps``, the current ``version``,
    the ``pending`` updates by worker, the number of ``workers`` and of ``num_classes``."""

    step: int
    steps: int
    version: int
    workers: int
    num_classes: int
    pending: dict[int, PendingUpdate]


class Scheduler(Protocol):
    """Picks, before each step, the worker whose pending update is applied next."""

    def pick(self, view: SchedulerView) -> int: ...


class StalenessRule(Protocol):
    """A staleness defense: the factor on the learning rate of an update of staleness ``s``
    (0 rejects it) and what happens to a rejected update (``"drop"`` or ``"recompute"``)."""

    on_reject: str

    def scale(self, staleness: int) -> float: ...


class RoundRobin:
    """The fair scheduler: the pending update read earliest applies first (ties: lowest worker)."""

    def pick(self, view: SchedulerView) -> int:
        return min(view.pending.values(), key=lambda p: (p.read_version, p.worker)).worker


@dataclass
class AsyncRunResult:
    """One asynchronous run.

    Attributes:
        eval_steps: the steps after which the model was evaluated (the last is ``steps``).
        accuracy: held-out accuracy at each of ``eval_steps``.
        class_share: ``(len(eval_steps), num_classes)``, the share of held-out predictions per class.
        staleness: the staleness of every update that was applied, in order.
        dropped: how many updates a defense rejected (dropped or recomputed).
        batches: per worker, the mini-batches (row indices) it computed gradients on, in order.
        applied: per applied update, ``(worker, k)``: the worker and the index of its batch.
    """

    eval_steps: list[int]
    accuracy: list[float]
    class_share: np.ndarray
    staleness: list[int]
    dropped: int
    batches: dict[int, list[np.ndarray]]
    applied: list[tuple[int, int]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])

    @property
    def final_share(self) -> np.ndarray:
        """The share of held-out predictions per class after the last step."""
        return np.asarray(self.class_share[-1])

    def steps_to(self, accuracy: float) -> int | None:
        """The first evaluated step at which held-out accuracy reached ``accuracy`` (None: never)."""
        for s, a in zip(self.eval_steps, self.accuracy):
            if a >= accuracy:
                return s
        return None

    def staleness_histogram(self) -> dict[int, int]:
        """How many applied updates had each staleness."""
        vals, counts = np.unique(np.asarray(self.staleness, dtype=np.int64), return_counts=True)
        return {int(v): int(c) for v, c in zip(vals, counts)}


def _check_xy(owner: str, x: object, y: object, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"{owner}: {what} x must be a floating torch.Tensor, got {got}; use x.float()")
    if x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"{owner}: {what} x must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{owner}: {what} x holds NaN or inf")
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        got = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise DataError(f"{owner}: {what} y must be a torch.Tensor of integer labels, got {got}; use y.long()")
    if y.shape != (x.shape[0],):
        raise DataError(f"{owner}: {what} y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise DataError(f"{owner}: {what} y holds negative labels")
    return x, y.long()


def _positive_int(owner: str, name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{owner}: {name} must be an int >= 1, got {v!r}")
    return v


class AsyncSGD:
    """A seeded asynchronous-SGD simulation of ``module`` on ``(x, y)``.

    Args:
        module: the model trained (its parameters are the shared vector; left unchanged, each
            run trains a copy).  ``None``: softmax regression on flattened ``x``.
        x, y: the training set (float inputs, int64 labels).
        workers: the number of asynchronous workers (threads).
        batch_size: examples per mini-batch.
        lr: the learning rate.
        seed: fixes the initial parameters (for ``module=None``) and every worker's batches.
    """

    def __init__(
        self,
        module: nn.Module | None,
        x: Tensor,
        y: Tensor,
        *,
        workers: int = 8,
        batch_size: int = 16,
        lr: float = 0.1,
        seed: int = 0,
    ) -> None:
        owner = "AsyncSGD"
        self.x, self.y = _check_xy(owner, x, y, "training")
        self.workers = _positive_int(owner, "workers", workers)
        self.batch_size = _positive_int(owner, "batch_size", batch_size)
        if self.batch_size > self.x.shape[0]:
            raise ConfigError(f"{owner}: batch_size {batch_size} exceeds the {self.x.shape[0]} training rows; lower it")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr <= 0:
            raise ConfigError(f"{owner}: lr must be a finite number > 0, got {lr!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{owner}: seed must be an int >= 0, got {seed!r}")
        self.lr, self.seed = float(lr), seed
        self.num_classes = int(self.y.max()) + 1
        if module is None:
            g = torch.Generator().manual_seed(seed)
            d = int(np.prod(self.x.shape[1:]))
            lin = nn.Linear(d, self.num_classes)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
                lin.bias.zero_()
            module = nn.Sequential(nn.Flatten(), lin)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{owner}: module must be a torch.nn.Module or None, got {type(module).__name__}")
        self.module = module
        self._theta0 = nn.utils.parameters_to_vector(module.parameters()).detach().clone()

    def _grad(self, net: nn.Module, theta: Tensor, idx: np.ndarray) -> Tensor:
        nn.utils.vector_to_parameters(theta, net.parameters())
        net.zero_grad(set_to_none=True)
        t = torch.from_numpy(idx)
        loss = nn.functional.cross_entropy(net(self.x[t]), self.y[t])
        params = [p for p in net.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        return torch.cat([g.reshape(-1) for g in grads]).detach()

    def _evaluate(self, net: nn.Module, theta: Tensor, ex: Tensor, ey: Tensor, k: int) -> tuple[float, np.ndarray]:
        nn.utils.vector_to_parameters(theta, net.parameters())
        with torch.no_grad():
            pred = net(ex).argmax(dim=1)
        share = torch.bincount(pred, minlength=k)[:k].double() / len(pred)
        return float((pred == ey).double().mean()), share.numpy()

    def run(
        self,
        *,
        steps: int,
        scheduler: Scheduler | None = None,
        defense: StalenessRule | None = None,
        eval_x: Tensor,
        eval_y: Tensor,
        eval_every: int | None = None,
    ) -> AsyncRunResult:
        """Run ``steps`` scheduling steps (each applies, or lets a defense reject, one update) and
        evaluate on ``(eval_x, eval_y)`` every ``eval_every`` steps (default ``steps // 50``) and
        at the end.  ``scheduler=None`` is :class:`RoundRobin`."""
        owner = "AsyncSGD.run"
        steps = _positive_int(owner, "steps", steps)
        ex, ey = _check_xy(owner, eval_x, eval_y, "eval")
        every = _positive_int(owner, "eval_every", eval_every) if eval_every is not None else max(1, steps // 50)
        sched: Scheduler = scheduler if scheduler is not None else RoundRobin()
        if not callable(getattr(sched, "pick", None)):
            raise ConfigError(f"{owner}: scheduler must have a pick(view) method (RoundRobin, GameOfThreads.scheduler()), got {type(sched).__name__}")
        if defense is not None and not callable(getattr(defense, "scale", None)):
            raise ConfigError(f"{owner}: defense must be a staleness defense with scale(staleness) (gauntlet defenses --kind staleness), got {type(defense).__name__}")
        net = copy.deepcopy(self.module)
        net.train()
        theta = self._theta0.clone()
        k = max(self.num_classes, int(ey.max()) + 1)
        rngs = [np.random.default_rng([self.seed, w]) for w in range(self.workers)]
        n = self.x.shape[0]
        batches: dict[int, list[np.ndarray]] = {w: [] for w in range(self.workers)}
        grads: dict[int, Tensor] = {}
        pending: dict[int, PendingUpdate] = {}
        version = 0

        def read(w: int) -> None:
            idx = np.sort(rngs[w].choice(n, size=self.batch_size, replace=False))
            batches[w].append(idx)
            grads[w] = self._grad(net, theta, idx)
            pending[w] = PendingUpdate(w, version, self.y[torch.from_numpy(idx)].numpy())

        for w in range(self.workers):
            read(w)
        eval_steps: list[int] = []
        accs: list[float] = []
        shares: list[np.ndarray] = []
        staleness: list[int] = []
        applied: list[tuple[int, int]] = []
        dropped = 0
        for step in range(steps):
            view = SchedulerView(step, steps, version, self.workers, k, dict(pending))
            w = sched.pick(view)
            if w not in pending:
                raise ConfigError(f"{owner}: the scheduler picked worker {w!r}, which has no pending update; pick one of {sorted(pending)}")
            p = pending.pop(w)
            g = grads.pop(w)
            s = version - p.read_version
            f = 1.0 if defense is None else float(defense.scale(s))
            if f <= 0:
                dropped += 1
                if getattr(defense, "on_reject", "drop") == "recompute":
                    g = self._grad(net, theta, batches[w][-1])
                    theta = theta - self.lr * g
                    version += 1
                    staleness.append(0)
                    applied.append((w, len(batches[w]) - 1))
            else:
                theta = theta - self.lr * f * g
                version += 1
                staleness.append(s)
                applied.append((w, len(batches[w]) - 1))
            read(w)
            if (step + 1) % every == 0 or step + 1 == steps:
                a, sh = self._evaluate(net, theta, ex, ey, k)
                eval_steps.append(step + 1)
                accs.append(a)
                shares.append(sh)
        return AsyncRunResult(eval_steps, accs, np.stack(shares), staleness, dropped, batches, applied)

