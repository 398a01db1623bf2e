"""Path-finding extraction of a decision tree (Tramèr et al. 2016, §4.2, Algorithm 1).

A decision tree on continuous features cuts the input box into axis-aligned leaf boxes, each
with one output.  The paper's attack assumes an oracle that names the leaf an input reaches
(an *identity oracle*); with confidence scores, as here, the leaf's identity is its output
vector (the tree's class probabilities at that leaf, rounded to 9 decimals for hashing).
From a point ``x`` in an unexplored leaf the attack runs one *line search* per feature ``i``:
it queries the two ends of the line ``x[i ⇒ t]``, ``t`` over the bounds, and bisects every
segment whose two ends give different leaves down to ``epsilon`` (a fraction of the bounds'
range), which finds every split threshold the line crosses.  The interval of the line that
holds ``x`` is the leaf's predicate on feature ``i``; a point in each other interval is a
leaf to visit (its identity is known from the search, so pushing it costs no query).  The
leaf's box is the product of its ``d`` intervals; a queued point inside an already explored
box of the same identity is skipped, and the attack stops when the queue is empty.  The line
searches of one leaf run in lockstep: the ``2d`` line ends are one batch and each bisection
round is one batch (at most ``2 + log2(1/epsilon)`` batches per leaf).

With unique leaf identities this finds every leaf the tree can reach inside the bounds, each
threshold to within ``epsilon`` (a split threshold found from several leaves is one split:
estimates within ``epsilon`` of a known one are that one, so adjacent boxes share their faces).
Leaves with identical outputs (e.g. two pure leaves of one class) are the paper's limitation
of the confidence-value setting: a line search cannot see a split between them, and a segment
whose two ends share an output may hide another output in between, so an interval (and a box)
can span several leaves and reach into a region of another output.  Once an output has been
seen in two leaves the attack works harder (nothing of this runs on a tree whose leaves'
outputs are all different):

* each line search also queries one point between every two known thresholds of its feature,
  and a leaf's line is searched again when a threshold found later lies inside its interval;
* where two boxes of different outputs overlap, one query at the middle of the overlap says
  which box answers there (the copy prefers the box that won its overlaps), or is a new leaf
  to explore.

The copy answers a point from the box that holds it; among several, the one that won most of
its overlap queries against the others, then a box whose output no other box has (exact), then
the smallest.  This is a heuristic: on sklearn digits trees of depth 6 and 8 (28 and 33
distinct outputs among 44 and 84 leaves) the copy agrees with the target on 99.6% and 99.3%
of the held-out digits (``benchmarks/bench_equation_solving.py``), on trees of unique outputs
on all of them.  ``info["distinct_outputs"]`` vs ``info["leaves"]`` shows how many boxes
share an output.

The copy is a :class:`~gauntlet.models.CallableModel` over the list of boxes (lower ``<``
``x ≤`` upper per feature, the thresholds at the middle of each bisection's last bracket,
boxes at the edge of the bounds open outwards): it answers each input with the output of the
box that holds it (the nearest box when none does, which happens only when the extraction was
stopped by its budget).  Its ``output`` is the target's.

A budget (``max_queries``) too small for the whole tree stops cleanly: the attack never sends
a batch that does not fit, returns the copy built from the leaves explored so far and says so
in ``info["complete"]`` (``False``) and ``info["stopped"]``.

Features are treated as continuous (the paper's categorical splits are not implemented); the
target's bounds must be finite.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gauntlet._validation import Constraint, Interval
from gauntlet.attacks.extraction._base import OPTIONAL_MAX_QUERIES, ExtractionAttack, QueryBudget
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.callable_model import CallableModel

__all__ = ["BoxModel", "TreePathFinding"]

#: decimals an output vector is rounded to before it names a leaf
ID_DECIMALS = 9


class _Stop(Exception):
    """The next batch does not fit in what is left of the budget."""


class BoxModel:
    """The extracted tree as a list of axis-aligned boxes ``lower < x ≤ upper`` (per feature),
    each with an output vector; callable on a batch ``(N, ...)`` (flattened per sample)."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, outputs: np.ndarray, bounds: tuple[float, float],
                 wins: np.ndarray | None = None) -> None:
        self.lower, self.upper, self.outputs = lower, upper, outputs
        m = lower.shape[0]
        #: wins[j, k]: a query in the overlap of boxes j and k answered box j's output
        self.wins = np.zeros((m, m)) if wins is None else wins.astype(np.float64)
        lo, hi = bounds
        widths = np.clip(upper, lo, hi) - np.clip(lower, lo, hi)
        # where boxes overlap: a box whose output no other box has first (its leaf's line searches
        # saw every split around it, so it is exact), then the smallest (log-volume)
        _, inverse, counts = np.unique(outputs, axis=0, return_inverse=True, return_counts=True)
        shared = counts[inverse.reshape(-1)] > 1
        self.log_volume = np.log(np.maximum(widths, 1e-12 * (hi - lo))).sum(axis=1) + np.where(shared, 1e6, 0.0)

    def leaf_index(self, x: np.ndarray) -> np.ndarray:
        """Index of the box that holds each row of ``x`` ``(N, d)`` (nearest box if none)."""
        n = x.shape[0]
        out = np.empty(n, dtype=np.int64)
        chunk = max(1, 2_000_000 // max(1, self.lower.size))
        for s in range(0, n, chunk):
            xs = x[s : s + chunk, None, :]
            inside: np.ndarray = np.all((xs > self.lower[None]) & (xs <= self.upper[None]), axis=2)
            # among the boxes that hold a point: most overlap queries won against the others there,
            # then the order above
            won = inside.astype(np.float64) @ self.wins.T
            key = np.where(inside, -won * 1e12 + self.log_volume[None, :], np.inf)
            best = key.argmin(axis=1)
            miss: np.ndarray = ~np.any(inside, axis=1)
            if bool(miss.any()):
                gap = np.maximum(self.lower[None] - xs[miss], 0) + np.maximum(xs[miss] - self.upper[None], 0)
                best[miss] = (gap**2).sum(axis=2).argmin(axis=1)
            out[s : s + chunk] = best
        return out

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy()
        return torch.from_numpy(self.outputs[self.leaf_index(flat)]).to(torch.float32)


@register
class TreePathFinding(ExtractionAttack):
    """Path-finding extraction of a decision tree from its confidence scores (see the module docstring).

    Args:
        epsilon: precision of each threshold, as a fraction of the bounds' range (each split is
            bisected until its bracket is at most ``epsilon * (high - low)`` wide).
        max_outputs: the most different output vectors the target may answer before the attack
            decides it is not a decision tree (a tree has at most one per leaf; a smooth model
            answers a new one at every point, which would make the line searches endless) and
            raises :class:`~gauntlet.errors.DataError`.
        max_queries: the query budget (``None``: none); past it the attack stops cleanly with
            the leaves found so far (``info["complete"]`` is ``False``).

    ``info``: ``"leaves"`` (boxes found), ``"distinct_outputs"``, ``"splits"`` (distinct
    ``(feature, threshold)`` pairs found) and ``"split_list"``, ``"searches"`` (line searches
    run), ``"overlaps_checked"``, ``"complete"``, ``"stopped"`` (``None`` or why it stopped
    early), ``"queries"``, ``"lower"`` / ``"upper"`` (the boxes, ``(leaves, d)`` float64
    tensors) and ``"outputs"`` ``(leaves, K)``.
    """

    name = "tree_path_finding"
    description = "path-finding extraction of a decision tree from its confidence scores (Tramèr et al. 2016)"
    reference = (
        'Tramèr, Zhang, Juels, Reiter and Ristenpart, "Stealing Machine Learning Models via Prediction APIs", '
        "USENIX Security 2016, §4.2 (Algorithm 1)"
    )
    needs: ClassVar[str] = "scores"
    labels_alternative: ClassVar[str] = "copycat"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "epsilon": [Interval(float, 0, 0.5, closed="right")],
        "max_outputs": [Interval(int, 2, None)],
        "max_queries": OPTIONAL_MAX_QUERIES,
    }

    def __init__(self, *, epsilon: float = 1e-3, max_outputs: int = 10_000, max_queries: int | None = None) -> None:
        self.epsilon = epsilon
        self.max_outputs = max_outputs
        self.max_queries = max_queries
        self._validate()

    def _extract(self, target: QueryBudget, generator: torch.Generator) -> tuple[Model, dict[str, Any]]:
        shape = target.input_spec.shape
        if shape is None:
            raise ConfigError(
                f"{self.name}: the target declares no per-sample input shape, so the features to search are unknown; "
                "build the model with input_shape="
            )
        lo, hi = target.bounds
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(
                f"{self.name}: line searches need finite bounds, but the target's are {target.bounds}; "
                "build the model with finite bounds="
            )
        search = _Search(target, shape, (lo, hi), self.epsilon * (hi - lo), self.max_outputs)
        stopped: str | None = None
        try:
            search.run(generator)
        except _Stop:
            stopped = f"max_queries={self.max_queries} reached before every leaf was explored"
        if search.first_output is None:  # pragma: no cover - max_queries >= 1 always affords the first query
            raise DataError(f"{self.name}: no query fitted in the budget")
        d = search.d
        if search.ids:
            lower, upper = search.lower.copy(), search.upper.copy()
            outputs = np.stack([search.outputs[i] for i in search.ids])
            m, w = len(search.ids), search.wins.shape[0]
            wins = np.zeros((m, m))
            wins[: min(m, w), : min(m, w)] = search.wins[:m, :m]
        else:  # stopped inside the first leaf: the one output seen, everywhere
            lower = np.full((1, d), -np.inf)
            upper = np.full((1, d), np.inf)
            outputs = search.first_output[None, :]
            wins = np.zeros((1, 1))
        boxes = BoxModel(lower, upper, outputs.astype(np.float32), (lo, hi), wins)
        k = int(outputs.shape[1])
        copy = CallableModel(
            boxes, output=target.output if target.output != "labels" else "scores",
            bounds=(lo, hi), num_classes=k, input_shape=shape,
        )
        splits = sorted((i, c) for i, cuts in enumerate(search.cuts) for c in cuts)
        info: dict[str, Any] = {
            "leaves": len(search.ids),
            "distinct_outputs": len(set(search.ids)),
            "searches": search.searches,
            "overlaps_checked": len(search.checked),
            "splits": len(splits),
            "split_list": splits,
            "complete": stopped is None,
            "stopped": stopped,
            "queries": target.used,
            "lower": torch.from_numpy(lower),
            "upper": torch.from_numpy(upper),
            "outputs": torch.from_numpy(outputs),
        }
        return copy, info


