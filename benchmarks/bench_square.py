"""Square Attack against IBM ART's ``SquareAttack``: success and queries at the same budget.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_square.py

Both tools attack the first ``--n`` MNIST test images (pixels / 255) of advertorch's
clean-trained LeNet5 and of its PGD-adversarially-trained twin (``../shared/models``), untargeted,
on one CPU thread, with the same threat models and the same budgets:

* L∞, ε = 0.3 (Andriushchenko et al. 2020's MNIST radius) and L2, ε = 2.0 (the radius of the
  paper's L2 table for Madry's MNIST model); ``p_init`` = 0.8 for both norms (the paper's value
  for MNIST L∞, and both libraries' default for L2);
* 1,000 and 5,000 queries per point, one run per budget (both tools rescale the ``p`` schedule
  to the budget): gauntlet ``create("square", norm=..., eps=..., max_queries=B, p_init=0.8)``
  (for L2 its default ``l2_bounds="rescale"``; the tool ``gauntlet-clip`` runs the paper's
  ``"clip"``), ART ``SquareAttack(norm=..., eps=..., max_iter=B, p_init=0.8, nb_restarts=1)`` (one candidate
  per standing point per iteration, so ``max_iter`` = B gives ART one candidate more than
  gauntlet, whose B includes the initial stripes/tiles).

Queries are counted the same way for both, by a wrapper around the network (``Counter``): every
row of every forward call is attributed to its point (the rows of a call are the points still
standing, in index order: all ``N`` points, or the current standing set, each row checked to lie
in its point's ε-ball, with a nearest-clean-point fallback that is counted and reported).  Per
point it counts, up to and including the first row the model labels wrongly:

* **distinct queries**: different inputs sent (a repeat of an input already sent for that point
  is free, as with a client-side cache); this is the paper's count.  Both tools occasionally
  propose a candidate they have already tried (early on, a big square has few positions);
* **raw queries**: every row the model received (ART evaluates the current point twice per
  iteration besides the candidate: ``predict`` on all points, then the current loss).  For
  gauntlet this equals its own ``result.info["queries_per_sample"]`` (clean check included),
  which the script checks.

"mean/median queries" are over the clean-correct points each tool fooled; success is over the
clean-correct points, robust accuracy over all points (adversarials checked to be in the ε-ball
and the input range).  ``total rows / point`` is everything the model received, including
ART's queries of points already fooled.  CPU seconds are ``time.process_time`` of the attack
call minus the counter's own bookkeeping.

The default is the full grid (both models × both norms × both budgets) on 200 points, which
takes hours on one loaded core (ART sends ``N`` rows per iteration for as long as any point
stands); ``--plan MODEL:NORM:BUDGET:N,...`` runs chosen cells, e.g. the run of BENCHMARKS.md's L∞ rows (``--plan loaded``;
its L2 cells, on 50 and 20 points, predate ``l2_bounds``)::

    .venv/bin/python benchmarks/bench_square.py --plan lenet5_clntrained:linf:1000:200,\\
    lenet5_clntrained:linf:5000:200,lenet5_clntrained:l2:1000:50,lenet5_advtrained:linf:1000:50,\\
    lenet5_advtrained:l2:1000:50,lenet5_advtrained:linf:5000:20,lenet5_clntrained:l2:5000:20

Options: ``--n 200``, ``--models lenet5_clntrained,lenet5_advtrained``, ``--norms linf,l2``,
``--budgets 1000,5000``, ``--plan ...``, ``--only gauntlet,art`` (L2 cells also take
``art-reference-scale``, ART with its L2 window scaled as in the authors' code, see
``art_reference_scale``, and ``gauntlet-clip``, gauntlet with the paper's ``l2_bounds="clip"``),
``--art-batch 50`` (ART on that many points per ``generate`` call: it queries every point of a call
every iteration, so batches bound its cost; the points do not interact except through ART's
one window position per iteration), ``--seed 0``, ``--out square.json``.  The L2 run in
BENCHMARKS.md::

    .venv/bin/python benchmarks/bench_square.py --plan lenet5_clntrained:l2:1000:200,lenet5_advtrained:l2:1000:200 \\
        --only gauntlet,gauntlet-clip,art,art-reference-scale --art-batch 50 --out square_l2.json
    .venv/bin/python benchmarks/bench_square.py --plan lenet5_clntrained:l2:5000:50,lenet5_advtrained:l2:5000:50 \\
        --only gauntlet,gauntlet-clip,art --art-batch 50 --out square_l2_5000.json

Writes ``benchmarks/results/square.json``.
"""

