"""Federated poisoning benchmark (issue 12): malicious Flower clients against FedAvg, Flower's
robust strategies and the added defenses, on MNIST.

Setup: 10 Flower clients (``flwr.simulation.run_simulation``), each with 2,000 MNIST training
images (IID shuffle; ``--alpha 0.5`` for a Dirichlet non-IID split), all training every round
(1 local epoch of SGD, lr 0.1, batch 32) a 784-128-10 MLP for ``--rounds`` rounds (default 20);
accuracy of the global model on the first 2,000 MNIST test images after every round.  Scenarios:

* ``none``: no attacker;
* ``scaling``: 2 malicious clients (20%) send their update flipped and boosted by n/m = 5;
* ``alie``: 2 malicious clients send Baruch et al.'s μ − zσ (z = 0.25 for n = 10, m = 2, omniscient);
  ``alie_z1.5``: the same with z = 1.5 (a bolder shift than the paper's bound for this n and m);
* ``ipm``: 2 malicious clients send −0.5 μ;
* ``backdoor``: 1 malicious client (10%) trains on its shard with half of it BadNets-triggered and
  relabelled 0, and sends its update boosted by n/m = 10 (Bagdasaryan et al.'s model
  replacement); backdoor success = triggered test images of other classes classified 0.

Rules: gauntlet's ``mean`` (FedAvg), ``krum`` (f = 2), ``multi_krum`` (f = 2), ``median``,
``trimmed_mean`` (beta = 2), ``bulyan`` (f = 1, the most n = 10 allows), ``centered_clipping``,
``fltrust`` (100 clean server rows), and with ``--flower`` Flower's own ``Krum``, ``MultiKrum``,
``FedMedian``, ``FedTrimmedAvg`` (0.2) and ``Bulyan`` (f = 1) under the ALIE scenarios.  One Ray CPU, one torch
thread.  Run: ``.venv/bin/python benchmarks/bench_federated.py`` (``--only scaling,alie``,
``--rules mean,krum``, ``--seeds 0,1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from gauntlet.data import load_idx
from gauntlet.learning.federated import Federation

RULES: dict[str, dict[str, Any]] = {
    "mean": {}, "krum": {"f": 2}, "multi_krum": {"f": 2}, "median": {}, "trimmed_mean": {"beta": 2},
    "bulyan": {"f": 1}, "centered_clipping": {}, "fltrust": {},
}
FLOWER: dict[str, dict[str, Any]] = {
    "flower:krum": {"f": 2}, "flower:multi_krum": {"f": 2}, "flower:median": {}, "flower:trimmed_mean": {"fraction": 0.2},
    "flower:bulyan": {"f": 1},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "none": {},
    "scaling": {"attack": "scaling", "attack_params": {"flip": True}, "malicious": 0.2},
    "alie": {"attack": "alie", "malicious": 0.2},
    "alie_z1.5": {"attack": "alie", "attack_params": {"z": 1.5}, "malicious": 0.2},
    "ipm": {"attack": "ipm", "attack_params": {"eps": 0.5}, "malicious": 0.2},
    "backdoor": {"attack": "scaling", "malicious": 0.1, "backdoor": "badnets",
                 "backdoor_params": {"fraction": 0.5, "target_class": 0}},
}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated scenarios")
    ap.add_argument("--rules", default="", help="comma-separated rules")
    ap.add_argument("--flower", action="store_true", help="also Flower's own strategies under ALIE")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--local-steps", type=int, default=None, help="minibatches per client and round (1: FedSGD)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--out", default="federated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = C.shared_dir() / "data" / "mnist"
    tr, te = load_idx(folder, split="train"), load_idx(folder, split="test")
    x, y = tr.x[:20_000], tr.y[:20_000]
    xt, yt = te.x[:2_000], te.y[:2_000]
    only = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    rules = [r for r in args.rules.split(",") if r] or list(RULES)
    runs: list[tuple[str, str, dict[str, Any]]] = [(s, r, {**RULES.get(r, {})}) for s in only for r in rules]
    if args.flower:
        runs += [(s, r, p) for s in only if s.startswith("alie") for r, p in FLOWER.items()]
    out: list[dict[str, Any]] = []
    path = C.ROOT / "benchmarks" / "results" / f"{args.out}.json"
    for seed in [int(s) for s in args.seeds.split(",")]:
        for scen, rule, params in runs:
            fed = Federation(clients=10, rounds=args.rounds, lr=args.lr, batch_size=32, alpha=args.alpha, strategy=rule,
                             local_steps=args.local_steps,
                             strategy_params=params or None, num_cpus=1, **SCENARIOS[scen])
            t = time.perf_counter()
            res = fed.run(mlp(), (x, y), (xt, yt), seed=seed)
            row = {"scenario": scen, "rule": rule, "seed": seed, "accuracy": res.accuracy,
                   "backdoor_success": res.backdoor_success, "seconds": time.perf_counter() - t,
                   "curve": [r.accuracy for r in res.rounds],
                   "asr_curve": [r.backdoor_success for r in res.rounds],
                   "malicious_rejected": [r.malicious_rejected for r in res.rounds], "malicious": res.malicious}
            out.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("curve")}), flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"environment": C.environment(), "rounds": args.rounds, "alpha": args.alpha,
                                        "local_steps": args.local_steps, "lr": args.lr,
                                        "runs": out}, indent=1))
    print(f"wrote {path}")
    print(table(out))


def table(runs: list[dict[str, Any]]) -> str:
    """Final accuracy per rule (rows) and scenario (columns), medians over seeds; backdoor success
    beside the backdoor scenario's accuracy."""
    scen = list(dict.fromkeys(r["scenario"] for r in runs))
    rules = list(dict.fromkeys(r["rule"] for r in runs))
    head = ["rule", *[f"{s} acc" for s in scen], *(["backdoor success"] if "backdoor" in scen else [])]
    rows = []
    for rule in rules:
        row: list[Any] = [rule]
        for s in scen:
            vals = sorted(r["accuracy"] for r in runs if r["rule"] == rule and r["scenario"] == s)
            row.append(f"{100 * vals[len(vals) // 2]:.1f}%" if vals else "–")
        if "backdoor" in scen:
            vals = sorted(r["backdoor_success"] for r in runs if r["rule"] == rule and r["scenario"] == "backdoor")
            row.append(f"{100 * vals[len(vals) // 2]:.1f}%" if vals else "–")
        rows.append(row)
    return C.markdown_table(head, rows)


if __name__ == "__main__":
    main()
