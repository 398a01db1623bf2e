"""The training-defense base class: one deterministic, resumable training loop for every method.

A training method is a :class:`Trainer` subclass that implements one thing, the loss of a batch::

    @register
    class MyTraining(Trainer):
        name = "my_training"
        description = "..."
        _parameter_constraints = {"sigma": [Interval(float, 0, None, closed="neither")]}

        def __init__(self, *, sigma: float = 0.25, **common: Any) -> None:
            super().__init__(**common)          # epochs, batch_size, lr, ... (see Trainer)
            self.sigma = sigma
            self._validate()

        def loss(self, module, xb, yb, ctx):
            noise = torch.randn(xb.shape, generator=ctx.generator, device=xb.device) * self.sigma
            logits = module(xb + noise)
            ctx.logits = logits                  # optional: gives the epoch's train accuracy
            return F.cross_entropy(logits, yb)

:meth:`Trainer.fit` owns everything else: input validation, the seeded ``torch.Generator``
(shuffling and every random draw of the method come from ``ctx.generator``; the global RNG,
which dropout uses, is forked and seeded from it, so the caller's RNG state is untouched), the
optimizer and the learning-rate schedule, the per-epoch history, validation accuracy, an atomic
checkpoint after every epoch, resuming, and the progress bar.  Hyperparameters of the base
(``epochs``, ``batch_size``, ``lr``, ...) and of each subclass are keyword-only and stored
unchanged; :meth:`get_params` collects them over the class hierarchy and ``_validate`` checks
them against the union of every class's ``_parameter_constraints``.

The inner attack of adversarial training runs with the module in **train mode** by default,
as in the reference code of Madry et al. (2018) and Wong et al. (2020) (BatchNorm uses batch
statistics, dropout is active); TRADES follows its authors' code and runs it in eval mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet import norms as N
from gauntlet._batch import check_input_batch
from gauntlet._validation import BOUNDS, Constraint, Interval, Options, check_param_names, validate_params
from gauntlet.defenses.base import Defense
from gauntlet.errors import ConfigError, DataError, GauntletError, ModelLoadError

CHECKPOINT_FORMAT = "gauntlet-training-checkpoint"
CHECKPOINT_VERSION = 1

LR_SCHEDULES = ("constant", "cyclic", "step", "cosine")
OPTIMIZERS = ("sgd", "adam")


POSITIVE: list[Constraint] = [Interval(float, 0, None, closed="neither")]
NON_NEGATIVE: list[Constraint] = [Interval(float, 0, None)]
EPS: list[Constraint] = [Interval(float, 0, None, closed="neither")]
STEPS: list[Constraint] = [Interval(int, 1, None)]

COMMON_CONSTRAINTS: dict[str, list[Constraint]] = {
    "epochs": [Interval(int, 1, None)],
    "batch_size": [Interval(int, 1, None)],
    "lr": POSITIVE,
    "optimizer": [Options(OPTIMIZERS)],
    "momentum": [Interval(float, 0, 1, closed="left")],
    "weight_decay": NON_NEGATIVE,
    "lr_schedule": [Options(LR_SCHEDULES)],
    "bounds": [BOUNDS],
}


# ---------------------------------------------------------------------------------------------
# results and per-batch context
@dataclass
class EpochRecord:
    """What one finished epoch did.

    ``train_acc`` is the accuracy on the inputs the loss was computed on (adversarial ones for
    ``fast_at`` / ``pgd_at``, clean ones for ``standard`` / ``trades``), ``None`` when the method
    recorded no logits; ``val_acc`` is clean accuracy on ``x_val`` (``None`` without it).
    """

    epoch: int  # 1-based
    loss: float
    train_acc: float | None
    val_acc: float | None
    seconds: float
    lr: float  # learning rate at the last step of the epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingResult:
    """The outcome of :meth:`Trainer.fit`: the (in-place trained) module and its history."""

    module: nn.Module
    method: str
    params: dict[str, Any]
    seed: int
    history: list[EpochRecord]
    seconds: float  # wall time of this call (epochs restored from a checkpoint cost nothing)
    resumed_from: int  # finished epochs loaded from the checkpoint (0 = fresh start)
    checkpoint: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # method extras, e.g. distillation's teacher

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": _jsonable(self.params),
            "seed": self.seed,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
            "checkpoint": self.checkpoint,
            "history": [r.to_dict() for r in self.history],
        }


@dataclass
class TrainContext:
    """What :meth:`Trainer.loss` may use for one batch.

    Progress fields let a method ramp a quantity (e.g. IBP's ε schedule): ``epoch`` (0-based) of
    ``epochs``, ``batch`` (0-based) of ``steps_per_epoch``, ``step`` the global 0-based step, and
    :attr:`progress` the fraction of training done before this step.  ``generator`` is the one
    source of randomness; ``index`` holds the batch's row indices into the training set (for
    per-sample data prepared in :meth:`Trainer.prepare`, kept in ``state``).  A method may set
    ``logits`` to the outputs its loss used so the epoch reports a train accuracy.
    """

    generator: torch.Generator
    bounds: tuple[float, float]
    num_classes: int
    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    batch: int = 0
    lr: float = 0.0
    index: Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)
    logits: Tensor | None = None

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.batch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of all steps done before this one, in ``[0, 1)``."""
        return self.step / self.total_steps

    def clip(self, x: Tensor) -> Tensor:
        return x.clamp(self.bounds[0], self.bounds[1])