from __future__ import annotations

import argparse
import logging
import random
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

from _common import environment, load_model, markdown_table, mnist_test, write_json

import gauntlet as gt
from gauntlet.models.base import InputSpec, Model

EPS = {"linf": 0.3, "l2": 2.0}
P_INIT = 0.8


def log(msg: str) -> None:
    print(msg, flush=True)


class Counter(nn.Module):
    """The network behind a per-point query counter (see the module docstring)."""

    def __init__(self, net: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float) -> None:
        super().__init__()
        self.net = net
        self.x = x.flatten(1)
        self.y = y
        self.norm = norm
        self.tol = eps * (1 + 1e-4) + 1e-5
        n = x.shape[0]
        self.standing = torch.arange(n)  # points not fooled yet (rows are attributed to them)
        self.raw = torch.zeros(n, dtype=torch.int64)  # rows received, per point
        self.raw_success = torch.full((n,), -1, dtype=torch.int64)  # raw rows up to the first fooled row
        self.distinct = torch.zeros(n, dtype=torch.int64)  # distinct inputs before success
        self.distinct_success = torch.full((n,), -1, dtype=torch.int64)
        self.seen: list[set[int]] = [set() for _ in range(n)]
        self.fallback_rows = 0
        self.bookkeeping = 0.0  # CPU seconds spent here outside the network

    def _dist(self, rows: Tensor, idx: Tensor) -> Tensor:
        d = rows - self.x[idx]
        return d.abs().amax(1) if self.norm == "linf" else d.norm(dim=1)

    def forward(self, xb: Tensor) -> Tensor:
        out = self.net(xb)
        c0 = time.process_time()
        with torch.no_grad():
            rows = xb.detach().flatten(1).to(self.x.dtype)
            k = rows.shape[0]
            n = self.x.shape[0]
            if k == n:
                idx = torch.arange(n)
            elif k == self.standing.numel():
                idx = self.standing.clone()
            else:
                idx = torch.cdist(rows, self.x).argmin(1)
                self.fallback_rows += k
            bad = self._dist(rows, idx) > self.tol
            if bool(bad.any()):
                idx[bad] = torch.cdist(rows[bad], self.x).argmin(1)
                self.fallback_rows += int(bad.sum())
            self.raw.index_add_(0, idx, torch.ones(k, dtype=torch.int64))
            open_ = (self.raw_success[idx] < 0).nonzero().squeeze(1).tolist()
            arr = rows.numpy()
            for r in open_:  # distinct inputs, only while the point is still standing
                i = int(idx[r])
                h = hash(arr[r].tobytes())
                if h not in self.seen[i]:
                    self.seen[i].add(h)
                    self.distinct[i] += 1
            o = out.detach()
            # a non-finite input or output (ART's L2 update can divide by zero) fools nothing
            fooled = (o.argmax(1) != self.y[idx]) & o.isfinite().all(1) & rows.isfinite().all(1)
            new = fooled & (self.raw_success[idx] < 0)
            if bool(new.any()):
                ids = idx[new]
                self.raw_success[ids] = self.raw[ids]
                self.distinct_success[ids] = self.distinct[ids]
                keep = torch.ones(n, dtype=torch.bool)
                keep[ids] = False
                self.standing = self.standing[keep[self.standing]]
        self.bookkeeping += time.process_time() - c0
        return out


class ScoresOnly(Model):
    """The network behind a scores-only interface (gauntlet's attack sees logits, never gradients)."""

    capabilities = frozenset({"scores", "labels"})
    output = "logits"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.input_spec = InputSpec((1, 28, 28), torch.float32, (0.0, 1.0))
        self._num_classes = 10

    def _forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x)


class Merged:
    """The counts of several ``Counter`` s (one per batch), concatenated in point order."""

    def __init__(self, counters: list[Counter]) -> None:
        self.raw = torch.cat([c.raw for c in counters])
        self.raw_success = torch.cat([c.raw_success for c in counters])
        self.distinct_success = torch.cat([c.distinct_success for c in counters])
        self.fallback_rows = sum(c.fallback_rows for c in counters)
        self.bookkeeping = sum(c.bookkeeping for c in counters)


