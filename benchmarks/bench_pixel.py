"""One-/few-pixel attack (differential evolution) against ART's ``PixelAttack``: share of test images
flipped by 1, 3 and 5 pixels at the same per-point query budget.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_pixel.py        # --n-digits 100 --n-mnist 50 --queries 4001

(``--models mnist --only gauntlet --pixels 5 --n-mnist 10 --queries 40401 --out pixel_paper.json``
gives the paper's budget, 400 + 100 generations of 400, on a few MNIST points.)

Untargeted, on one torch thread, two models:

* the undefended digits CNN of the tests (8x8 greyscale digits, trained here, ~97% clean);
* advertorch's clean-trained LeNet5 (``../shared/models``, MNIST 28x28), when the shared folder is
  there.

gauntlet's ``one_pixel`` runs with the paper's population (400) and ``max_queries = --queries``
per point, every point of a model in one batch (model calls of 256 rows; ART's are 128); the
budget covers everything (the input check, the initial population, every generation), the last
generation is cut to fit.

ART's ``PixelAttack(es=1)`` (differential evolution, ``th`` = pixels) runs on the same points, one
point at a time as ART does anyway, behind a counting wrapper: its population is fixed by ART at
``400 // (pixels · 3)`` per parameter (399, 396, 390 members for 1, 3, 5 pixels), and its
``max_iter`` is set so that the budget, not the iteration count, ends it.  Every ART query
counts (the initial population, every generation, the callback's check of the best member after
each generation, the final check); the wrapper stops ART once a point has used the budget.  Two
ART figures are reported: what ART returns within the budget ("returned") and whether any of its
first ``--queries`` queries was adversarial ("any query", the best ART could have returned, which
favours it).  The wrapper hands ART softmax probabilities, as the paper's fitness is the true
class's probability (ART's attack reads the estimator's outputs as probabilities).

Success is over the points the model classifies correctly; "median queries" is over the
successful points (for ART: the queries its run used, for "any query": the index of the first
adversarial query).  Writes ``benchmarks/results/pixel.json`` (``--out``).
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

import _common as C

import gauntlet as gt
from gauntlet.data import load_digits
from gauntlet.models.zoo import DigitsCNN, train_classifier

PIXELS = (1, 3, 5)
MAX_BATCH = 256  # rows per model call: on one CPU thread LeNet5 runs ~1.5x faster at 128-256 rows than at 4096


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def digits_net() -> nn.Module:
    """The tests' undefended DigitsCNN recipe (~97% clean test accuracy), as bench_score_based.py."""
    train = load_digits("train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN()
    return train_classifier(net, train.x, train.y, epochs=15, seed=0).eval()


def median(v: list[float]) -> float:
    return float(np.median(np.asarray(v, dtype=np.float64))) if v else math.nan


class BudgetReached(Exception):
    """Raised inside ART once its point has used the budget."""


class Tracker(nn.Module):
    """The network for ART, one point at a time: softmax probabilities out, every row a query.

    Keeps the number of queries and the index of the first adversarial query within the budget;
    once the budget is spent, the next call raises :class:`BudgetReached`.
    """

    def __init__(self, net: nn.Module, budget: int) -> None:
        super().__init__()
        self.net, self.budget = net, budget
        self.start(0)

    def start(self, y: int) -> None:
        self.y, self.count, self.first_adv = y, 0, math.inf

    def forward(self, x: Tensor) -> Tensor:
        if self.count >= self.budget:
            raise BudgetReached
        with torch.inference_mode():
            p = torch.softmax(self.net(x.float()), dim=1)
        adv = (p.argmax(1) != self.y).nonzero().flatten()
        if adv.numel() and math.isinf(self.first_adv):
            q = self.count + 1 + int(adv[0])
            if q <= self.budget:
                self.first_adv = q
        self.count += int(x.shape[0])
        return p.clone()


# ----------------------------------------------------------------------------------------------
def run_gauntlet(net: nn.Module, shape: tuple[int, ...], x: Tensor, y: Tensor, pixels: int, budget: int,
                 seed: int) -> dict[str, Any]:
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=shape)
    t0, c0 = time.perf_counter(), time.process_time()
    attack = gt.attacks.create("one_pixel", pixels=pixels, max_queries=budget, max_batch_size=MAX_BATCH)
    res = attack.run(model, x, y, seed=seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    qps = res.info["queries_per_sample"]
    assert int(qps.max()) <= budget and res.queries == int(qps.sum()) == model.queries
    assert float(res.norms.max()) <= pixels
    ok = res.clean_correct
    won = ok & res.success
    return {
        "points": int(ok.sum()),
        "success": float(won.sum()) / max(int(ok.sum()), 1),
        "median_queries_successful": median(qps[won].double().tolist()),
        "queries_per_point": qps.tolist(),
        "success_per_point": res.success.tolist(),
        "wall_s": wall, "cpu_s": cpu, "params": res.params,
    }


def run_art(net: nn.Module, shape: tuple[int, ...], x: Tensor, y: Tensor, pixels: int, budget: int,
            correct: list[bool]) -> dict[str, Any]:
    from art.attacks.evasion import PixelAttack
    from art.estimators.classification import PyTorchClassifier

    tracker = Tracker(net, budget).eval()
    clf = PyTorchClassifier(tracker, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=10,
                            clip_values=(0.0, 1.0))
    members = max(1, 400 // (pixels * (2 + shape[0]))) * pixels * (2 + shape[0])
    max_iter = budget // members + 1  # the budget ends the run, not the iteration count
    attack = PixelAttack(clf, th=pixels, es=1, max_iter=max_iter, targeted=False, verbose=False)
    returned, any_query, used, first, notes = [], [], [], [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(x.shape[0]):
        if not correct[i]:
            continue
        tracker.start(int(y[i]))
        ok = False
        try:
            adv = attack.generate(x[i : i + 1].numpy(), y=np.array([int(y[i])]))
            with torch.inference_mode():
                pred = int(net(torch.from_numpy(adv).float()).argmax(1)[0])
            # ART's round trip through 0-255 moves untouched pixels by float rounding: count real changes
            changed = int(((torch.from_numpy(adv) - x[i : i + 1]).abs() > 1e-4).any(dim=1).sum())
            ok = pred != int(y[i]) and tracker.count <= budget and changed <= pixels
        except BudgetReached:
            pass
        except Exception as exc:  # noqa: BLE001 - ART failing on a point is a failure on it
            notes.append(f"point {i}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        returned.append(ok)
        any_query.append(math.isfinite(tracker.first_adv))
        used.append(min(tracker.count, budget))
        first.append(tracker.first_adv)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "points": len(returned),
        "population": members,
        "max_iter": max_iter,
        "success_returned": float(np.mean(returned)) if returned else math.nan,
        "success_any_query": float(np.mean(any_query)) if any_query else math.nan,
        "median_queries_returned": median([u for u, r in zip(used, returned) if r]),
        "median_first_adversarial_query": median([f for f in first if math.isfinite(f)]),
        "queries_per_point": used,
        "wall_s": wall, "cpu_s": cpu, "notes": notes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-digits", type=int, default=100)
    ap.add_argument("--n-mnist", type=int, default=50)
    ap.add_argument("--queries", type=int, default=4001, help="per point: the check + 400 x 10 generations")
    ap.add_argument("--pixels", default=",".join(map(str, PIXELS)))
    ap.add_argument("--only", default="gauntlet,art")
    ap.add_argument("--models", default="digits,mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="pixel.json", help="file name under benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # ART's differential evolution draws from the global RNGs
    np.random.seed(args.seed)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    only = set(args.only.split(","))
    pixels = [int(p) for p in args.pixels.split(",")]
    art_ok = importlib.util.find_spec("art") is not None

    models: list[tuple[str, nn.Module, tuple[int, ...], Tensor, Tensor]] = []
    if "digits" in args.models:
        log("digits: training the undefended DigitsCNN")
        test = load_digits("test")
        models.append(("digits CNN (8x8)", digits_net(), (1, 8, 8), test.x[: args.n_digits], test.y[: args.n_digits]))
    mnist_note = None
    if "mnist" in args.models:
        try:
            x, y = C.mnist_test(args.n_mnist)
            models.append(("LeNet5 (MNIST, clean-trained)", C.load_model("lenet5_clntrained"), (1, 28, 28), x, y))
        except SystemExit as e:  # no ../shared: digits only
            mnist_note = str(e)
            log(f"MNIST skipped: {e}")

    out: dict[str, Any] = {"environment": C.environment(), "queries": args.queries, "seed": args.seed,
                           "pixels": pixels, "runs": [], "mnist_note": mnist_note,
                           "art": None if art_ok else "adversarial-robustness-toolbox is not installed"}
    for label, net, shape, x, y in models:
        for p in net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            correct = (net(x).argmax(1) == y).tolist()
        for px in pixels:
            row: dict[str, Any] = {"model": label, "n": int(x.shape[0]), "clean_accuracy": float(np.mean(correct)),
                                   "pixels": px}
            if "gauntlet" in only:
                row["gauntlet"] = run_gauntlet(net, shape, x, y, px, args.queries, args.seed)
                g = row["gauntlet"]
                log(f"{label}, {px} px: gauntlet {g['success']:.0%} of {g['points']}, median queries "
                    f"{g['median_queries_successful']:.0f}, {g['wall_s']:.0f}s")
            if "art" in only and art_ok:
                row["art"] = run_art(net, shape, x, y, px, args.queries, correct)
                a = row["art"]
                log(f"{label}, {px} px: ART {a['success_returned']:.0%} returned / {a['success_any_query']:.0%} any "
                    f"query of {a['points']}, median queries {a['median_queries_returned']:.0f}, {a['wall_s']:.0f}s")
            out["runs"].append(row)
            C.write_json(args.out, out)

    def pct(v: float) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"

    def num(v: float) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"

    table = []
    for r in out["runs"]:
        g, a = r.get("gauntlet", {}), r.get("art", {})
        table.append([r["model"], r["pixels"], f"{g.get('points', a.get('points', '—'))}",
                      pct(g.get("success")), pct(a.get("success_returned")), pct(a.get("success_any_query")),
                      num(g.get("median_queries_successful")), num(a.get("median_queries_returned")),
                      num(g.get("wall_s")), num(a.get("wall_s"))])
    out["table"] = table
    path = C.write_json(args.out, out)
    print(f"Untargeted, {args.queries:,} queries per point, torch {torch.__version__}, 1 thread\n")
    print(C.markdown_table(
        ["model", "pixels", "points (clean-correct)", "gauntlet success", "ART success (returned)",
         "ART success (any query)", "gauntlet median queries", "ART median queries", "gauntlet s", "ART s"], table))
    print(f"\n{path}")


if __name__ == "__main__":
    main()
