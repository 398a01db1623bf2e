"""DP-SGD on Opacus (issue 13): MNIST accuracy at ε ≈ 3, and what LiRA still finds.

Must reach: DP-SGD at ε ≈ 3 (δ = 1e-5) reaches >= 95% clean MNIST test accuracy (Opacus reports
~96-97% near that ε), and LiRA's AUC on a DP model is < 0.55.

Part ``full``: the Opacus tutorial's setting with the tanh CNN of Papernot et al. (2021,
"Tempered Sigmoid Activations for Deep Learning with Differential Privacy"; 26k parameters):
all 60,000 MNIST training images, Poisson batches of expected size ``--batch-size``, per-sample
clipping at ``--clip``, the noise multiplier Opacus computes for ``--target-epsilon`` after
``--epochs`` epochs (RDP accountant, δ = 1e-5), SGD.  Reported: clean test accuracy on the
10,000 test images per epoch, the ε the accountant says was spent, seconds.

Part ``mi``: membership inference on the same CNN trained on 2,500 MNIST members (the split of
bench_membership.py: 2,500 members, 2,500 non-members), once with DP-SGD (ε = ``--target-epsilon``
on those 2,500) and once non-privately (``standard``, ``--mi-epochs`` epochs, Adam: overfit).
LiRA (online, ``--refs`` reference models trained with the *same* recipe as the target, as
Carlini et al. prescribe) and the loss threshold attack each target; AUC, TPR at 0.1% and 1%
FPR.  ``--refs`` is 8 by default (not the 16+ of the LiRA paper) so the DP reference models fit in
the time budget on one core; fewer reference models make LiRA weaker, so the DP model's AUC is an
estimate from a somewhat weaker attacker.

Everything is seeded; models and reference models are checkpointed under
benchmarks/results/dp_sgd-cache, so a rerun resumes.

    .venv/bin/python benchmarks/bench_dp_sgd.py [--part all|full|mi] [--epochs 6] [--refs 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import environment, markdown_table, shared_dir
from torch import nn

import gauntlet as gt
from gauntlet.data.idx import load_idx
from gauntlet.defenses.training import accuracy

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "dp_sgd-cache"


def tanh_cnn() -> nn.Module:
    """Papernot et al.'s MNIST CNN with tanh (the Opacus MNIST example's architecture)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2), nn.Tanh(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 10),
    )


def update_results(key: str, value: Any) -> None:
    path = RESULTS / "dp_sgd.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    data["environment"] = environment()
    path.write_text(json.dumps(data, indent=2) + "\n")


