"""Input-space and training-time sanitizers (``isolation_forest``, ``clustering``,
``loss_monitor``, ``strip``) on BadNets and label-flip poison, with ART's STRIP on the same models.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_sanitize_input.py

Setup (one torch thread):

* **digits** (the bundled 8×8 digits, ``load_digits("train")`` / ``("test")``), for each poison
  share 1%, 5%, 10% and each seed (``--seeds 0,1,2``): BadNets
  (``gt.attacks.create("badnets", fraction=…, target_class=0, patch_size=2, pattern="square",
  margin=0)``: a solid 2×2 corner trigger), the zoo's ``DigitsCNN`` trained 15 epochs on it
  (``train_classifier``, seeded); and random label flips at the same share (each flipped row gets
  one of the 9 other labels).  Every sanitizer gets ``expected_fraction`` = the poison share and
  the default ``removal_factor=1.5`` (1.5× the poison share is flagged, so precision is at most
  0.67 when recall is 1); reported: ROC AUC of its scores against the poison mask, precision and
  recall of what it flags, mean (and min) over the seeds.  Sanitizers: ``clustering`` on the
  input (``score="ratio"``, the default, and ``"spread"``), ``isolation_forest`` on the input,
  ``loss_monitor`` (``mode="low"`` 2 epochs and ``mode="high"`` 3 epochs, a fresh DigitsCNN),
  ``strip`` detect on the training rows (the training rows as the blend pool), BadNets only.
* **STRIP at inference**: ``strip`` fitted on the victim with the first 225 test images as the
  clean pool (``false_rejection_rate=0.01``), then ``check`` on the other test images (clean
  rejected) and on them with the trigger, target class excluded (triggered caught).  The peer:
  ART 1.20.1's STRIP (``art.defences.transformer.poisoning.STRIP``: ``num_samples=20``,
  ``false_acceptance_rate=0.01``, ``mitigate`` on the same pool, ``predict`` on the same inputs;
  an all-zero prediction row is a rejection) on a ``PyTorchClassifier`` around the same network
  with a softmax appended.
* **MNIST** (``../shared/data/mnist``), one seed (0): BadNets 1% with a 3×3 checkerboard
  (``patch_size=3``), LeNet5 2 epochs (Adam 1e-3, batch 128): the same victim as
  ``benchmarks/bench_sanitize.py`` (its cached weights in ``.gauntlet-cache/bench_sanitize`` are
  reused, else it is trained and cached the same way).  Input-space ``clustering`` (ratio,
  spread), ``isolation_forest``, ``loss_monitor`` (a fresh LeNet5, 2 epochs, batch 128; one
  training run: the ``"low"`` AUC is read from the same loss trajectory as ``"high"``, which is the
  same training), STRIP at inference with pool = test images 0–999 checked on test images
  1000–1999, and ART's STRIP on the same.

Writes ``benchmarks/results/sanitize_input.json`` and prints markdown tables.

Options: ``--seeds 0,1,2``, ``--skip-mnist``, ``--skip-art``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import environment, markdown_table, mnist_test, write_json

import gauntlet as gt
from gauntlet.data import load_digits
from gauntlet.models.zoo import DigitsCNN, LeNet5, train_classifier

FRACTIONS = (0.01, 0.05, 0.10)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def flip_labels(y: Tensor, frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """``round(frac * N)`` random rows relabelled to one of the 9 other classes; the new labels and
    the mask of flipped rows."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    k = round(frac * n)
    r = torch.randperm(n, generator=g)[:k]
    y2 = y.clone()
    y2[r] = (y[r] + torch.randint(1, 10, (k,), generator=g)) % 10
    m = torch.zeros(n, dtype=torch.bool)
    m[r] = True
    return y2, m


