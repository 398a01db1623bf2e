"""Model extraction by equation solving and by tree path-finding (Tramèr et al. 2016, §4.1-4.2).

One command (from the project root)::

    .venv/bin/python benchmarks/bench_equation_solving.py

One CPU thread.  Targets are scikit-learn models behind :class:`gauntlet.models.SklearnModel`
(float32 answers, as the adapter returns them), trained on sklearn digits (``load_digits``:
8×8 images scaled to [0, 1], d = 64 features, k = 10 classes; fixed 75/25 split):

1. ``equation_solving`` on ``LogisticRegression(max_iter=1000)`` (multinomial softmax
   regression): the max abs error of the recovered ``W - W[ref]`` and ``b - b[ref]``, queries,
   fidelity (label agreement) on the held-out digits, over 5 seeds; with the default ``d + 1``
   queries and with the issue's ``(d+1)·k`` (``extra_queries = (d+1)(k-1)``).  The same for a
   binary logistic regression (digit >= 5).
2. The same target behind the ``rounding`` output defense (probabilities rounded to 2
   decimals): the error that remains with ``d + 1`` queries and with 2×, 5×, 10× and 30× as
   many (weighted least squares), 3 seeds.
3. ``tree_path_finding`` on ``DecisionTreeClassifier(max_depth=4, 6, 8, random_state=0)``
   fitted on digits (``epsilon = 1e-3``), and on a 4-feature synthetic problem with continuous
   features (depth 5 and 8, 30% label noise; ``epsilon = 1e-3`` and ``1e-5``): leaves and
   splits found vs the tree's, queries, fidelity on held-out data and on 10,000 uniform random
   inputs, seconds.

Peers: IBM ART 1.20.1's extraction attacks are ``CopycatCNN`` and ``KnockoffNets`` (surrogate
training) and ``FunctionallyEquivalentExtraction`` (Jagielski et al. 2020: a one-hidden-layer
ReLU network with a single output); none extracts a softmax regression or a decision tree, so
there is nothing to run beside these two attacks.  The script records that in the JSON.

Writes ``benchmarks/results/equation_solving.json``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import environment, markdown_table, write_json

import gauntlet as gt

D, K = 64, 10


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).double().numpy()


def _weight_errors(info: dict[str, Any], w_true: np.ndarray, b_true: np.ndarray) -> tuple[float, float]:
    ref = info["reference_class"]
    w, b = info["weights"].numpy(), info["bias"].numpy()
    return float(np.abs(w - (w_true - w_true[ref])).max()), float(np.abs(b - (b_true - b_true[ref])).max())


def softmax_regression(train: gt.data.Dataset, test: gt.data.Dataset) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    lr = LogisticRegression(max_iter=1000).fit(_flat(train.x), train.y.numpy())
    binary = LogisticRegression(max_iter=1000).fit(_flat(train.x), (train.y.numpy() >= 5).astype(np.int64))
    rows = []
    cases = [
        ("softmax, d+1", lr, 0, lr.coef_, lr.intercept_),
        ("softmax, (d+1)·k", lr, (D + 1) * (K - 1), lr.coef_, lr.intercept_),
        ("binary logistic, d+1", binary, 0, np.vstack([np.zeros(D), binary.coef_[0]]), np.array([0.0, binary.intercept_[0]])),
    ]
    for label, est, extra, w_true, b_true in cases:
        errs_w, errs_b, fids, secs, queries = [], [], [], [], []
        for seed in range(5):
            target = gt.models.SklearnModel(est, input_shape=(1, 8, 8))
            res = gt.attacks.create("equation_solving", extra_queries=extra).run(target, seed=seed)
            assert res.queries == target.queries
            ew, eb = _weight_errors(res.info, w_true, b_true)
            errs_w.append(ew)
            errs_b.append(eb)
            fids.append(res.fidelity(test.x))
            secs.append(res.seconds)
            queries.append(res.queries)
        rows.append({
            "case": label, "queries": queries[0], "d_plus_1_times_k": (D + 1) * K,
            "max_abs_weight_error_max": max(errs_w), "max_abs_weight_error_median": statistics.median(errs_w),
            "max_abs_bias_error_max": max(errs_b), "fidelity_min": min(fids),
            "seconds_median": statistics.median(secs), "seeds": 5,
        })
    w_norm = float(np.abs(lr.coef_ - lr.coef_.mean(0)).max())
    return {"rows": rows, "target_accuracy": float(lr.score(_flat(test.x), test.y.numpy())), "max_abs_weight": w_norm,
            "lr": lr}


def rounded(lr: Any, test: gt.data.Dataset) -> list[dict[str, Any]]:
    rows = []
    for mult in (1, 2, 5, 10, 30):
        errs_w, errs_b, fids, secs, clipped, under = [], [], [], [], [], []
        for seed in range(3):
            target = gt.defenses.create("rounding", decimals=2).wrap(gt.models.SklearnModel(lr, input_shape=(1, 8, 8)))
            res = gt.attacks.create("equation_solving", extra_queries=(mult - 1) * (D + 1)).run(target, seed=seed)
            ew, eb = _weight_errors(res.info, lr.coef_, lr.intercept_)
            errs_w.append(ew)
            errs_b.append(eb)
            fids.append(res.fidelity(test.x))
            secs.append(res.seconds)
            clipped.append(res.info["clipped"])
            under.append(res.info["underdetermined"])
        rows.append({
            "queries": mult * (D + 1), "multiple_of_d_plus_1": mult,
            "max_abs_weight_error_median": statistics.median(errs_w), "max_abs_weight_error_max": max(errs_w),
            "max_abs_bias_error_median": statistics.median(errs_b), "fidelity_median": statistics.median(fids),
            "fidelity_min": min(fids), "clipped_median": statistics.median(clipped), "underdetermined": any(under),
            "seconds_median": statistics.median(secs), "seeds": 3,
        })
    return rows


def _tree_row(name: str, tree: Any, shape: tuple[int, ...], x_test: torch.Tensor, eps: float = 1e-3) -> dict[str, Any]:
    t = tree.tree_
    leaves = t.children_left == -1
    values = t.value[leaves].reshape(int(leaves.sum()), -1)
    values = values / values.sum(axis=1, keepdims=True)
    true_splits = {(int(t.feature[n]), float(t.threshold[n])) for n in range(t.node_count) if t.children_left[n] != -1}
    target = gt.models.SklearnModel(tree, input_shape=shape)
    res = gt.attacks.create("tree_path_finding", epsilon=eps).run(target, seed=0)
    assert res.queries == target.queries
    found = res.info["split_list"]
    hit = sum(any(f == g and abs(c - thr) <= eps for g, c in found) for f, thr in true_splits)
    x_rand = torch.rand(10_000, *shape, generator=torch.Generator().manual_seed(1))
    return {
        "target": name, "epsilon": eps, "true_leaves": int(leaves.sum()),
        "distinct_leaf_outputs": len({tuple(np.round(v, 9)) for v in values}),
        "leaves_found": res.info["leaves"], "distinct_outputs_found": res.info["distinct_outputs"],
        "true_splits": len(true_splits), "true_splits_found": hit, "splits_found": res.info["splits"],
        "queries": res.queries, "line_searches": res.info["searches"], "overlaps_checked": res.info["overlaps_checked"],
        "fidelity_test": res.fidelity(x_test), "fidelity_uniform_random": res.fidelity(x_rand),
        "seconds": res.seconds, "complete": res.info["complete"],
    }


def trees(train: gt.data.Dataset, test: gt.data.Dataset) -> list[dict[str, Any]]:
    from sklearn.tree import DecisionTreeClassifier  # type: ignore[import-untyped]

    rows = []
    for depth in (4, 6, 8):
        tree = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(_flat(train.x), train.y.numpy())
        rows.append(_tree_row(f"digits, depth {depth}", tree, (1, 8, 8), test.x))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3000, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).astype(int) + (x[:, 2] > 0.3 + 0.4 * x[:, 3]).astype(int)
    y = np.where(rng.uniform(size=3000) < 0.3, rng.integers(0, 3, 3000), y)
    for depth in (5, 8):
        tree = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(x[:2000], y[:2000])
        for eps in (1e-3, 1e-5):
            rows.append(_tree_row(f"synthetic 4 features, depth {depth}", tree, (4,),
                                  torch.as_tensor(x[2000:], dtype=torch.float32), eps))
    return rows


def art_peer() -> dict[str, Any]:
    try:
        import art  # type: ignore[import-untyped]
        from art.attacks import extraction  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return {"installed": False, "error": str(exc)}
    return {
        "installed": True, "version": art.__version__,
        "extraction_attacks": sorted(n for n in dir(extraction) if not n.startswith("_") and n[0].isupper()),
        "note": "no ART attack extracts a softmax regression or a decision tree: FunctionallyEquivalentExtraction "
                "is for a one-hidden-layer ReLU network with one output, CopycatCNN and KnockoffNets train a surrogate",
    }


def main() -> None:
    torch.set_num_threads(1)
    train, test = gt.data.load_digits("train"), gt.data.load_digits("test")
    t0 = time.perf_counter()
    soft = softmax_regression(train, test)
    lr = soft.pop("lr")
    rnd = rounded(lr, test)
    tr = trees(train, test)
    out = {
        "benchmark": "equation_solving",
        "environment": environment(),
        "softmax_regression": soft,
        "rounded_2_decimals": rnd,
        "trees": tr,
        "art": art_peer(),
        "total_seconds": time.perf_counter() - t0,
    }
    path = write_json("equation_solving.json", out)
    print(f"target: LogisticRegression on digits, test accuracy {soft['target_accuracy']:.3f}, "
          f"max |W - mean row| {soft['max_abs_weight']:.2f}")
    print(markdown_table(
        ["case", "queries", "(d+1)·k", "max abs W error (max of 5 seeds)", "max abs b error", "fidelity (min)", "seconds"],
        [[r["case"], r["queries"], r["d_plus_1_times_k"], f"{r['max_abs_weight_error_max']:.1e}",
          f"{r['max_abs_bias_error_max']:.1e}", r["fidelity_min"], f"{r['seconds_median']:.3f}"] for r in soft["rows"]],
    ))
    print()
    print(markdown_table(
        ["queries", "× (d+1)", "max abs W error (median / max)", "max abs b error", "fidelity (median / min)",
         "clipped probabilities", "under-determined", "seconds"],
        [[r["queries"], r["multiple_of_d_plus_1"], f"{r['max_abs_weight_error_median']:.3f} / {r['max_abs_weight_error_max']:.3f}",
          f"{r['max_abs_bias_error_median']:.3f}", f"{r['fidelity_median']:.4f} / {r['fidelity_min']:.4f}",
          r["clipped_median"], r["underdetermined"], f"{r['seconds_median']:.3f}"] for r in rnd],
    ))
    print()
    print(markdown_table(
        ["tree", "epsilon", "leaves (distinct outputs)", "found (distinct)", "splits found / true", "queries",
         "fidelity held-out", "fidelity uniform", "seconds"],
        [[r["target"], f"{r['epsilon']:g}", f"{r['true_leaves']} ({r['distinct_leaf_outputs']})",
          f"{r['leaves_found']} ({r['distinct_outputs_found']})", f"{r['true_splits_found']}/{r['true_splits']}",
          r["queries"], f"{r['fidelity_test']:.4f}", f"{r['fidelity_uniform_random']:.4f}", f"{r['seconds']:.2f}"] for r in tr],
    ))
    print(f"\nART: {out['art']}")
    print(f"wrote {path} ({out['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
