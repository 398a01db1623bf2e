"""Training-data sanitization on MNIST: spectral signatures and activation clustering, gauntlet vs
ART on the same BadNets-poisoned data and the same trained network, then retraining on what each
defense keeps.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_sanitize.py

Setup (one torch thread): the 60,000 MNIST training images (``../shared/data/mnist``), BadNets at
1% (``gt.attacks.create("badnets", fraction=0.01, target_class=0, patch_size=3)``: a 3×3
checkerboard one pixel from the bottom-right corner, 600 rows of other classes relabelled 0), the
zoo's LeNet5 trained on it with ``train_classifier`` (Adam 1e-3, batch 128, ``--epochs`` epochs,
seed 0).  On that one network and data:

* gauntlet ``spectral_signatures`` (penultimate layer, ``expected_fraction=0.01`` = the poison
  share, ``removal_factor=1.5``; the global budget and the paper's per-class budget);
* gauntlet ``activation_clustering`` (penultimate layer, FastICA to 10 dims, 2-means, the
  silhouette criterion and the relative-size criterion);
* ART 1.20.1 ``SpectralSignatureDefense`` (``eps_multiplier=1.5``, ``expected_pp_poison`` = 0.01, the
  share in the training set, and the share of poison inside the target class, an oracle value)
  and ``ActivationDefence`` (its defaults: PCA to 10, KMeans, "smaller"; and FastICA with
  "relative-size"), both on ART's ``PyTorchClassifier`` around the same network (ART reads the
  layer it calls the last: the logits);

For each: recall of the poison, rows removed / poison rows, precision, seconds.  Then the network
is retrained from the same initialisation on each cleaned set and the ASR (triggered test images of
the other classes sent to 0) and clean test accuracy are measured.  Trained weights are cached in
``.gauntlet-cache/bench_sanitize`` (not committed).  Writes ``benchmarks/results/sanitize.json``
and prints markdown tables.

Options: ``--epochs 2``, ``--seed 0``, ``--no-retrain``, ``--no-art``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
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

from _common import environment, markdown_table, mnist_test, shared_dir, write_json

import gauntlet as gt
from gauntlet.attacks.poisoning import precision_recall
from gauntlet.models.zoo import LeNet5, train_classifier

CACHE = ROOT / ".gauntlet-cache" / "bench_sanitize"
ATTACK = {"fraction": 0.01, "target_class": 0, "patch_size": 3}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mnist_train() -> tuple[Tensor, Tensor]:
    ds = gt.data.load(str(shared_dir() / "data" / "mnist"), split="train")
    return ds.x.contiguous(), ds.y.to(torch.int64).contiguous()


def fresh_net(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LeNet5()


def trained(tag: str, x: Tensor, y: Tensor, epochs: int, seed: int) -> tuple[nn.Module, float]:
    """LeNet5 trained on ``(x, y)`` (cached by a hash of the data and settings); CPU seconds spent
    training (0 when read from the cache)."""
    h = hashlib.sha256()
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    h.update(f"lenet5|{epochs}|{seed}|128|1e-3".encode())
    path = CACHE / f"{tag}-{h.hexdigest()[:16]}.pt"
    net = fresh_net(seed)
    if path.exists():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval(), 0.0
    c0 = time.process_time()
    train_classifier(net, x, y, epochs=epochs, batch_size=128, lr=1e-3, seed=seed)
    cpu = time.process_time() - c0
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net.eval(), cpu


def evaluate(net: nn.Module, atk: Any, xte: Tensor, yte: Tensor) -> dict[str, float]:
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    acc = float((model.predict(xte, count=False) == yte).double().mean())
    return {"clean_accuracy": acc, "asr": atk.attack_success_rate(model, xte, yte)}


class Trunk(nn.Module):
    """The victim LeNet5 cut before its last linear layer (same modules, same weights): what ART
    reads as "the last layer" is then the 200-unit penultimate layer gauntlet reads."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2", "linear1", "relu3"):
            self.add_module(name, getattr(net, name))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.relu1(self.conv1(x)))
        x = self.maxpool2(self.relu2(self.conv2(x)))
        return self.relu3(self.linear1(x.flatten(1)))


