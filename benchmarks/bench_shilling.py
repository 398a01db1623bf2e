"""Shilling benchmark (issue 12 part 4): fake profiles pushing a target item into a matrix-factorisation
recommender's top-10, and the fake-profile detector.

Setup: ``synthetic_ratings`` (1,000 users, 500 items, rank-8 ground truth, power-law item popularity,
log-normal user activity, about 29,000 ratings, seeds 0..S-1); the recommender is
``MatrixFactorization`` (16 factors, 200 full-batch Adam steps, lr 0.05, weight decay 0.05); per
seed the target is a random unpopular item (5-15 ratings) that the clean recommender puts in at most
1% of the genuine users' top-10 (an item worth pushing).  Each attack (filler 5% of the items)
injects 0.5, 1, 2 and 3% fake profiles (of the genuine users); the recommender is retrained on the
poisoned ratings and measured on the genuine users who have not rated the target: hit ratio@10
(HR@10) of the target and the prediction shift of its (clipped) predicted rating.  ``lift`` is
HR@10 after / HR@10 before, with the before value floored at one user (1/eligible users) when no
genuine user had the target in the top-10.  The detector ``fake_profiles`` (fpr 0.05) is fitted on
the clean ratings and run on every poisoned set: recall, precision and false-positive rate.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shilling.py`` (``--seeds 3``).
Results: ``benchmarks/results/shilling.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gauntlet as gt
from gauntlet.learning.recommender import MatrixFactorization, prediction_shift, synthetic_ratings

ATTACKS = ["random_shilling", "average_shilling", "bandwagon_shilling", "optimized_shilling"]
FRACTIONS = [0.005, 0.01, 0.02, 0.03]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        data = synthetic_ratings(seed=seed)
        counts = data.item_counts().numpy()
        genuine = torch.arange(data.n_users)
        before = MatrixFactorization(seed=seed).fit(data)
        # a push target: an unpopular item the recommender does not already push (HR@10 <= 1%)
        tail = [int(j) for j in np.nonzero((counts >= 5) & (counts <= 15))[0] if before.hit_ratio_at(10, int(j), genuine) <= 0.01]
        target = int(np.random.default_rng(seed).choice(tail))
        eligible = int((~before.rated_[:, target]).sum())
        hr0 = before.hit_ratio_at(10, target, genuine)
        det = gt.defenses.create("fake_profiles", seed=seed).fit(data)
        print(f"seed {seed}: target {target} ({int(counts[target])} ratings), HR@10 before {hr0:.4f}", flush=True)
        for name in ATTACKS:
            for frac in FRACTIONS:
                res = gt.attacks.create(name, fraction=frac, target_item=target, seed=seed).inject(data)
                after = MatrixFactorization(seed=seed).fit(res.poisoned)
                hr = after.hit_ratio_at(10, target, genuine)
                found = det.detect(res.poisoned, is_fake=res.is_fake).info
                row = {
                    "seed": seed, "attack": name, "fraction": frac, "n_fake": res.n_fake, "target": target,
                    "hr_before": hr0, "hr_after": hr, "lift": hr / max(hr0, 1.0 / eligible),
                    "shift": prediction_shift(before, after, target, genuine),
                    "recall": found["recall"], "precision": found["precision"], "fpr": found["fpr"],
                }
                runs.append(row)
                print(
                    f"  {name:20s} {frac:5.3f}: HR@10 {hr:.3f} (x{row['lift']:.1f}) shift {row['shift']:+.2f}  "
                    f"detector recall {found['recall']:.2f} precision {found['precision']:.2f} fpr {found['fpr']:.3f}",
                    flush=True,
                )
    mean = statistics.mean
    print("\n| attack | fake share | HR@10 before | HR@10 after | lift | prediction shift | detector recall | precision | FPR |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for name in ATTACKS:
        for frac in FRACTIONS:
            rs = [r for r in runs if r["attack"] == name and r["fraction"] == frac]
            s = {k: mean(r[k] for r in rs) for k in ("hr_before", "hr_after", "lift", "shift", "recall", "precision", "fpr")}
            s.update(attack=name, fraction=frac, min_lift=min(r["lift"] for r in rs), min_recall=min(r["recall"] for r in rs))
            summary.append(s)
            print(
                f"| {name} | {frac:.1%} | {s['hr_before']:.4f} | {s['hr_after']:.3f} | {s['lift']:.1f}x (min {s['min_lift']:.1f}x) | "
                f"{s['shift']:+.2f} | {s['recall']:.2f} | {s['precision']:.2f} | {s['fpr']:.3f} |"
            )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "shilling.json").write_text(json.dumps({"runs": runs, "summary": summary, "seconds": time.perf_counter() - t0}, indent=1))
    print(f"\n{time.perf_counter() - t0:.0f} s; results in benchmarks/results/shilling.json")


if __name__ == "__main__":
    main()
