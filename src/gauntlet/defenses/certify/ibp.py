"""Interval bound propagation (IBP) verification (Gowal et al. 2018, "On the Effectiveness of
Interval Bound Propagation for Training Verifiably Robust Models").

The L∞ box ``{x' : |x' - x|∞ <= ε} ∩ [low, high]^d`` is pushed through the network layer by layer
as an axis-aligned box.  Affine layers use the centre/radius form of interval arithmetic
(Gowal et al., eq. 6): with ``μ = (u + l) / 2`` and ``r = (u - l) / 2`` the image of the box under
``z ↦ W z + b`` is bounded by ``W μ + b ± |W| r`` (exact for one affine layer); elementwise
monotone activations (ReLU, ...) and monotone pooling map the two corners ``l`` and ``u``.  The
result is a sound over-approximation of every logit over the whole box (up to floating-point
rounding).

Verification uses the tighter *elided* specification of Gowal et al. (§3, "Elision of the last
layer"): the margins ``z_y − z_j = (e_y − e_j)ᵀ (W h + b)`` of the last linear layer are bounded
directly, ``c = W_y − W_j``, ``c μ + (b_y − b_j) − |c| r``, instead of subtracting two separately
bounded logits.  A sample is verified at ε when every margin's lower bound is positive.

Supported networks: ``nn.Sequential`` (nested freely) of ``Linear``, ``Conv1d/2d/3d``, ``BatchNorm``
(with running statistics; bounds are those of the eval-mode network), elementwise monotone
activations (``ReLU``, ``ReLU6``, ``LeakyReLU``, ``Hardtanh``, ``Sigmoid``, ``Tanh``, ``ELU``,
``Softplus``), ``MaxPool``/``AvgPool`` (incl. adaptive), ``Flatten``, ``Unflatten``, ``Identity`` and
``Dropout`` (inactive, as in eval mode).  Anything else raises :class:`CapabilityError` naming the
layer and a replacement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._batch import check_input_batch, module_dtype_device
from gauntlet._validation import BOUNDS, Constraint, Interval, IsNone, SequenceOf, parse_bounds
from gauntlet.defenses.base import check_labels
from gauntlet.defenses.certify._result import Certification, Certifier, check_seed
from gauntlet.defenses.registry import register
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model

Box = tuple[Tensor, Tensor]
Normalizer = Callable[[Tensor], Tensor]

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MONOTONE_ACT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softplus)
_MONOTONE_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_RESHAPE = (nn.Flatten, nn.Unflatten, nn.Identity)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_SUPPORTED = _AFFINE + _BATCHNORM + _MONOTONE_ACT + _MONOTONE_POOL + _RESHAPE + _DROPOUT
_PASS_THROUGH = _DROPOUT + (nn.Identity,)

SUPPORTED_LAYERS: tuple[str, ...] = tuple(f"nn.{c.__name__}" for c in _SUPPORTED)

# what to use instead of an unsupported layer
_SUGGEST: dict[str, str] = {
    "GELU": "replace nn.GELU with nn.ReLU (IBP needs monotone activations)",
    "SiLU": "replace nn.SiLU with nn.ReLU (IBP needs monotone activations)",
    "Mish": "replace nn.Mish with nn.ReLU (IBP needs monotone activations)",
    "Hardswish": "replace nn.Hardswish with nn.ReLU (IBP needs monotone activations)",
    "PReLU": "replace nn.PReLU with nn.LeakyReLU (a fixed non-negative slope)",
    "RReLU": "replace nn.RReLU with nn.LeakyReLU (a fixed slope)",
    "Softmax": "remove nn.Softmax: IBP bounds the logits, so end the network at the last layer before it",
    "LogSoftmax": "remove nn.LogSoftmax: IBP bounds the logits, so end the network at the last layer before it",
    "Softmin": "remove nn.Softmin: IBP bounds the logits, so end the network at the last layer before it",
    "LSTM": "recurrent layers are not supported; use a feed-forward nn.Sequential of Linear/Conv and ReLU",
    "GRU": "recurrent layers are not supported; use a feed-forward nn.Sequential of Linear/Conv and ReLU",
    "RNN": "recurrent layers are not supported; use a feed-forward nn.Sequential of Linear/Conv and ReLU",
    "MultiheadAttention": "attention is not supported; use a feed-forward nn.Sequential of Linear/Conv and ReLU",
    "LayerNorm": "LayerNorm normalises by the input's own statistics; use nn.BatchNorm (eval mode) or remove it",
    "GroupNorm": "GroupNorm normalises by the input's own statistics; use nn.BatchNorm (eval mode) or remove it",
    "InstanceNorm2d": "InstanceNorm normalises by the input's own statistics; use nn.BatchNorm2d (eval mode) or remove it",
    "ConvTranspose2d": "transposed convolutions are not supported; use nn.Conv2d layers",
}

EPS_CONSTRAINT: list[Constraint] = [
    Interval(float, 0, None, closed="neither"),
    SequenceOf(Interval(float, 0, None, closed="neither")),
]


def _check_bounds(bounds: object, where: str) -> tuple[float, float]:
    return parse_bounds(where, bounds, expected="a pair (low, high) of finite numbers with low < high")


def _check_eps(eps: object, where: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(float(eps)) or eps < 0:
        raise ConfigError(f"{where}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


# ------------------------------------------------------------------------------------------------
# the network as a list of layers
def _unsupported(path: str, layer: nn.Module) -> CapabilityError:
    cls = type(layer).__name__
    if cls in _SUGGEST:
        hint = _SUGGEST[cls]
    elif any(True for _ in layer.children()):
        hint = (
            f"IBP cannot see into the forward() of {cls}; express the network as nn.Sequential "
            "(possibly nested) of supported layers"
        )
    else:
        hint = f"replace it with a supported layer ({', '.join(n for n in SUPPORTED_LAYERS[:8])}, ...)"
    return CapabilityError(f"ibp: layer {path!r} ({cls}) is not supported; {hint}")


def _same_forward(layer: nn.Module, base: type) -> bool:
    return type(layer).forward is base.forward  # type: ignore[attr-defined]


def layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf layers of a (nested) ``nn.Sequential`` in execution order, as ``(path, layer)``.

    Raises :class:`CapabilityError` for a network that is not an ``nn.Sequential`` and for any
    layer IBP cannot bound (naming it and a replacement).
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"ibp: the network must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(module, nn.Sequential):
        if isinstance(module, _SUPPORTED):
            return _leaves(module, type(module).__name__)
        raise CapabilityError(
            f"ibp: {type(module).__name__} is not an nn.Sequential; IBP needs the network as nn.Sequential "
            "(possibly nested) of supported layers so it can follow the computation — express it that way "
            "(e.g. nn.Sequential(nn.Conv2d(...), nn.ReLU(), nn.Flatten(), nn.Linear(...)))"
        )
    out = _leaves(module, "")
    if not out:
        raise CapabilityError("ibp: the network is an empty nn.Sequential; add its layers")
    return out


def _leaves(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        if not _same_forward(module, nn.Sequential):
            raise CapabilityError(
                f"ibp: {type(module).__name__} at {path or 'the top'!r} overrides nn.Sequential.forward; "
                "IBP cannot see into it — use a plain nn.Sequential"
            )
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{path}.{name}" if path else name)
        return out
    base = next((c for c in _SUPPORTED if isinstance(module, c)), None)
    if base is None or not _same_forward(module, base):
        raise _unsupported(path, module)
    if isinstance(module, _BATCHNORM) and (module.running_mean is None or module.running_var is None):
        raise CapabilityError(
            f"ibp: layer {path!r} ({type(module).__name__}) has no running statistics (track_running_stats=False), "
            "so it normalises by batch statistics; use track_running_stats=True"
        )
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                           nn.AdaptiveMaxPool3d)) and module.return_indices:
        raise CapabilityError(f"ibp: layer {path!r} ({type(module).__name__}) returns indices; set return_indices=False")
    if isinstance(module, nn.LeakyReLU) and module.negative_slope < 0:
        raise CapabilityError(f"ibp: layer {path!r} (LeakyReLU) has a negative slope, so it is not monotone; use a slope >= 0")
    if isinstance(module, nn.ELU) and module.alpha < 0:
        raise CapabilityError(f"ibp: layer {path!r} (ELU) has alpha < 0, so it is not monotone; use alpha >= 0")
    if isinstance(module, nn.Hardtanh) and not module.min_val <= module.max_val:
        raise CapabilityError(f"ibp: layer {path!r} (Hardtanh) needs min_val <= max_val")
    return [(path, module)]


# ------------------------------------------------------------------------------------------------
# interval arithmetic per layer
def _affine(layer: nn.Module, lo: Tensor, hi: Tensor) -> Box:
    mu, r = (hi + lo) / 2, (hi - lo) / 2
    if isinstance(layer, nn.Linear):
        mu2 = F.linear(mu, layer.weight, layer.bias)
        r2 = F.linear(r, layer.weight.abs())
    else:  # Conv1d/2d/3d, any padding mode (padding copies or zeroes values: still a box)
        mu2 = layer._conv_forward(mu, layer.weight, layer.bias)  # type: ignore[operator]
        r2 = layer._conv_forward(r, layer.weight.abs(), None)  # type: ignore[operator]
    return mu2 - r2, mu2 + r2


def _batchnorm(layer: nn.modules.batchnorm._BatchNorm, lo: Tensor, hi: Tensor) -> Box:
    var = layer.running_var
    mean = layer.running_mean
    assert var is not None and mean is not None
    scale = torch.rsqrt(var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    shift = -mean * scale
    if layer.bias is not None:
        shift = shift + layer.bias
    shape = (1, -1) + (1,) * (lo.dim() - 2)
    a, c = scale.view(shape), shift.view(shape)
    mu, r = (hi + lo) / 2, (hi - lo) / 2
    mu2, r2 = a * mu + c, a.abs() * r
    return mu2 - r2, mu2 + r2


def _step(path: str, layer: nn.Module, lo: Tensor, hi: Tensor) -> Box:
    try:
        if isinstance(layer, _AFFINE):
            return _affine(layer, lo, hi)
        if isinstance(layer, _BATCHNORM):
            return _batchnorm(layer, lo, hi)
        if isinstance(layer, _PASS_THROUGH):
            return lo, hi
        # monotone non-decreasing in every input: the corners map to the corners
        return layer(lo), layer(hi)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"ibp: layer {path!r} ({type(layer).__name__}) cannot take input of shape {tuple(lo.shape)} ({msg})") from None


def propagate(net: Sequence[tuple[str, nn.Module]], lo: Tensor, hi: Tensor) -> Box:
    """Push the box ``[lo, hi]`` through the leaf layers ``net`` (see :func:`layers`)."""
    for path, layer in net:
        lo, hi = _step(path, layer, lo, hi)
    return lo, hi


def interval_forward(module: nn.Module, lo: Tensor, hi: Tensor) -> Box:
    """Elementwise bounds ``(lower, upper)`` of ``module`` over an arbitrary input box ``[lo, hi]``."""
    if not (isinstance(lo, Tensor) and isinstance(hi, Tensor)) or lo.shape != hi.shape:
        raise DataError("ibp: lo and hi must be tensors of the same shape")
    if bool((lo > hi).any()):
        raise DataError("ibp: the box is empty somewhere (lo > hi); pass lo <= hi")
    return propagate(layers(module), lo, hi)


# ------------------------------------------------------------------------------------------------
# inputs
def _resolve(net: nn.Module | Model, where: str) -> tuple[nn.Module, Normalizer | None, tuple[float, float] | None]:
    """The module to bound, the TorchModel's input normalisation (affine, so a box maps to a box),
    and the model's declared bounds."""
    from gauntlet.models.torch_model import TorchModel

    if isinstance(net, TorchModel):
        norm = net._normalize if (net.mean is not None or net.std is not None) else None
        return net.module, norm, net.bounds
    if isinstance(net, Model):
        raise CapabilityError(
            f"{where}: IBP needs the network's layers, but {type(net).__name__} hides them; "
            "pass a TorchModel or the torch.nn.Module (or use randomized_smoothing, which needs only predictions)"
        )
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{where}: the network must be a torch.nn.Module or a TorchModel, got {type(net).__name__}")
    return net, None, None