def summary(flagged: Tensor, is_poison: Tensor, cpu: float, wall: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    pr = precision_recall(flagged.bool(), is_poison)
    n_poison = int(is_poison.sum())
    return {"recall": pr["recall"], "precision": pr["precision"], "removed": pr["flagged"], "true_positives": pr["true_positives"],
            "removed_per_poison": pr["flagged"] / n_poison, "cpu_s": cpu, "wall_s": wall, **(extra or {})}


def run_gauntlet(name: str, params: dict[str, Any], model: gt.models.TorchModel, pd: Any, seed: int) -> tuple[Tensor, dict[str, Any]]:
    san = gt.defenses.create(name, **params)
    c0, t0 = time.process_time(), time.perf_counter()
    res = san.detect(model, pd.x, pd.y, seed=seed)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    extra: dict[str, Any] = {"params": params}
    if name == "activation_clustering":
        extra["classes_flagged"] = [c for c, d in res.info["per_class"].items() if d.get("poisonous")]
        extra["per_class"] = res.info["per_class"]
    else:
        extra["flagged_per_class"] = {c: d["flagged"] for c, d in res.info["per_class"].items()}
    # how well the scores rank poison above clean, whatever the removal rule
    from sklearn.metrics import roc_auc_score

    extra["score_auc"] = float(roc_auc_score(pd.is_poison.numpy(), res.scores.numpy()))
    return res.flagged, summary(res.flagged, pd.is_poison, cpu, wall, extra)


def run_art(kind: str, params: dict[str, Any], net: nn.Module, pd: Any) -> tuple[Tensor, dict[str, Any]]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    layer = params.pop("layer")
    module = Trunk(net) if layer == "penultimate" else net
    clf = PyTorchClassifier(module, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    x = pd.x.numpy()
    y = np.eye(10, dtype=np.float32)[pd.y.numpy()]  # ART's defences take one-hot labels
    c0, t0 = time.process_time(), time.perf_counter()
    if kind == "spectral":
        d = SpectralSignatureDefense(clf, x, y, batch_size=256, eps_multiplier=1.5, expected_pp_poison=params["expected_pp_poison"])
        _, is_clean = d.detect_poison()
    else:
        d = ActivationDefence(clf, x, y)
        _, is_clean = d.detect_poison(nb_clusters=2, nb_dims=10, **params)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    flagged = torch.tensor(np.asarray(is_clean) == 0)
    return flagged, summary(flagged, pd.is_poison, cpu, wall, {"params": {**params, "layer": layer}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", default="all", choices=("victim", "all"))
    ap.add_argument("--no-retrain", action="store_true")
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated case numbers (for a partial run; writes no JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # ART's KMeans/FastICA draw from the global RNGs
    np.random.seed(args.seed)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    xtr, ytr = mnist_train()
    xte, yte = mnist_test()
    atk = gt.attacks.create("badnets", **ATTACK)
    pd = atk.poison(xtr, ytr, seed=args.seed)
    log(f"poisoned {pd.n_poison} of {len(pd)} rows ({pd.fraction:.2%})")
    net, cpu = trained("lenet5", pd.x, pd.y, args.epochs, args.seed)
    victim = evaluate(net, atk, xte, yte)
    log(f"victim: {victim} (trained in {cpu:.0f} cpu s)")
    if args.stage == "victim":
        return
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    share_in_target = pd.n_poison / int((pd.y == ATTACK["target_class"]).sum())
    eps = ATTACK["fraction"]
    # (tool, method, params, retrain on what it keeps)
    cases: list[tuple[str, str, dict[str, Any], bool]] = [
        ("gauntlet", "spectral_signatures", {"expected_fraction": eps}, True),
        ("gauntlet", "spectral_signatures", {"expected_fraction": eps, "whiten": False}, True),
        ("gauntlet", "spectral_signatures", {"expected_fraction": round(share_in_target, 4), "budget": "per_class"}, False),
        ("gauntlet", "activation_clustering", {}, True),
        ("gauntlet", "activation_clustering", {"silhouette_threshold": 0.1}, False),
        ("gauntlet", "activation_clustering", {"criterion": "size"}, False),
        ("gauntlet", "activation_clustering", {"reduce": "pca"}, False),
    ]
    if not args.no_art:
        for layer in ("logits", "penultimate"):
            cases += [
                ("art", "spectral", {"expected_pp_poison": eps, "layer": layer}, layer == "logits"),
                ("art", "spectral", {"expected_pp_poison": round(share_in_target, 4), "layer": layer}, False),
                ("art", "activation", {"reduce": "PCA", "cluster_analysis": "smaller", "layer": layer}, layer == "logits"),
                ("art", "activation", {"reduce": "FastICA", "cluster_analysis": "relative-size", "layer": layer}, False),
            ]
    if args.only:
        cases = [cases[int(i)] for i in args.only.split(",")]
    rows: list[dict[str, Any]] = []
    for tool, name, params, retrain in cases:
        log(f"{tool} {name} {params} ...")
        key = hashlib.sha256(json.dumps([tool, name, params, args.seed, args.epochs]).encode()).hexdigest()[:16]
        done = CACHE / f"detect-{key}.pt"
        if done.exists():  # a finished detection (flagged rows and its row of the table), e.g. from a partial run
            flagged, r = torch.load(done, weights_only=False)
        else:
            if tool == "gauntlet":
                flagged, r = run_gauntlet(name, dict(params), model, pd, args.seed)
            else:
                torch.manual_seed(args.seed)
                np.random.seed(args.seed)
                try:
                    flagged, r = run_art(name, dict(params), net, pd)
                except Exception as exc:  # noqa: BLE001 - a peer's own failure is a result to report
                    flagged, r = None, {"params": params, "error": f"{type(exc).__name__}: {exc}"}
            r = {"tool": tool, "method": name, **r}
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save((flagged, r), done)
        if flagged is None:
            log(f"  failed: {r['error']}")
            rows.append(r)
            continue
        log(f"  recall {r['recall']:.3f} removed/poison {r['removed_per_poison']:.2f} precision {r['precision']:.3f} "
            f"({r['cpu_s']:.0f} cpu s)")
        if retrain and not args.no_retrain:
            xk, yk = pd.without(flagged)
            rnet, rcpu = trained("lenet5", xk, yk, args.epochs, args.seed)
            r["after_retraining"] = {**evaluate(rnet, atk, xte, yte), "train_cpu_s": rcpu}
            log(f"  retrained: {r['after_retraining']}")
        rows.append(r)
    out: dict[str, Any] = {"attack": {"name": "badnets", **ATTACK, "seed": args.seed, "n_poison": pd.n_poison,
                                      "poison_share_in_target_class": share_in_target},
                           "victim": {"arch": "lenet5", "epochs": args.epochs, "batch_size": 128, "lr": 1e-3,
                                      "train_cpu_s": cpu, **victim},
                           "results": rows, "environment": environment()}
    if not args.only:
        path = write_json("sanitize.json", out)
        log(f"wrote {path}")
    print(table(out))


def table(out: dict[str, Any]) -> str:
    headers = ["tool", "method", "settings", "recall", "removed / poison", "precision", "ASR after", "clean acc after", "cpu s"]
    rows = []
    for r in out["results"]:
        p = {k: v for k, v in r["params"].items()}
        after = r.get("after_retraining", {})
        if "error" in r:
            rows.append([r["tool"], r["method"], ", ".join(f"{k}={v}" for k, v in p.items()), "failed: " + r["error"][:60],
                         None, None, None, None, None])
            continue
        rows.append([r["tool"], r["method"], ", ".join(f"{k}={v}" for k, v in p.items()) or "defaults", f"{r['recall']:.3f}",
                     f"{r['removed_per_poison']:.2f}", f"{r['precision']:.3f}", after.get("asr"), after.get("clean_accuracy"),
                     f"{r['cpu_s']:.1f}"])
    v = out["victim"]
    head = (f"victim LeNet5 ({v['epochs']} epochs) on BadNets 1%: ASR {v['asr']:.3f}, clean accuracy {v['clean_accuracy']:.4f}; "
            f"{out['attack']['n_poison']} poison rows\n\n")
    return head + markdown_table(headers, rows)


if __name__ == "__main__":
    main()