def run_sanitizer(name: str, kw: dict[str, Any], model: Any, x: Tensor, y: Tensor, mask: Tensor, seed: int) -> tuple[dict[str, float], Any]:
    c0 = time.process_time()
    r = gt.defenses.create(name, **kw).detect(model, x, y, seed=seed)
    cpu = time.process_time() - c0
    pr = r.precision_recall(mask)
    return {"auc": float(roc_auc_score(mask.numpy(), r.scores.numpy())), "precision": float(pr["precision"]),
            "recall": float(pr["recall"]), "cpu_s": cpu}, r


def art_strip(net: nn.Module, shape: tuple[int, ...], pool: Tensor, clean: Tensor, triggered: Tensor, seed: int) -> dict[str, float]:
    """ART's STRIP on the same network, pool and inputs: share of clean inputs rejected and of
    triggered inputs caught."""
    from art.defences.transformer.poisoning import STRIP
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)  # ART draws its blend partners from numpy's global RNG
    clf = PyTorchClassifier(model=nn.Sequential(net, nn.Softmax(dim=1)), loss=nn.CrossEntropyLoss(), input_shape=shape,
                            nb_classes=10, clip_values=(0.0, 1.0))
    c0 = time.process_time()
    defence = STRIP(clf)(num_samples=20, false_acceptance_rate=0.01)
    defence.mitigate(pool.numpy())
    pc = defence.predict(clean.numpy())
    pt = defence.predict(triggered.numpy())
    return {"clean_rejected": float((pc.sum(1) == 0).mean()), "triggered_caught": float((pt.sum(1) == 0).mean()),
            "cpu_s": time.process_time() - c0}


def strip_inference(model: Any, pool: Tensor, clean: Tensor, triggered: Tensor, fit_seed: int, check_seed: int) -> dict[str, float]:
    c0 = time.process_time()
    s = gt.defenses.create("strip").fit(model, pool, seed=fit_seed)
    fc, _ = s.check(clean, seed=check_seed)
    ft, _ = s.check(triggered, seed=check_seed)
    return {"clean_rejected": float(fc.float().mean()), "triggered_caught": float(ft.float().mean()),
            "cpu_s": time.process_time() - c0}


def mean_min(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {"mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
            "min": {k: float(np.min([r[k] for r in runs])) for k in keys}, "runs": runs}


# ----------------------------------------------------------------------------------------------
def digits(seeds: list[int], skip_art: bool) -> dict[str, Any]:
    d, te = load_digits("train"), load_digits("test")
    arch = gt.models.TorchModel(DigitsCNN(), num_classes=10, input_shape=(1, 8, 8))  # loss_monitor: architecture only
    det: dict[str, dict[str, list[dict[str, float]]]] = {}  # scenario -> sanitizer -> runs
    inf: dict[str, dict[str, list[dict[str, float]]]] = {}  # scenario -> tool -> runs
    victims: dict[str, list[dict[str, float]]] = {}
    for frac in FRACTIONS:
        for seed in seeds:
            t0 = time.perf_counter()
            atk = gt.attacks.create("badnets", fraction=frac, target_class=0, patch_size=2, pattern="square", margin=0)
            pd = atk.poison(d.x, d.y, seed=seed)
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                net = DigitsCNN()
            net = train_classifier(net, pd.x, pd.y, epochs=15, seed=seed)
            vic = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))
            acc = float((vic.predict(te.x, count=False) == te.y).float().mean())
            victims.setdefault(f"badnets {frac:.0%}", []).append({"clean_accuracy": acc, "asr": atk.attack_success_rate(vic, te.x, te.y)})
            scen = f"badnets {frac:.0%}"
            cases: list[tuple[str, Any, str, dict[str, Any]]] = [
                ("clustering (ratio, input; default)", None, "clustering", {}),
                ("clustering (spread, input)", None, "clustering", {"score": "spread"}),
                ("isolation_forest (input)", None, "isolation_forest", {}),
                ("loss_monitor low (2 ep)", arch, "loss_monitor", {"mode": "low", "epochs": 2}),
                ("loss_monitor high (3 ep)", arch, "loss_monitor", {"mode": "high", "epochs": 3}),
                ("strip detect (training rows as pool)", vic, "strip", {}),
            ]
            for key, model, name, kw in cases:
                if name != "strip":
                    kw = {**kw, "expected_fraction": frac}
                res, _ = run_sanitizer(name, kw, model, pd.x, pd.y, pd.is_poison, seed)
                det.setdefault(scen, {}).setdefault(key, []).append(res)
            # STRIP at inference: pool = first 225 test images, checked on the rest
            pool, x, y = te.x[:225], te.x[225:], te.y[225:]
            trig = atk.apply_trigger(x[y != 0])
            inf.setdefault(scen, {}).setdefault("gauntlet strip", []).append(strip_inference(vic, pool, x, trig, seed, seed))
            if not skip_art:
                inf[scen].setdefault("ART STRIP", []).append(art_strip(net, (1, 8, 8), pool, x, trig, seed))
            # label flips at the same share
            yf, mf = flip_labels(d.y, frac, seed)
            fscen = f"flips {frac:.0%}"
            for key, model, name, kw in cases[:5]:
                res, _ = run_sanitizer(name, {**kw, "expected_fraction": frac}, model, d.x, yf, mf, seed)
                det.setdefault(fscen, {}).setdefault(key, []).append(res)
            log(f"digits {frac:.0%} seed {seed}: done in {time.perf_counter() - t0:.0f} s")
    return {"detection": {s: {k: mean_min(v) for k, v in per.items()} for s, per in det.items()},
            "strip_inference": {s: {k: mean_min(v) for k, v in per.items()} for s, per in inf.items()},
            "victims": {s: mean_min(v) for s, v in victims.items()}, "seeds": seeds}