def stats(net: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, cnt: Counter | Merged, norm: str, eps: float,
          cpu: float, tool: str) -> dict[str, Any]:
    with torch.no_grad():
        clean_ok = net(x).argmax(1) == y
        adv_pred = net(x_adv).argmax(1)
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    valid = (dist <= eps * (1 + 1e-4) + 1e-5) & (x_adv.flatten(1).amin(1) >= -1e-6) & (x_adv.flatten(1).amax(1) <= 1 + 1e-6)
    ok = clean_ok & (adv_pred != y) & valid
    dq = cnt.distinct_success[ok].double()
    rq = cnt.raw_success[ok].double()
    n = x.shape[0]
    return {
        "tool": tool, "n": n, "clean_accuracy": float(clean_ok.float().mean()),
        "success_on_correct": float(ok[clean_ok].float().mean()) if bool(clean_ok.any()) else float("nan"),
        "robust_accuracy": float((clean_ok & ~ok).float().mean()),
        "invalid_adversarials": int((clean_ok & (adv_pred != y) & ~valid).sum()),
        "mean_distinct_queries_successful": float(dq.mean()) if dq.numel() else None,
        "median_distinct_queries_successful": float(dq.median()) if dq.numel() else None,
        "mean_raw_queries_successful": float(rq.mean()) if rq.numel() else None,
        "median_raw_queries_successful": float(rq.median()) if rq.numel() else None,
        "total_rows_per_point": float(cnt.raw.sum()) / n,
        "fallback_rows": cnt.fallback_rows,
        "cpu_seconds": cpu,
        # per point: fooled (a valid adversarial of a clean-correct point), distinct queries to success
        "fooled_points": ok.nonzero().squeeze(1).tolist(),
        "distinct_queries_per_point": cnt.distinct_success.tolist(),
        "_ok": ok, "_distinct": cnt.distinct_success.clone(), "_raw": cnt.raw_success.clone(),
    }


def run_gauntlet(net: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, budget: int, seed: int,
                 l2_bounds: str = "rescale") -> dict[str, Any]:
    cnt = Counter(net, x, y, norm, eps).eval()
    attack = gt.attacks.create("square", norm=norm, eps=eps, max_queries=budget, p_init=P_INIT, l2_bounds=l2_bounds)
    with torch.no_grad():
        clean_pred = net(x).argmax(1)  # the caller's labels, as for ART (saves run() its clean pass)
    c0 = time.process_time()
    res = attack.run(ScoresOnly(cnt), x, y, seed=seed, clean_pred=clean_pred)
    cpu = time.process_time() - c0 - cnt.bookkeeping
    # run() ends with one evaluation of the returned points (N rows, not in result.queries)
    cnt.raw -= 1
    tool = "gauntlet" if norm == "linf" or l2_bounds == "rescale" else f"gauntlet, l2_bounds={l2_bounds!r}"
    row = stats(net, x, y, res.x_adv, cnt, norm, eps, cpu, tool)
    # cross-check: gauntlet's own per-sample count equals the counter's raw count
    qps = res.info["queries_per_sample"]
    ok = row["_ok"]
    row["own_count_matches"] = bool(torch.equal(qps[ok], cnt.raw_success[ok])) and (
        int(qps.sum()) == int(cnt.raw.sum()) == res.queries
    )
    row["success_reported"] = float(res.success[res.clean_correct].float().mean())
    return row


def art_reference_scale() -> type:
    """ART's ``SquareAttack`` with one line of its L2 update as in the authors' code (a diagnostic).

    ART scales the new window by ``/ (‖w‖ · room)`` (``a /= b * c``) where the reference code
    (max-andr/square-attack) scales it by ``/ ‖w‖ · room``; this subclass runs ART's own
    ``generate`` with that one operator changed, to show what the difference is worth.
    """
    import inspect
    import textwrap

    import art.attacks.evasion.square_attack as sq

    src = textwrap.dedent(inspect.getsource(sq.SquareAttack.generate))
    for axes in ("(2, 3)", "(1, 2)"):
        old = f"delta_new /= np.sqrt(np.sum(delta_new**2, axis={axes}, keepdims=True)) * np.sqrt("
        if old not in src:
            raise SystemExit("this ART version's L2 update differs from 1.20's; no reference-scale variant")
        src = src.replace(old, f"delta_new = delta_new / np.sqrt(np.sum(delta_new**2, axis={axes}, keepdims=True)) * np.sqrt(")
    namespace: dict[str, Any] = {}
    # ART's own source with one operator changed, compiled in its module (no code of ours runs)
    exec(compile(src, sq.__file__, "exec"), vars(sq), namespace)  # noqa: S102
    return type("SquareAttackReferenceScale", (sq.SquareAttack,), {"generate": namespace["generate"]})