def _check_x(x: object, module: nn.Module, bounds: tuple[float, float], where: str) -> Tensor:
    dtype, device = module_dtype_device(module)
    return check_input_batch(
        x, where=where, dtype=dtype, device=device, bounds=bounds, owner="the module",
        dtype_owner="the module's parameters are", bounds_name="the bounds", bounds_hint="rescale x or pass bounds=",
    )


def _input_box(x: Tensor, eps: float, bounds: tuple[float, float], norm: Normalizer | None) -> Box:
    lo = (x - eps).clamp(bounds[0], bounds[1])
    hi = (x + eps).clamp(bounds[0], bounds[1])
    if norm is not None:  # (x - mean) / std with std > 0: increasing, per channel
        lo, hi = norm(lo), norm(hi)
    return lo, hi


def _prepare(
    net: nn.Module | Model, x: Tensor, eps: object, bounds: object, where: str
) -> tuple[list[tuple[str, nn.Module]], Box]:
    module, norm, _ = _resolve(net, where)
    b = _check_bounds(bounds, where)
    e = _check_eps(eps, where)
    seq = layers(module)
    x = _check_x(x, module, b, where)
    return seq, _input_box(x, e, b, norm)


def ibp_bounds(
    module: nn.Module | Model, x: Tensor, eps: float, *, bounds: tuple[float, float] = (0.0, 1.0)
) -> Box:
    """Lower and upper bounds ``(N, C)`` of every logit of ``module`` over the L∞ box of radius ``eps``
    around each input, intersected with the input ``bounds`` (interval bound propagation, Gowal et
    al. 2018).  Differentiable in the module's parameters (IBP training backpropagates through it).

    ``module`` is an ``nn.Sequential`` of supported layers (see the module docstring) or a
    ``TorchModel`` around one (its mean/std normalisation is applied to the box).  The bounds are
    those of the network in eval mode (BatchNorm with running statistics, Dropout off).
    """
    seq, (lo, hi) = _prepare(module, x, eps, bounds, "ibp_bounds")
    return propagate(seq, lo, hi)


