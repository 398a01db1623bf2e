"""Adversarial patches and universal perturbations on MNIST, learned on training images and
measured on held-out test images.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_patch.py

On advertorch's clean-trained LeNet5 (``../shared/models``), one CPU thread:

* **patch**: gauntlet ``patch`` learned on the first ``--n-train`` MNIST training images
  (targeted, one patch per target class, default EOT: rotation ±22.5°, area in
  ``[0.7·scale, scale]``, brightness ±10%) and evaluated on the first ``--n-test`` test images under
  fresh random placements (three placement seeds, mean), for target classes 0, 3, 8 at 5% and
  10% of the image area, beside an untrained random patch of the same size; plus an untargeted
  10% patch and larger patches (20%, 30%) to show where the success lies;
* **per-image bound**: for 100 test images, a patch optimised for *each image* at each of nine
  fixed positions (a 3×3 grid, no rotation) at 10% of the area: a universal patch placed at a
  random position cannot beat the mean over positions of this per-image optimum;
* **universal perturbation** at L∞ ε 0.1/0.2 and L2 ε 2/4: gauntlet's SGD method on the first
  ``--n-uap-train`` training images and on the first ``--n-uap-small``, its DeepFool method (the paper's algorithm) and
  ART's ``UniversalPerturbation`` (DeepFool attacker, ``delta=0.2``, ``max_iter=2``) on those,
  each fooling rate measured on the held-out test images, beside random noise of the same norm.

ART's ``AdversarialPatchPyTorch`` needs torchvision, which is not installed (and not a
dependency), so it is not run; the reason is written to the JSON.

Options: ``--n-train 10000`` (patches), ``--n-uap-train 3000``, ``--n-uap-small 100``, ``--n-test 2000``,
``--steps 300``,
``--only patch,bound,uap,art``, ``--seed 0``.  Writes ``benchmarks/results/patch.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RESULTS, environment, load_model, markdown_table, mnist_test, shared_dir, write_json

import gauntlet as gt
from gauntlet.attacks.evasion.patch import AdversarialPatch, Placement, render

MODEL = "lenet5_clntrained"
TARGETS = (0, 3, 8)
EVAL_SEEDS = (100, 101, 102)


def mnist_train(n: int) -> tuple[Tensor, Tensor]:
    ds = gt.data.load(str(shared_dir() / "data" / "mnist"), split="train")
    return ds.x[:n].contiguous(), ds.y[:n].to(torch.int64).contiguous()


def mean_eval(p: AdversarialPatch, model: gt.models.Model, x: Tensor, y: Tensor) -> float:
    return float(np.mean([p.evaluate(model, x, y, seed=s) for s in EVAL_SEEDS]))


def run_patches(model: gt.models.Model, xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, steps: int, seed: int,
                log: Any) -> list[dict[str, Any]]:
    rows = []
    cases = [(scale, t) for scale in (0.05, 0.1) for t in TARGETS]
    cases += [(0.1, None), (0.2, 8), (0.3, 8), (0.3, 3)]
    for scale, target in cases:
        attack = gt.attacks.create("patch", scale=scale, targeted=target is not None, steps=steps)
        t0 = time.perf_counter()
        p = attack.fit(model, xtr, ytr, seed=seed, target=target)
        wall = time.perf_counter() - t0
        held = mean_eval(p, model, xte, yte)
        gen = torch.Generator().manual_seed(seed)
        rnd = AdversarialPatch(torch.rand(p.patch.shape, generator=gen), scale, target, (0.0, 1.0), p.rotation,
                               p.shrink, p.brightness, math.nan)
        base = mean_eval(rnd, model, xte, yte)
        rows.append({"scale": scale, "target": target, "pixels": attack.pixel_budget(28, 28),
                     "train_success": p.train_success, "held_out_success": held, "random_patch": base,
                     "wall_s": wall, "steps": steps})
        log(f"patch scale {scale} target {target}: train {p.train_success:.3f}, held-out {held:.3f} "
            f"(random patch {base:.3f}), {wall:.0f}s")
    return rows


def per_image_bound(net: nn.Module, x: Tensor, target: int, steps: int = 100) -> dict[str, Any]:
    """Per-image patches at nine fixed positions: the share of images each position can send to ``target``."""
    n, side = x.shape[0], math.sqrt(0.1 * 28 * 28)
    keep_budget = math.floor(0.1 * 28 * 28)
    rates = []
    for cy in (5.5, 14.5, 22.5):
        for cx in (5.5, 14.5, 22.5):
            f = lambda v: torch.full((n,), float(v), dtype=torch.float64)
            pl = Placement(f(side), f(0.0), torch.stack([f(cx), f(cy)], 1), f(1.0))
            patch = torch.full((n, 1, 9, 9), 0.5, requires_grad=True)
            opt = torch.optim.Adam([patch], lr=0.1)
            goal = torch.full((n,), target)
            for _ in range(steps):
                adv, _ = render(x, patch, pl, budget=keep_budget, value_bounds=(0.0, 1.0))
                loss = F.cross_entropy(net(adv), goal)
                (g,) = torch.autograd.grad(loss, patch)
                patch.grad = g
                opt.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
            with torch.no_grad():
                adv, _ = render(x, patch, pl, budget=keep_budget, value_bounds=(0.0, 1.0))
                rates.append(float((net(adv).argmax(1) == target).float().mean()))
    return {"target": target, "per_position": rates, "mean": float(np.mean(rates)), "max": float(np.max(rates))}


def fooling(net: nn.Module, x: Tensor, y: Tensor, v: Tensor) -> float:
    with torch.no_grad():
        return float((net((x + v).clamp(0, 1)).argmax(1) != y).float().mean())


def run_uap(model: gt.models.Model, net: nn.Module, xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, n_small: int,
            seed: int, with_art: bool, log: Any) -> list[dict[str, Any]]:
    rows = []
    art_clf = None
    if with_art:
        from art.estimators.classification import PyTorchClassifier

        art_clf = PyTorchClassifier(net, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                    clip_values=(0.0, 1.0))
    gen = torch.Generator().manual_seed(seed)
    for norm, eps in (("linf", 0.1), ("linf", 0.2), ("l2", 2.0), ("l2", 4.0)):
        r = torch.randn((5, 1, 28, 28), generator=gen)
        noise = [fooling(net, xte, yte, eps * (ri.sign() if norm == "linf" else ri / ri.norm())) for ri in r]
        row: dict[str, Any] = {"norm": norm, "eps": eps, "noise": float(np.mean(noise))}
        runs = [("sgd_all", "sgd", xtr, ytr, {}), ("sgd_small", "sgd", xtr[:n_small], ytr[:n_small], {}),
                ("deepfool_small", "deepfool", xtr[:n_small], ytr[:n_small], {"steps": 2})]
        for label, method, x, y, extra in runs:
            attack = gt.attacks.create("universal_perturbation", norm=norm, eps=eps, method=method, **extra)
            model.reset_counters()
            t0 = time.perf_counter()
            u = attack.fit(model, x, y, seed=seed)
            row[label] = {"held_out": u.evaluate(model, xte, yte), "train": u.train_success,
                          "wall_s": time.perf_counter() - t0, "grad_evals": model.grad_evals, "n_train": x.shape[0]}
            log(f"uap {norm} {eps} gauntlet {label}: held-out {row[label]['held_out']:.3f}, "
                f"{row[label]['wall_s']:.0f}s")
        if art_clf is not None:
            from art.attacks.evasion import UniversalPerturbation

            art = UniversalPerturbation(art_clf, attacker="deepfool", attacker_params={"verbose": False}, delta=0.2,
                                        max_iter=2, eps=eps,
                                        norm=np.inf if norm == "linf" else 2, batch_size=64, verbose=False)
            t0 = time.perf_counter()
            art.generate(xtr[:n_small].numpy())
            v = torch.from_numpy(np.asarray(art.noise, dtype=np.float32)).reshape(1, 1, 28, 28)
            row["art_small"] = {"held_out": fooling(net, xte, yte, v), "train": float(art.fooling_rate),
                                "wall_s": time.perf_counter() - t0, "norm_of_v": float(gt.norms.norm(v, norm)[0])}
            log(f"uap {norm} {eps} ART: held-out {row['art_small']['held_out']:.3f}, {row['art_small']['wall_s']:.0f}s")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-uap-train", type=int, default=3000)
    ap.add_argument("--n-uap-small", type=int, default=100)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--only", default="patch,bound,uap,art")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # ART draws from the global RNGs
    np.random.seed(args.seed)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    net = load_model(MODEL)
    for p in net.parameters():
        p.requires_grad_(False)
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    xtr, ytr = mnist_train(args.n_train)
    xte, yte = mnist_test(args.n_test)
    with torch.no_grad():
        clean = float((net(xte).argmax(1) == yte).float().mean())
    only = set(args.only.split(","))
    out: dict[str, Any] = {"model": MODEL, "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed,
                           "clean_accuracy": clean, "eval_seeds": list(EVAL_SEEDS), "environment": environment(),
                           "skipped": {}}
    out["skipped"]["art AdversarialPatchPyTorch"] = (
        "not run: it imports torchvision (transforms.functional resize/pad/perspective), which is not installed"
        if importlib.util.find_spec("torchvision") is None else "not run by this benchmark")
    if "patch" in only:
        out["patch"] = run_patches(model, xtr, ytr, xte, yte, args.steps, args.seed, log)
    if "bound" in only:
        out["per_image_bound"] = []
        for t in (3, 8):
            b = per_image_bound(net, xte[:100][yte[:100] != t][:80], t)
            out["per_image_bound"].append(b)
            log(f"per-image bound target {t}: mean over positions {b['mean']:.3f}, best position {b['max']:.3f}")
    if "uap" in only:
        with_art = "art" in only and importlib.util.find_spec("art") is not None
        if "art" in only and not with_art:
            out["skipped"]["art UniversalPerturbation"] = "`adversarial-robustness-toolbox` is not installed"
        out["uap"] = run_uap(model, net, xtr[: args.n_uap_train], ytr[: args.n_uap_train], xte, yte, args.n_uap_small,
                             args.seed, with_art, log)
    previous = RESULTS / "patch.json"
    if previous.exists() and only != {"patch", "bound", "uap", "art"}:  # a partial run keeps the other parts
        kept = json.loads(previous.read_text())
        out = {**{k: v for k, v in kept.items() if k in ("patch", "per_image_bound", "uap")}, **out}
    path = write_json("patch.json", out)
    print(f"LeNet5 (advertorch, clean-trained), MNIST: learned on {args.n_train} training images, measured on "
          f"{args.n_test} test images (clean accuracy {clean:.1%}); torch {torch.__version__}, 1 thread\n")
    if "patch" in out:
        print(markdown_table(
            ["area", "pixels", "target", "train", "held-out (fresh placements)", "random patch", "wall s"],
            [[f"{r['scale']:.0%}", r["pixels"], r["target"] if r["target"] is not None else "untargeted",
              r["train_success"], r["held_out_success"], r["random_patch"], round(r["wall_s"])] for r in out["patch"]]))
    if "per_image_bound" in out:
        print()
        print(markdown_table(["target", "per-image patch, mean over 9 positions", "best position"],
                             [[b["target"], b["mean"], b["max"]] for b in out["per_image_bound"]]))
    if "uap" in out:
        print()
        cols = ["sgd_all", "sgd_small", "deepfool_small", "art_small"]
        print(markdown_table(
            ["norm", "eps", "noise", f"gauntlet sgd ({args.n_uap_train})", f"gauntlet sgd ({args.n_uap_small})",
             f"gauntlet deepfool ({args.n_uap_small})", f"ART ({args.n_uap_small})"],
            [[r["norm"], r["eps"], r["noise"], *[r[c]["held_out"] if c in r else None for c in cols]]
             for r in out["uap"]]))
    for k, v in out["skipped"].items():
        print(f"\n_{k}: {v}_")
    print(f"\n{path}")


if __name__ == "__main__":
    main()
