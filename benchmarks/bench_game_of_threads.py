"""Game of Threads on MNIST: asynchronous SGD steered toward a label by scheduling alone, and what
the staleness defenses take back and cost.

One command (from the project root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_game_of_threads.py

Setup (one torch thread): the 60,000 MNIST training images (``../shared/data/mnist``) and the
10,000 test images for evaluation; softmax regression (784 → 10) trained by
``gauntlet.learning.async_sgd.AsyncSGD`` with 16 workers (threads), mini-batches of 8 drawn
uniformly by each worker's seeded generator, lr 0.1, ``--steps`` scheduling steps (default 2000), evaluated
every 40 steps.  Per seed (``--seeds``, default 5; the target class is ``(3 + 2·seed) mod 10``):

* benign: fair round-robin scheduler (every update ``workers − 1`` = 15 steps stale);
* attacked: ``gt.attacks.create("game_of_threads", target_class=t, max_held=14, min_share=0.25)``
  (up to 14 of the 16 threads paused when their batch of 8 holds ≥ 2 of the target, released as
  one stale burst at the end; no data changed);
* attacked and benign under ``bounded_staleness`` (tau 32; drop, and recompute) and
  ``staleness_weighting`` (lr / (1 + s); and with ``free=15``, no penalty up to the benign staleness);
* the "slow" goal (8 threads paused 100 steps at a time).

Reported: the target class's share of test predictions (pp moved from the benign run), test
accuracy, and the convergence cost as steps to reach ``--acc`` (default 0.85) test accuracy.
Writes ``benchmarks/results/game_of_threads.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, mnist_test, shared_dir, write_json

import gauntlet as gt
from gauntlet.learning.async_sgd import AsyncRunResult, AsyncSGD

DEFENSES: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "bounded τ=32 drop": ("bounded_staleness", {"tau": 32}),
    "bounded τ=32 recompute": ("bounded_staleness", {"tau": 32, "on_reject": "recompute"}),
    "lr/(1+s)": ("staleness_weighting", {}),
    "lr/(1+max(0,s−15))": ("staleness_weighting", {"free": 15}),
}

WORKERS = 16
ATTACK: dict[str, Any] = {"max_held": 14, "min_share": 0.25}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    ds = gt.data.load(str(shared_dir() / "data" / "mnist"), split="train")
    return ds.x.contiguous(), ds.y.to(torch.int64).contiguous()


def summary(r: AsyncRunResult, target: int, acc: float) -> dict[str, Any]:
    return {
        "final_accuracy": r.final_accuracy,
        "target_share": float(r.final_share[target]),
        "steps_to_acc": r.steps_to(acc),
        "dropped": r.dropped,
        "max_staleness": max(r.staleness) if r.staleness else None,
        "accuracy_curve": r.accuracy,
        "target_share_curve": [float(v) for v in r.class_share[:, target]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--acc", type=float, default=0.85)
    args = ap.parse_args()
    torch.set_num_threads(1)
    xtr, ytr = mnist_train()
    xte, yte = mnist_test()
    runs: list[dict[str, Any]] = []
    t0 = time.time()
    for seed in range(args.seeds):
        target = (3 + 2 * seed) % 10
        sim = AsyncSGD(None, xtr, ytr, workers=WORKERS, batch_size=8, lr=0.1, seed=seed)
        kw: dict[str, Any] = {"steps": args.steps, "eval_x": xte, "eval_y": yte, "eval_every": 40}
        for dname, spec in DEFENSES.items():
            for scen in ("benign", "attacked"):
                d = gt.defenses.create(spec[0], **spec[1]) if spec else None
                sched = gt.attacks.create("game_of_threads", target_class=target, **ATTACK).scheduler() if scen == "attacked" else None
                r = sim.run(scheduler=sched, defense=d, **kw)  # type: ignore[arg-type]
                runs.append({"seed": seed, "target": target, "scenario": scen, "defense": dname, **summary(r, target, args.acc)})
                log(f"seed {seed} {scen:8s} {dname:24s} acc {r.final_accuracy:.3f} share[{target}] {r.final_share[target]:.3f}")
        slow = gt.attacks.create("game_of_threads", goal="slow", max_held=8, window=100).scheduler()
        r = sim.run(scheduler=slow, **kw)
        runs.append({"seed": seed, "target": target, "scenario": "slow", "defense": "none", **summary(r, target, args.acc)})
        log(f"seed {seed} slow     none acc {r.final_accuracy:.3f} steps_to {r.steps_to(args.acc)}")

    def pick(scen: str, dname: str, seed: int) -> dict[str, Any]:
        return next(r for r in runs if r["scenario"] == scen and r["defense"] == dname and r["seed"] == seed)

    seeds = range(args.seeds)
    benign_share = {s: pick("benign", "none", s)["target_share"] for s in seeds}
    rows = []
    table: list[dict[str, Any]] = []
    for dname in DEFENSES:
        moved = [100 * (pick("attacked", dname, s)["target_share"] - benign_share[s]) for s in seeds]
        acc_a = [pick("attacked", dname, s)["final_accuracy"] for s in seeds]
        acc_b = [pick("benign", dname, s)["final_accuracy"] for s in seeds]
        st = [pick("benign", dname, s)["steps_to_acc"] for s in seeds]
        reached = [v for v in st if v is not None]
        row = {
            "defense": dname,
            "pp_moved_mean": float(np.mean(moved)),
            "pp_moved_min": float(np.min(moved)),
            "pp_moved_max": float(np.max(moved)),
            "attacked_accuracy": float(np.mean(acc_a)),
            "benign_accuracy": float(np.mean(acc_b)),
            "benign_steps_to_acc_median": float(np.median(reached)) if reached else None,
            "benign_reached": f"{len(reached)}/{len(st)}",
        }
        table.append(row)
        rows.append([
            dname, f"{row['pp_moved_mean']:+.1f} ({row['pp_moved_min']:+.1f} … {row['pp_moved_max']:+.1f})",
            row["attacked_accuracy"], row["benign_accuracy"],
            None if row["benign_steps_to_acc_median"] is None else int(row["benign_steps_to_acc_median"]), row["benign_reached"],
        ])
    slow_steps = [pick("slow", "none", s)["steps_to_acc"] for s in seeds]
    slow_acc = [pick("slow", "none", s)["final_accuracy"] for s in seeds]
    print(f"\nMNIST, softmax regression, 16 workers, batch 8, lr 0.1, {args.steps} steps, {args.seeds} seeds "
          f"(target class (3 + 2·seed) mod 10); benign target share {100 * np.mean(list(benign_share.values())):.1f}%\n")
    print(markdown_table(
        ["defense", "target share moved, pp: mean (min … max)", "attacked acc", "benign acc", f"benign steps to {args.acc:.0%}", "reached"],
        rows,
    ))
    print(f"\nslow goal (8 threads paused 100 steps): accuracy {np.mean(slow_acc):.3f}, steps to {args.acc:.0%}: {slow_steps} "
          f"(benign: {[pick('benign', 'none', s)['steps_to_acc'] for s in seeds]})")
    out = {
        "setup": {"steps": args.steps, "seeds": args.seeds, "acc": args.acc, "workers": WORKERS, "batch_size": 8, "lr": 0.1, "attack": ATTACK,
                  "model": "softmax regression 784->10", "eval_every": 40},
        "table": table, "slow": {"steps_to_acc": slow_steps, "final_accuracy": slow_acc},
        "runs": runs, "seconds": time.time() - t0, "environment": environment(),
    }
    log(f"wrote {write_json('game_of_threads.json', out)} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