def run_art(net: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, budget: int, seed: int,
            reference_scale: bool = False, batch: int | None = None) -> dict[str, Any]:
    """ART on the points in batches of ``batch`` (all at once by default), one ``generate`` call each.

    ART iterates over the whole batch (its ``predict`` sends every point of it, fooled ones too,
    each iteration) and draws one window position per iteration for all of it; apart from that
    shared position, a batch's points do not interact, so batches only bound ART's cost.
    """
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    cls = art_reference_scale() if reference_scale else SquareAttack
    np.random.seed(seed)  # ART draws from NumPy's and Python's global generators
    random.seed(seed)
    n = int(x.shape[0])
    step = batch or max(n, 1)
    counters, advs, cpu = [], [], 0.0
    for start in range(0, n, step):
        xb, yb = x[start : start + step], y[start : start + step]
        cnt = Counter(net, xb, yb, norm, eps).eval()
        clf = PyTorchClassifier(
            model=cnt, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
            clip_values=(0.0, 1.0), device_type="cpu",
        )
        attack = cls(
            clf, norm=np.inf if norm == "linf" else 2, eps=eps, max_iter=budget, p_init=P_INIT, nb_restarts=1,
            batch_size=max(int(xb.shape[0]), 1), verbose=False,
        )
        c0 = time.process_time()
        advs.append(torch.from_numpy(attack.generate(xb.numpy(), y=yb.numpy())).float())
        cpu += time.process_time() - c0 - cnt.bookkeeping
        counters.append(cnt)
    merged = Merged(counters)
    return stats(net, x, y, torch.cat(advs), merged, norm, eps, cpu,
                 "art, L2 window scaled as the reference code" if reference_scale else "art")


# the cells run for BENCHMARKS.md on one loaded core (``--plan loaded``)
LOADED = (
    "lenet5_clntrained:linf:1000:200,lenet5_clntrained:linf:5000:200,lenet5_clntrained:l2:1000:50,"
    "lenet5_advtrained:linf:1000:50,lenet5_advtrained:l2:1000:50,lenet5_advtrained:linf:5000:20,"
    "lenet5_clntrained:l2:5000:20"
)


