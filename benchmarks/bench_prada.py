"""PRADA query monitoring against extraction streams and benign users (issue 13).

Must reach: the query monitor flags Knockoff before 2,000 queries while flagging < 1% of benign
users' query streams.  Target: advertorch's MNIST LeNet5 (../shared/models).  Benign users: 2,000
queries each, MNIST test images in random order (a different seeded order per user);
``delta`` is calibrated on ``--calib`` benign users at a 1% false-alarm rate and the false-alarm
rate is then measured on ``--benign`` *other* benign users.  Attackers, each through
``prada.wrap(target)`` with a 2,000-query budget: Knockoff with the Jacobian-augmentation query
strategy (Papernot et al. 2017, PRADA's own threat), Knockoff on uniform-noise queries, Knockoff
and Copycat on natural MNIST training images (the in-distribution thief PRADA is not designed to
see), and Copycat on out-of-domain natural images (sklearn's 8x8 digits upscaled to 28x28).

    .venv/bin/python benchmarks/bench_prada.py [--calib 50] [--benign 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import gauntlet as gt
from gauntlet.data import load_digits
from gauntlet.data.idx import load_idx

from _common import load_model, markdown_table, shared_dir, write_json

L = 2000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=50)
    ap.add_argument("--benign", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = shared_dir() / "data" / "mnist"
    tr, te = load_idx(folder, split="train"), load_idx(folder, split="test")
    xtr, xte = torch.as_tensor(np.asarray(tr.x)), torch.as_tensor(np.asarray(te.x))
    target = gt.models.TorchModel(load_model("lenet5_clntrained"), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    prada = gt.defenses.create("prada")

    def stream(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return xte[torch.randperm(len(xte), generator=g)[:L]]

    t0 = time.perf_counter()
    delta = prada.calibrate(target, [stream(s) for s in range(args.calib)], fpr=0.01)
    t_cal = time.perf_counter() - t0
    print(f"delta = {delta:.4f} from {args.calib} benign streams ({t_cal:.0f} s)", flush=True)
    flagged, fired = 0, []
    for s in range(10_000, 10_000 + args.benign):
        w = prada.wrap(target)
        x = stream(s)
        for i in range(0, L, 100):
            w.predict(x[i : i + 100])
        if w.alarm:
            flagged += 1
            fired.append(w.fired_at)
    fpr = flagged / args.benign
    print(f"benign streams flagged: {flagged}/{args.benign} ({100 * fpr:.1f}%)", flush=True)

    digits = load_digits("train").x
    ood = F.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    attackers = [
        ("knockoff, Jacobian augmentation", "knockoff", {"query_set": xtr[:20_000], "query_strategy": "jacobian", "rounds": 5}),
        ("knockoff, uniform noise", "knockoff", {"query_strategy": "random"}),
        ("knockoff, natural MNIST train", "knockoff", {"query_set": xtr}),
        ("copycat, natural MNIST train", "copycat", {"query_set": xtr}),
        ("copycat, out-of-domain digits (8x8 upscaled)", "copycat", {"query_set": ood}),
    ]
    rows, out = [], {"delta": delta, "calibration_streams": args.calib, "benign_streams": args.benign,
                     "benign_flagged": flagged, "benign_false_alarm_rate": fpr, "attackers": []}
    for label, name, params in attackers:
        w = prada.wrap(target)
        t0 = time.perf_counter()
        res = gt.attacks.create(name, max_queries=L, epochs=5, **params).run(w, seed=0)
        sec = time.perf_counter() - t0
        fid = res.fidelity(xte[:2000])
        out["attackers"].append({"attack": label, "queries": res.queries, "fired_at": w.fired_at, "final_w": w.statistic,
                                 "fidelity": fid, "seconds": sec})
        rows.append([label, res.queries, w.fired_at if w.fired_at is not None else "not flagged", f"{w.statistic:.3f}", f"{100 * fid:.1f}%"])
        print(rows[-1], flush=True)
    print(f"\ndelta {delta:.4f} (1% of {args.calib} calibration streams); benign false alarms {flagged}/{args.benign}")
    print(markdown_table(["stream (2,000 queries)", "queries", "flagged at query", "final W", "copy fidelity"], rows))
    write_json("prada.json", out)


if __name__ == "__main__":
    main()
