"""Ownership watermarks: verification of the owner's model, its Knockoff copy and independently
trained models, for the trigger-set watermark and the entangled watermark (issue 13).

Must reach: verification separates the owner's model and its Knockoff copy (p < 1e-3) from 5
independently trained models (p > 0.05).  MNIST (``--train`` training images), LeNet5 from
gauntlet's zoo, ``standard`` training (Adam, ``--epochs``).  Two owners:

* ``watermark`` (Adi et al. 2018): a 100-input noise trigger set with random labels, ``repeats``
  copies mixed into training;
* ``entangled_watermark`` (Jia et al. 2021): ``--epochs`` of normal training, then
  ``--epochs`` of the watermark phase (source-class images with a trigger square, labelled as
  the target class, entangled with it by the soft nearest neighbour loss); verified on
  ``--verify`` held-out watermarked source-class images.

Five independent models train on the same data without a watermark (seeds 1-5); both
watermarks are checked on all five.  The thief runs Knockoff (``--queries`` natural MNIST
training queries, soft labels, a LeNet5 copy, ``--epochs`` epochs, attack seed 0) against each
owner.  Test accuracy is reported for every model (the cost of a watermark: its owner against the
five).

Whether a Knockoff copy inherits the entangled watermark varies from owner to owner, so the
entangled watermark is embedded once per ``--owner-seeds`` seed ``s`` (the held-out split, the
network's initialisation and the training order all drawn from ``s``), each owner gets its own
Knockoff copy, and the five independents are checked against every owner's verification set.
``--ewe '{"trigger_size": 5}'`` overrides entangled-watermark parameters (the variants of
BENCHMARKS.md section 31).

    .venv/bin/python benchmarks/bench_watermark.py [--train 20000] [--epochs 5] [--owner-seeds 10 11 12 13 14]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch
from _common import markdown_table, shared_dir, write_json

import gauntlet as gt
from gauntlet.data.idx import load_idx
from gauntlet.models.zoo import LeNet5

# the entangled watermark's setting: the authors' MNIST recipe, but the SNNL at temperature 1 and
# weight 4 (at the authors' temperature 100 the cosine kernel is flat and the SNNL barely acts).
# Its Knockoff copy was verified for 2 of the 5 default owner seeds; a 5x5 trigger or weight 16
# did not do reliably better (BENCHMARKS.md section 31)
EWE_PARAMS: dict[str, Any] = {"source": 1, "target": 7, "temperature": 1.0, "snnl_weight": 4.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--verify", type=int, default=200, help="held-out watermarked inputs of the entangled watermark")
    ap.add_argument("--owner-seeds", type=int, nargs="+", default=[10, 11, 12, 13, 14],
                    help="one entangled owner (and its Knockoff copy) per seed")
    ap.add_argument("--ewe", default="{}", help="JSON overrides of the entangled watermark's parameters")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = shared_dir() / "data" / "mnist"
    tr, te = load_idx(folder, split="train"), load_idx(folder, split="test")
    x, y = torch.as_tensor(np.asarray(tr.x))[: args.train], torch.as_tensor(np.asarray(tr.y))[: args.train]
    xt, yt = torch.as_tensor(np.asarray(te.x)), torch.as_tensor(np.asarray(te.y))
    pool = torch.as_tensor(np.asarray(tr.x))
    recipe = {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "progress": False}
    ewe_params = {**EWE_PARAMS, "verification_size": args.verify, "watermark_epochs": args.epochs, **json.loads(args.ewe)}

    def wrap(net: torch.nn.Module) -> gt.models.TorchModel:
        return gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))

    def acc(m: gt.models.Model) -> float:
        return float((m.predict(xt, count=False) == yt).double().mean())

    def steal(owner: gt.models.Model) -> tuple[gt.models.Model, float, float]:
        t0 = time.perf_counter()
        res = gt.attacks.create("knockoff", max_queries=args.queries, query_set=pool, epochs=args.epochs).run(owner, seed=0)
        return res.model, res.fidelity(xt), time.perf_counter() - t0

    # -- the five independent models (no watermark)
    independents: list[tuple[gt.models.TorchModel, float, float]] = []
    for s in range(1, 6):
        t0 = time.perf_counter()
        net = gt.models.torch_model.reinitialise(LeNet5(), s)
        gt.defenses.training.train(net, x, y, method="standard", seed=s, **recipe)
        m = wrap(net)
        independents.append((m, acc(m), time.perf_counter() - t0))
    indep_mean = statistics.mean(a for _, a, _ in independents)

    # -- the trigger-set watermark: one owner, its Knockoff copy, the five independents
    adi = gt.defenses.create("watermark", trigger_size=100, repeats=20, seed=12345)
    t0 = time.perf_counter()
    net = gt.models.torch_model.reinitialise(LeNet5(), 0)
    adi.embed(net, x, y, seed=0, **recipe)
    adi_owner = wrap(net)
    adi_sec = time.perf_counter() - t0
    copy, fid, copy_sec = steal(adi_owner)
    adi_rows: list[dict[str, Any]] = []
    for label, model, sec in [("owner (watermarked)", adi_owner, adi_sec),
                              *((f"independent #{i}", m, t) for i, (m, _, t) in enumerate(independents, 1)),
                              (f"Knockoff copy of the owner (fidelity {100 * fid:.1f}%)", copy, copy_sec)]:
        r = adi.verify(model)
        adi_rows.append({"model": label, "matches": r.matches, "n": r.n, "p_value": r.p_value, "owned": r.owned,
                         "test_accuracy": acc(model), "seconds": sec})
        print("watermark", adi_rows[-1], flush=True)

    # -- the entangled watermark: one owner and one Knockoff copy per owner seed
    ewe_rows: list[dict[str, Any]] = []
    for s in args.owner_seeds:
        ewe = gt.defenses.create("entangled_watermark", **{**ewe_params, "seed": s})
        t0 = time.perf_counter()
        net = gt.models.torch_model.reinitialise(LeNet5(), s)
        res = ewe.embed(net, x, y, seed=s, **recipe)
        owner = wrap(net)
        owner_sec = time.perf_counter() - t0
        copy, fid, copy_sec = steal(owner)
        ro, rc = ewe.verify(owner), ewe.verify(copy)
        ri = [ewe.verify(m) for m, _, _ in independents]
        row = {"owner_seed": s, "trigger_position": list(ewe.trigger_position or ()),
               "temperatures": res.info["temperatures"],
               "owner": {"matches": ro.matches, "n": ro.n, "p_value": ro.p_value, "test_accuracy": acc(owner),
                         "seconds": owner_sec},
               "copy": {"matches": rc.matches, "n": rc.n, "p_value": rc.p_value, "owned": rc.owned, "fidelity": fid,
                        "answers_source": int((ewe.answers(copy) == ewe.source).sum()), "test_accuracy": acc(copy),
                        "seconds": copy_sec},
               "independents": [{"matches": r.matches, "p_value": r.p_value, "owned": r.owned} for r in ri]}
        ewe_rows.append(row)
        print("entangled_watermark", row, flush=True)

    print(f"\nindependents: test accuracy {', '.join(f'{100 * a:.2f}%' for _, a, _ in independents)} "
          f"(mean {100 * indep_mean:.2f}%)")
    print("\nwatermark (trigger set):")
    print(markdown_table(["model", "trigger matches", "p-value", "owned (p < 1e-3)", "test acc", "s"],
                         [[r["model"], f"{r['matches']}/{r['n']}", f"{r['p_value']:.2e}", "yes" if r["owned"] else "no",
                           f"{100 * r['test_accuracy']:.2f}%", f"{r['seconds']:.0f}"] for r in adi_rows]))
    print(f"\nentangled_watermark {ewe_params}:")
    print(markdown_table(
        ["owner seed", "trigger", "owner acc", "owner target answers", "copy target answers", "copy p-value",
         "copy fidelity", "copy acc", "independents' target answers", "smallest independent p"],
        [[r["owner_seed"], tuple(r["trigger_position"]), f"{100 * r['owner']['test_accuracy']:.2f}%",
          f"{r['owner']['matches']}/{r['owner']['n']}", f"{r['copy']['matches']}/{r['copy']['n']}",
          f"{r['copy']['p_value']:.1e}", f"{100 * r['copy']['fidelity']:.1f}%", f"{100 * r['copy']['test_accuracy']:.2f}%",
          ", ".join(str(i["matches"]) for i in r["independents"]), f"{min(i['p_value'] for i in r['independents']):.2f}"]
         for r in ewe_rows]))
    verified = sum(r["copy"]["owned"] for r in ewe_rows)
    cleared = all(not i["owned"] and i["p_value"] > 0.05 for r in ewe_rows for i in r["independents"])
    print(f"copies verified: {verified}/{len(ewe_rows)}; every independent at p > 0.05: {cleared}")
    write_json("watermark.json", {
        "train": args.train, "epochs": args.epochs, "queries": args.queries,
        "independents_test_accuracy": [a for _, a, _ in independents],
        "watermark": adi_rows, "entangled_watermark_params": ewe_params, "entangled_watermark": ewe_rows})


if __name__ == "__main__":
    main()