def parse_plan(text: str) -> list[tuple[str, str, int, int]]:
    if text == "loaded":
        text = LOADED
    plan = []
    for item in text.split(","):
        try:
            model, norm, budget, n = item.split(":")
            plan.append((model, norm, int(budget), int(n)))
        except ValueError:
            raise SystemExit(f"--plan entries are MODEL:NORM:BUDGET:N, got {item!r}") from None
        if norm not in EPS:
            raise SystemExit(f"unknown norm {norm!r} in --plan; choose from {', '.join(EPS)}")
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="points (first MNIST test images) of the default plan")
    ap.add_argument("--models", default="lenet5_clntrained,lenet5_advtrained")
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--budgets", default="1000,5000")
    ap.add_argument("--plan", default=None,
                    help="MODEL:NORM:BUDGET:N,... instead of the full models × norms × budgets grid at --n")
    ap.add_argument("--only", default="gauntlet,art",
                    help="tools: gauntlet, art, art-reference-scale and gauntlet-clip (L2 cells only: ART with its "
                         "window scaled as in the authors' code, gauntlet with the paper's l2_bounds='clip')")
    ap.add_argument("--art-batch", type=int, default=None,
                    help="run ART on this many points at a time (default: all of a cell's points in one call)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="square.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("art").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    tools = set(args.only.split(","))
    if args.plan:
        plan = parse_plan(args.plan)
    else:
        plan = [(m, nm, int(b), args.n) for m in args.models.split(",") for nm in args.norms.split(",")
                for b in args.budgets.split(",")]
    art_version = None
    try:
        import art

        art_version = art.__version__
    except ImportError:
        tools -= {"art", "art-reference-scale"}
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    path = None
    for model_name, norm, budget, n in plan:
        net = load_model(model_name)
        x, y = mnist_test(n)
        eps = EPS[norm]
        setup = {"model": model_name, "norm": norm, "eps": eps, "budget": budget, "p_init": P_INIT}
        runners = (("gauntlet", run_gauntlet),
                   ("gauntlet-clip", lambda *a: run_gauntlet(*a, l2_bounds="clip")),
                   ("art", lambda *a: run_art(*a, batch=args.art_batch)),
                   ("art-reference-scale", lambda *a: run_art(*a, reference_scale=True, batch=args.art_batch)))
        for tool, fn in runners:
            if tool not in tools or (tool in ("art-reference-scale", "gauntlet-clip") and norm != "l2"):
                continue
            r = fn(net, x, y, norm, eps, budget, args.seed)
            rows.append({**setup, **{k: v for k, v in r.items() if not k.startswith("_")}})
            log(f"{model_name} {norm} eps={eps} B={budget} n={n} {tool}: success {r['success_on_correct']:.3f}, "
                f"robust {r['robust_accuracy']:.3f}, mean/median distinct q {r['mean_distinct_queries_successful']}"
                f"/{r['median_distinct_queries_successful']}, cpu {r['cpu_seconds']:.1f}s"
                + (f", own count matches: {r['own_count_matches']}" if "own_count_matches" in r else "")
                + f" [{time.perf_counter() - t_start:.0f}s wall]")
            # written after every run, so that a stopped run keeps what it has
            path = write_json(args.out, {"environment": environment(), "art": art_version, "seed": args.seed,
                                         "plan": [list(p) for p in plan], "rows": rows})

    def fmt(v: Any, nd: int = 1) -> Any:
        return None if v is None else round(v, nd)

    log("")
    log(markdown_table(
        ["model", "norm, ε", "budget", "n", "tool", "success (clean-correct)", "robust acc",
         "distinct queries, mean / median (fooled)", "raw queries, mean / median (fooled)", "total rows / point", "CPU s"],
        [[r["model"], f"{r['norm']} {r['eps']}", r["budget"], r["n"], r["tool"], r["success_on_correct"], r["robust_accuracy"],
          f"{fmt(r['mean_distinct_queries_successful'])} / {fmt(r['median_distinct_queries_successful'])}",
          f"{fmt(r['mean_raw_queries_successful'])} / {fmt(r['median_raw_queries_successful'])}",
          fmt(r["total_rows_per_point"]), fmt(r["cpu_seconds"])] for r in rows],
    ))
    # queries on the points both gauntlet and another tool fooled (the means above are over different
    # sets when the success rates differ)
    for r in rows:
        if r["tool"] != "gauntlet":
            continue
        for o in rows:
            if o["tool"] == "gauntlet" or (o["model"], o["norm"], o["budget"], o["n"]) != (
                    r["model"], r["norm"], r["budget"], r["n"]):
                continue
            both = sorted(set(r["fooled_points"]) & set(o["fooled_points"]))
            if both:
                qg = float(np.mean([r["distinct_queries_per_point"][i] for i in both]))
                qo = float(np.mean([o["distinct_queries_per_point"][i] for i in both]))
                log(f"{r['model']} {r['norm']} B={r['budget']} n={r['n']}: on the {len(both)} points both fooled, mean "
                    f"distinct queries gauntlet {qg:.1f} vs {o['tool']} {qo:.1f}; fooled by gauntlet only "
                    f"{len(set(r['fooled_points']) - set(both))}, by {o['tool']} only {len(set(o['fooled_points']) - set(both))}")
    checks = [r for r in rows if r["tool"].startswith("gauntlet")]
    if checks:
        log(f"\ngauntlet's own queries_per_sample equals the counter's counts: {all(r['own_count_matches'] for r in checks)}")
    log(f"fallback (nearest-point) attributions: {sum(r['fallback_rows'] for r in rows)} rows; "
        f"adversarials outside the ε-ball or the input range: {sum(r['invalid_adversarials'] for r in rows)}")
    log(f"wall {time.perf_counter() - t_start:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
