"""DP-SGD (Abadi et al., CCS 2016) through Opacus: per-sample clipping, Gaussian noise, Poisson
sampling and a privacy accountant, inside :class:`Trainer`'s deterministic, resumable loop."""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, Interval, IsNone, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import (
    EpochRecord,
    TrainContext,
    Trainer,
    TrainingResult,
    load_checkpoint,
)
from gauntlet.errors import ConfigError, ModelLoadError

ACCOUNTANTS = ("rdp", "prv")
INSTALL_HINT = 'pip install "gauntlet[privacy]"'
#: the ε dp_sgd aims at when neither target_epsilon nor noise_multiplier is given
DEFAULT_EPSILON = 3.0


def _opacus() -> Any:
    """The ``opacus`` package, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import opacus  # type: ignore[import-untyped]  # Opacus ships no type information
    except ImportError:
        raise ConfigError(f"dp_sgd needs the opacus package, which is not installed; {INSTALL_HINT}") from None
    return opacus


@dataclass
class DPEpochRecord(EpochRecord):
    """An :class:`EpochRecord` with the privacy budget ``epsilon`` spent up to the end of the epoch
    (from the accountant, at the run's ``delta``)."""

    epsilon: float = 0.0


class _Tensors(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """In-memory ``(x, y)`` whose batches are fetched with one indexing operation
    (``DataLoader`` calls ``__getitems__`` with a Poisson batch's index list)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.int64, device=self.x.device)
        return self.x[index], self.y[index]


@functools.lru_cache(maxsize=32)
def _rdp_per_step(q: float, sigma: float) -> tuple[float, ...]:
    """Rényi DP of one step of the sampled Gaussian mechanism at Opacus's default orders."""
    from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]  # Opacus ships no type information
    from opacus.accountants.analysis.rdp import compute_rdp  # type: ignore[import-untyped]  # Opacus ships no type information

    return tuple(float(v) for v in compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))


def _keep_batch(batch: Any) -> Any:
    return batch


def offending_layers(module: nn.Module) -> list[tuple[str, str, bool]]:
    """``(name, type, fixable)`` of every trainable submodule Opacus's ``ModuleValidator`` refuses."""
    from opacus.utils.module_utils import trainable_modules  # type: ignore[import-untyped]  # Opacus ships no type information
    from opacus.validators import ModuleValidator  # type: ignore[import-untyped]  # Opacus ships no type information

    out = []
    for name, sub in trainable_modules(module):
        check = ModuleValidator.VALIDATORS.get(type(sub))
        if check is not None and check(sub):
            out.append((name or "(the module itself)", type(sub).__name__, type(sub) in ModuleValidator.FIXERS))
    return out


