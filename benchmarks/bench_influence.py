"""Influence functions vs actual leave-one-out retraining on MNIST logistic regression
(Koh & Liang 2017, Figure 2; the issue's must-reach figure: Pearson >= 0.95 on 50 training points).

One command (from the project root)::

    .venv/bin/python benchmarks/bench_influence.py

Setting, one CPU thread, float64: MNIST 1 vs 7 (Koh & Liang's binary pair; every training image
of the two classes, ~13,000 rows, 784 pixels in [0, 1]), a two-logit logistic regression
(``nn.Linear(784, 2)``, 1,570 parameters) trained with mean cross-entropy + (l2/2)·‖θ‖²,
``l2 = 0.01`` (Koh & Liang's weight decay), by full-batch L-BFGS until every gradient entry is below 1e-10 (the JSON records the
gradient's 2-norm).
For each test point (by default the test image of highest loss and the one at the 90th loss
percentile) the influence ``I_up,loss`` of every training row is computed with ``exact``
(explicit 1,570 × 1,570 Hessian, Cholesky), ``cg`` and ``lissa``; the 50 training rows of largest
predicted influence (Koh & Liang's "maxinf" protocol) and, for the first ``--random-tests`` test points, 50 random rows are removed one at a time
and the model retrained (warm start from the optimum, same L-BFGS, same tolerance); the predicted
change ``-I_up,loss/n`` is compared with the actual change of the test loss (Pearson r, and the
slope of actual on predicted).  CPU and wall time of each method are reported.

No peer: IBM ART 1.20.1 has no influence functions (its poison detectors are activation
clustering, provenance, RONI and spectral signatures), so there is nothing to run beside it.

Options: ``--points 50``, ``--tests 2``, ``--random-tests 1``, ``--l2 0.01``, ``--lissa-depth 1000``,
``--lissa-batch 50``, ``--lissa-repeats 4``, ``--seed 0``.  Writes
``benchmarks/results/influence.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import environment, markdown_table, shared_dir, write_json

import gauntlet as gt
from gauntlet.data import load_idx
from gauntlet.defenses.sanitize.influence import Influence


def mnist_pair(split: str, a: int = 1, b: int = 7) -> tuple[Tensor, Tensor]:
    ds = load_idx(shared_dir() / "data" / "mnist", split=split)
    keep = (ds.y == a) | (ds.y == b)
    return ds.x[keep].contiguous(), (ds.y[keep] == b).long()


def penalised_loss(net: nn.Module, x: Tensor, y: Tensor, l2: float) -> Tensor:
    return F.cross_entropy(net(x), y) + l2 / 2 * sum((p**2).sum() for p in net.parameters())


def fit(net: nn.Module, x: Tensor, y: Tensor, l2: float, tol: float = 1e-10, rounds: int = 10) -> nn.Module:
    """Full-batch L-BFGS (strong Wolfe) on the penalised mean loss until every gradient entry is below tol."""
    opt = torch.optim.LBFGS(
        net.parameters(), lr=1, max_iter=500, tolerance_grad=tol, tolerance_change=0, history_size=30,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = penalised_loss(net, x, y, l2)
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
        if grad_norm(net, x, y, l2, p=float("inf")) < tol:
            break
    return net


def grad_norm(net: nn.Module, x: Tensor, y: Tensor, l2: float, p: float = 2) -> float:
    g = torch.autograd.grad(penalised_loss(net, x, y, l2), list(net.parameters()))
    return float(torch.cat([t.flatten() for t in g]).norm(p=p))


def pearson(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Any) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--tests", type=int, default=2)
    ap.add_argument("--random-tests", type=int, default=1)
    ap.add_argument("--l2", type=float, default=0.01)
    ap.add_argument("--lissa-depth", type=int, default=1000)
    ap.add_argument("--lissa-batch", type=int, default=50)
    ap.add_argument("--lissa-repeats", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    x, y = mnist_pair("train")
    xt_all, yt_all = mnist_pair("test")
    n, xd = len(y), x.double()
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 2)).double()
    _, fit_wall, fit_cpu = timed(lambda: fit(net, xd, y, args.l2))
    gnorm = grad_norm(net, xd, y, args.l2)
    with torch.no_grad():
        test_losses = F.cross_entropy(net(xt_all.double()), yt_all, reduction="none")
        test_acc = float((net(xt_all.double()).argmax(1) == yt_all).double().mean())
    log(f"n={n}, fit {fit_cpu:.1f}s cpu, grad norm {gnorm:.2e}, test accuracy {test_acc:.4f}")
    order = test_losses.argsort(descending=True)
    picks = [int(order[0]), int(order[int(0.1 * len(order))])][: args.tests]
    model = gt.models.TorchModel(net, num_classes=2, input_shape=(1, 28, 28))
    theta = copy.deepcopy(net.state_dict())

    methods = {
        "exact": {},
        "cg": {},
        "lissa": {"lissa_depth": args.lissa_depth, "lissa_batch_size": args.lissa_batch, "lissa_repeats": args.lissa_repeats},
    }
    results: list[dict[str, Any]] = []
    for t in picks:
        xt, yt = xt_all[t : t + 1], yt_all[t : t + 1]
        base = float(test_losses[t])
        infl: dict[str, Tensor] = {}
        rec: dict[str, Any] = {"test_index": t, "test_label": int(yt), "test_loss": base, "methods": {}}
        for name, opts in methods.items():
            def run(name: str = name, opts: dict = opts, xt: Tensor = xt, yt: Tensor = yt) -> tuple[Tensor, dict]:
                inf = Influence(model, x, y, method=name, l2=args.l2, seed=args.seed, **opts)
                return inf.on_test(xt, yt)[:, 0], inf.info

            (vals, info), wall, cpu = timed(run)
            infl[name] = vals
            rec["methods"][name] = {
                "wall_s": wall, "cpu_s": cpu,
                "info": {k: v for k, v in info.items() if k != "params"},
            }
            log(f"test {t}: {name} {cpu:.1f}s cpu {wall:.1f}s wall {rec['methods'][name]['info']}")
        g = torch.Generator().manual_seed(args.seed)
        selections = {"maxinf": (-infl["exact"] / n).abs().topk(args.points).indices}
        if len(results) < args.random_tests:
            selections["random"] = torch.randperm(n, generator=g)[: args.points]
        for sel, rows in selections.items():
            actual = []
            c0, t0 = time.process_time(), time.perf_counter()
            worst = 0.0
            for i in rows.tolist():
                keep = torch.ones(n, dtype=torch.bool)
                keep[i] = False
                loo = fit(copy.deepcopy(net), xd[keep], y[keep], args.l2)
                worst = max(worst, grad_norm(loo, xd[keep], y[keep], args.l2))
                with torch.no_grad():
                    actual.append(float(F.cross_entropy(loo(xt.double()), yt)) - base)
            loo_cpu, loo_wall = time.process_time() - c0, time.perf_counter() - t0
            a = torch.tensor(actual, dtype=torch.float64)
            rec[sel] = {"rows": rows.tolist(), "actual": actual, "loo_cpu_s": loo_cpu, "loo_wall_s": loo_wall,
                        "loo_max_grad_norm": worst, "methods": {}}
            for name, vals in infl.items():
                p = -vals[rows] / n
                rec[sel]["methods"][name] = {
                    "predicted": p.tolist(), "pearson": pearson(a, p), "slope": float((a * p).sum() / (p * p).sum()),
                }
            log(f"test {t} {sel}: LOO {loo_cpu:.1f}s cpu; " + ", ".join(
                f"{k} r={v['pearson']:.4f}" for k, v in rec[sel]["methods"].items()))
        rec["agreement_with_exact"] = {k: pearson(infl[k], infl["exact"]) for k in ("cg", "lissa")}
        results.append(rec)
        assert all(torch.equal(v, theta[k]) for k, v in net.state_dict().items())

    rows_md = []
    for rec in results:
        for name in methods:
            m = rec["methods"][name]
            rows_md.append([
                f"{rec['test_index']} (loss {rec['test_loss']:.2f})", name,
                rec["maxinf"]["methods"][name]["pearson"], rec["maxinf"]["methods"][name]["slope"],
                rec["random"]["methods"][name]["pearson"] if "random" in rec else None,
                rec["agreement_with_exact"].get(name, 1.0), m["cpu_s"], m["wall_s"],
            ])
    table = markdown_table(
        ["test point", "method", "r (50 maxinf)", "slope", "r (50 random)", "r vs exact", "cpu s", "wall s"], rows_md
    )
    print(table)
    out = {
        "setting": {
            "data": "MNIST 1 vs 7, all training rows", "n_train": n, "model": "nn.Linear(784, 2), float64",
            "l2": args.l2, "fit": "full-batch L-BFGS, every gradient entry < 1e-10", "train_grad_norm": gnorm,
            "fit_cpu_s": fit_cpu, "fit_wall_s": fit_wall, "test_accuracy": test_acc, "points": args.points,
            "lissa": methods["lissa"], "seed": args.seed,
            "peer": "none: ART 1.20.1 has no influence functions",
        },
        "results": results,
        "table": table,
        "environment": environment(),
    }
    path = write_json("influence.json", out)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
