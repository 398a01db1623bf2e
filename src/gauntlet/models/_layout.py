"""The gradient-pass fast path of :class:`~gauntlet.models.TorchModel`: a channels-last copy of a
convolutional network, used for the input-gradient passes of attacks.

Attacks differentiate the loss with respect to the *input* with the network's weights frozen
(``TorchModel.attack_mode``).  On the CPU, oneDNN's convolutions run forward and backward faster on
NHWC (``torch.channels_last``) tensors than on NCHW ones: measured here, one thread, batch 256, one
forward + input-gradient pass, 0.69× the NCHW time on LeNet5 and 0.78× on SmallCNN, gradients equal
to 1e-6.  ``torch.compile`` (inductor) was measured too and is *slower* for these passes here
(1.5× on LeNet5 after 23 s of compilation), so the layout, not a compiler, is the speed-up.
Converting the user's module in place would change what they hold; :class:`ChannelsLastGrad` keeps
its own copy instead, rebuilt when the weights change (the fingerprint of
:mod:`gauntlet.models._fast`).

Guards, each falling back to the eager module (one log line when refused for good):

* **when**: a 4-D floating CPU batch of at least ``MIN_BATCH`` inputs, the network in eval mode with
  no forward hooks and no parameter that requires a gradient (attack mode: adversarial training,
  which needs weight gradients, always runs the module itself);
* **worth it**: the network has a 2-D convolution with more than one input channel (the layout
  changes nothing for fully connected networks or a single 1-channel convolution);
* **exactness at build**: the copy's scores on two probe batches equal eager's within
  ``RTOL[dtype] × max(1, max |eager score|)``; deep-copying, converting or running the copy that
  raises, or a difference beyond the tolerance, refuses the path for good.

**Reduced precision** (``ChannelsLastGrad(autocast=torch.bfloat16)``): the same copy run under
``torch.autocast`` in bfloat16, its scores cast back to the input's dtype.  Measured here (one
thread, TRADES SmallCNN, batch 46, AVX512-BF16): forward 0.64× and forward + input gradient 0.53×
the float32 channels-last time, logits within 0.05 of float32 and input gradients at cosine
similarity ≥ 0.96.  It is *not* exact, so :class:`~gauntlet.models.TorchModel` uses it only inside
``search_precision("bfloat16")``, where an attack re-verifies every success in full precision
(:meth:`gauntlet.attacks.base.Context.confirm`).  Extra guards: the CPU must run bfloat16
natively (oneDNN's ``_is_mkldnn_bf16_supported``: emulated bfloat16 is slower than float32), the
input must be float32, and the build check uses ``RTOL[torch.bfloat16]``.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from gauntlet.models._fast import RTOL, _eligible, _fingerprint, _first_line, _probe

logger = logging.getLogger(__name__)

__all__ = ["MIN_BATCH", "ChannelsLastGrad", "bf16_native"]

#: smaller batches run eagerly (the layout conversion of the input and of its gradient costs more
#: than it saves there)
MIN_BATCH = 16
PROBE_SIZES = (3, 17)


def _worth_it(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.in_channels > 1 for m in module.modules())


class ChannelsLastGrad:
    """The channels-last copy of one model's network and its guards; see the module docstring.

    :meth:`__call__` returns the scores of ``prep(x)`` from the copy, differentiable with respect to
    ``x``, or ``None`` when the caller must run the module itself.  ``status`` is ``"pending"``,
    ``"channels_last"``, ``"n/a: <why>"`` (not a network it helps) or ``"eager: <why>"`` (refused).
    """

    def __init__(self, autocast: torch.dtype | None = None) -> None:
        self.autocast = autocast
        self.status = "pending"
        self.builds = 0
        #: CPU seconds spent building (and checking) copies, refused ones included
        self.build_seconds = 0.0
        self.min_batch = MIN_BATCH
        self._copy: nn.Module | None = None
        self._fingerprint: tuple[Any, ...] | None = None

    @property
    def off(self) -> bool:
        return self.status.startswith(("eager", "n/a"))

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
        if self.off or x.dim() != 4 or x.device.type != "cpu" or not x.is_floating_point() or x.shape[0] < self.min_batch:
            return None
        if self.autocast is not None and x.dtype != torch.float32:
            return None
        if not _eligible(module) or any(p.requires_grad for p in module.parameters()):
            return None
        extra = tuple(extra)
        fp = _fingerprint(module, extra)
        if self._copy is None or fp != self._fingerprint:
            self._copy = None
            why = self.unavailable(module)
            if why is not None:
                self.status = f"n/a: {why}"
                return None
            t0 = time.process_time()
            try:
                self._build(module, prep, x, bounds)
            except _Refused as why:
                self._copy, self._fingerprint = None, None
                self.status = f"eager: {why}"
                what = "channels-last gradient path" if self.autocast is None else "reduced-precision search path"
                logger.warning("%s: %s refused for %s, running it eagerly: %s", owner, what, type(module).__name__, why)
                return None
            finally:
                self.build_seconds += time.process_time() - t0
            self._fingerprint = fp
        assert self._copy is not None
        return self._run(self._copy, prep(x).contiguous(memory_format=torch.channels_last), x.dtype)

    def unavailable(self, module: nn.Module) -> str | None:
        """Why this path cannot help ``module`` on this machine (``None``: it can), before any build."""
        if not _worth_it(module):
            return "no convolution over several channels"
        if self.autocast is not None and not bf16_native():
            return "this CPU has no native bfloat16 (oneDNN would emulate it, slower than float32)"
        return None

    def _run(self, twin: nn.Module, xin: Tensor, dtype: torch.dtype) -> Tensor:
        if self.autocast is None:
            return twin(xin)  # type: ignore[no-any-return]
        with torch.autocast("cpu", dtype=self.autocast):
            out = twin(xin)
        return out.to(dtype)  # type: ignore[no-any-return]

    def _build(self, module: nn.Module, prep: Callable[[Tensor], Tensor], x: Tensor, bounds: tuple[float, float]) -> None:
        try:
            twin = copy.deepcopy(module).to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the stubs omit it
        except Exception as exc:  # noqa: BLE001 - whatever cannot be copied or converted
            raise _Refused(f"the network cannot be copied to channels-last ({_first_line(exc)})") from None
        twin.eval()
        for p in twin.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(0)
        tol = RTOL.get(self.autocast or x.dtype, 1e-5)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for n in PROBE_SIZES:
                p = _probe(n, tuple(x.shape[1:]), x.dtype, x.device, bounds, gen)
                try:
                    ref = module(prep(p))
                    out = self._run(twin, prep(p).contiguous(memory_format=torch.channels_last), x.dtype)
                except Exception as exc:  # noqa: BLE001
                    raise _Refused(f"the channels-last copy fails on a probe batch ({_first_line(exc)})") from None
                if not isinstance(ref, Tensor) or not isinstance(out, Tensor) or out.shape != ref.shape:
                    raise _Refused("the module does not return one tensor shaped alike in both layouts")
                scale = max(1.0, float(ref.abs().max()))
                diff = float((out - ref).abs().max())
                if not diff <= tol * scale:
                    raise _Refused(f"the channels-last copy differs from eager by {diff:.3g} (tolerance {tol:g} × {scale:.3g})")
        self._copy = twin
        self.status = "channels_last" if self.autocast is None else f"channels_last_{str(self.autocast).removeprefix('torch.')}"
        self.builds += 1


@functools.cache
def bf16_native() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 / AMX in oneDNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _Refused(Exception):
    """Why the path is refused for good."""
