"""Per-sample losses that attacks maximise (each returns shape ``(N,)``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin: max_{j≠y} z_j − z_y (positive once misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - z_y


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), untargeted; scale- and shift-invariant."""
    srt, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(z_y - other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)."""
    srt, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def goal_loss(name: str, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The loss to *ascend*: for a targeted goal, the negated loss towards ``target``."""
    if target is None:
        if name == "ce":
            return cross_entropy(logits, y)
        if name == "margin":
            return margin(logits, y)
        if name == "dlr":
            return dlr(logits, y)
    else:
        if name == "ce":
            return -cross_entropy(logits, target)
        if name == "margin":
            return -margin(logits, target)  # push z_target above every other logit
        if name == "dlr":
            return dlr_targeted(logits, y, target)
    raise ValueError(f"unknown loss {name!r}")


LOSSES = ("ce", "margin", "dlr")

__all__ = ["LOSSES", "cross_entropy", "dlr", "dlr_targeted", "goal_loss", "margin"]