# ----------------------------------------------------------------------------------------------
def mnist(skip_art: bool) -> dict[str, Any]:
    from bench_sanitize import ATTACK, mnist_train, trained  # same victim and weight cache

    seed = 0
    xtr, ytr = mnist_train()
    xte, yte = mnist_test()
    atk = gt.attacks.create("badnets", **ATTACK)
    pd = atk.poison(xtr, ytr, seed=seed)
    net, train_cpu = trained("lenet5", pd.x, pd.y, 2, seed)
    vic = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    victim = {"clean_accuracy": float((vic.predict(xte, count=False) == yte).float().mean()),
              "asr": atk.attack_success_rate(vic, xte, yte), "train_cpu_s": train_cpu}
    log(f"mnist victim: {victim}")
    fresh = gt.models.TorchModel(LeNet5(), num_classes=10, input_shape=(1, 28, 28))  # loss_monitor: architecture only
    det: dict[str, dict[str, float]] = {}
    eps = ATTACK["fraction"]
    for key, model, name, kw in [
        ("clustering (ratio, input; default)", None, "clustering", {}),
        ("clustering (spread, input)", None, "clustering", {"score": "spread"}),
        ("isolation_forest (input)", None, "isolation_forest", {}),
        ("loss_monitor high (2 ep)", fresh, "loss_monitor", {"mode": "high", "epochs": 2, "batch_size": 128}),
    ]:
        res, r = run_sanitizer(name, {**kw, "expected_fraction": eps}, model, pd.x, pd.y, pd.is_poison, seed)
        det[key] = res
        log(f"mnist {key}: {res}")
        if name == "loss_monitor":
            # mode only picks the tail; the training (same seed) and so the loss trajectory are the same
            low = -r.info["losses"].mean(0)
            det["loss_monitor low (2 ep)"] = {"auc": float(roc_auc_score(pd.is_poison.numpy(), low.numpy())),
                                              "note": "AUC from the same loss trajectory as the high run"}  # type: ignore[dict-item]
    pool, xc, yc = xte[:1000], xte[1000:2000], yte[1000:2000]
    trig = atk.apply_trigger(xc[yc != 0])
    inf = {"gauntlet strip": strip_inference(vic, pool, xc, trig, seed, 1)}
    log(f"mnist strip: {inf['gauntlet strip']}")
    if not skip_art:
        inf["ART STRIP"] = art_strip(net, (1, 28, 28), pool, xc, trig, seed)
        log(f"mnist ART STRIP: {inf['ART STRIP']}")
    return {"attack": {"name": "badnets", **ATTACK, "seed": seed, "n_poison": pd.n_poison},
            "victim": {"arch": "lenet5", "epochs": 2, "batch_size": 128, "lr": 1e-3, **victim},
            "detection": det, "strip_inference": inf}


