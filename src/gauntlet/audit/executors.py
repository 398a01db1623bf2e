"""Executors: where an audit's units run — in this process, or as tasks on a Ray cluster.

An executor takes the prepared :class:`~gauntlet.audit.studies.AuditEnv` and the pending units
and calls ``on_done(task, record)`` in the driver process as each one finishes; the runner (the
store's only writer) commits the record there.  A unit's result depends only on its seed and the
environment, never on where or in which order it runs, so every executor gives the same report.

* :class:`LocalExecutor` (``--executor local``, the default): one unit after the other.
* :class:`AutoExecutor` (``--executor auto``): the fastest layout on this machine, measured per
  audit after its first unit — this process on one thread or on every core, or one-thread units
  side by side on a local Ray cluster (:mod:`gauntlet.audit.layout`).
* :class:`RayExecutor` (``--executor ray [--ray-address ADDR]``): units as Ray tasks, one CPU and
  one torch thread each; the environment (model and data) is put in the object store once.  A
  worker that dies is retried by Ray (``max_retries``); a unit that fails on every try, or raises,
  ends the audit with an :class:`~gauntlet.errors.ExecutorError` naming the unit, and what
  finished before stays in the store.  Without ``address`` a local cluster is started (``workers``
  CPUs) and shut down at the end.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from typing_extensions import Self

from gauntlet.errors import ConfigError, ExecutorError, GauntletError, first_line

logger = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "AutoExecutor", "Executor", "LocalExecutor", "RayExecutor", "Task", "available_cpus", "make_executor"]


@dataclass(frozen=True)
class Task:
    """One unit of one study, at position ``index`` of the audit's plan."""

    study: Any
    unit: Any
    index: int

    @property
    def key(self) -> str:
        return str(self.unit.key)

    def describe(self) -> str:
        return str(self.unit.describe())

    @property
    def cost(self) -> float:
        return float(getattr(self.unit, "cost", 1.0))


OnDone = Callable[[Task, dict[str, Any]], None]


class Executor(ABC):
    """Runs units; :meth:`start` before anything is written, :meth:`close` at the end."""

    name: str = ""

    def start(self) -> None:
        """Acquire what the executor needs (a cluster); raise a one-line error when it cannot."""

    @abstractmethod
    def run(self, env: Any, tasks: Sequence[Task], on_done: OnDone) -> None:
        """Run every task and call ``on_done`` in this process as each one finishes."""

    def close(self) -> None:
        """Release what :meth:`start` acquired."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the executor."""
        return {"name": self.name}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_task(env: Any, task: Task) -> dict[str, Any]:
    """Compute one unit (in whatever process runs it)."""
    return task.study.run(env, task.unit)  # type: ignore[no-any-return]


class LocalExecutor(Executor):
    """Every unit in this process, one after the other, in the order given."""

    name = "local"

    def run(self, env: Any, tasks: Sequence[Task], on_done: OnDone) -> None:
        for task in tasks:
            on_done(task, run_task(env, task))
            _trim_heap()


def _ray_task(env: Any, task: Task) -> dict[str, Any]:
    """The body of a Ray task: one torch thread, then the unit."""
    import torch

    torch.set_num_threads(1)
    return run_task(env, task)


