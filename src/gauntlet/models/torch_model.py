"""White-box adapter for a ``torch.nn.Module``."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gauntlet._validation import Boolean, Interval, IsNone, Options, parse_bounds, parse_shape, validate_params
from gauntlet.errors import ConfigError
from gauntlet.models._fast import FrozenForward, _first_line
from gauntlet.models._layout import ChannelsLastGrad
from gauntlet.models.base import InputSpec, Model

logger = logging.getLogger(__name__)


def _stat(v: float | Sequence[float] | Tensor | None, name: str) -> Tensor | None:
    if v is None:
        return None
    t = torch.as_tensor(v, dtype=torch.float32)
    if t.dim() > 1 or not torch.isfinite(t).all():
        raise ConfigError(f"TorchModel: {name} must be a number or a 1-D list (one per channel) of finite numbers")
    if name == "std" and (t <= 0).any():
        raise ConfigError("TorchModel: std must be > 0 in every channel")
    return t


class Normalized(nn.Module):
    """``inner((x - mean) / std)``: a :class:`TorchModel`'s input normalisation as a module, so a copy
    of the network trains on the raw inputs the model is queried with (``mean``/``std`` may be
    ``None``; they are buffers, so they follow ``.to(device)``)."""

    def __init__(self, inner: nn.Module, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", None if mean is None else mean.detach().clone())
        self.register_buffer("std", None if std is None else std.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 2 else (1, -1)
        mean: Tensor | None = self.mean  # type: ignore[assignment]
        std: Tensor | None = self.std  # type: ignore[assignment]
        if mean is not None:
            x = x - (mean.view(shape) if mean.dim() == 1 else mean)
        if std is not None:
            x = x / (std.view(shape) if std.dim() == 1 else std)
        return self.inner(x)  # type: ignore[no-any-return]


def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw the weights of every submodule of ``module`` that has ``reset_parameters``, from
    ``seed`` alone: on the CPU from the CPU generator (``torch.manual_seed`` would also reseed the
    caller's CUDA generators), inside a forked RNG so the caller's state is untouched; the module
    goes back to its device afterwards.  Returns ``module``."""
    p = next(iter(module.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    module.cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return module.to(device)


class TorchModel(Model):
    """A PyTorch module as a white-box model (capabilities: gradients, scores, labels).

    Args:
        module: the network; it receives ``(x - mean) / std`` and must return logits
            (or probabilities, with ``output="probabilities"``).
        bounds: the valid input range, e.g. ``(0.0, 1.0)`` for images scaled to [0, 1].
        num_classes: number of classes; inferred from one forward pass when omitted.  When given,
            the width of the module's output is checked against it: at construction with one
            forward pass when ``input_shape`` is given, else on the first query
            (:class:`~gauntlet.errors.ConfigError` on a mismatch).
        mean, std: optional per-channel normalisation applied *inside* the adapter, so that
            attacks work in input space and ε means what the user thinks it means.
        input_shape: per-sample input shape, checked on every attack call when given; with
            ``num_classes`` the module must run on one input of this shape at construction.
        output: ``"logits"`` (default) or ``"probabilities"``.
        fast: forward-only queries (no gradient recorded, network in eval mode) run on a frozen,
            inference-optimised TorchScript copy of the network, built on first use, checked
            against eager and rebuilt when the weights change (:mod:`gauntlet.models._fast`); the
            input-gradient passes of attacks (attack mode: eval, frozen weights) on a convolutional
            network run a channels-last copy of it on the CPU (:mod:`gauntlet.models._layout`);
            ``False`` always runs the module eagerly.  ``fast_path`` and ``gradient_path`` say
            which is in use.
    """

    capabilities = frozenset({"gradients", "scores", "labels"})

    def __init__(
        self,
        module: nn.Module,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        num_classes: int | None = None,
        mean: float | Sequence[float] | Tensor | None = None,
        std: float | Sequence[float] | Tensor | None = None,
        input_shape: Sequence[int] | None = None,
        output: str = "logits",
        fast: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"TorchModel: module must be a torch.nn.Module, got {type(module).__name__}; "
                "for other callables use gauntlet.models.CallableModel"
            )
        validate_params(
            "TorchModel",
            {"num_classes": num_classes, "output": output, "fast": fast},
            {
                "num_classes": [Interval(int, 2, None), IsNone()],
                "output": [Options(("logits", "probabilities"))],
                "fast": [Boolean()],
            },
        )
        lo, hi = parse_bounds("TorchModel", bounds, finite=False)
        shape = parse_shape("TorchModel", input_shape) if input_shape else None
        self.module = module
        p = next(iter(module.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        self._device = p.device if p is not None else torch.device("cpu")
        self.input_spec = InputSpec(shape, dtype, (lo, hi))
        self.output = output  # type: ignore[assignment]
        self._num_classes = num_classes
        self.mean = _stat(mean, "mean")
        self.std = _stat(std, "std")
        self.fast = fast
        self._frozen = FrozenForward()
        self._grad = ChannelsLastGrad()
        self._lowp = ChannelsLastGrad(autocast=torch.bfloat16)
        self._search_dtype: torch.dtype | None = None
        #: what the last ``search_precision(bfloat16)`` request got: ``"bfloat16"`` or why not
        self.search_note = "not requested"
        self._probe_outputs()

    @property
    def device(self) -> torch.device:
        return self._device

    def _normalize(self, x: Tensor) -> Tensor:
        if self.mean is None and self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 2 else (1, -1)
        if self.mean is not None:
            m = self.mean.to(x.device, x.dtype)
            x = x - (m.view(shape) if m.dim() == 1 else m)
        if self.std is not None:
            s = self.std.to(x.device, x.dtype)
            x = x / (s.view(shape) if s.dim() == 1 else s)
        return x

    def _forward(self, x: Tensor) -> Tensor:
        if self.fast:
            if self._search_dtype is not None:  # inside search_precision(bfloat16): approximate, re-verified by the attack
                out = self._lowp(self.module, self._normalize, x, bounds=self.bounds, extra=(self.mean, self.std))
                if out is not None:
                    return out
            # forward-only queries: the frozen copy; input-gradient passes in attack mode: the channels-last copy
            path = self._grad if torch.is_grad_enabled() else self._frozen
            out = path(self.module, self._normalize, x, bounds=self.bounds, extra=(self.mean, self.std))
            if out is not None:
                return out
        return self.module(self._normalize(x))

    @property
    def gradient_path(self) -> str:
        """``"off"`` (``fast=False``), ``"pending"``, ``"channels_last"`` (input-gradient passes in
        attack mode run a channels-last copy), ``"n/a: <why>"`` or ``"eager: <why>"``."""
        return "off" if not self.fast else self._grad.status

    @property
    def fast_path(self) -> str:
        """``"off"`` (``fast=False``), ``"pending"`` (no forward-only query yet), ``"frozen"``, or
        ``"eager: <reason>"`` when the frozen copy was refused."""
        return "off" if not self.fast else self._frozen.status

    @property
    def search_path(self) -> str:
        """The reduced-precision search path: ``"off"`` (``fast=False``), ``"pending"``,
        ``"channels_last_bfloat16"``, ``"n/a: <why>"`` or ``"eager: <why>"``."""
        return "off" if not self.fast else self._lowp.status

    @contextlib.contextmanager
    def search_precision(self, dtype: torch.dtype | None) -> Iterator[bool]:
        """Inside, attack-mode queries of float32 convolutional networks on the CPU (batches of
        at least 16) run a channels-last copy under bfloat16 autocast (``dtype=torch.bfloat16``; the only reduced dtype offered) when
        the CPU runs bfloat16 natively: ≈ 0.5–0.65× the float32 time here, scores within a few
        hundredths.  Yields whether that is in effect (``search_path`` says why not); ``None``
        restores full precision inside an outer reduced context."""
        if dtype not in (None, torch.bfloat16):
            raise ConfigError(f"TorchModel.search_precision: dtype must be None or torch.bfloat16, got {dtype!r}")
        why = None if dtype is None else self._no_reduced_search()
        on = dtype is not None and why is None
        if dtype is not None:
            self.search_note = "bfloat16" if on else f"full precision: {why}"
        previous = self._search_dtype
        self._search_dtype = dtype if on else None
        try:
            yield on
        finally:
            self._search_dtype = previous

    def execution(self) -> dict[str, Any]:
        """How this model's queries run in this process: the forward-only path (``fast_path``),
        the input-gradient path (``gradient_path``), the reduced-precision search path
        (``search_path``) and the CPU seconds spent building and checking their copies."""
        paths = (self._frozen, self._grad, self._lowp)
        return {
            "forward": self.fast_path,
            "gradient": self.gradient_path,
            "search": self.search_path,
            "build_seconds": round(sum(p.build_seconds for p in paths), 4),
        }

    def warm_up(self, x: Tensor) -> dict[str, Any]:
        """Build the forward and gradient fast paths now, on up to 64 inputs of ``x`` (uncounted,
        attack mode, one forward and one input-gradient pass), rather than inside the first
        attack; returns :meth:`execution`.  An audit calls it once per model and process."""
        if not self.fast or not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
            return self.execution()
        n = min(64, int(x.shape[0]))
        xb = x[:n].detach().to(self._device, self.input_spec.dtype)
        if n < 32:  # the paths only serve batches of 32 / 16 and more: repeat what there is
            xb = xb.repeat((32 + n - 1) // n, *([1] * (xb.dim() - 1)))[:32]
        try:
            with self.attack_mode(), torch.random.fork_rng(devices=[]):
                with torch.no_grad():
                    self._forward(xb)
                xg = xb.clone().requires_grad_(True)
                with torch.enable_grad():
                    out = self._forward(xg)
                    if isinstance(out, Tensor) and out.requires_grad:  # a model without input gradients has none to build
                        out.float().sum().backward()
        except Exception as exc:  # noqa: BLE001 - only a head start: the first real query reports any failure itself
            logger.debug("TorchModel.warm_up: skipped (%s)", _first_line(exc))
        return self.execution()

    def _no_reduced_search(self) -> str | None:
        """Why the bfloat16 search path cannot run here (``None``: it can)."""
        if not self.fast:
            return "fast=False"
        if self.input_spec.dtype != torch.float32 or self._device.type != "cpu":
            return "only float32 networks on the CPU"
        if self._lowp.off:  # refused or found unhelpful at an earlier build
            return self._lowp.status
        return self._lowp.unavailable(self.module)

    def __getstate__(self) -> dict[str, Any]:
        # a TorchScript copy does not pickle; the receiving process rebuilds it on first use
        state = self.__dict__.copy()
        state["_frozen"] = FrozenForward()
        state["_grad"] = ChannelsLastGrad()
        state["_lowp"] = ChannelsLastGrad(autocast=torch.bfloat16)
        state["_search_dtype"] = None
        return state

    def trainable_copy(self) -> Normalized:
        """A deep copy of the network with this model's normalisation in front (:class:`Normalized`;
        the network is its ``inner``), in train mode with every parameter trainable: what a
        defense or study retrains without touching this model."""
        copy_ = Normalized(copy.deepcopy(self.module), self.mean, self.std).to(self._device)
        copy_.train()
        for p in copy_.parameters():
            p.requires_grad_(True)
        return copy_

    @contextlib.contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Eval mode and frozen parameters (no weight gradients are computed during an attack);
        the module's training flags and each parameter's ``requires_grad`` are restored on exit."""
        modes = [(m, m.training) for m in self.module.modules()]
        flags = [(p, p.requires_grad) for p in self.module.parameters()]
        try:
            self.module.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for m, t in modes:
                m.training = t
            for p, f in flags:
                p.requires_grad_(f)