# ----------------------------------------------------------------------------------------------
def fmt(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    if "precision" not in r:
        return f"AUC {r['auc']:.3f}"
    return f"{r['auc']:.3f} / {r['precision']:.2f} / {r['recall']:.2f}"


def tables(out: dict[str, Any]) -> str:
    parts: list[str] = []
    dg = out.get("digits")
    mn = out.get("mnist")
    scen = list(dg["detection"]) if dg else []
    order = ["badnets 1%", "badnets 5%", "badnets 10%", "flips 1%", "flips 5%", "flips 10%"]
    scen = [s for s in order if s in scen]
    keys: list[str] = []
    for s in scen:
        keys += [k for k in dg["detection"][s] if k not in keys]
    if mn:
        keys += [k for k in mn["detection"] if k not in keys]
    headers = ["sanitizer (AUC / precision / recall)"] + [f"digits {s}" for s in scen] + (["MNIST BadNets 1%"] if mn else [])
    rows = []
    for k in keys:
        row = [k] + [fmt(dg["detection"][s].get(k, {}).get("mean")) if k in dg["detection"][s] else "–" for s in scen]
        if mn:
            row.append(fmt(mn["detection"].get(k)))
        rows.append(row)
    if dg:
        parts.append(f"digits: mean over seeds {dg['seeds']}; victim ASR / clean accuracy: "
                     + ", ".join(f"{s} {v['mean']['asr']:.2f} / {v['mean']['clean_accuracy']:.3f}" for s, v in dg["victims"].items()))
    if mn:
        v = mn["victim"]
        parts.append(f"MNIST: LeNet5 2 epochs, ASR {v['asr']:.3f}, clean accuracy {v['clean_accuracy']:.4f}, "
                     f"{mn['attack']['n_poison']} poison rows")
    parts.append(markdown_table(headers, rows))
    iscen = [s for s in order if dg and s in dg["strip_inference"]]
    tools = ["gauntlet strip", "ART STRIP"]
    headers = ["STRIP inference: clean rejected / triggered caught"] + [f"digits {s}" for s in iscen] + (["MNIST BadNets 1%"] if mn else [])
    rows = []
    for t in tools:
        row = [t]
        for s in iscen:
            r = dg["strip_inference"][s].get(t)
            row.append(f"{r['mean']['clean_rejected']:.1%} / {r['mean']['triggered_caught']:.1%}" if r else "not run")
        if mn:
            r = mn["strip_inference"].get(t)
            row.append(f"{r['clean_rejected']:.1%} / {r['triggered_caught']:.1%}" if r else "not run")
        rows.append(row)
    parts.append(markdown_table(headers, rows))
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for the digits runs")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--skip-art", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    out["digits"] = digits(seeds, args.skip_art)
    log(f"digits done in {time.perf_counter() - t0:.0f} s")
    if not args.skip_mnist:
        out["mnist"] = mnist(args.skip_art)
    out["wall_s"] = time.perf_counter() - t0
    out["environment"] = environment()
    path = write_json("sanitize_input.json", out)
    log(f"wrote {path} ({out['wall_s']:.0f} s)")
    print(tables(out))


if __name__ == "__main__":
    main()