def _strip_tail(seq: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    while len(seq) > 1 and isinstance(seq[-1][1], _PASS_THROUGH):
        seq = seq[:-1]
    return seq


def margin_bounds(
    module: nn.Module | Model,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    elide: bool = True,
) -> Tensor:
    """Lower bounds ``(N, C)`` of the margins ``z_y − z_j`` over the box (``0`` at ``j = y``).

    With ``elide`` (Gowal et al. 2018, §3) and a network ending in ``nn.Linear`` the specification
    ``c = e_y − e_j`` is merged into that layer: ``(W_y − W_j) μ + b_y − b_j − |W_y − W_j| r`` over the
    box ``μ ± r`` of its input, never looser than ``lower_y − upper_j`` from :func:`ibp_bounds`
    (the fallback for other last layers and for ``elide=False``).  ``−margin_bounds`` are the
    worst-case logits IBP training minimises the cross-entropy of.  Differentiable.
    """
    where = "ibp.margin_bounds"
    seq, (lo, hi) = _prepare(module, x, eps, bounds, where)
    if not isinstance(elide, bool):
        raise ConfigError(f"{where}: elide must be a bool, got {elide!r}")
    seq = _strip_tail(seq)
    last = seq[-1][1]
    if elide and isinstance(last, nn.Linear):
        lo, hi = propagate(seq[:-1], lo, hi)
        if lo.dim() != 2:
            raise DataError(f"ibp: the last Linear layer gets input of shape {tuple(lo.shape)}; flatten it first")
        num_classes = last.out_features
        y = check_labels(y, x.shape[0], num_classes, x.device, where)
        mu, r = (hi + lo) / 2, (hi - lo) / 2
        w = last.weight
        c = w[y][:, None, :] - w[None, :, :]  # (N, C, d): W_y - W_j
        m = torch.einsum("ncd,nd->nc", c, mu) - torch.einsum("ncd,nd->nc", c.abs(), r)
        if last.bias is not None:
            m = m + (last.bias[y][:, None] - last.bias[None, :])
    else:
        lo, hi = propagate(seq, lo, hi)
        if lo.dim() != 2:
            raise DataError(f"ibp: the network must output logits of shape (N, C), got {tuple(lo.shape)}")
        y = check_labels(y, x.shape[0], lo.shape[1], x.device, where)
        m = lo.gather(1, y[:, None]) - hi
    return m.scatter(1, y[:, None], 0.0)


def verified(
    module: nn.Module | Model,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    elide: bool = True,
    batch_size: int = 512,
) -> Tensor:
    """``(N,)`` bool: IBP proves that every input in the L∞ box of radius ``eps`` (within ``bounds``)
    is classified as ``y``, i.e. every margin lower bound of :func:`margin_bounds` is ``> 0``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"ibp.verified: batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise DataError(f"ibp.verified: x must be a torch.Tensor batch of shape (N, ...), got {type(x).__name__}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise DataError(f"ibp.verified: y must be a tensor of shape ({x.shape[0]},) to match x, got {shape}")
    parts = []
    with torch.no_grad():
        for s in range(0, max(x.shape[0], 1), batch_size):
            m = margin_bounds(module, x[s : s + batch_size], y[s : s + batch_size], eps, bounds=bounds, elide=elide)
            yb = y[s : s + batch_size].to(device=m.device, dtype=torch.int64)
            parts.append(m.scatter(1, yb[:, None], math.inf).amin(dim=1) > 0)
    return torch.cat(parts)


def verified_accuracy(
    module: nn.Module | Model,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    elide: bool = True,
    batch_size: int = 512,
) -> float:
    """Fraction of ``(x, y)`` verified by IBP at ``eps`` (a lower bound of the robust accuracy)."""
    return float(verified(module, x, y, eps, bounds=bounds, elide=elide, batch_size=batch_size).double().mean())


# ------------------------------------------------------------------------------------------------
@register
class IBPCertifier(Certifier):
    """L∞ verification by interval bound propagation (Gowal et al. 2018), with last-layer elision.

    ``certify(model, x, y)`` predicts each input with the clean network and returns, as its
    certified radius, the largest ``eps`` in the list at which IBP verifies that prediction
    (``0`` where none is verified).  IBP is deterministic; ``seed`` is accepted for the common
    interface and recorded.  IBP is much looser than LP/dual bounds on networks not trained for it
    (e.g. Wong & Kolter's) and tight on IBP-trained ones.

    Args:
        eps: one L∞ radius or a list of radii (> 0).
        bounds: the valid input range; ``None`` takes the model's bounds (``(0, 1)`` for a plain module).
        batch_size: inputs per bound computation.
    """

    name: ClassVar[str] = "ibp"
    description: ClassVar[str] = "L∞ verification by interval bound propagation (Gowal et al. 2018)"
    reference: ClassVar[str] = (
        'Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models", '
        "arXiv 2018, https://arxiv.org/abs/1810.12715"
    )
    norm: ClassVar[str] = "linf"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "eps": EPS_CONSTRAINT,
        "bounds": [BOUNDS, IsNone()],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        *,
        eps: float | Sequence[float] = 0.1,
        bounds: tuple[float, float] | None = None,
        batch_size: int = 512,
        **unknown: Any,
    ) -> None:
        self._reject_unknown(unknown)
        self.eps = eps
        self.bounds = bounds
        self.batch_size = batch_size
        self._validate()

    def certify(self, model: Any, x: Tensor, y: Tensor | None = None, *, seed: int = 0) -> Certification:
        """Clean prediction and the largest verified ε of the list per input (see the class docstring)."""
        where = "ibp.certify"
        check_seed(seed, where)
        module, norm, model_bounds = _resolve(model, where)
        bounds = _check_bounds(self.bounds if self.bounds is not None else (model_bounds or (0.0, 1.0)), where)
        seq = layers(module)
        x = _check_x(x, module, bounds, where)
        t0 = time.perf_counter()
        with torch.no_grad():
            was = [(m, m.training) for m in module.modules()]
            try:
                module.eval()
                xin = norm(x) if norm is not None else x
                pred = torch.cat(
                    [module(xin[s : s + self.batch_size]).argmax(dim=1) for s in range(0, x.shape[0], self.batch_size)]
                )
            finally:
                for m, t in was:
                    m.training = t
        num_classes = int(seq[-1][1].out_features) if isinstance(seq[-1][1], nn.Linear) else None
        if y is not None:
            y = check_labels(y, x.shape[0], num_classes, x.device, where)
        eps_list = [float(e) for e in (self.eps if isinstance(self.eps, Sequence) else [self.eps])]
        target = model if norm is not None else module
        radius = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        per_eps = []
        for e in eps_list:
            ok = verified(target, x, pred, e, bounds=bounds, batch_size=self.batch_size)
            per_eps.append(ok)
            radius = torch.where(ok, torch.clamp(radius, min=e), radius)
        return Certification(
            method=self.name,
            norm=self.norm,
            prediction=pred.to(torch.int64),
            radius=radius,
            y=y,
            params={"eps": self.eps, "bounds": bounds, "batch_size": self.batch_size, "seed": seed},
            seconds=time.perf_counter() - t0,
            info={"eps": eps_list, "verified": torch.stack(per_eps)},
        )


__all__ = [
    "SUPPORTED_LAYERS",
    "IBPCertifier",
    "ibp_bounds",
    "interval_forward",
    "layers",
    "margin_bounds",
    "propagate",
    "verified",
    "verified_accuracy",
]
