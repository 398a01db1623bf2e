"""A network's internal features: the penultimate layer (the input of the last ``nn.Linear``) or
any named submodule's output, read with forward hooks.  Used by the feature-space detectors
(Mahalanobis) and the training-data sanitizers (spectral signatures, activation clustering)."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gauntlet.errors import CapabilityError, ConfigError

__all__ = ["capture", "features", "hook_target"]


def hook_target(module: nn.Module, layer: str | None, owner: str) -> nn.Module:
    """The submodule whose features are read: the last ``nn.Linear`` (``layer=None``, its input is
    the penultimate representation) or the submodule named ``layer``."""
    named = dict(module.named_modules())
    if layer is None:
        linears = [m for m in named.values() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(
                f"{owner}: the network has no nn.Linear layer to read penultimate features from; pass layer='<submodule name>'"
            )
        return linears[-1]
    if layer not in named or layer == "":
        close = difflib.get_close_matches(layer, [k for k in named if k], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{owner}: the network has no submodule named {layer!r}{hint}")
    return named[layer]


@contextlib.contextmanager
def capture(module: nn.Module, layer: str | None, owner: str) -> Iterator[list[Tensor]]:
    """Collect, while the context is open, what the target layer sees on every forward pass: the
    last ``nn.Linear``'s input (``layer=None``) or the named submodule's output."""
    target = hook_target(module, layer, owner)
    seen: list[Tensor] = []
    if layer is None:

        def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])

        handle = target.register_forward_pre_hook(pre_hook)
    else:

        def hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if not isinstance(out, Tensor):
                raise ConfigError(f"{owner}: submodule {layer!r} does not return a tensor")
            seen.append(out)

        handle = target.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def features(model: Any, x: Tensor, *, layer: str | None = None, batch_size: int = 256, owner: str = "features") -> Tensor:
    """Features ``(N, D)`` of ``x`` at the penultimate layer (or ``layer``) of a gauntlet
    ``TorchModel``, in eval mode without gradients, batch by batch; queries are not counted."""
    from gauntlet.models.torch_model import TorchModel

    if not isinstance(model, TorchModel):
        raise CapabilityError(f"{owner}: reads a network's internal features, so it needs a gauntlet TorchModel, got {type(model).__name__}")
    out = []
    with model.attack_mode(), torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            with capture(model.module, layer, owner) as seen:
                model.scores(x[s : s + batch_size], count=False)
            if len(seen) != 1:
                where = "the last nn.Linear" if layer is None else f"submodule {layer!r}"
                raise ConfigError(f"{owner}: {where} ran {len(seen)} times in one forward pass (expected once); pass layer='<name>'")
            out.append(seen[0].detach().flatten(1))
    return torch.cat(out)
