"""Decision-based (labels-only) attacks against their peers: median L2 at a query budget.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_decision.py

Every tool attacks the first ``--n`` MNIST test images (pixels / 255) of advertorch's
clean-trained LeNet5 (``../shared/models``), untargeted, L2, on one CPU thread:

* gauntlet ``hopskipjump`` at 1,000 and 5,000 queries per point (one run per budget, on every
  point at once) and ``boundary`` at 5,000;
* ART's ``HopSkipJump`` and Foolbox's ``HopSkipJumpAttack`` and ``BoundaryAttack``, with their
  defaults (ART ``max_iter``, Foolbox ``steps`` raised so that the budget, not the iteration
  count, ends the run), on the first ``--n-peers`` of those points, one point at a time (a
  batched Foolbox run queries every point until the slowest is done);
* gauntlet ``hopskipjump`` with ``init="noise"`` (the paper's start, as the peers') on the
  peers' points, to show what the choice of start is worth.

Peers do not take a query budget, so each peer point runs behind a counting wrapper that stops it
after 5,000 queries and keeps, for each budget, the smallest L2 distance of any query among the
first 1,000 / 5,000 that the model labels adversarial (every query counts: the clean check,
the initialisation, the gradient probes, the searches).  That is the best a peer could have
returned within the budget, so it favours the peers slightly: gauntlet's figure is what its
attack returns.  Medians are over the points the model classifies correctly; a point without an
adversarial counts as +inf.  gauntlet's medians are also given on the peers' points.

Options: ``--n 100``, ``--n-peers 40``, ``--only gauntlet,art,foolbox``, ``--seed 0``.
Writes ``benchmarks/results/decision.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import environment, load_model, markdown_table, mnist_test, write_json

import gauntlet as gt

BUDGETS = (1000, 5000)
MODEL = "lenet5_clntrained"


class BudgetReached(Exception):
    """Raised inside a peer once its point has used the largest budget."""


class Tracker(nn.Module):
    """The network behind a query counter for a peer.

    Attacking one point, every row of every call is one of its queries, counted in the order
    sent; attacking a batch of ``N`` points, every call must hold ``N`` rows, row ``i`` a query of
    point ``i`` (Foolbox queries the whole batch at every call).  For every budget ``b`` the
    tracker keeps, per point, the smallest L2 distance to the clean point among the adversarial
    rows within its first ``b`` queries.  Once the largest budget is spent, the next call raises
    :class:`BudgetReached`.
    """

    def __init__(self, net: nn.Module, budgets: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.budgets = tuple(sorted(budgets))
        self.start(torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64))

    def start(self, x0: Tensor, y0: Tensor) -> None:
        self.x0, self.y0 = x0, y0
        self.count = torch.zeros(x0.shape[0], dtype=torch.int64)
        self.best = {b: torch.full((x0.shape[0],), math.inf) for b in self.budgets}

    def forward(self, x: Tensor) -> Tensor:
        n, cap = self.x0.shape[0], self.budgets[-1]
        if int(self.count.max()) >= cap:
            raise BudgetReached
        x = x.float()  # ART sends float64 at times
        with torch.no_grad():
            out = self.net(x)
            if n == 1:
                owner = torch.zeros(x.shape[0], dtype=torch.int64)
                q = self.count[0] + torch.arange(1, x.shape[0] + 1)
            else:
                if x.shape[0] != n:
                    raise RuntimeError(f"a batched peer sent {x.shape[0]} rows for {n} points")
                owner = torch.arange(n)
                q = self.count + 1
            adv = out.argmax(1) != self.y0[owner]
            dist = (x - self.x0[owner]).flatten(1).norm(dim=1)
            for b in self.budgets:
                m = adv & (q <= b) & torch.isfinite(dist)
                if bool(m.any()):
                    cand = torch.full((n,), math.inf).scatter_reduce(0, owner[m], dist[m], "amin")
                    self.best[b] = torch.minimum(self.best[b], cand)
            self.count += torch.bincount(owner, minlength=n)
        return out


def median(v: list[float]) -> float:
    return float(np.median(np.asarray(v, dtype=np.float64))) if v else math.nan


def summary(l2: list[float], ok: list[bool]) -> dict[str, Any]:
    """Median L2 over the clean-correct points (+inf for a failure) and the success rate."""
    vals = [d for d, c in zip(l2, ok) if c]
    return {
        "points": len(vals),
        "success": float(np.mean([math.isfinite(d) for d in vals])) if vals else math.nan,
        "median_l2": median(vals),
    }


# ----------------------------------------------------------------------------------------------
def run_gauntlet(net: nn.Module, x: Tensor, y: Tensor, n_peers: int, seed: int, log: Any) -> dict[str, Any]:
    """gauntlet's attacks on every point; the noise-start ablation on the peers' points only."""
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    runs = {}
    specs = [(f"hopskipjump@{b}", "hopskipjump", {"max_queries": b}, x.shape[0]) for b in BUDGETS]
    specs += [(f"boundary@{BUDGETS[-1]}", "boundary", {"max_queries": BUDGETS[-1]}, x.shape[0])]
    specs += [(f"hopskipjump init=noise@{b}", "hopskipjump", {"max_queries": b, "init": "noise"}, n_peers)
              for b in BUDGETS]
    for label, name, params, n in specs:
        model.reset_counters()
        t0, c0 = time.perf_counter(), time.process_time()
        res = gt.attacks.create(name, norm="l2", **params).run(model, x[:n], y[:n], seed=seed)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        qs = res.info["queries_per_sample"]
        l2 = [float(d) if bool(s) else math.inf for d, s in zip(res.norms, res.success)]
        runs[label] = {
            "points": n, "l2": l2, "queries_per_point": qs.tolist(), "wall_s": wall, "cpu_s": cpu,
            "params": res.params,
        }
        assert int(qs.max()) <= params["max_queries"] and res.queries == int(qs.sum()) == model.queries
        log(f"gauntlet {label}: median L2 {median(l2):.3f} on {n} points, {wall:.0f}s wall, "
            f"max queries per point {int(qs.max())}")
    return runs


def run_peer(tool: str, attack: str, net: nn.Module, x: Tensor, y: Tensor, log: Any) -> dict[str, Any]:
    tracker = Tracker(net, BUDGETS).eval()
    if tool == "art":
        from art.attacks.evasion import HopSkipJump
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(tracker, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                clip_values=(0.0, 1.0))
        hsj = HopSkipJump(clf, targeted=False, norm=2, max_iter=100_000, verbose=False)

        def one(g: slice) -> None:
            hsj.generate(x[g].numpy())
    else:
        import foolbox as fb

        fmodel = fb.PyTorchModel(tracker, bounds=(0.0, 1.0))
        fb_attack = (fb.attacks.HopSkipJumpAttack(steps=100_000) if attack == "hopskipjump"
                     else fb.attacks.BoundaryAttack(steps=100_000))

        def one(g: slice) -> None:
            fb_attack.run(fmodel, x[g], fb.criteria.Misclassification(y[g]))

    notes: list[str] = []
    t0, c0 = time.perf_counter(), time.process_time()
    # one point at a time: ART does so anyway, and a batched Foolbox run queries every point until
    # the slowest is done (its searches loop until all succeed), which its per-point count would
    # charge to the others
    groups = [slice(i, i + 1) for i in range(x.shape[0])]
    per_budget: dict[int, list[float]] = {b: [] for b in BUDGETS}
    used: list[int] = []
    for g in groups:
        tracker.start(x[g], y[g])
        try:
            one(g)
        except BudgetReached:
            pass
        except Exception as exc:  # noqa: BLE001 - a peer failing on a point is a failure on it
            notes.append(f"points {g.start}-{g.stop - 1}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        for b in BUDGETS:
            per_budget[b] += tracker.best[b].tolist()
        used += tracker.count.tolist()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    log(f"{tool} {attack}: " + ", ".join(f"median L2 @{b} {median(v):.3f}" for b, v in per_budget.items())
        + f", {wall:.0f}s wall")
    return {"l2": {str(b): v for b, v in per_budget.items()}, "queries_per_point": used, "wall_s": wall, "cpu_s": cpu,
            "notes": notes}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-peers", type=int, default=40)
    ap.add_argument("--only", default="gauntlet,art,foolbox")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the peers draw from the global RNGs
    np.random.seed(args.seed)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    net = load_model(MODEL)
    for p in net.parameters():
        p.requires_grad_(False)
    x, y = mnist_test(args.n)
    with torch.no_grad():
        correct = (net(x).argmax(1) == y).tolist()
    n_peers = min(args.n_peers, args.n)
    only = set(args.only.split(","))
    out: dict[str, Any] = {
        "model": MODEL, "n": args.n, "n_peers": n_peers, "seed": args.seed, "budgets": list(BUDGETS),
        "clean_accuracy": float(np.mean(correct)), "environment": environment(), "runs": {}, "skipped": {},
    }
    rows = []
    if "gauntlet" in only:
        for label, r in run_gauntlet(net, x, y, n_peers, args.seed, log).items():
            out["runs"][f"gauntlet {label}"] = r
            attack, budget = label.split("@")
            full = summary(r["l2"], correct) if r["points"] == args.n else None
            rows.append(["gauntlet", attack, int(budget), full, summary(r["l2"][:n_peers], correct[:n_peers]),
                         r["wall_s"]])
    peers = [("art", "hopskipjump", "art"), ("foolbox", "hopskipjump", "foolbox"), ("foolbox", "boundary", "foolbox")]
    for tool, attack, module in peers:
        if tool not in only:
            continue
        if not installed(module):
            out["skipped"][f"{tool} {attack}"] = f"`{module}` is not installed (bash benchmarks/install_peers.sh)"
            continue
        r = run_peer(tool, attack, net, x[:n_peers], y[:n_peers], log)
        out["runs"][f"{tool} {attack}"] = r
        for b in (BUDGETS if attack == "hopskipjump" else BUDGETS[-1:]):
            rows.append([tool, attack, b, None, summary(r["l2"][str(b)], correct[:n_peers]), r["wall_s"]])
    table = [
        [tool, attack, budget,
         f"{full['median_l2']:.3f} ({full['points']})" if full else None,
         f"{sub['median_l2']:.3f} ({sub['points']})", f"{sub['success']:.0%}", round(wall)]
        for tool, attack, budget, full, sub, wall in sorted(rows, key=lambda r: (r[1].split()[0], r[2], r[0] != "gauntlet", r[1], r[0]))
    ]
    out["table"] = table
    path = write_json("decision.json", out)
    print(f"LeNet5 (advertorch, clean-trained), MNIST test, clean accuracy {np.mean(correct):.1%} on the first "
          f"{args.n}; torch {torch.__version__}, 1 thread\n")
    print(markdown_table(
        ["tool", "attack", "queries", f"median L2, first {args.n} (pts)", f"median L2, first {n_peers} (pts)",
         f"success, first {n_peers}", "wall s"], table))
    for k, v in out["skipped"].items():
        print(f"\n_{k} skipped: {v}_")
    print(f"\n{path}")


if __name__ == "__main__":
    main()