# ---------------------------------------------------------------------------------------------
# helpers methods share
@contextlib.contextmanager
def module_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in train (``True``) or eval mode; restore each one's flag on exit."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.train(training)
        yield
    finally:
        for m, t in modes:
            m.training = t


def perturb(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
    bounds: tuple[float, float],
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    x_init: Tensor | None = None,
) -> Tensor:
    """Lean projected gradient ascent for training loops (no validation, no query counting).

    Maximises ``loss_fn(logits, y)`` (per-sample, default cross-entropy) over the ``norm``-ball of
    radius ``eps`` around ``x`` intersected with ``bounds``.  Starts at ``x_init`` when given, else
    uniformly in the ball (``random_start``) or at ``x``.  Only the input gradient is computed;
    parameter ``.grad`` fields are left untouched.  The module's mode is the caller's choice.
    """
    lo, hi = bounds
    fn = loss_fn if loss_fn is not None else (lambda z, t: F.cross_entropy(z, t, reduction="none"))
    if x_init is not None:
        x_adv = x_init.detach().clone()
    elif random_start:
        x_adv = (x + N.random_in_ball(x, norm, eps, generator)).clamp(lo, hi)
    else:
        x_adv = x.detach().clone()
    for _ in range(steps):
        xg = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = fn(module(xg), y)
            (g,) = torch.autograd.grad(loss.sum(), xg)
        x_adv = x_adv + step_size * N.steepest_ascent(g, norm, x=x_adv, bounds=bounds)
        x_adv = (x + N.project(x_adv - x, norm, eps)).clamp(lo, hi)
    return x_adv.detach()


def lr_at(schedule: str, lr: float, t: float, epochs: int) -> float:
    """Learning rate at time ``t`` in epochs (``epoch + (batch + 1) / steps_per_epoch``).

    ``constant``: ``lr``.  ``cyclic``: one triangle, 0 → ``lr`` at 2/5 of training → 0 at the end
    (Smith's one-cycle, as used by Wong et al. 2020).  ``step``: ``lr``, ×0.1 from half of
    training, ×0.01 from three quarters.  ``cosine``: ``lr · (1 + cos(π t / epochs)) / 2``.
    """
    if schedule == "constant":
        return lr
    if schedule == "cyclic":
        peak = 0.4 * epochs
        if t <= peak:
            return lr * t / peak
        return lr * max(0.0, (epochs - t) / (epochs - peak))
    if schedule == "step":
        return lr * (0.01 if t > 0.75 * epochs else 0.1 if t > 0.5 * epochs else 1.0)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))
    raise ConfigError(f"unknown lr_schedule {schedule!r}; use one of {LR_SCHEDULES}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return repr(v)


def check_training_data(
    x: Any, y: Any, *, bounds: tuple[float, float], dtype: torch.dtype | None = None, device: torch.device | None = None,
    where: str, what: str = "x",
) -> None:
    """Raise a one-line :class:`DataError` unless ``x``/``y`` are a valid labelled training set
    (``dtype`` and ``device`` are checked when given)."""
    yname = "y" if what == "x" else what.replace("x", "y", 1)
    check_input_batch(
        x, where=where, what=what, dtype=dtype, device=device, bounds=bounds, owner="the module",
        dtype_owner="the module's parameters are", bounds_name="the declared bounds",
        bounds_hint="rescale it (e.g. x / 255) or pass bounds=",
    )
    assert isinstance(x, Tensor)
    if not isinstance(y, Tensor):
        raise DataError(f"{where}: {yname} must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where}: {yname} must hold integer class labels, got dtype {y.dtype}; use {yname}.long()")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: {yname} must have shape ({x.shape[0]},) to match {what}, got {tuple(y.shape)}")
    if y.device != x.device:
        raise DataError(f"{where}: {what} is on {x.device} but {yname} on {y.device}; put both on one device")


def _check_labels(y: Tensor, num_classes: int, where: str, yname: str) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{where}: {yname} holds labels in [{int(y.min())}, {int(y.max())}] but the module outputs "
            f"{num_classes} classes (labels must be in [0, {num_classes - 1}])"
        )