@register
class DPSGD(Trainer):
    """Differentially private SGD (Abadi et al. 2016) on Opacus.

    Every step draws a Poisson batch (each training sample independently with probability
    ``q = 1 / ceil(N / batch_size)``, so ``batch_size`` is the *expected* batch size; Opacus's
    ``DPDataLoader``), clips each sample's gradient to L2 norm ``max_grad_norm``, adds Gaussian
    noise of standard deviation ``noise_multiplier · max_grad_norm`` to their sum and divides by
    the expected batch size before the optimizer's step (Opacus's ``PrivacyEngine`` /
    ``DPOptimizer``).  The accountant (``"rdp"``: Rényi DP, Mironov 2017; ``"prv"``: privacy
    random variables, Gopi et al. 2021) tracks the ``(ε, δ)`` spent.

    Give exactly one of ``target_epsilon`` (Opacus then computes the smallest noise multiplier
    that keeps ε ≤ ``target_epsilon`` after ``epochs`` epochs at sampling rate ``q``) or
    ``noise_multiplier``.  Each epoch's record holds the ε spent so far (``epsilon``), and
    :attr:`TrainingResult.info` holds ``epsilon`` (spent, from the accountant), ``delta``,
    ``noise_multiplier``, ``sample_rate``, ``steps``, ``accountant`` and ``max_grad_norm``.

    Determinism: the Poisson sampler and the noise draw from two ``torch.Generator`` seeded from
    the run's generator (Opacus's ``secure_mode=False``; fine for research and audits, not a
    production guarantee against floating-point attacks); their states and the accountant's
    history are checkpointed every epoch, so a resumed run ends with the same weights and ε.

    The module must be Opacus-compatible (no BatchNorm: a sample's output would depend on its
    batch): incompatible layers are refused with :class:`ConfigError`, or replaced in place by
    ``ModuleValidator.fix`` (BatchNorm → GroupNorm) with ``fix_module=True``.  Weights trained that
    way belong to the fixed architecture.

    Args:
        target_epsilon: the ε to reach after ``epochs`` epochs (with neither it nor
            ``noise_multiplier`` given: ε = 3, :data:`DEFAULT_EPSILON`).
        noise_multiplier: noise standard deviation over ``max_grad_norm`` (``None``: computed).
        delta: the δ of the guarantee (keep it below ``1 / N``).
        max_grad_norm: per-sample gradient clipping norm ``C``.
        accountant: ``"rdp"`` or ``"prv"``.
        fix_module: replace incompatible layers (BatchNorm → GroupNorm) instead of refusing.
        **common: the :class:`Trainer` hyperparameters; ``batch_size`` is the expected Poisson
            batch size.  DP-SGD usually wants ``optimizer="sgd"`` with a large ``lr`` (0.1–2).
    """

    name: ClassVar[str] = "dp_sgd"
    record_type: ClassVar[type[EpochRecord]] = DPEpochRecord
    description: ClassVar[str] = (
        "DP-SGD on Opacus: per-sample clipping, Gaussian noise, Poisson sampling, (ε, δ) from the RDP/PRV accountant"
    )
    reference: ClassVar[str] = (
        'Abadi et al., "Deep Learning with Differential Privacy", ACM CCS 2016, https://arxiv.org/abs/1607.00133; '
        'Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021, '
        "https://arxiv.org/abs/2109.12298"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target_epsilon": [Interval(float, 0, None, closed="neither"), IsNone()],
        "noise_multiplier": [Interval(float, 0, None, closed="neither"), IsNone()],
        "delta": [Interval(float, 0, 1, closed="neither")],
        "max_grad_norm": [Interval(float, 0, None, closed="neither")],
        "accountant": [Options(ACCOUNTANTS)],
        "fix_module": [Boolean()],
    }

    def __init__(
        self,
        *,
        target_epsilon: float | None = None,
        noise_multiplier: float | None = None,
        delta: float = 1e-5,
        max_grad_norm: float = 1.0,
        accountant: str = "rdp",
        fix_module: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.target_epsilon = target_epsilon
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.max_grad_norm = max_grad_norm
        self.accountant = accountant
        self.fix_module = fix_module
        self._validate()
        if target_epsilon is not None and noise_multiplier is not None:
            raise ConfigError(
                "dp_sgd: give exactly one of target_epsilon (e.g. 3.0) and noise_multiplier (e.g. 1.1), got both"
            )
        _opacus()

    # -- the module --------------------------------------------------------------------------
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
        """:meth:`Trainer.fit` after checking (or, with ``fix_module=True``, fixing in place) that
        Opacus can train ``module`` privately."""
        self._validate()
        _opacus()
        if isinstance(module, nn.Module):
            self._make_compatible(module)
        return super().fit(
            module, x, y, seed=seed, checkpoint=checkpoint, resume=resume, progress=progress, x_val=x_val, y_val=y_val,
            callback=callback,
        )

    def _make_compatible(self, module: nn.Module) -> None:
        from opacus.validators import ModuleValidator  # type: ignore[import-untyped]  # Opacus ships no type information

        bad = offending_layers(module)
        if not bad:
            return
        listed = ", ".join(f"{n} ({t})" for n, t, _ in bad)
        if not self.fix_module:
            raise ConfigError(
                f"dp_sgd.fit: Opacus cannot train these layers privately: {listed}; pass fix_module=True "
                "(ModuleValidator.fix replaces BatchNorm with GroupNorm) or use GroupNorm/LayerNorm in the architecture"
            )
        unfixable = [f"{n} ({t})" for n, t, ok in bad if not ok]
        if unfixable or any(n == "(the module itself)" for n, _, _ in bad):
            what = ", ".join(unfixable) or "the module itself"
            raise ConfigError(f"dp_sgd.fit: fix_module cannot replace {what} in place; change the architecture")
        for name, _, _ in bad:
            *path, leaf = name.split(".")
            parent = module
            for part in path:
                parent = parent._modules[part]  # type: ignore[assignment]  # a named submodule exists
            old = parent._modules[leaf]
            assert old is not None
            p = next(old.parameters())
            new = ModuleValidator.FIXERS[type(old)](old)
            parent._modules[leaf] = new.to(device=p.device, dtype=p.dtype)

    # -- privacy parameters ------------------------------------------------------------------
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
        n = int(x.shape[0])
        steps_per_epoch = math.ceil(n / self.batch_size)
        sample_rate = 1.0 / steps_per_epoch
        steps = self.epochs * steps_per_epoch
        if self.noise_multiplier is not None:
            sigma = float(self.noise_multiplier)
        else:
            target = DEFAULT_EPSILON if self.target_epsilon is None else float(self.target_epsilon)
            sigma = self._calibrate(target, sample_rate, steps, n)
        # two child generators, so the sampler (always on the CPU) and the noise (on the
        # parameters' device) each have their own checkpointable stream
        seeds = torch.randint(0, 2**62, (2,), generator=ctx.generator, device=ctx.generator.device).tolist()
        dev = next(p for p in module.parameters() if p.requires_grad).device
        ctx.state.update(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps_per_epoch=steps_per_epoch,
            sampler_generator=torch.Generator().manual_seed(int(seeds[0])),
            noise_generator=torch.Generator(device=dev).manual_seed(int(seeds[1])),
        )

    def _calibrate(self, target: float, sample_rate: float, steps: int, n: int) -> float:
        """Opacus's noise multiplier for ``target`` ε after ``steps`` steps (binary search)."""
        from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]  # Opacus ships no type information

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the search probes extreme σ; its alpha-range warnings are noise
                return float(get_noise_multiplier(
                    target_epsilon=target, target_delta=float(self.delta), sample_rate=sample_rate, steps=steps,
                    accountant=self.accountant, epsilon_tolerance=0.01,
                ))
        except (ValueError, OverflowError, ZeroDivisionError, RuntimeError):
            raise ConfigError(
                f"dp_sgd: target_epsilon={target:g} cannot be reached at delta={self.delta:g} with {self.epochs} epochs "
                f"at sampling rate {sample_rate:.4g} (batch_size={self.batch_size} of {n}) even with the most noise "
                f"Opacus tries (noise multiplier 1e6, the {self.accountant} accountant's floor); raise target_epsilon "
                "or delta, or use fewer epochs or a smaller batch_size"
            ) from None

    # -- training ------------------------------------------------------------------------------
    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        """Mean cross-entropy of the batch (Opacus undoes the mean per sample, then divides the
        clipped, noised sum by the expected batch size)."""
        logits = module(xb)
        ctx.logits = logits
        return F.cross_entropy(logits, yb)

    def _epsilon(self, accountant: Any) -> float:
        """The ε the accountant has spent at the run's δ."""
        if len(accountant) == 0:
            return 0.0
        if accountant.mechanism() != "rdp":
            return float(accountant.get_epsilon(delta=float(self.delta)))
        # RDPAccountant.get_epsilon, with the per-step RDP of each (σ, q) computed once per run
        # instead of once per epoch (it is linear in the number of steps)
        from opacus.accountants.analysis.rdp import get_privacy_spent  # type: ignore[import-untyped]  # Opacus ships no type information

        orders = list(accountant.DEFAULT_ALPHAS)
        rdp = sum(np.array(_rdp_per_step(float(q), float(sigma))) * int(steps) for sigma, q, steps in accountant.history)
        eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=float(self.delta))
        return float(eps)

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
        """Trainer's loop on Opacus's private module, optimizer and Poisson loader."""
        from opacus import PrivacyEngine  # type: ignore[import-untyped]  # Opacus ships no type information

        st = ctx.state
        sampler_g: torch.Generator = st["sampler_generator"]
        noise_g: torch.Generator = st["noise_generator"]
        spe = int(st["steps_per_epoch"])
        ctx.steps_per_epoch = spe
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=self.accountant, secure_mode=False)
        loader = torch.utils.data.DataLoader(
            _Tensors(x, y), batch_size=self.batch_size, collate_fn=_keep_batch, generator=sampler_g,
        )
        module.train()
        try:
            gsm, dp_opt, dp_loader = engine.make_private(
                module=module, optimizer=opt, data_loader=loader, noise_multiplier=float(st["noise_multiplier"]),
                max_grad_norm=float(self.max_grad_norm), poisson_sampling=True, noise_generator=noise_g,
            )
        except (ValueError, NotImplementedError, TypeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"dp_sgd.fit: Opacus cannot make this module private ({msg[:300]}); change the architecture") from None
        dp_loader.batch_sampler.steps = spe  # type: ignore[union-attr]  # Opacus's int(1/q) can round one step away
        try:
            with warnings.catch_warnings():
                # inputs never require grad here, so every full backward hook says so once per call
                warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
                if start > 0 and ckpt is not None:
                    self._restore(ckpt, engine.accountant, sampler_g, noise_g, history)
                st["loader"], st["accountant"] = dp_loader, engine.accountant
                super()._loop(module, x, y, x_val, y_val, ctx, dp_opt, start, history, ckpt, fingerprint, seed, progress,
                              callback, step_module=gsm)
            st["privacy"] = {
                "epsilon": self._epsilon(engine.accountant),
                "delta": float(self.delta),
                "noise_multiplier": float(st["noise_multiplier"]),
                "sample_rate": float(st["sample_rate"]),
                "steps": sum(int(h[2]) for h in engine.accountant.history),
                "accountant": self.accountant,
                "max_grad_norm": float(self.max_grad_norm),
                "target_epsilon": self.target_epsilon,
            }
        finally:
            st.pop("loader", None)
            st.pop("accountant", None)
            dp_opt.zero_grad(set_to_none=True)
            gsm.cleanup()  # hooks and per-sample attributes off: the module is a plain module again
            for p in module.parameters():
                if hasattr(p, "summed_grad"):  # DPOptimizer's, which cleanup() leaves behind
                    del p.summed_grad

    def _batches(self, x: Tensor, y: Tensor, ctx: TrainContext) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """Opacus's Poisson batches (from the sampler's own generator; a batch may be empty)."""
        for xb, yb in ctx.state["loader"]:
            yield xb, yb, None

    def _epoch_record(self, ctx: TrainContext, **fields: Any) -> EpochRecord:
        return DPEpochRecord(**fields, epsilon=self._epsilon(ctx.state["accountant"]))

    def _checkpoint_extra(self, ctx: TrainContext) -> dict[str, Any]:
        st = ctx.state
        return {"dp": {
            "accountant": st["accountant"].state_dict(),
            "sampler_generator": st["sampler_generator"].get_state(),
            "noise_generator": st["noise_generator"].get_state(),
            "noise_multiplier": float(st["noise_multiplier"]),
        }}

    # -- checkpoints: Trainer's, plus the accountant and the two generators (the per-epoch ε rides in the history)
    def _restore(
        self, ckpt: Path, accountant: Any, sampler_g: torch.Generator, noise_g: torch.Generator, history: list[EpochRecord]
    ) -> None:
        dp = load_checkpoint(ckpt).get("dp")
        try:
            assert isinstance(dp, dict)
            accountant.load_state_dict(dp["accountant"])
            sampler_g.set_state(dp["sampler_generator"])
            noise_g.set_state(dp["noise_generator"])
            if not all(isinstance(r, DPEpochRecord) for r in history):
                raise ValueError("the history has no per-epoch ε")
        except (AssertionError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"dp_sgd.fit: checkpoint {str(ckpt)!r} lacks a valid DP state (accountant, generators) ({type(exc).__name__}); delete it"
            ) from None

    def _result_info(self, ctx: TrainContext) -> dict[str, Any]:
        return dict(ctx.state.get("privacy", {}))


__all__ = ["ACCOUNTANTS", "DPSGD", "DPEpochRecord", "offending_layers"]
