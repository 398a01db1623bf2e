"""Shadow-model and label-only membership inference on the overfit MNIST model (issue 13).

The same target and candidates as ``bench_membership.py`` (imported from it: an MLP 784-512-10
trained for 30 epochs on 2,500 MNIST training images, 2,500 non-members from the rest of the
training set, a population of 5,000 more; the target is loaded from its checkpoint in
benchmarks/results/membership-cache).  Rows, all on the same target:

* ``loss_threshold`` (scores; the baseline);
* ``shadow`` (Shokri et al. 2017) with 4 and 8 shadow models trained like the target on random
  halves of the population (2,500 each, the target's size), per-class and global attack models;
* ``label_only`` augmentation (labels only: ``augmentations`` random translations of ±``shift``
  pixels per candidate) on all 5,000 candidates;
* ``label_only`` boundary (HopSkipJump L2 distance, each of ``--boundary-queries`` per
  candidate) on the first ``--boundary-n`` members and non-members (all by default);
* ART peers: ``LabelOnlyGapAttack`` (member iff labelled right) on all candidates,
  ``LabelOnlyDecisionBoundary`` (ART's HopSkipJump, distance as the score) on ``--art-boundary-n``
  + ``--art-boundary-n`` candidates, and ``ShadowModels`` + ``MembershipInferenceBlackBox``
  (ART's shadow-model utilities, shadows trained for the target's epochs).

The label-only rows query a ``labels_only``-wrapped target (score attacks are refused on it).

    .venv/bin/python benchmarks/bench_membership_labels.py [--no-art]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from _common import markdown_table, shared_dir, write_json
from bench_membership import RESULTS, mlp
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.data.idx import load_idx

CACHE = RESULTS / "membership-cache"


def setup(members: int, epochs: int) -> dict[str, Any]:
    """bench_membership.py's target and candidates (same split, recipe, seed and checkpoint)."""
    tr = load_idx(shared_dir() / "data" / "mnist", split="train")
    x_all, y_all = torch.as_tensor(np.asarray(tr.x)), torch.as_tensor(np.asarray(tr.y))
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    m = members
    cand, pop = order[: 2 * m], order[2 * m : 4 * m]
    recipe = {"method": "standard", "epochs": epochs, "batch_size": 128, "lr": 1e-3}
    net = gt.models.torch_model.reinitialise(mlp(), 12345)
    gt.defenses.training.train(
        net, x_all[cand[:m]], y_all[cand[:m]], seed=12345, checkpoint=CACHE / "target.pt", progress=False, **recipe
    )
    net.eval()
    return {
        "net": net,
        "target": gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28)),
        "members": (x_all[cand[:m]], y_all[cand[:m]]),
        "nonmembers": (x_all[cand[m:]], y_all[cand[m:]]),
        "population": (x_all[pop], y_all[pop]),
        "recipe": recipe,
    }


def metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(truth, scores)
    at = lambda f: float(tpr[fpr <= f + 1e-12].max())
    return {
        "auc": float(roc_auc_score(truth, scores)),
        "balanced_accuracy": float(((tpr + 1 - fpr) / 2).max()),
        "tpr_at_0.1%_fpr": at(0.001),
        "tpr_at_1%_fpr": at(0.01),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--members", type=int, default=2500)
    ap.add_argument("--shadows", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--augmentations", type=int, default=10)
    ap.add_argument("--shift", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--boundary-n", type=int, default=2500)
    ap.add_argument("--boundary-queries", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--art-boundary-n", type=int, default=100)
    ap.add_argument("--no-art", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = setup(args.members, args.epochs)
    target, members, nonmembers, population = s["target"], s["members"], s["nonmembers"], s["population"]
    train_acc = float((target.predict(members[0], count=False) == members[1]).double().mean())
    test_acc = float((target.predict(nonmembers[0], count=False) == nonmembers[1]).double().mean())
    print(f"target: train acc {train_acc:.4f}, held-out acc {test_acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    labels_only = gt.defenses.create("labels_only").wrap(target)
    b = args.boundary_n
    sub_members, sub_nonmembers = (members[0][:b], members[1][:b]), (nonmembers[0][:b], nonmembers[1][:b])

    runs: list[tuple[str, str, dict[str, Any], Any, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]] = [
        ("loss_threshold", "loss_threshold", {}, target, members, nonmembers),
    ]
    for k in args.shadows:
        for per_class in (True, False):
            label = f"shadow ({k} shadows, {'per-class' if per_class else 'global'} attack model)"
            params = {"shadow_models": k, "per_class": per_class, "architecture": mlp(), "train": s["recipe"], "cache_dir": CACHE}
            runs.append((label, "shadow", params, target, members, nonmembers))
    for shift in args.shift:
        runs.append((f"label_only augmentation ({args.augmentations} × ±{shift} px, labels only)", "label_only",
                     {"augmentations": args.augmentations, "shift": shift}, labels_only, members, nonmembers))
    if b < args.members:
        runs.append((f"loss_threshold ({b}+{b} candidates)", "loss_threshold", {}, target, sub_members, sub_nonmembers))
    for q in args.boundary_queries:
        runs.append((f"label_only boundary (HSJ L2, {q:,} queries, {b}+{b} candidates, labels only)", "label_only",
                     {"method": "boundary", "max_queries": q}, labels_only, sub_members, sub_nonmembers))
    rows, out = [], []
    for label, name, params, model, mem, non in runs:
        t1 = time.perf_counter()
        res = gt.attacks.create(name, **params).run(
            model, members=mem, nonmembers=non, population=population if name == "shadow" else None, seed=0
        )
        sec = time.perf_counter() - t1
        summ = res.summary()
        out.append({"attack": label, **summ, "queries": res.queries, "seconds": sec,
                    "candidates": int(res.scores.numel()), "info": {k: v for k, v in res.info.items() if k != "classes_with_own_model"}})
        rows.append(row(label, summ, res.queries, sec))
        print(rows[-1], flush=True)
    if not args.no_art:
        out += art_rows(s, args, rows)
    print(markdown_table(["attack", "AUC", "TPR@0.1%FPR", "TPR@1%FPR", "queries", "s"], rows))
    write_json("membership_labels.json", {
        "target": {"train_acc": train_acc, "heldout_acc": test_acc, "recipe": s["recipe"], "members": args.members},
        "args": vars(args), "runs": out,
    })


def row(label: str, m: dict[str, float], queries: int | None, sec: float) -> list[Any]:
    return [label, f"{m['auc']:.3f}", f"{100 * m['tpr_at_0.1%_fpr']:.2f}%", f"{100 * m['tpr_at_1%_fpr']:.2f}%",
            "—" if queries is None else f"{queries:,}", f"{sec:.0f}"]


def art_rows(s: dict[str, Any], args: argparse.Namespace, rows: list[list[Any]]) -> list[dict[str, Any]]:
    try:
        from art.attacks.inference.membership_inference import (
            LabelOnlyDecisionBoundary,
            LabelOnlyGapAttack,
            MembershipInferenceBlackBox,
            ShadowModels,
        )
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:  # pragma: no cover - peers are optional
        print(f"ART not installed ({e}); bash benchmarks/install_peers.sh")
        return []
    recipe = s["recipe"]

    class Counting(PyTorchClassifier):  # type: ignore[misc]
        """ART's PyTorch wrapper that counts predicted rows (ART's queries) and trains shadows for
        the target's epochs and batch size."""

        queries = 0

        def predict(self, x: np.ndarray, *a: Any, **k: Any) -> np.ndarray:
            type(self).queries += len(x)
            return super().predict(np.asarray(x, dtype=np.float32), *a, **k)  # ART's HopSkipJump sends float64

        def fit(self, x: np.ndarray, y: np.ndarray, *a: Any, **k: Any) -> None:
            k.setdefault("nb_epochs", recipe["epochs"])
            k.setdefault("batch_size", recipe["batch_size"])
            super().fit(x, y, *a, **k)

    def classifier(net: nn.Module) -> Any:
        return Counting(net, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=recipe["lr"]),
                        input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))

    clf = classifier(s["net"])
    xi, yi = (t.numpy() for t in s["members"])
    xo, yo = (t.numpy() for t in s["nonmembers"])
    truth = np.r_[np.ones(len(yi)), np.zeros(len(yo))]
    out: list[dict[str, Any]] = []

    def record(label: str, scores: np.ndarray, truth: np.ndarray, sec: float, queries: int | None) -> None:
        m = metrics(scores, truth)
        out.append({"attack": label, **m, "queries": queries, "seconds": sec, "candidates": len(truth)})
        rows.append(row(label, m, queries, sec))
        print(rows[-1], flush=True)

    Counting.queries = 0
    t0 = time.perf_counter()
    gap = LabelOnlyGapAttack(clf)
    scores = np.concatenate([gap.infer(xi, yi), gap.infer(xo, yo)]).astype(float)
    record("ART LabelOnlyGapAttack (member iff labelled right)", scores, truth, time.perf_counter() - t0, Counting.queries)

    n = args.art_boundary_n
    Counting.queries = 0
    t0 = time.perf_counter()
    # tau only places the sigmoid of (distance - tau); the ranking, hence AUC/TPR, does not depend on it
    lob = LabelOnlyDecisionBoundary(clf, distance_threshold_tau=1.0)
    hsj = {"norm": 2, "max_iter": 10, "max_eval": 1000, "init_eval": 100, "verbose": False}
    p_in = lob.infer(xi[:n], yi[:n], probabilities=True, **hsj)[:, 1]
    p_out = lob.infer(xo[:n], yo[:n], probabilities=True, **hsj)[:, 1]
    record(f"ART LabelOnlyDecisionBoundary (ART HSJ, max_iter 10, {n}+{n} candidates)", np.r_[p_in, p_out],
           np.r_[np.ones(n), np.zeros(n)], time.perf_counter() - t0, Counting.queries)

    for k in args.shadows:
        torch.manual_seed(k)  # ART initialises its shadow models from torch's global generator
        Counting.queries = 0
        t0 = time.perf_counter()
        template = classifier(mlp())
        shadows = ShadowModels(template, num_shadow_models=k, random_state=0)
        px, py = (t.numpy() for t in s["population"])
        (mx, my, mp), (nx, ny, npred) = shadows.generate_shadow_dataset(px, np.eye(10)[py])
        shadow_queries = Counting.queries
        Counting.queries = 0
        attack = MembershipInferenceBlackBox(clf, attack_model_type="gb")
        attack.fit(mx, my, nx, ny, mp, npred)
        scores = np.concatenate([
            attack.infer(xi, np.eye(10)[yi], probabilities=True).ravel(),
            attack.infer(xo, np.eye(10)[yo], probabilities=True).ravel(),
        ])
        record(f"ART ShadowModels ({k} shadows) + MembershipInferenceBlackBox (gb)", scores, truth,
               time.perf_counter() - t0, Counting.queries)
        out[-1]["shadow_model_predictions"] = shadow_queries
    return out


if __name__ == "__main__":
    main()
