"""Trigger-set watermark: ownership verification of the owner's model, its Knockoff copy and
independently trained models (issue 13).

Must reach: verification separates the owner's model and its Knockoff copy (p < 1e-3) from 5
independently trained models (p > 0.05).  MNIST (``--train`` training images), LeNet5 from
gauntlet's zoo, ``standard`` training (Adam, ``--epochs``); the owner embeds a 100-input trigger
set (``repeats`` copies mixed into training); five independent models train on the same data
without it (other seeds); the thief runs Knockoff (10,000 natural MNIST training queries, soft
labels, a LeNet5 copy) against the owner's model.

    .venv/bin/python benchmarks/bench_watermark.py [--train 20000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import gauntlet as gt
from gauntlet.data.idx import load_idx
from gauntlet.models.zoo import LeNet5

from _common import markdown_table, shared_dir, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--queries", type=int, default=10_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = shared_dir() / "data" / "mnist"
    tr, te = load_idx(folder, split="train"), load_idx(folder, split="test")
    x, y = torch.as_tensor(np.asarray(tr.x))[: args.train], torch.as_tensor(np.asarray(tr.y))[: args.train]
    xt, yt = torch.as_tensor(np.asarray(te.x)), torch.as_tensor(np.asarray(te.y))
    recipe = {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "progress": False}
    wm = gt.defenses.create("watermark", trigger_size=100, repeats=20, seed=12345)

    def wrap(net: torch.nn.Module) -> gt.models.TorchModel:
        return gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))

    def acc(m: gt.models.Model) -> float:
        return float((m.predict(xt, count=False) == yt).double().mean())

    rows, out = [], []

    def record(label: str, model: gt.models.Model, sec: float) -> None:
        r = wm.verify(model)
        out.append({"model": label, "matches": r.matches, "n": r.n, "p_value": r.p_value, "owned": r.owned, "test_accuracy": acc(model), "seconds": sec})
        rows.append([label, f"{r.matches}/{r.n}", f"{r.p_value:.2e}", "yes" if r.owned else "no", f"{100 * acc(model):.2f}%", f"{sec:.0f}"])
        print(rows[-1], flush=True)

    t0 = time.perf_counter()
    owner_net = gt.models.torch_model.reinitialise(LeNet5(), 0)
    wm.embed(owner_net, x, y, seed=0, **recipe)
    owner = wrap(owner_net)
    record("owner (watermarked)", owner, time.perf_counter() - t0)
    for s in range(1, 6):
        t0 = time.perf_counter()
        net = gt.models.torch_model.reinitialise(LeNet5(), s)
        gt.defenses.training.train(net, x, y, method="standard", seed=s, **recipe)
        record(f"independent #{s}", wrap(net), time.perf_counter() - t0)
    t0 = time.perf_counter()
    pool = torch.as_tensor(np.asarray(tr.x))
    res = gt.attacks.create("knockoff", max_queries=args.queries, query_set=pool, epochs=args.epochs).run(owner, seed=0)
    record(f"Knockoff copy of the owner ({res.queries} queries, fidelity {100 * res.fidelity(xt):.1f}%)", res.model, time.perf_counter() - t0)
    print(markdown_table(["model", "trigger matches", "p-value", "owned (p < 1e-3)", "test acc", "s"], rows))
    write_json("watermark.json", {"train": args.train, "epochs": args.epochs, "results": out})


if __name__ == "__main__":
    main()