def dp_recipe(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    return {
        "method": "dp_sgd", "target_epsilon": args.target_epsilon, "delta": args.delta, "max_grad_norm": args.clip,
        "accountant": "rdp", "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "sgd",
        "momentum": args.momentum,
    }


def part_full(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> None:
    recipe = dp_recipe(args, args.epochs)
    net = gt.models.torch_model.reinitialise(tanh_cnn(), 0)
    t0 = time.perf_counter()

    def report(rec: Any) -> None:
        print(f"full: epoch {rec.epoch}: loss {rec.loss:.4f}, test acc {rec.val_acc:.4f}, ε {rec.epsilon:.3f}, "
              f"{rec.seconds:.0f} s", flush=True)

    params = {k: v for k, v in recipe.items() if k != "method"}
    res = gt.defenses.create("dp_sgd", **params).fit(
        net, x, y, seed=0, checkpoint=CACHE / "full.pt", progress=False, x_val=xt, y_val=yt, callback=report,
    )
    acc = accuracy(net, xt, yt)
    info = res.info
    row = [f"{acc:.4f}", f"{info['epsilon']:.3f}", f"{info['delta']:g}", f"{info['noise_multiplier']:.3f}",
           f"{info['sample_rate']:.5f}", str(info["steps"]), f"{sum(r.seconds for r in res.history):.0f}"]
    print(markdown_table(["test acc", "ε spent", "δ", "σ", "q", "steps", "train s"], [row]), flush=True)
    update_results("full", {
        "recipe": recipe, "architecture": "Papernot et al. tanh CNN (26,010 parameters)", "n_train": len(y),
        "test_accuracy": acc, "privacy": info, "train_seconds": sum(r.seconds for r in res.history),
        "wall_seconds": time.perf_counter() - t0, "resumed_from": res.resumed_from,
        "history": [r.to_dict() for r in res.history],
        "must_reach": {"test_accuracy>=0.95": acc >= 0.95, "epsilon<=target+0.05": info["epsilon"] <= args.target_epsilon + 0.05},
    })


def part_mi(args: argparse.Namespace, x_all: torch.Tensor, y_all: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y_all), generator=g)
    m = args.members
    cand = order[: 2 * m]
    x_in, y_in = x_all[cand[:m]], y_all[cand[:m]]
    x_out, y_out = x_all[cand[m:]], y_all[cand[m:]]
    recipes = {
        "dp_sgd": dp_recipe(args, args.mi_dp_epochs),
        "standard": {"method": "standard", "epochs": args.mi_epochs, "batch_size": 128, "lr": 1e-3},
    }
    rows, out = [], []
    for label, recipe in recipes.items():
        t0 = time.perf_counter()
        net = gt.models.torch_model.reinitialise(tanh_cnn(), 12345)
        params = {k: v for k, v in recipe.items() if k != "method"}
        res = gt.defenses.create(recipe["method"], **params).fit(
            net, x_in, y_in, seed=12345, checkpoint=CACHE / f"mi-target-{label}.pt", progress=False,
        )
        net.eval()
        target = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
        train_acc = accuracy(net, x_in, y_in)
        test_acc = accuracy(net, xt, yt)
        eps = res.info.get("epsilon")
        print(f"mi target {label}: train acc {train_acc:.4f}, test acc {test_acc:.4f}, ε {eps}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        entry: dict[str, Any] = {"target": label, "recipe": recipe, "train_acc": train_acc, "test_acc": test_acc,
                                 "privacy": res.info or None, "attacks": []}
        attacks = [
            ("loss_threshold", {}),
            ("lira", {"reference_models": args.refs, "online": True, "architecture": tanh_cnn(), "train": recipe,
                      "cache_dir": CACHE / "lira"}),
        ]
        for name, ap in attacks:
            t1 = time.perf_counter()
            mi = gt.attacks.create(name, **ap).run(target, members=(x_in, y_in), nonmembers=(x_out, y_out), seed=0)
            sec = time.perf_counter() - t1
            s = mi.summary()
            att = name + (f" (online, {args.refs} refs)" if name == "lira" else "")
            entry["attacks"].append({"attack": att, **s, "seconds": sec})
            rows.append([label, f"{train_acc:.3f}", f"{test_acc:.3f}", "—" if eps is None else f"{eps:.2f}", att,
                         f"{s['auc']:.3f}", f"{100 * s['tpr_at_0.1%_fpr']:.2f}%", f"{100 * s['tpr_at_1%_fpr']:.2f}%", f"{sec:.0f}"])
            print(rows[-1], flush=True)
        out.append(entry)
    print(markdown_table(["target", "train acc", "test acc", "ε", "attack", "AUC", "TPR@0.1%FPR", "TPR@1%FPR", "s"], rows))
    dp_lira = next(a for e in out if e["target"] == "dp_sgd" for a in e["attacks"] if a["attack"].startswith("lira"))
    update_results("membership", {
        "members": m, "nonmembers": m, "refs": args.refs, "runs": out,
        "must_reach": {"dp_lira_auc<0.55": dp_lira["auc"] < 0.55},
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("all", "full", "mi"), default="all")
    ap.add_argument("--epochs", type=int, default=6, help="DP-SGD epochs on the full training set")
    ap.add_argument("--batch-size", type=int, default=256, help="expected Poisson batch size")
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--target-epsilon", type=float, default=3.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--members", type=int, default=2500)
    ap.add_argument("--refs", type=int, default=8)
    ap.add_argument("--mi-epochs", type=int, default=20, help="epochs of the non-private (overfit) target")
    ap.add_argument("--mi-dp-epochs", type=int, default=10, help="epochs of the DP target on the 2,500 members")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = shared_dir() / "data" / "mnist"
    tr, te = load_idx(data, split="train"), load_idx(data, split="test")
    x, y = torch.as_tensor(np.asarray(tr.x)), torch.as_tensor(np.asarray(tr.y))
    xt, yt = torch.as_tensor(np.asarray(te.x)), torch.as_tensor(np.asarray(te.y))
    if args.part in ("all", "mi"):
        part_mi(args, x, y, xt, yt)
    if args.part in ("all", "full"):
        part_full(args, x, y, xt, yt)


if __name__ == "__main__":
    main()
