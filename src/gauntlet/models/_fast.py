"""The forward-only fast path of :class:`~gauntlet.models.TorchModel`: a frozen, inference-optimised
TorchScript copy of the network (normalisation included), used for queries that record no gradient.

:class:`FrozenForward` builds the copy lazily, on the first eligible query: ``torch.jit.trace`` of
the eval-mode network (on a probe batch of 2 random inputs inside the bounds), ``torch.jit.freeze``
(weights folded in as constants, only numerics-preserving graph passes) and, on the CPU, the MKLDNN
conversion of ``optimize_for_inference`` alone (see :func:`_optimise`): bit-identical scores to
eager on the zoo's networks.  Measured here (one thread, batch 256, CPU time, shared MNIST models):
3.6–3.8× eager on LeNet5 and 1.5–2.0× on SmallCNN for ≈ 0.05 s of build, against 1.4× / 1.2× for
``torch.compile`` (inductor, ``dynamic=True``) after 4.6 / 9.8 s CPU of compilation and with
float32 differences of up to 4e-6 — so TorchScript it is (``benchmarks/bench_forward.py``).
TorchScript is deprecated in recent PyTorch; if tracing or freezing stops working, the guards
below fall back to eager with one log line.

Guards, each falling back to the eager module:

* **exactness at build**: the copy's scores on two fresh probe batches of other sizes (1 and 7) must
  equal eager's within ``RTOL[dtype] × max(1, max |eager score|)`` (float32: 1e-5 relative to the
  logit scale); tracing or freezing that raises, a ``TracerWarning`` (data-dependent Python control
  flow, a tensor turned into a Python number), an output that is not one tensor, or a module that
  changes its own parameters or buffers when it runs refuse the fast path for good: eager from then
  on and one log line (logger ``gauntlet.models._fast``, level WARNING) naming why;
* **per call**: only for batches of at least ``MIN_BATCH`` (32) inputs, where the copy is faster,
  only in eval mode (every submodule ``training == False``) and with no forward hooks
  (feature capture reads activations through hooks, which a frozen graph does not run); inputs of
  another per-sample shape, dtype or device than the traced one run eagerly (batch size never
  retraces: the graph is checked on batch sizes other than the one it was traced on);
* **weights**: a fingerprint of every parameter and buffer (identity, storage, in-place version
  counter, dtype, device) and of the normalisation tensors is compared on each call; a change
  (training, ``load_state_dict``, an in-place edit, ``.to(device)``) rebuilds the copy.

Not covered: Python side effects inside ``forward`` (a call counter, a list that records something)
do not happen on the frozen copy, and a build runs the eager module on its probe batches (3 extra
calls, global RNG restored); such modules need ``TorchModel(..., fast=False)``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["RTOL", "FrozenForward"]

#: exactness tolerance of the build-time check, relative to the probe's logit scale
#: (``max(1, max |eager score|)``), per dtype
RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

Key = tuple[tuple[int, ...], torch.dtype, torch.device]
PROBE_TRACE, PROBE_SIZES = 2, (1, 7)
#: smaller batches run eagerly: there a TorchScript call and the MKLDNN layout conversions cost
#: about what they save (measured here, one thread, batch 1–16: 0.6–1.3× eager on DigitsCNN,
#: SmallCNN and Wong–Kolter small; from 32 on: 0.9–1.2× on Wong–Kolter small, 1.6–3× on the others)
MIN_BATCH = 32


class _Traced(nn.Module):
    """``net(prep(x))`` as one module, so the normalisation is traced into the frozen graph."""

    def __init__(self, net: nn.Module, prep: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.net = net
        self.prep = prep
        self.training = False  # only this wrapper's flag: the network's own flags are left alone

    def forward(self, x: Tensor) -> Any:
        return self.net(self.prep(x))


def _eligible(module: nn.Module) -> bool:
    """Eval mode everywhere and no forward hooks (module-level or global)."""
    g = nn.modules.module
    if getattr(g, "_global_forward_hooks", None) or getattr(g, "_global_forward_pre_hooks", None):
        return False
    for m in module.modules():
        if m.training or m._forward_hooks or m._forward_pre_hooks:
            return False
    return True


def _fingerprint(module: nn.Module, extra: Iterable[Tensor | None]) -> tuple[Any, ...]:
    ts = chain(module.parameters(), module.buffers(), (t for t in extra if t is not None))
    return tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in ts)


def _first_line(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _probe(n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
           bounds: tuple[float, float], gen: torch.Generator) -> Tensor:
    """``n`` random inputs inside ``bounds`` (uniform when both are finite, else a clamped normal)."""
    lo, hi = bounds
    if math.isfinite(lo) and math.isfinite(hi):
        x = lo + (hi - lo) * torch.rand((n, *shape), generator=gen, dtype=torch.float64)
    else:
        x = torch.randn((n, *shape), generator=gen, dtype=torch.float64).clamp(lo, hi)
    return x.to(device=device, dtype=dtype)


def _optimise(frozen: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """On the CPU, run the frozen graph's convolutions (and the ReLUs and pools between them) in
    MKLDNN's blocked layout with pre-packed weights: the same oneDNN kernels eager convolutions
    call, without the layout reorders around every op, so the scores stay bit-identical here.
    ``torch.jit.optimize_for_inference`` would add a pre-transposed ``matmul`` for every
    ``nn.Linear``, which changes the float32 results by a few ulps for no measurable gain."""
    convert = getattr(torch._C, "_jit_pass_convert_frozen_ops_to_mkldnn", None)
    if device.type == "cpu" and convert is not None and torch.backends.mkldnn.is_available():
        convert(frozen.graph)
    return frozen


class _Refused(Exception):
    """Why the fast path is refused for good (its message goes into the log line and the status)."""


class FrozenForward:
    """The frozen copy of one model's network and its guards; see the module docstring.

    :meth:`__call__` returns the scores of a batch from the frozen copy, or ``None`` when the caller
    must run the eager module (not eligible, fewer than ``min_batch`` inputs, another input key,
    refused).  ``status`` is
    ``"pending"`` (nothing built yet), ``"frozen"`` or ``"eager: <reason>"``; ``builds`` counts
    successful builds (a weight change rebuilds, a batch size never does).
    """

    def __init__(self) -> None:
        self.status = "pending"
        self.builds = 0
        #: CPU seconds spent building (and checking) copies, refused ones included
        self.build_seconds = 0.0
        self.min_batch = MIN_BATCH
        self._frozen: torch.jit.ScriptModule | None = None
        self._key: Key | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._bad_keys: set[Key] = set()  # keys the eager module itself fails on with random inputs

    @property
    def refused(self) -> bool:
        return self.status.startswith("eager")

    def __call__(
        self,
        module: nn.Module,
        prep: Callable[[Tensor], Tensor],
        x: Tensor,
        *,
        bounds: tuple[float, float],
        extra: Iterable[Tensor | None] = (),
        owner: str = "TorchModel",
    ) -> Tensor | None:
        if self.refused or not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < max(1, self.min_batch):
            return None
        if not _eligible(module):
            return None
        key: Key = (tuple(int(s) for s in x.shape[1:]), x.dtype, x.device)
        extra = tuple(extra)
        fp = _fingerprint(module, extra)
        if self._frozen is None or fp != self._fingerprint:
            if key in self._bad_keys or not x.is_floating_point():
                return None
            self._frozen = None
            t0 = time.process_time()
            try:
                self._build(module, prep, key, bounds)
            except _Refused as why:
                self._refuse(owner, module, str(why))
                return None
            finally:
                self.build_seconds += time.process_time() - t0
            if self._frozen is None:  # the eager module itself fails on this key
                return None
            if _fingerprint(module, extra) != fp:
                self._refuse(owner, module, "the module changes its own parameters or buffers when it runs")
                return None
            self._fingerprint = fp
        if key != self._key or self._frozen is None:
            return None
        try:
            with torch.inference_mode():
                out = self._frozen(x)
        except Exception as exc:  # noqa: BLE001 - a graph that fails where eager runs: eager from now on
            self._refuse(owner, module, f"the frozen copy failed on a batch of {x.shape[0]} ({_first_line(exc)})")
            return None
        # an inference tensor cannot be modified in place or saved for backward outside inference mode
        return out if torch.is_inference_mode_enabled() else out.clone()

    def _refuse(self, owner: str, module: nn.Module, why: str) -> None:
        self._frozen = None
        self._fingerprint = None
        self.status = f"eager: {why}"
        logger.warning("%s: fast forward path refused for %s, running it eagerly: %s", owner, type(module).__name__, why)

    def _build(self, module: nn.Module, prep: Callable[[Tensor], Tensor], key: Key, bounds: tuple[float, float]) -> None:
        shape, dtype, device = key
        wrapper = _Traced(module, prep)
        cuda = [device.index or 0] if device.type == "cuda" else []
        gen = torch.Generator().manual_seed(0)
        trace_x = _probe(PROBE_TRACE, shape, dtype, device, bounds, gen)
        probes = [_probe(n, shape, dtype, device, bounds, gen) for n in PROBE_SIZES]
        with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.no_grad():
            try:
                refs = [wrapper(p) for p in probes]
            except Exception:  # noqa: BLE001 - the eager call will raise (or not) on the real input
                self._bad_keys.add(key)
                return
            for r in refs:
                if not isinstance(r, Tensor):
                    raise _Refused(f"the module returns {type(r).__name__}, not one tensor")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    traced = torch.jit.trace(wrapper, trace_x, check_trace=False)
                    frozen = _optimise(torch.jit.freeze(traced.eval(), optimize_numerics=False), device)
                except Exception as exc:  # noqa: BLE001 - whatever TorchScript cannot handle
                    raise _Refused(f"tracing or freezing failed ({_first_line(exc)})") from None
            tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
            if tracer:
                line = (str(tracer[0].message).strip().splitlines() or [""])[0][:200]
                raise _Refused(f"the trace may not generalise (TracerWarning: {line})")
            try:
                with torch.inference_mode():
                    outs = [frozen(p) for p in probes]
            except Exception as exc:  # noqa: BLE001
                raise _Refused(f"the frozen copy fails on the probe batches ({_first_line(exc)})") from None
        tol = RTOL.get(dtype, 1e-5)
        for n, r, o in zip(PROBE_SIZES, refs, outs):
            if not isinstance(o, Tensor) or o.shape != r.shape or o.dtype != r.dtype:
                raise _Refused(f"the frozen copy's output on a batch of {n} is not shaped like eager's")
            scale = max(1.0, float(r.detach().abs().max()))
            diff = float((o - r).abs().max())
            if not diff <= tol * scale:  # also catches NaN
                raise _Refused(
                    f"the frozen copy differs from eager by {diff:.3g} on a probe batch of {n} "
                    f"(tolerance {tol:g} × logit scale {scale:.3g})"
                )
        self._frozen, self._key = frozen, key
        self.status = "frozen"
        self.builds += 1