class RayExecutor(Executor):
    """Units as Ray tasks on a local cluster (``address=None``) or the cluster at ``address``.

    Args:
        address: a Ray cluster address (``ray://host:10001`` or ``host:6379``); ``None`` starts a
            local cluster for the audit and stops it at the end.
        workers: CPUs of the local cluster (default: all); ignored with ``address``.
        max_retries: how often Ray reruns a unit whose worker died before the audit fails.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, max_retries: int = 3) -> None:
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ConfigError(f"--workers must be an int >= 1, got {workers!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ConfigError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.address = address
        self.workers = workers
        self.max_retries = max_retries
        self._ray: Any = None
        self._owns_cluster = False

    def start(self) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise ExecutorError(
                "--executor ray needs Ray, which is not installed; pip install 'gauntlet[ray]' (or pip install ray), "
                "or use --executor local"
            ) from None
        if self.address is not None:
            _check_reachable(self.address)
        if ray.is_initialized():  # this process is already connected (one connection per process)
            self._ray = ray
            return
        # workers of a local cluster inherit the environment the cluster starts in: let them import
        # what the driver can (model architectures given as "module:Class" from the spec's folder)
        # and use one thread; the caller's environment is restored once the cluster runs
        worker_env = {
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": os.environ.get("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"),
        }
        saved = {k: os.environ.get(k) for k in worker_env}
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "ERROR",
            "configure_logging": True,
        }
        if self.address is not None:
            kwargs["address"] = self.address
        elif self.workers is not None:
            kwargs["num_cpus"] = self.workers
        try:
            os.environ.update(worker_env)
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to reach or start a cluster is one line
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray cluster"
            raise ExecutorError(
                f"--executor ray: cannot connect to {where} ({type(exc).__name__}: {first_line(exc)}); "
                "check --ray-address, or omit it to start a local cluster"
            ) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._ray = ray
        self._owns_cluster = True

    def close(self) -> None:
        if self._ray is not None and self._owns_cluster:
            self._ray.shutdown()
        self._ray = None
        self._owns_cluster = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "max_retries": self.max_retries}
        if self.address is not None:
            out["address"] = "<given>"  # never the address itself: it may carry credentials
        if self._ray is not None:
            out["cpus"] = int(self._ray.cluster_resources().get("CPU", 0))
        return out

    def run(self, env: Any, tasks: Sequence[Task], on_done: OnDone) -> None:
        if not tasks:
            return
        if self._ray is None:
            self.start()
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(_ray_task)
        env_ref = ray.put(env)
        pending = {remote.remote(env_ref, task): task for task in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - named after the unit, one line
                        raise _unit_error(task, exc, self.max_retries) from None
                    on_done(task, record)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


class AutoExecutor(Executor):
    """The faster thread layout on this machine, decided per audit (:mod:`gauntlet.audit.layout`).

    The first unit runs in this process on one torch thread (the layout that is never badly wrong:
    on a busy machine every-core threads can be several times slower, BENCHMARKS §37) and is
    timed.  When the units left are predicted (its time scaled by their ``cost``) to take more
    than a few seconds, the model's input-gradient pass is timed on one thread, on ``cores``
    threads and as ``cores`` one-thread copies side by side (about a second), and the rest of the
    audit runs where it is predicted to finish first: in this process on one thread or on
    ``cores``, or as one-thread units on a local Ray cluster of ``cores`` workers (only when Ray is
    installed and repays its start).  On one core, on a GPU, for a model that is not a PyTorch
    network, or for a short audit, everything runs in this process on one thread.  A Ray cluster
    that fails to start falls back to this process with one log line.  What was decided and why is
    in ``describe()`` (the manifest's ``executor``).

    The process's torch thread count is part of the layout: :meth:`start` sets one thread (so the
    audit's work outside the units — the model's warm-up, the clean predictions — runs on it too),
    :meth:`run` leaves the decided count in place for the report that follows, and :meth:`close`
    restores what the process had before :meth:`start`.

    Args:
        workers: the CPU cores to use (default: those this process may run on).
    """

    name = "auto"

    def __init__(self, *, workers: int | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ConfigError(f"--workers must be an int >= 1, got {workers!r}")
        self.workers = workers
        self._decision: dict[str, Any] = {}
        self._saved_threads: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cores": self.workers or available_cpus(), **self._decision}

    def start(self) -> None:
        import torch

        if self._saved_threads is None:
            self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def close(self) -> None:
        import torch

        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def run(self, env: Any, tasks: Sequence[Task], on_done: OnDone) -> None:
        import torch

        cores = self.workers or available_cpus()
        if self._saved_threads is None:  # run without start(): close() still restores the count
            self.start()
        torch.set_num_threads(1)
        self._decision = {}  # an executor reused for another audit describes this one's decision only
        failed = True
        try:
            if not tasks:
                failed = False
                return
            first, rest = tasks[0], list(tasks[1:])
            t0 = time.perf_counter()
            record = run_task(env, first)
            unit_s = time.perf_counter() - t0
            on_done(first, record)
            _trim_heap()
            self._decision = {"first_unit_s": round(unit_s, 3), **self._decide(env, unit_s, first, rest, cores)}
            if self._decision["layout"] == "ray":
                ray = RayExecutor(workers=cores)
                try:
                    ray.start()
                except ExecutorError as exc:
                    logger.warning("--executor auto: running in this process, Ray did not start (%s)", exc)
                    self._decision.update(layout="local", threads=1, why=f"Ray did not start: {exc}")
                else:
                    try:
                        ray.run(env, rest, on_done)
                    finally:
                        ray.close()
                    failed = False
                    return
            torch.set_num_threads(int(self._decision.get("threads", 1)))
            LocalExecutor().run(env, rest, on_done)
            failed = False
        finally:
            if failed:  # an error or an interrupt: the caller's thread count back at once
                self.close()

    def _decide(self, env: Any, unit_s: float, first: Task, rest: Sequence[Task], cores: int) -> dict[str, Any]:
        """Measure the layouts when the cost-scaled estimate of the work left says it is worth it
        (a wrong guess costs a second); choose Ray only on the conservative estimate, every unit
        left as long as the first, the cheapest (a wrong guess costs Ray's start)."""
        from gauntlet.audit import layout

        def local(why: str) -> dict[str, Any]:
            return layout.LayoutChoice("local", 1, why).as_dict()

        if cores < 2:
            return local("one CPU core")
        per_unit = _seconds_per_unit(unit_s, first, rest)
        if not layout.worth_measuring(per_unit, len(rest), cores):
            return local(
                f"{len(rest)} units of ~{per_unit:.2g} s left: too little work to be worth measuring the layouts "
                f"(under {layout.MEASURE_MIN_S:g} s on one thread)"
            )
        net = _torch_network(env)
        if net is None:
            return local("not a PyTorch network on the CPU: its thread layouts cannot be measured here")
        # a batch of the audit's data; at most 64 rows keeps the measurement near half a second
        x = env.x[: max(1, min(int(env.batch_size), 64))]
        try:
            times = layout.measure_layouts(net, x, cores)
        except Exception as exc:  # noqa: BLE001 - a network that cannot be copied or run this way: stay in process
            return local(f"the layouts could not be measured ({type(exc).__name__}: {first_line(exc)})")
        # whether Ray is installed, without importing it (seconds) when it may not be chosen
        has_ray = importlib.util.find_spec("ray") is not None
        choice = layout.choose_layout(unit_s, len(rest), times, ray=has_ray)
        return {**choice.as_dict(), "estimated_work_s": round(per_unit * len(rest), 2), "measured": times.as_dict()}


def _seconds_per_unit(unit_s: float, first: Task, rest: Sequence[Task]) -> float:
    """The predicted mean one-thread seconds of the units left, from the first unit's ``unit_s``:
    a unit of the same study scaled by its ``cost`` relative to the first's (a study's costs share
    one scale, e.g. samples × steps), a unit of another study counted as the first (the cheapest:
    an under-estimate)."""
    if not rest:
        return unit_s
    study, base = first.study, first.cost
    total = sum(unit_s * (t.cost / base if t.study is study and base > 0 else 1.0) for t in rest)
    return total / len(rest)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _torch_network(env: Any) -> Any:
    """A copy of the audited PyTorch network with its normalisation (``trainable_copy``), or
    ``None`` when the audited model (or, behind a defense, the model file) has none or is on a GPU."""
    for model in (env.model, getattr(env, "base_model", None)):
        copy_fn = getattr(model, "trainable_copy", None)
        if callable(copy_fn) and getattr(getattr(model, "device", None), "type", "cpu") == "cpu":
            return copy_fn()
    return None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at a ``host:port`` / ``ray://host:port``
    address (``ray.init`` itself retries for minutes).  ``auto`` and addresses without a port are
    left to Ray."""
    import socket

    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorError(
            f"--ray-address: nothing answers at the given Ray address ({exc.strerror or type(exc).__name__}); "
            "check the address and that the cluster is running (ray start --head), or omit --ray-address "
            "to start a local cluster"
        ) from None


def _unit_error(task: Task, exc: BaseException, retries: int) -> GauntletError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, GauntletError):
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return type(cause)(f"unit {task.describe()!r} ({task.study.name}): {msg}")
    name = type(exc).__name__
    if "WorkerCrashed" in name or "NodeDied" in name or "ActorDied" in name or "ObjectLost" in name:
        return ExecutorError(
            f"unit {task.describe()!r} ({task.study.name}): its worker died on each of {retries + 1} tries "
            f"({name}); the finished units are saved, run the same command again to resume"
        )
    inner = cause if isinstance(cause, BaseException) else exc
    return ExecutorError(
        f"unit {task.describe()!r} ({task.study.name}) failed: {type(inner).__name__}: {first_line(inner)}; "
        "the finished units are saved"
    )


def _trim_heap() -> None:
    """Give freed heap pages back to the OS between units (glibc only; a no-op elsewhere).

    Attacks that shrink their working batch (early stopping) allocate tensors of ever-changing
    sizes; glibc's allocator then keeps fragmented free pages resident, and without a trim the
    process's resident memory creeps up unit after unit although nothing is kept alive.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None

#: executor name → class (``--executor``)
EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "auto": AutoExecutor, "ray": RayExecutor}


def make_executor(name: str = "local", *, address: str | None = None, workers: int | None = None) -> Executor:
    """The executor ``name`` (``local``, ``auto`` or ``ray``); ``address`` is Ray's, ``workers``
    the CPUs of a local Ray cluster (``ray``) or the cores ``auto`` lays out."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: unknown executor; use one of {', '.join(EXECUTORS)}")
    if name != "ray" and address is not None:
        raise ConfigError("--ray-address needs --executor ray")
    if name == "local":
        return LocalExecutor()
    if name == "auto":
        return AutoExecutor(workers=workers)
    return RayExecutor(address=address, workers=workers)
