"""Label-only membership inference (Choquette-Choo et al. 2021)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Boolean, Constraint, Interval, IsNone, Options
from gauntlet.attacks.inference._base import MembershipAttack
from gauntlet.attacks.registry import register
from gauntlet.errors import DataError
from gauntlet.models.base import Model, predict_batched

_ROWS = 1024  # rows per model call


def _predict(model: Model, x: Tensor) -> Tensor:
    """The target's labels on ``x`` in chunks (counted queries)."""
    return predict_batched(model, x, _ROWS, count=True)


def translate(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, *, roll: bool, fill: float) -> Tensor:
    """Per-sample translations of images ``x (N, ..., H, W)``: sample ``i`` is flipped left-right
    where ``flip[i]``, then moved ``dy[i]`` rows down and ``dx[i]`` columns right; pixels moved in
    from outside are the opposite edge's (``roll``) or ``fill``."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (N, H) source row of each row
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]  # (N, W)
    if roll:
        rows, cols = rows % h, cols % w
        inside = None
    else:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (N, H, W)
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # read the mirrored image
    flat = x.reshape(n, -1, h, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(flat.shape[1], device=x.device)[None, :, None, None]
    out = flat[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    if inside is not None:
        out = torch.where(inside[:, None], out, torch.full_like(out, fill))
    return out.reshape(x.shape)


@register
class LabelOnly(MembershipAttack):
    """Membership from the target's labels alone: members keep their label under perturbation.

    ``method="augmentation"`` (the paper's data-augmentation attack): the target labels
    ``augmentations`` versions of each candidate: the candidate itself (the paper's set of
    augmentations includes the source image, so one query is the gap attack: member iff
    labelled right), then translations by a random shift of up to ``±shift`` pixels per axis
    (drawn from the generator; ``mode="pad"`` fills the uncovered border with the lower input
    bound, ``"roll"`` wraps it around), each also mirrored left-right with probability ½ when
    ``flip=True``; the score is the share of these queries answered with the true label.  A
    model fitted to its training points keeps labelling them right under small shifts more
    often than unseen points.  Images only (inputs ``(N, ..., H, W)``); exactly
    ``N × augmentations`` queries.

    ``method="boundary"`` (the paper's decision-boundary-distance attack): the L2 distance from
    each correctly classified candidate to the target's decision boundary, found with gauntlet's
    HopSkipJump run on the labels (``max_queries`` per candidate); misclassified candidates score
    0 (the paper's rule: a wrong label says non-member), and a correctly classified candidate
    for which HopSkipJump finds no adversarial point at all scores the diameter of the input
    domain (further than any point it did find).  Members of an overfit model lie further
    from the boundary.  ``N`` queries to read the labels, then at most ``max_queries`` per
    correctly classified candidate.

    Both need the ``labels`` capability only: they run on a labels-only target
    (``gt.defenses.create("labels_only").wrap(model)``, a ``CallableModel`` with
    ``output="labels"``), where score-based attacks are refused.

    Args:
        method: ``"augmentation"`` or ``"boundary"``.
        augmentations: queries per candidate, the unchanged candidate included (augmentation).
        shift: largest translation in pixels per axis (augmentation).
        flip: also mirror left-right at random (augmentation; off by default, digits are not
            mirror-symmetric).
        mode: ``"pad"`` or ``"roll"``: what fills the border a translation uncovers.
        max_queries: HopSkipJump's query budget per candidate (boundary).
        batch_size: HopSkipJump's batch size (boundary; it draws starting points from the
            other candidates of a batch); ``None``: all candidates at once.
    """

    name = "label_only"
    description = "membership inference from labels only: consistency under augmentation, or distance to the decision boundary"
    reference = (
        "Choquette-Choo, Tramèr, Carlini & Papernot, 'Label-Only Membership Inference Attacks', ICML 2021, "
        "https://arxiv.org/abs/2007.14321"
    )
    needs = "labels"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "method": [Options(("augmentation", "boundary"))],
        "augmentations": [Interval(int, 1, None)],
        "shift": [Interval(int, 0, None)],
        "flip": [Boolean()],
        "mode": [Options(("pad", "roll"))],
        "max_queries": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None), IsNone()],
    }

    def __init__(
        self,
        *,
        method: str = "augmentation",
        augmentations: int = 10,
        shift: int = 2,
        flip: bool = False,
        mode: str = "pad",
        max_queries: int = 1000,
        batch_size: int | None = None,
    ) -> None:
        self.method = method
        self.augmentations = augmentations
        self.shift = shift
        self.flip = flip
        self.mode = mode
        self.max_queries = max_queries
        self.batch_size = batch_size
        self._validate()

    def _scores(
        self, model: Model, x: Tensor, y: Tensor, population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator, seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        if self.method == "augmentation":
            return self._augmentation(model, x, y, generator)
        return self._boundary(model, x, y, seed)

    def _augmentation(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        if x.dim() < 3:
            raise DataError(
                f"{self.name}: method='augmentation' translates images (N, ..., H, W) but the inputs are "
                f"{tuple(x.shape)}; use method='boundary' for other data"
            )
        lo = model.bounds[0]
        fill = lo if math.isfinite(lo) else 0.0
        n, a, s = x.shape[0], self.augmentations, self.shift
        dy = torch.randint(-s, s + 1, (a, n), generator=generator)
        dx = torch.randint(-s, s + 1, (a, n), generator=generator)
        flip = (torch.rand((a, n), generator=generator) < 0.5) if self.flip else torch.zeros((a, n), dtype=torch.bool)
        dy[0], dx[0], flip[0] = 0, 0, False  # the first query is the candidate itself
        correct = torch.zeros(n, dtype=torch.float64)
        for i in range(a):
            xa = translate(x, dy[i].to(x.device), dx[i].to(x.device), flip[i].to(x.device), roll=self.mode == "roll", fill=fill)
            correct += (_predict(model, xa).cpu() == y.cpu()).double()
        return correct / a, {"method": "augmentation", "augmentations": a}

    def _boundary(self, model: Model, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, dict[str, Any]]:
        import gauntlet as gt

        pred = _predict(model, x)
        right = (pred == y).cpu()
        score = torch.zeros(x.shape[0], dtype=torch.float64)
        info: dict[str, Any] = {"method": "boundary", "correct": int(right.sum()), "no_adversarial_found": 0}
        if not bool(right.any()):
            return score, info
        idx = right.nonzero().squeeze(1)
        hsj = gt.attacks.create("hopskipjump", norm="l2", max_queries=self.max_queries, batch_size=self.batch_size)
        res = hsj.run(model, x[idx], y[idx], seed=seed, clean_pred=pred[idx])
        dist = res.norms.detach().double().cpu()
        found = res.success.cpu()
        lo, hi = model.bounds
        d = x[0].numel()
        if math.isfinite(lo) and math.isfinite(hi):
            diameter = (hi - lo) * math.sqrt(d)
        else:
            diameter = 2 * float(dist[found].max()) if bool(found.any()) else 1.0
        score[idx] = torch.where(found, dist, torch.full_like(dist, diameter))
        info["no_adversarial_found"] = int((~found).sum())
        return score, info
