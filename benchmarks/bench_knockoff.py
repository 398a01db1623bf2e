"""Model extraction: Knockoff Nets and Copycat vs IBM ART's KnockoffNets on an MNIST CNN (issue 13).

One command (from the project root)::

    .venv/bin/python benchmarks/bench_knockoff.py

The target is advertorch's clean-trained LeNet5 (``../shared/models``, 98.9% test accuracy),
answering with its logits.  The attacker's query pool is the 60,000 MNIST *training* images
(natural inputs); fidelity (agreement with the target's label) and test accuracy are measured on
the 10,000 MNIST *test* images, never queried.  At budgets of 1k, 5k and 10k queries, with the
same surrogate architecture (``wong_kolter_small``, a 2-conv CNN the attacker picks without
knowing the target's), the same training (``--epochs`` epochs, batch 64, Adam, lr 1e-3) and the
same selection, uniform without replacement from the same pool (``sampling_strategy="random"``;
each library draws its rows from its own RNG, so the rows differ):

* ``knockoff``: gauntlet's ``knockoff``, soft labels (the target's softmax probabilities), random
  selection, one round;
* ``copycat``: gauntlet's ``copycat``, the target's hard labels;
* ``art_knockoffnets``: ``art.attacks.extraction.KnockoffNets`` (random sampling) with both models
  wrapped in ART's ``PyTorchClassifier``; ``use_probability=True`` (the same access as ours),
  though ART's ``PyTorchClassifier.fit`` with ``CrossEntropyLoss`` reduces the targets to their
  argmax, so in effect it trains on hard labels.

Plus one run of ``knockoff`` with its default surrogate (LeNet5 for 1×28×28 inputs, the target's
own architecture here) at the largest budget and the first seed.

Then the transfer rate of adversarial examples: PGD (L∞, ε = 0.3, 20 steps) crafted on each 10k
copy for the first ``--n-transfer`` test images, replayed once on the target; reported as the
share of the target's correctly classified images that it misclassifies (random-sign noise of
the same size, and white-box PGD on the target itself, as references).  One torch thread.
Every run is repeated for ``--seeds`` (the pool draw, the surrogate's initialisation and the
shuffling change with the seed): fidelity as mean (min–max), times as medians (wall and this
process's CPU seconds; one-off costs are paid in an untimed warm-up).  Writes
``benchmarks/results/knockoff.json``.  Options: ``--epochs 10``, ``--budgets 1000 5000 10000``,
``--seeds 0 1 2``, ``--n-transfer 500``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import environment, load_model, markdown_table, median, shared_dir, write_json

import gauntlet as gt
from gauntlet.data.idx import load_idx
from gauntlet.models.zoo import wong_kolter_small

TARGET = "lenet5_clntrained"


def labels(model: gt.models.Model, x: Tensor, batch: int = 1000) -> Tensor:
    with torch.no_grad():
        return torch.cat([model.predict(x[s : s + batch], count=False) for s in range(0, x.shape[0], batch)])


def module_labels(net: nn.Module, x: Tensor, batch: int = 1000) -> Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[s : s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])


def surrogate(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return wong_kolter_small()


def run_ours(
    name: str, target: gt.models.TorchModel, pool: Tensor, budget: int, epochs: int, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    params: dict[str, Any] = {
        "max_queries": budget, "query_set": pool, "surrogate": surrogate(seed), "epochs": epochs, "batch_size": 64, "lr": 1e-3,
    }
    before = target.queries
    t0 = time.perf_counter()
    res = gt.attacks.create(name, **params).run(target, seed=seed)
    seconds = time.perf_counter() - t0
    assert target.queries - before == res.queries <= budget
    return res.model.module, {"queries": res.queries, "seconds": seconds, "train_agreement": res.info["history"][-1]["train_agreement"]}  # type: ignore[attr-defined]


def run_art(target_net: nn.Module, pool: Tensor, budget: int, epochs: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    from art.attacks.extraction import KnockoffNets
    from art.estimators.classification import PyTorchClassifier

    counter = {"n": 0}

    class Counted(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            counter["n"] += int(x.shape[0])
            return torch.softmax(self.inner(x), dim=1)  # the target's probabilities (use_probability=True)

    victim = PyTorchClassifier(
        model=Counted(target_net).eval(), loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu",
    )
    thief_net = surrogate(seed)
    thief = PyTorchClassifier(
        model=thief_net, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(thief_net.parameters(), lr=1e-3),
        input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu",
    )
    np.random.seed(seed)  # ART draws the pool rows and its shuffling from NumPy's global RNG
    torch.manual_seed(seed)
    attack = KnockoffNets(
        classifier=victim, batch_size_fit=64, batch_size_query=1000, nb_epochs=epochs, nb_stolen=budget,
        sampling_strategy="random", use_probability=True, verbose=False,
    )
    t0 = time.perf_counter()
    stolen = attack.extract(pool.numpy(), thieved_classifier=thief)
    seconds = time.perf_counter() - t0
    return stolen.model, {"queries": counter["n"], "seconds": seconds}


def transfer_rate(copy_net: nn.Module, target: gt.models.TorchModel, x: Tensor, y: Tensor, seed: int) -> float:
    copy_model = gt.models.TorchModel(copy_net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    adv = gt.attacks.create("pgd", eps=0.3, steps=20).run(copy_model, x, y, seed=seed)
    ok = labels(target, x) == y
    return float((labels(target, adv.x_adv) != y)[ok].float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-transfer", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    folder = shared_dir() / "data" / "mnist"
    pool = load_idx(folder, split="train").x.contiguous()
    test = load_idx(folder, split="test")
    x_test, y_test = test.x.contiguous(), test.y
    target_net = load_model(TARGET)
    target = gt.models.TorchModel(target_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    y_target = labels(target, x_test)
    target_acc = float((y_target == y_test).float().mean())
    # untimed warm-up of one-off process costs (torch.optim's first use imports torch._dynamo, ~3 s;
    # the target's frozen forward is built on its first query), so no method pays them
    torch.optim.Adam(nn.Linear(1, 1).parameters())
    target.predict(pool[:8], count=False)
    print(f"target {TARGET}: test accuracy {target_acc:.4f}; pool {tuple(pool.shape)}; epochs {args.epochs}; "
          f"seeds {args.seeds}", flush=True)

    methods = ("knockoff", "copycat", "art_knockoffnets")
    runs: list[dict[str, Any]] = []
    top = max(args.budgets)
    n = args.n_transfer
    x, y = x_test[:n], y_test[:n]
    transfer_runs: dict[str, list[float]] = {m: [] for m in methods}
    for seed in args.seeds:
        for budget in args.budgets:
            for method in methods:
                c0 = time.process_time()
                if method == "art_knockoffnets":
                    net, rec = run_art(target_net, pool, budget, args.epochs, seed)
                else:
                    net, rec = run_ours(method, target, pool, budget, args.epochs, seed)
                rec["cpu_seconds"] = time.process_time() - c0
                pred = module_labels(net, x_test)
                rec.update(
                    method=method, budget=budget, seed=seed,
                    fidelity=float((pred == y_target).float().mean()),
                    accuracy=float((pred == y_test).float().mean()),
                )
                runs.append(rec)
                print(f"seed {seed} {method:>17} {budget:>6}: fidelity {rec['fidelity']:.4f} accuracy {rec['accuracy']:.4f} "
                      f"queries {rec['queries']} {rec['seconds']:.1f}s wall {rec['cpu_seconds']:.1f}s cpu", flush=True)
                if budget == top:  # transfer of PGD examples crafted on the largest-budget copy
                    transfer_runs[method].append(transfer_rate(net, target, x, y, seed))
                    print(f"seed {seed} {method:>17} {budget:>6}: transfer {transfer_runs[method][-1]:.4f}", flush=True)

    # the default surrogate (what a user gets without surrogate=): LeNet5 for 1x28x28, the target's
    # own architecture here; largest budget, first seed, ours only (it is ~4x slower to train)
    t0, c0 = time.perf_counter(), time.process_time()
    res = gt.attacks.create("knockoff", max_queries=top, query_set=pool, epochs=args.epochs, batch_size=64, lr=1e-3).run(
        target, seed=args.seeds[0]
    )
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    pred = module_labels(res.model.module, x_test)  # type: ignore[attr-defined]
    default_row = {
        "method": f"knockoff, default surrogate ({res.info['surrogate']})", "budget": top, "seed": args.seeds[0],
        "queries": res.queries, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "fidelity": float((pred == y_target).float().mean()), "accuracy": float((pred == y_test).float().mean()),
        "transfer": transfer_rate(res.model.module, target, x, y, args.seeds[0]),  # type: ignore[attr-defined]
    }
    print(f"default surrogate: {default_row}", flush=True)

    ok = labels(target, x) == y
    sign = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seeds[0])).sign()
    noise_rate = float((labels(target, (x + 0.3 * sign).clamp(0, 1)) != y)[ok].float().mean())
    white = gt.attacks.create("pgd", eps=0.3, steps=20).run(target, x, y, seed=args.seeds[0])
    white_rate = float((labels(target, white.x_adv) != y)[ok].float().mean())

    def agg(vals: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))}

    summary: list[dict[str, Any]] = []
    for budget in args.budgets:
        for method in methods:
            rs = [r for r in runs if r["budget"] == budget and r["method"] == method]
            summary.append({
                "budget": budget, "method": method, "queries": max(r["queries"] for r in rs),
                "fidelity": agg([r["fidelity"] for r in rs]), "accuracy": agg([r["accuracy"] for r in rs]),
                "seconds_median": median([r["seconds"] for r in rs]), "cpu_seconds_median": median([r["cpu_seconds"] for r in rs]),
            })
    transfer = {m: agg(v) for m, v in transfer_runs.items()}

    def rng(d: dict[str, float]) -> str:
        return f"{d['mean']:.4f} ({d['min']:.4f}–{d['max']:.4f})"

    headers = ["budget", "method", "fidelity mean (min–max)", "test acc mean", "queries", "wall s (median)", "CPU s (median)"]
    table = markdown_table(headers, [
        [r["budget"], r["method"], rng(r["fidelity"]), f"{r['accuracy']['mean']:.4f}", r["queries"],
         f"{r['seconds_median']:.1f}", f"{r['cpu_seconds_median']:.1f}"] for r in summary
    ] + [[top, default_row["method"], f"{default_row['fidelity']:.4f} (seed {args.seeds[0]} only)",
          f"{default_row['accuracy']:.4f}", default_row["queries"], f"{default_row['seconds']:.1f}",
          f"{default_row['cpu_seconds']:.1f}"]])
    trows = [[f"{m} copy ({top} queries)", rng(v)] for m, v in transfer.items()]
    trows += [[f"{default_row['method']} copy ({top} queries, seed {args.seeds[0]})", f"{default_row['transfer']:.4f}"]]
    trows += [["random-sign noise (reference)", f"{noise_rate:.4f}"], ["white-box PGD on the target (reference)", f"{white_rate:.4f}"]]
    ttable = markdown_table(["PGD ε=0.3, 20 steps, crafted on", f"transfer rate to the target ({n} test images)"], trows)
    print()
    print(table)
    print()
    print(ttable)
    total = time.perf_counter() - t_start
    out = {
        "benchmark": "knockoff",
        "target": TARGET,
        "target_test_accuracy": target_acc,
        "surrogate": "wong_kolter_small",
        "epochs": args.epochs,
        "batch_size": 64,
        "lr": 1e-3,
        "seeds": args.seeds,
        "pool": "MNIST train (60000)",
        "fidelity_set": "MNIST test (10000)",
        "summary": summary,
        "default_surrogate": default_row,
        "runs": runs,
        "transfer": {
            "attack": "pgd", "eps": 0.3, "steps": 20, "n": n, "budget": top, "rates": transfer,
            "random_sign_noise": noise_rate, "white_box_on_target": white_rate,
        },
        "seconds_total": total,
        "environment": environment(),
    }
    path = write_json("knockoff.json", out)
    print(f"\nwrote {path} in {total:.0f}s")


if __name__ == "__main__":
    main()