class _Search:
    """The state of one path-finding run: the queue of points to visit, the explored leaves
    (a point, identity and box each) and the split thresholds found per feature."""

    def __init__(self, target: QueryBudget, shape: tuple[int, ...], bounds: tuple[float, float], eps: float,
                 max_outputs: int) -> None:
        self.target = target
        self.max_outputs = max_outputs
        self.shape = shape
        self.d = math.prod(shape)
        self.lo, self.hi = bounds
        self.eps = eps
        self.dtype = target.input_spec.dtype
        self.first_output: np.ndarray | None = None
        self.outputs: dict[bytes, np.ndarray] = {}  # identity -> the output vector that names it
        # explored leaves: point, identity, box, and how many cuts per feature its searches saw
        self.points = np.zeros((0, self.d))
        self.ids: list[bytes] = []
        self.lower = np.zeros((0, self.d))
        self.upper = np.zeros((0, self.d))
        self.seen_cuts = np.zeros((0, self.d), dtype=np.int64)
        # split thresholds per feature, in the order found (one per true threshold: estimates
        # within epsilon of a known one are that one)
        self.cuts: list[list[float]] = [[] for _ in range(self.d)]
        self.searches = 0  # line searches run
        self.shared = False  # an output seen in two leaves: line searches also probe between known cuts
        self.checked: set[tuple[int, int]] = set()  # overlapping box pairs queried
        self.wins = np.zeros((0, 0))
        self.queue: deque[tuple[np.ndarray, bytes]] = deque()

    # -- queries -----------------------------------------------------------------------------
    def _quantize(self, x: np.ndarray) -> np.ndarray:
        """Coordinates as the target will see them (its input dtype)."""
        return torch.from_numpy(x).to(self.dtype).to(torch.float64).numpy()

    def _query(self, x: np.ndarray) -> list[bytes]:
        left = self.target.left
        if left is not None and left < x.shape[0]:
            raise _Stop
        batch = torch.from_numpy(x).to(self.dtype).reshape(x.shape[0], *self.shape)
        out = self.target.scores(batch).detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(out).all():
            raise DataError("tree_path_finding: the target returned NaN or inf scores")
        if self.first_output is None:
            self.first_output = out[0].copy()
        keys = np.round(out, ID_DECIMALS) + 0.0  # + 0.0: -0.0 and 0.0 name the same leaf
        ids = [row.tobytes() for row in keys]
        for row, ident in zip(out, ids, strict=True):
            self.outputs.setdefault(ident, row.copy())
        if len(self.outputs) > self.max_outputs:
            raise DataError(
                f"tree_path_finding: the target answered more than max_outputs={self.max_outputs} different outputs, "
                "so it is not a decision tree (path-finding needs outputs constant on boxes); use 'knockoff' for it, "
                "or raise max_outputs for a tree that large"
            )
        return ids

    # -- the algorithm -----------------------------------------------------------------------
    def run(self, generator: torch.Generator) -> None:
        u = torch.rand(1, self.d, generator=generator, dtype=torch.float64).numpy()
        x0 = self._quantize(self.lo + (self.hi - self.lo) * u)
        self.queue.append((x0[0], self._query(x0)[0]))
        while True:
            while self.queue:
                x, ident = self.queue.popleft()
                if not self._explored(x, ident):
                    self._add_leaf(x, ident)
            # a threshold found after a leaf's line searches, inside its box, may hide a region
            # of another output that the leaf's search stepped over (same output at both ends of
            # a segment, which only leaves of identical outputs allow): search those lines again
            if not self.shared:
                return  # every leaf's output is its own: the line searches saw every split
            stale = self._stale()
            for j, features in stale:
                self._search(j, features)
            if not stale and not self._overlaps():
                return

    def _explored(self, x: np.ndarray, ident: bytes) -> bool:
        inside = ((x[None, :] > self.lower) & (x[None, :] <= self.upper)).all(axis=1)
        return any(self.ids[j] == ident for j in np.nonzero(inside)[0])

    def _overlaps(self) -> bool:
        """Boxes of different outputs that overlap (possible only with shared outputs: a box can
        then span leaves its line searches could not tell apart): one query at the middle of
        each new overlap says which box is right there (``wins``), or finds an unexplored leaf,
        which is queued.  Returns whether anything was queued."""
        m = len(self.ids)
        if self.wins.shape[0] < m:
            grown = np.zeros((m, m))
            grown[: self.wins.shape[0], : self.wins.shape[1]] = self.wins
            self.wins = grown
        lo = np.maximum(self.lower[:, None, :], self.lower[None, :, :]).clip(self.lo, self.hi)
        hi = np.minimum(self.upper[:, None, :], self.upper[None, :, :]).clip(self.lo, self.hi)
        meet = (lo < hi).all(axis=2)
        pairs = [
            (j, k) for j, k in zip(*np.nonzero(np.triu(meet, 1)), strict=True)
            if self.ids[j] != self.ids[k] and (int(j), int(k)) not in self.checked
        ]
        if not pairs:
            return False
        pts = self._quantize(np.stack([(lo[j, k] + hi[j, k]) / 2 for j, k in pairs]))
        ids = self._query(pts)
        queued = False
        for (j, k), p, ident in zip(pairs, pts, ids, strict=True):
            self.checked.add((int(j), int(k)))
            if ident == self.ids[j]:
                self.wins[j, k] = 1
            elif ident == self.ids[k]:
                self.wins[k, j] = 1
            elif not self._explored(p, ident):
                self.queue.append((p, ident))
                queued = True
        return queued

    def _stale(self) -> list[tuple[int, list[int]]]:
        out = []
        for j in range(len(self.ids)):
            features = []
            for i in range(self.d):
                new = self.cuts[i][self.seen_cuts[j, i] :]
                if any(self.lower[j, i] < c < self.upper[j, i] for c in new):
                    features.append(i)
            if features:
                out.append((j, features))
        return out

    def _add_leaf(self, x: np.ndarray, ident: bytes) -> None:
        self.shared = self.shared or ident in self.ids
        self.points = np.vstack([self.points, x[None]])
        self.ids.append(ident)
        self.lower = np.vstack([self.lower, np.full((1, self.d), -np.inf)])
        self.upper = np.vstack([self.upper, np.full((1, self.d), np.inf)])
        self.seen_cuts = np.vstack([self.seen_cuts, np.zeros((1, self.d), dtype=np.int64)])
        try:
            self._search(len(self.ids) - 1, list(range(self.d)))
        except _Stop:  # an unfinished leaf is no leaf
            for name in ("points", "lower", "upper", "seen_cuts"):
                setattr(self, name, getattr(self, name)[:-1])
            self.ids.pop()
            raise

    def _search(self, j: int, features: list[int]) -> None:
        """Line searches from leaf ``j``'s point along ``features``, in lockstep: the line ends
        and one point in every cell between the known cuts of each feature are one batch, then
        each bisection round is one batch.  Sets the leaf's box on those features and queues a
        point in every other interval of each line."""
        x, ident, lo, hi = self.points[j], self.ids[j], self.lo, self.hi
        seen: dict[int, dict[float, bytes]] = {i: {float(x[i]): ident} for i in features}
        seeds: list[tuple[int, float]] = []
        for i in features:
            ts = {lo, hi}
            if self.shared:
                edges = [lo, *sorted(self.cuts[i]), hi]
                ts |= {(a + b) / 2 for a, b in itertools.pairwise(edges)}
                self.seen_cuts[j, i] = len(self.cuts[i])
            seeds += [(i, t) for t in sorted(ts) if t != x[i]]
        self.searches += len(features)
        active = self._seed(x, seeds, seen)
        brackets: dict[int, list[tuple[float, float]]] = {i: [] for i in features}
        while active:
            wide: list[tuple[int, float, float]] = []
            for i, a, b in active:
                if b - a > self.eps:
                    wide.append((i, a, b))
                else:
                    brackets[i].append((a, b))
            if not wide:
                break
            pts = np.repeat(x[None, :], len(wide), axis=0)
            for r, (i, a, b) in enumerate(wide):
                pts[r, i] = (a + b) / 2
            pts = self._quantize(pts)
            ids = self._query(pts)
            active = []
            for r, (i, a, b) in enumerate(wide):
                m = float(pts[r, i])
                if not a < m < b:  # the input dtype cannot split the bracket further
                    brackets[i].append((a, b))
                    continue
                seen[i][m] = ids[r]
                if seen[i][a] != ids[r]:
                    active.append((i, a, m))
                if ids[r] != seen[i][b]:
                    active.append((i, m, b))
        for i in features:
            self._set_interval(j, i, sorted(brackets[i]), seen[i])

    def _seed(self, x: np.ndarray, seeds: list[tuple[int, float]], seen: dict[int, dict[float, bytes]]) -> list[tuple[int, float, float]]:
        """Query the seed points; the segments between neighbouring seeds that differ."""
        if seeds:
            pts = np.repeat(x[None, :], len(seeds), axis=0)
            for r, (i, t) in enumerate(seeds):
                pts[r, i] = t
            pts = self._quantize(pts)
            ids = self._query(pts)
            for r, (i, _) in enumerate(seeds):
                seen[i][float(pts[r, i])] = ids[r]
        active = []
        for i, line in seen.items():
            ts = sorted(line)
            active += [(i, a, b) for a, b in itertools.pairwise(ts) if line[a] != line[b]]
        return active

    def _cut(self, i: int, a: float, b: float, xi: float) -> float:
        """The threshold of bracket ``(a, b)`` on feature ``i``: a known cut within epsilon of
        its middle (kept on the same side of ``xi``), else the middle, added as a new cut."""
        mid = (a + b) / 2
        for c in self.cuts[i]:
            if abs(c - mid) <= self.eps and (c < xi) == (mid < xi):
                return c
        self.cuts[i].append(mid)
        return mid

    def _set_interval(self, j: int, i: int, brs: list[tuple[float, float]], seen: dict[float, bytes]) -> None:
        xi = float(self.points[j, i])
        lower, upper = -np.inf, np.inf
        starts, stops = [self.lo], []
        for a, b in brs:
            c = self._cut(i, a, b, xi)
            if b <= xi:
                lower = max(lower, c)
            else:
                upper = min(upper, c)
            stops.append(a)
            starts.append(b)
        stops.append(self.hi)
        self.lower[j, i], self.upper[j, i] = lower, upper
        # a point in every other interval of the line; the interval's ends were queried and
        # share one identity (else it would have been bisected), so it costs no query
        for start, stop in zip(starts, stops, strict=True):
            if start <= xi <= stop:
                continue
            t = float(self._quantize(np.array([(start + stop) / 2]))[0])
            y = self.points[j].copy()
            y[i] = min(max(t, start), stop)
            self.queue.append((y, seen[start]))
