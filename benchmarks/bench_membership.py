"""Membership inference on a deliberately overfit MNIST model (issue 13).

Must reach: LiRA (online, 16 reference models) beats the loss threshold at TPR@0.1%FPR by >= 5x;
RMIA with 2 reference models >= offline LiRA with 2 at AUC and TPR@1%FPR (the RMIA paper's
claim, checked).  The target: an MLP (784-512-10) trained on 2,500 MNIST training images for
``--epochs`` epochs (100% training accuracy: overfit on purpose); candidates: those 2,500
members and 2,500 non-members from the rest of the training set; RMIA's population: 5,000 more.
Reference models: the same architecture and recipe, trained on random halves of the candidates
(each candidate IN for exactly half), cached under benchmarks/results/membership-cache so a rerun
trains nothing.  ART's membership attacks run beside ours on the same target and candidates:
the rule-based attack (member iff correctly classified) and the black-box attack model trained
on half of the candidates with their truth (evaluated on the other half, which is an easier
setting than ours: it is given labelled members).

    .venv/bin/python benchmarks/bench_membership.py [--epochs 30] [--refs 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gauntlet as gt
from gauntlet.data.idx import load_idx

from _common import markdown_table, shared_dir, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--refs", type=int, default=16)
    ap.add_argument("--members", type=int, default=2500)
    ap.add_argument("--no-art", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tr = load_idx(shared_dir() / "data" / "mnist", split="train")
    x_all, y_all = torch.as_tensor(np.asarray(tr.x)), torch.as_tensor(np.asarray(tr.y))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y_all), generator=g)
    m = args.members
    cand, pop = order[: 2 * m], order[2 * m : 4 * m]
    x_in, y_in = x_all[cand[:m]], y_all[cand[:m]]
    x_out, y_out = x_all[cand[m:]], y_all[cand[m:]]
    population = (x_all[pop], y_all[pop])
    recipe = {"method": "standard", "epochs": args.epochs, "batch_size": 128, "lr": 1e-3}
    cache = RESULTS / "membership-cache"
    torch.manual_seed(0)
    net = gt.models.torch_model.reinitialise(mlp(), 12345)
    t0 = time.perf_counter()
    gt.defenses.training.train(net, x_in, y_in, seed=12345, checkpoint=cache / "target.pt", progress=False, **recipe)
    net.eval()
    target = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    train_acc = float((target.predict(x_in, count=False) == y_in).double().mean())
    test_acc = float((target.predict(x_out, count=False) == y_out).double().mean())
    print(f"target: train acc {train_acc:.4f}, held-out acc {test_acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    common = {"architecture": mlp(), "train": recipe, "cache_dir": cache}
    runs = [
        ("loss_threshold", {}),
        ("confidence_threshold", {}),
        ("lira", {"reference_models": args.refs, "online": True, **common}),
        ("lira", {"reference_models": args.refs, "online": False, **common}),
        ("lira", {"reference_models": 2, "online": False, **common}),
        ("lira", {"reference_models": 2, "online": True, **common}),
        ("rmia", {"reference_models": 2, "online": False, **common}),
        ("rmia", {"reference_models": 2, "online": True, **common}),
        ("rmia", {"reference_models": args.refs, "online": True, **common}),
    ]
    rows, out = [], []
    for name, params in runs:
        t0 = time.perf_counter()
        res = gt.attacks.create(name, **params).run(
            target, members=(x_in, y_in), nonmembers=(x_out, y_out),
            population=population if name == "rmia" else None, seed=0,
        )
        sec = time.perf_counter() - t0
        label = name + (f" ({'online' if params['online'] else 'offline'}, {params['reference_models']} refs)" if "online" in params else "")
        s = res.summary()
        out.append({"attack": label, **s, "seconds": sec, "queries": res.queries})
        rows.append([label, f"{s['auc']:.3f}", f"{s['balanced_accuracy']:.3f}", f"{100 * s['tpr_at_0.1%_fpr']:.2f}%",
                     f"{100 * s['tpr_at_1%_fpr']:.2f}%", f"{sec:.0f}"])
        print(rows[-1], flush=True)
    if not args.no_art:
        out += art_rows(net, x_in, y_in, x_out, y_out, rows)
    print(markdown_table(["attack", "AUC", "balanced acc", "TPR@0.1%FPR", "TPR@1%FPR", "s"], rows))
    write_json("membership.json", {"target": {"train_acc": train_acc, "heldout_acc": test_acc, "recipe": recipe}, "runs": out})


def art_rows(net, x_in, y_in, x_out, y_out, rows) -> list[dict]:
    try:
        from art.attacks.inference.membership_inference import (
            MembershipInferenceBlackBox,
            MembershipInferenceBlackBoxRuleBased,
        )
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:  # pragma: no cover - peers are optional
        print(f"ART not installed ({e}); bash benchmarks/install_peers.sh")
        return []
    from sklearn.metrics import roc_auc_score, roc_curve

    clf = PyTorchClassifier(net, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    xi, yi, xo, yo = x_in.numpy(), y_in.numpy(), x_out.numpy(), y_out.numpy()
    out = []

    def record(label, scores, truth, sec):
        fpr, tpr, _ = roc_curve(truth, scores)
        at = lambda f: float(tpr[fpr <= f + 1e-12].max())  # noqa: E731
        auc = float(roc_auc_score(truth, scores))
        bal = float(((tpr + 1 - fpr) / 2).max())
        out.append({"attack": label, "auc": auc, "balanced_accuracy": bal, "tpr_at_0.1%_fpr": at(0.001), "tpr_at_1%_fpr": at(0.01), "seconds": sec})
        rows.append([label, f"{auc:.3f}", f"{bal:.3f}", f"{100 * at(0.001):.2f}%", f"{100 * at(0.01):.2f}%", f"{sec:.0f}"])
        print(rows[-1], flush=True)

    t0 = time.perf_counter()
    rb = MembershipInferenceBlackBoxRuleBased(clf)
    s = np.concatenate([rb.infer(xi, yi), rb.infer(xo, yo)]).astype(float)
    record("ART rule-based", s, np.r_[np.ones(len(yi)), np.zeros(len(yo))], time.perf_counter() - t0)
    h = len(yi) // 2
    t0 = time.perf_counter()
    bb = MembershipInferenceBlackBox(clf, attack_model_type="nn")
    bb.fit(xi[:h], yi[:h], xo[:h], yo[:h])
    s = np.concatenate([bb.infer(xi[h:], yi[h:], probabilities=True).ravel(), bb.infer(xo[h:], yo[h:], probabilities=True).ravel()])
    record("ART black-box (attack model trained on half, with truth)", s, np.r_[np.ones(len(yi) - h), np.zeros(len(yo) - h)], time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