def _hash_tensor(h: Any, t: Tensor) -> None:
    c = t.detach().cpu().contiguous()
    h.update(f"{tuple(c.shape)}|{c.dtype}|".encode())
    h.update(c.view(torch.uint8).numpy() if c.numel() else b"")


# ---------------------------------------------------------------------------------------------
class Trainer(Defense):
    """Base class of training defenses (kind ``"training"``): subclasses implement :meth:`loss`.

    Keyword-only hyperparameters shared by every method:

    Args:
        epochs: passes over the training set.
        batch_size: samples per optimizer step (the last batch of an epoch may be smaller).
        lr: (peak) learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty passed to the optimizer.
        lr_schedule: ``"constant"``, ``"cyclic"`` (0 → lr → 0, peak at 2/5 of training; fast AT
            needs it), ``"step"`` (×0.1 at 1/2 and 3/4 of training) or ``"cosine"``; updated
            every step, and a function of the *total* number of epochs.
        bounds: valid input range; training data outside it is refused and adversarial inputs
            are clipped to it.
    """

    kind: ClassVar[str] = "training"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = COMMON_CONSTRAINTS
    #: the per-epoch record a method keeps (a subclass of :class:`EpochRecord` with extra fields)
    record_type: ClassVar[type[EpochRecord]] = EpochRecord

    def __init__(
        self,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        bounds: tuple[float, float] = (0.0, 1.0),
        **unknown: Any,
    ) -> None:
        check_param_names(self.name or type(self).__name__, unknown, self._param_names())
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.bounds = bounds

    # -- hyperparameters over the class hierarchy ---------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names

    @classmethod
    def _all_constraints(cls) -> dict[str, list[Constraint]]:
        merged: dict[str, list[Constraint]] = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("_parameter_constraints", {}))
        return merged

    def _validate(self) -> None:
        validate_params(self.name or type(self).__name__, self.get_params(), self._all_constraints())

    # -- what subclasses implement ------------------------------------------------------------
    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        """The scalar loss of one batch; the module is in train mode. Set ``ctx.logits`` optionally."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(module, xb, yb, ctx)")

    def prepare(
        self,
        module: nn.Module,
        x: Tensor,
        y: Tensor,
        ctx: TrainContext,
        *,
        checkpoint: Path | None,
        resume: bool,
        progress: bool,
    ) -> None:
        """Hook run once per :meth:`fit` before the first epoch (also when resuming), inside the
        forked RNG; store what :meth:`loss` needs in ``ctx.state``.  Draw randomness only from
        ``ctx.generator``.  ``checkpoint`` is the run's checkpoint path (a method may keep its own
        files beside it, e.g. ``<checkpoint>.teacher``)."""

    def fingerprint_extra(self) -> str:
        """Extra text mixed into the checkpoint fingerprint (e.g. a code version); default empty."""
        return ""

    # -- the loop ----------------------------------------------------------------------------
    def fit(
        self,
        module: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        seed: int = 0,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = True,
        progress: bool = True,
        x_val: Tensor | None = None,
        y_val: Tensor | None = None,
        callback: Callable[[EpochRecord], None] | None = None,
    ) -> TrainingResult:
        """Train ``module`` in place on ``(x, y)``; deterministic given ``seed``.

        Args:
            module: a ``torch.nn.Module`` returning logits ``(N, C)``; left in eval mode.
            x: float inputs ``(N, ...)`` inside ``bounds``, of the module's dtype and device.
            y: int64 labels ``(N,)`` in ``[0, C)``.
            seed: seeds the run's ``torch.Generator`` (shuffling, random starts, noise) and, through
                it, the forked global RNG that dropout uses; the caller's RNG is left untouched.
            checkpoint: a file written atomically after every epoch (``torch.load(weights_only=True)``
                loads it).  With ``resume=True`` an existing file is continued from its last finished
                epoch, bitwise identically to an uninterrupted run; it is refused with
                :class:`ConfigError` when it was made with other data, hyperparameters, seed or
                architecture.  With ``resume=False`` it is overwritten.
            progress: show one rich progress bar (on stderr).
            x_val, y_val: optional held-out set; its clean accuracy is recorded per epoch.
            callback: called with each finished epoch's record, after its checkpoint is written
                (an exception raised there stops training, e.g. to test resuming).
        """
        self._validate()
        where = f"{self.name}.fit"
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{where}: module must be a torch.nn.Module, got {type(module).__name__}")
        params_list = [p for p in module.parameters() if p.requires_grad]
        if not params_list:
            raise ConfigError(f"{where}: module has no trainable parameters")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        for flag, v in (("resume", resume), ("progress", progress)):
            if not isinstance(v, bool):
                raise ConfigError(f"{where}: {flag} must be a bool, got {v!r}")
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and ckpt.is_dir():
            raise ConfigError(f"{where}: checkpoint must be a file path, got the directory {str(ckpt)!r}")
        bounds = (float(self.bounds[0]), float(self.bounds[1]))
        p0 = params_list[0]
        check_training_data(x, y, bounds=bounds, dtype=p0.dtype, device=p0.device, where=where)
        if (x_val is None) != (y_val is None):
            raise DataError(f"{where}: pass both x_val and y_val, or neither")
        if x_val is not None:
            check_training_data(x_val, y_val, bounds=bounds, dtype=p0.dtype, device=p0.device, where=where, what="x_val")
            if tuple(x_val.shape[1:]) != tuple(x.shape[1:]):
                raise DataError(f"{where}: x_val has per-sample shape {tuple(x_val.shape[1:])} but x has {tuple(x.shape[1:])}")
        num_classes = self._num_classes(module, x, where)
        _check_labels(y, num_classes, where, "y")
        if y_val is not None:
            _check_labels(y_val, num_classes, where, "y_val")
        x, y = x.detach(), y.detach().to(torch.int64)

        fingerprint = self._fingerprint(module, x, y, seed)
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / self.batch_size)
        t_start = time.perf_counter()
        devices = [p0.device.index or 0] if p0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            g = torch.Generator(device=x.device).manual_seed(seed)
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g, device=x.device)))
            ctx = TrainContext(g, bounds, num_classes, self.epochs, steps_per_epoch)
            self.prepare(module, x, y, ctx, checkpoint=ckpt, resume=resume, progress=progress)
            opt = self._make_optimizer(params_list)
            history: list[EpochRecord] = []
            start = 0
            if ckpt is not None and resume and ckpt.exists():
                start, history = self._load_checkpoint(ckpt, module, opt, g, fingerprint, where)
            try:
                self._loop(module, x, y, x_val, y_val, ctx, opt, start, history, ckpt, fingerprint, seed, progress, callback)
            finally:
                opt.zero_grad(set_to_none=True)
                module.eval()
        return TrainingResult(
            module=module,
            method=self.name,
            params=self.get_params(),
            seed=seed,
            history=history,
            seconds=time.perf_counter() - t_start,
            resumed_from=start,
            checkpoint=str(ckpt) if ckpt is not None else None,
            info=self._result_info(ctx),
        )

    def _result_info(self, ctx: TrainContext) -> dict[str, Any]:
        """Extras for :attr:`TrainingResult.info` (override to expose e.g. a teacher)."""
        return {}

    def _loop(
        self,
        module: nn.Module,
        x: Tensor,
        y: Tensor,
        x_val: Tensor | None,
        y_val: Tensor | None,
        ctx: TrainContext,
        opt: torch.optim.Optimizer,
        start: int,
        history: list[EpochRecord],
        ckpt: Path | None,
        fingerprint: str,
        seed: int,
        progress: bool,
        callback: Callable[[EpochRecord], None] | None,
        *,
        step_module: nn.Module | None = None,
    ) -> None:
        """The epochs from ``start``: batches from :meth:`_batches`, the loss on ``step_module``
        (default ``module``; a method may train through a wrapper of it), one record per epoch
        (:meth:`_epoch_record`) and a checkpoint of ``module`` with :meth:`_checkpoint_extra`."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        net = module if step_module is None else step_module
        spe = ctx.steps_per_epoch
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not progress,
            transient=False,
        )
        with bar:
            task = bar.add_task(f"{self.name}", total=self.epochs * spe, completed=start * spe, status="")
            for epoch in range(start, self.epochs):
                t0 = time.perf_counter()
                net.train()
                ctx.epoch = epoch
                total_loss, correct, seen, counted = 0.0, 0, 0, 0
                lr = self.lr
                for b, (xb, yb, idx) in enumerate(self._batches(x, y, ctx)):
                    ctx.batch, ctx.index, ctx.logits = b, idx, None
                    lr = lr_at(self.lr_schedule, self.lr, epoch + (b + 1) / spe, self.epochs)
                    ctx.lr = lr
                    for group in opt.param_groups:
                        group["lr"] = lr
                    opt.zero_grad(set_to_none=True)
                    k = int(xb.shape[0])
                    loss = self.loss(net, xb, yb, ctx)
                    if not isinstance(loss, Tensor) or loss.dim() != 0:
                        raise ConfigError(f"{self.name}: loss() must return a scalar tensor, got {type(loss).__name__}")
                    if k and not bool(torch.isfinite(loss)):
                        raise ConfigError(
                            f"{self.name}: the training loss became {float(loss.detach())} at epoch {epoch + 1}, batch {b + 1}; "
                            "lower lr or check the data"
                        )
                    # an empty batch (Poisson sampling) still takes its step: skipping it would change
                    # the method (DP-SGD's pure-noise step)
                    loss.backward()
                    opt.step()
                    if k:
                        total_loss += float(loss.detach()) * k
                        seen += k
                        if ctx.logits is not None:
                            correct += int((ctx.logits.detach().argmax(1) == yb).sum())
                            counted += k
                    bar.update(task, advance=1, status=f"epoch {epoch + 1}/{self.epochs} loss {total_loss / max(seen, 1):.4f}")
                val_acc = accuracy(module, x_val, y_val, self.batch_size) if x_val is not None and y_val is not None else None
                record = self._epoch_record(
                    ctx,
                    epoch=epoch + 1,
                    loss=total_loss / seen if seen else float("nan"),
                    train_acc=correct / counted if counted else None,
                    val_acc=val_acc,
                    seconds=time.perf_counter() - t0,
                    lr=lr,
                )
                history.append(record)
                if ckpt is not None:
                    self._save_checkpoint(
                        ckpt, module, opt, ctx.generator, epoch + 1, history, fingerprint, seed, extra=self._checkpoint_extra(ctx)
                    )
                if callback is not None:
                    callback(record)

    def _batches(self, x: Tensor, y: Tensor, ctx: TrainContext) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """One epoch's batches ``(xb, yb, index into x or None)``: a fresh permutation from the
        run's generator, cut into ``ctx.steps_per_epoch`` batches of ``batch_size``."""
        perm = torch.randperm(x.shape[0], generator=ctx.generator, device=x.device)
        for b in range(ctx.steps_per_epoch):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield x[idx], y[idx], idx

    def _epoch_record(self, ctx: TrainContext, **fields: Any) -> EpochRecord:
        """The finished epoch's record (a method with more per-epoch figures adds them here)."""
        return self.record_type(**fields)

    def _checkpoint_extra(self, ctx: TrainContext) -> dict[str, Any] | None:
        """A method's own state stored in each epoch's checkpoint beside the common fields."""
        return None

    # -- pieces -------------------------------------------------------------------------------
    def _num_classes(self, module: nn.Module, x: Tensor, where: str) -> int:
        with torch.no_grad(), module_mode(module, False):
            try:
                out = module(x[:1])
            except GauntletError:
                raise
            except Exception as exc:  # noqa: BLE001 - a shape mismatch between data and architecture
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(
                    f"{where}: the module cannot take x of per-sample shape {tuple(x.shape[1:])} ({msg})"
                ) from None
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"{where}: the module must return logits of shape (N, C) with C >= 2, got {shape}")
        return int(out.shape[1])

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def _fingerprint(self, module: nn.Module, x: Tensor, y: Tensor, seed: int) -> str:
        h = hashlib.sha256()
        h.update(f"{CHECKPOINT_FORMAT}/{CHECKPOINT_VERSION}|{self.name}|{type(self).__qualname__}|seed={seed}|".encode())
        h.update(json.dumps(_jsonable(self.get_params()), sort_keys=True).encode())
        arch = [(k, tuple(v.shape), str(v.dtype)) for k, v in module.state_dict().items()]
        h.update(repr(arch).encode())
        h.update(self.fingerprint_extra().encode())
        _hash_tensor(h, x)
        _hash_tensor(h, y)
        return h.hexdigest()

    def _save_checkpoint(
        self,
        path: Path,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        g: torch.Generator,
        epoch: int,
        history: list[EpochRecord],
        fingerprint: str,
        seed: int,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint of a finished epoch (``extra``: a method's own state, e.g. an
        accountant, stored beside the common fields)."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "method": self.name,
            "fingerprint": fingerprint,
            "epoch": epoch,
            "epochs": self.epochs,
            "seed": seed,
            "params": _jsonable(self.get_params()),
            "model": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "optimizer": opt.state_dict(),
            "generator": g.get_state(),
            "global_rng": torch.get_rng_state(),
            "history": [r.to_dict() for r in history],
            **(extra or {}),
        }
        if torch.cuda.is_available() and g.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(g.device)
        save_atomic(state, path)

    def _load_checkpoint(
        self,
        path: Path,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        g: torch.Generator,
        fingerprint: str,
        where: str,
    ) -> tuple[int, list[EpochRecord]]:
        state = load_checkpoint(path)
        if state.get("method") != self.name:
            raise ConfigError(
                f"{where}: checkpoint {str(path)!r} was written by method {state.get('method')!r}, not {self.name!r}; "
                "use another checkpoint path or resume=False to overwrite it"
            )
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{where}: checkpoint {str(path)!r} was made with different data, hyperparameters, seed or architecture; "
                "use another checkpoint path or resume=False to overwrite it"
            )
        try:
            module.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"])
            torch.set_rng_state(state["global_rng"])
            if "cuda_rng" in state and g.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], g.device)
            history = [self.record_type(**r) for r in state["history"]]
            epoch = int(state["epoch"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: checkpoint {str(path)!r} is incomplete or corrupt ({type(exc).__name__}); delete it") from None
        return epoch, history


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically: write a temporary file beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``); :class:`ModelLoadError` if unreadable."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"training checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on damaged files; one ModelLoadError line
        raise ModelLoadError(
            f"training checkpoint {str(path)!r} cannot be read safely ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{str(path)!r} is not a gauntlet training checkpoint; use another --checkpoint path")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ModelLoadError(f"training checkpoint {str(path)!r} has version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return state


def accuracy(module: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Clean accuracy of ``module`` on ``(x, y)`` in eval mode (its mode is restored)."""
    correct = 0
    with torch.no_grad(), module_mode(module, False):
        for s in range(0, x.shape[0], batch_size):
            correct += int((module(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum())
    return correct / x.shape[0]


def train(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    method: str = "pgd_at",
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    **params: Any,
) -> TrainingResult:
    """Train ``module`` in place with a registered training method: ``create(method, **params).fit(...)``."""
    from gauntlet.defenses.registry import create

    trainer = create(method, **params)
    if not isinstance(trainer, Trainer):
        raise ConfigError(f"train: {method!r} is a {trainer.kind} defense, not a training method; see gauntlet defenses")
    return trainer.fit(
        module, x, y, seed=seed, checkpoint=checkpoint, resume=resume, progress=progress, x_val=x_val, y_val=y_val
    )


__all__ = [
    "COMMON_CONSTRAINTS",
    "EPS",
    "LR_SCHEDULES",
    "NON_NEGATIVE",
    "OPTIMIZERS",
    "POSITIVE",
    "STEPS",
    "EpochRecord",
    "TrainContext",
    "Trainer",
    "TrainingResult",
    "accuracy",
    "check_training_data",
    "load_checkpoint",
    "lr_at",
    "module_mode",
    "perturb",
    "save_atomic",
    "train",
]
