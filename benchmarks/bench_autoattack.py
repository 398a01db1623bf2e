"""Strength: gauntlet's AutoAttack on the public robust MNIST models, beside the published figure.

    .venv/bin/python benchmarks/bench_autoattack.py [--model smallcnn_trades] [--n 1000]
        [--eps 0.3] [--chunk 100] [--reference] [--fresh]

Runs on the first ``n`` MNIST test images in chunks; every finished chunk is written to
``benchmarks/results/autoattack_<model>_<n>.json`` at once, so an interrupted run resumes from
what it finished (``--fresh`` starts over).  ``--reference`` also times torchattacks' port of
the reference AutoAttack (``pip install --no-deps torchattacks``) on the same chunks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, load_model, markdown_table, mnist_test  # noqa: E402

import gauntlet as gt  # noqa: E402

PUBLISHED = {
    # AutoAttack README, "MNIST - Linf", eps 0.3, full 10k test set
    "smallcnn_trades": {"clean": 99.48, "autoattack": 92.81, "source": "AutoAttack README (Zhang et al. 2019b)"},
    "lenet5_advtrained": {"clean": 98.64, "autoattack": None, "source": "not in AutoAttack tables; PGD-40 93.27% (advertorch)"},
    "wong_kolter_small": {"clean": 98.20, "autoattack": None, "source": "certified >= 94.2% at eps 0.1 (Wong & Kolter 2018)"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smallcnn_trades")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", action="store_true", help="also time torchattacks.AutoAttack")
    ap.add_argument("--fresh", action="store_true", help="ignore finished chunks and start over")
    ap.add_argument("--time-chunks", type=int, default=0, metavar="K",
                    help="time ours against torchattacks.AutoAttack on the first K chunks, interleaved "
                         "(ours, reference, ours, ...) in this run, wall and CPU seconds")
    ap.add_argument("--reference-config", choices=("paper", "torchattacks"), default="paper",
                    help="paper: torchattacks' components at the reference AutoAttack's settings (100 iterations "
                         "for APGD-CE, APGD-T and FAB-T, 9 target classes, Square 5000 queries); torchattacks: "
                         "torchattacks.AutoAttack as shipped (10 iterations each)")
    ap.add_argument("--search-precision", choices=("full", "bfloat16", "both"), default="both",
                    help="with --time-chunks: which of our variants to time beside the reference (both: full "
                         "precision and the bfloat16 search whose successes are re-verified in float32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    net = load_model(args.model)
    x, y = mnist_test(args.n)
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    attack = gt.attacks.create("autoattack", norm="linf", eps=args.eps)

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"autoattack_{args.model}_{args.n}_eps{args.eps:g}.json"
    state = json.loads(path.read_text()) if path.exists() and not args.fresh else {"chunks": {}}
    state.update({"model": args.model, "n": args.n, "eps": args.eps, "params": attack.get_params()})

    if args.time_chunks:
        time_against_reference(args, net, model, attack, x, y, state, path)
        return

    for s in range(0, args.n, args.chunk):
        key = f"{s}:{min(s + args.chunk, args.n)}"
        done = state["chunks"].get(key, {})
        xb, yb = x[s : s + args.chunk], y[s : s + args.chunk]
        if "ours" not in done:
            res = attack.run(model, xb, yb, seed=0)
            done["ours"] = {
                "clean_correct": int(res.clean_correct.sum()),
                "robust": int((~res.success).sum()),
                "seconds": res.seconds,
                "grad_evals": res.grad_evals,
                "queries": res.queries,
                "breakdown": res.info.get("breakdown", {}),
            }
        if args.reference and "reference" not in done:
            try:
                import torchattacks
            except ImportError:
                print("torchattacks not installed: skipping the reference (benchmarks/install_peers.sh)")
                args.reference = False
            else:
                ref = torchattacks.AutoAttack(net, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=0)
                t0 = time.perf_counter()
                adv = ref(xb, yb)
                sec = time.perf_counter() - t0
                with torch.no_grad():
                    robust = int((net(adv).argmax(1) == yb).sum())
                done["reference"] = {"robust": robust, "seconds": sec}
        state["chunks"][key] = done
        state["environment"] = environment()
        path.write_text(json.dumps(state, indent=2) + "\n")
        print(f"chunk {key}: ours robust {done['ours']['robust']}/{len(yb)} in {done['ours']['seconds']:.1f}s"
              + (f"; reference robust {done['reference']['robust']} in {done['reference']['seconds']:.1f}s" if "reference" in done else ""),
              flush=True)

    chunks = list(state["chunks"].values())
    n = sum(min(args.chunk, args.n - int(k.split(":")[0])) for k in state["chunks"])
    ours_robust = 100.0 * sum(c["ours"]["robust"] for c in chunks) / n
    clean = 100.0 * sum(c["ours"]["clean_correct"] for c in chunks) / n
    ours_sec = sum(c["ours"]["seconds"] for c in chunks)
    pub = PUBLISHED.get(args.model, {})
    rows = [["gauntlet autoattack", n, f"{clean:.1f}", f"{ours_robust:.1f}", f"{ours_sec:.0f}"]]
    if all("reference" in c for c in chunks):
        ref_robust = 100.0 * sum(c["reference"]["robust"] for c in chunks) / n
        ref_sec = sum(c["reference"]["seconds"] for c in chunks)
        rows.append(["torchattacks AutoAttack (reference port)", n, f"{clean:.1f}", f"{ref_robust:.1f}", f"{ref_sec:.0f}"])
    if pub.get("autoattack") is not None:
        rows.append([f"published ({pub['source']}, 10k images)", 10000, pub["clean"], pub["autoattack"], "—"])
    print()
    print(f"model {args.model}, L∞ ε = {args.eps}, first {n} MNIST test images, {args.threads} thread(s)")
    print(markdown_table(["attack", "n", "clean %", "robust %", "seconds"], rows))
    print(f"\nresults: {path}")


def reference_autoattack(torchattacks, net, eps: float, config: str):
    """torchattacks' AutoAttack, as shipped or with the reference implementation's settings.

    torchattacks.AutoAttack builds its APGD, APGD-T and FAB with their default 10 iterations,
    while the reference (fra31/auto-attack, ``version="standard"``) runs 100 for each; ``paper``
    assembles the same components with the reference's settings.
    """
    if config == "torchattacks":
        return torchattacks.AutoAttack(net, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    return torchattacks.MultiAttack([
        torchattacks.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
        torchattacks.APGDT(net, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0),
        torchattacks.FAB(net, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=10, seed=0),
        torchattacks.Square(net, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0),
    ])


def time_against_reference(args, net, model, attack, x, y, state, path) -> None:
    """Paired timing on the first K chunks: per chunk ours (full precision), the reference port and
    ours with ``search_precision="bfloat16"`` (with ``--search-precision both``) run one after the
    other, so all see the same machine load; finished chunks are saved at once (resumable)."""
    import torchattacks  # the optional peer (benchmarks/install_peers.sh)

    variants = {"ours": attack}
    if args.search_precision in ("bfloat16", "both"):
        variants["ours_bfloat16"] = gt.attacks.create(
            "autoattack", norm="linf", eps=args.eps, search_precision="bfloat16"
        )
        if args.search_precision == "bfloat16":
            del variants["ours"]
    timing = state.setdefault("timing", {}).setdefault(args.reference_config, {})
    for i in range(args.time_chunks):
        s = i * args.chunk
        key = f"{s}:{min(s + args.chunk, args.n)}"
        if key in timing and all(v in timing[key] for v in variants):
            continue
        xb, yb = x[s : s + args.chunk], y[s : s + args.chunk]
        row = timing.get(key, {})
        order = list(variants)
        order.insert(1, "reference")
        for name in order:
            if name in row:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "reference":
                ref = reference_autoattack(torchattacks, net, args.eps, args.reference_config)
                adv = ref(xb, yb)
                sec, cpu = time.perf_counter() - t0, time.process_time() - c0
                with torch.no_grad():
                    robust = int((net(adv).argmax(1) == yb).sum())
                row[name] = {"robust": robust, "seconds": sec, "cpu_seconds": cpu}
            else:
                res = variants[name].run(model, xb, yb, seed=0)
                row[name] = {"robust": int((~res.success).sum()), "seconds": time.perf_counter() - t0,
                             "cpu_seconds": time.process_time() - c0, "breakdown": res.info.get("breakdown", {})}
            print(f"chunk {key}: {name} robust {row[name]['robust']} in {row[name]['seconds']:.0f}s "
                  f"(CPU {row[name]['cpu_seconds']:.0f}s)", flush=True)
            timing[key] = row
            state["environment"] = environment()
            path.write_text(json.dumps(state, indent=2) + "\n")
    keys = list(timing)[: args.time_chunks]
    rows = [timing[k] for k in keys]
    names = ["reference", *variants]
    tot = {k: {m: sum(r[k][m] for r in rows) for m in ("robust", "seconds", "cpu_seconds")} for k in names}
    n = sum(len(range(int(k.split(":")[0]), int(k.split(":")[1]))) for k in keys)
    label = {"ours": "gauntlet autoattack", "ours_bfloat16": 'gauntlet autoattack, search_precision="bfloat16"',
             "reference": f"reference ({args.reference_config})"}
    print()
    print(f"paired timing against the {args.reference_config} reference configuration, {args.model}, L∞ ε = {args.eps}, "
          f"first {n} images, {args.threads} thread(s)")
    table = []
    for k in names:
        ratio = "" if k == "reference" else f"{tot[k]['cpu_seconds'] / tot['reference']['cpu_seconds']:.2f}"
        per_chunk = "" if k == "reference" else ", ".join(
            f"{r[k]['cpu_seconds'] / r['reference']['cpu_seconds']:.2f}" for r in rows)
        table.append([label[k], f"{tot[k]['robust']}/{n}", f"{tot[k]['seconds']:.0f}", f"{tot[k]['cpu_seconds']:.0f}",
                      ratio, per_chunk])
    print(markdown_table(["attack", "robust", "wall s", "CPU s", "CPU / reference", "per chunk"], table))
    if "ours_bfloat16" in variants:
        checked = rejected = 0
        for r in rows:
            for sub in r["ours_bfloat16"]["breakdown"].values():
                for v in sub.values():
                    checked += v.get("checked", 0)
                    rejected += v.get("rejected", 0)
        print(f"bfloat16 search: {checked} claimed successes re-verified in float32, {rejected} rejected")


if __name__ == "__main__":
    main()
