"""Fast adversarial training on MNIST (Wong, Rice & Kolter 2020), then PGD-50 and AutoAttack.

    .venv/bin/python benchmarks/bench_fast_at.py [--epochs 10] [--eps 0.3] [--alpha 0.375] [--lr 5e-3]
        [--batch-size 100] [--n 1000] [--chunk 100]
        [--threads 1] [--seed 0] [--clip-start] [--skip-autoattack] [--fresh]
        [--arch wong_kolter_small|wong_kolter_wide|wong_kolter_wide1024] [--eps-ramp EPOCHS] [--train-eps EPS]
        [--start-scale K] [--no-project]

The paper's MNIST setting (their ``train_mnist.py``): the small CNN conv16(4×4, s2) – conv32(4×4,
s2) – fc100 – fc10 (``gauntlet.models.zoo.wong_kolter_small``), FGSM from a uniform random start
with ε = 0.3 and α = 0.375, 10 epochs, batch 100, Adam with a cyclic learning rate peaking at 5e-3
(at 2/5 of training), inputs in [0, 1] without normalisation, on the full 60k training set.  As in
their MNIST code the FGSM gradient is taken at the unclipped random start; ``--clip-start`` clips
it to [0, 1] first (their CIFAR-10 code's choice), the ablation that overfits catastrophically.

Beyond the paper (each changes the variant name): ``--arch`` picks a wider CNN
(``wong_kolter_wide``: conv32 – conv64 – fc200, ≈ 4× the multiply-adds; ``wong_kolter_wide1024``:
the same with fc1024), ``--eps-ramp E`` ramps the training ε (and α with it) linearly from 0 over
the first E epochs (``fast_at``'s ``eps_ramp_epochs``), and ``--train-eps`` trains at a radius
other than the evaluation ``--eps`` (``--alpha`` is then still absolute); ``--start-scale 2
--alpha 0.3 --no-project`` is N-FGSM (de Jorge et al. 2022: start in U[-2ε, 2ε], step ε, no
projection back to the ε-ball).

Everything is resumable: training writes a checkpoint after every epoch, the trained weights are
saved to ``benchmarks/results/fast_at_mnist[_<variant>]_seed<seed>.safetensors`` (so evaluation
never needs retraining; the variant names every setting changed from the paper's), and each
finished AutoAttack chunk is written to the ``.json`` beside it at once.  Run the same command again to
continue; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, mnist_test, shared_dir  # noqa: E402

import gauntlet as gt  # noqa: E402
from gauntlet.defenses.training._base import accuracy, train  # noqa: E402
from gauntlet.models.zoo import wong_kolter_small, wong_kolter_wide  # noqa: E402

ARCHS = {
    "wong_kolter_small": wong_kolter_small,
    "wong_kolter_wide": wong_kolter_wide,
    "wong_kolter_wide1024": lambda: wong_kolter_wide(hidden=1024),
}

PUBLISHED = "Wong et al. 2020 report about 88% PGD robust accuracy at eps 0.3 on MNIST for FGSM training from a random start (alpha 0.375)"


def save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--alpha", type=float, default=0.375)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--clip-start", action="store_true",
                    help="clip the random start to [0, 1] before the FGSM gradient (the ablation; the authors' MNIST code does not)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="wong_kolter_small")
    ap.add_argument("--eps-ramp", type=float, default=0.0,
                    help="ramp the training eps (and alpha) linearly from 0 over this many epochs (0 = the paper)")
    ap.add_argument("--train-eps", type=float, default=None, help="training radius (default: --eps)")
    ap.add_argument("--start-scale", type=float, default=1.0, help="random start in U[-k eps, k eps] (1 = the paper)")
    ap.add_argument("--no-project", action="store_true",
                    help="do not clip the perturbation back to the eps-ball (N-FGSM)")
    ap.add_argument("--n", type=int, default=1000, help="evaluate on the first n MNIST test images")
    ap.add_argument("--chunk", type=int, default=100, help="AutoAttack chunk size (each chunk is saved at once)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-autoattack", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="retrain and re-evaluate from scratch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    RESULTS.mkdir(parents=True, exist_ok=True)
    variant = "".join([
        f"_{args.epochs}ep" if args.epochs != 10 else "",
        f"_eps{args.eps:g}" if args.eps != 0.3 else "",
        f"_alpha{args.alpha:g}" if args.alpha != 0.375 else "",
        f"_lr{args.lr:g}" if args.lr != 5e-3 else "",
        f"_bs{args.batch_size}" if args.batch_size != 100 else "",
        "_clipstart" if args.clip_start else "",
        f"_{args.arch.removeprefix('wong_kolter_')}" if args.arch != "wong_kolter_small" else "",
        f"_ramp{args.eps_ramp:g}" if args.eps_ramp else "",
        f"_traineps{args.train_eps:g}" if args.train_eps is not None else "",
        f"_start{args.start_scale:g}" if args.start_scale != 1.0 else "",
        "_noproject" if args.no_project else "",
    ])
    stem = f"fast_at_mnist{variant}_seed{args.seed}"  # may contain dots (eps0.35): no with_suffix
    path, weights, ckpt = (RESULTS / (stem + ext) for ext in (".json", ".safetensors", ".ckpt"))
    if args.fresh:
        for p in (path, weights, ckpt):
            p.unlink(missing_ok=True)
    state = json.loads(path.read_text()) if path.exists() else {}
    config = {k: getattr(args, k) for k in ("epochs", "eps", "alpha", "lr", "batch_size", "clip_start", "seed")}
    # settings beyond the paper enter the config only when used, so earlier results still resume
    beyond = (("arch", "wong_kolter_small"), ("eps_ramp", 0.0), ("train_eps", None), ("start_scale", 1.0), ("no_project", False))
    config.update({k: getattr(args, k) for k, d in beyond if getattr(args, k) != d})
    if state.get("config") not in (None, config):
        raise SystemExit(f"{path} was made with {state['config']}, not {config}; pass --fresh or change --seed")
    state["config"] = config
    state.setdefault("environment", environment())
    state["published"] = PUBLISHED

    net = ARCHS[args.arch]()
    if weights.exists() and "training" in state:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(weights)), strict=True)
        print(f"loaded trained weights from {weights}", file=sys.stderr)
    else:
        train_set = gt.data.load(str(shared_dir() / "data" / "mnist"), split="train")
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            net = ARCHS[args.arch]()
        t0 = time.perf_counter()
        res = train(
            net, train_set.x, train_set.y, method="fast_at", seed=args.seed, checkpoint=ckpt,
            progress=sys.stderr.isatty(),
            eps=args.eps if args.train_eps is None else args.train_eps, alpha=args.alpha, clip_start=args.clip_start,
            eps_ramp_epochs=args.eps_ramp, start_scale=args.start_scale, project=not args.no_project,
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            optimizer="adam", lr_schedule="cyclic",
        )
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
        state["training"] = {
            "n_train": len(train_set),
            "threads": torch.get_num_threads(),
            "seconds_this_run": time.perf_counter() - t0,
            "seconds_all_epochs": sum(r.seconds for r in res.history),
            "resumed_from": res.resumed_from,
            "history": [r.to_dict() for r in res.history],
            "params": res.to_dict()["params"],
            "loadavg_after": environment()["loadavg"],
        }
        save(path, state)
    net.eval()

    x_all, y_all = mnist_test()
    x, y = x_all[: args.n], y_all[: args.n]
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    state["clean"] = {"first_n": accuracy(net, x, y), "test_10k": accuracy(net, x_all, y_all)}

    if state.get("pgd50", {}).get("n", 1000) != args.n:  # results before "n" was recorded used n = 1000
        state.pop("pgd50", None)
    if "pgd50" not in state:
        # Wong et al.'s evaluation: PGD with 50 iterations, step 0.01, 10 random restarts
        pgd = gt.attacks.create("pgd", norm="linf", eps=args.eps, steps=50, step_size=0.01, restarts=10)
        r = pgd.run(model, x, y, seed=0)
        state["pgd50"] = {
            "n": args.n, "robust": float((~r.success).float().mean()), "seconds": r.seconds, "params": pgd.get_params()
        }
        save(path, state)

    if not args.skip_autoattack:
        aa = gt.attacks.create("autoattack", norm="linf", eps=args.eps)
        chunks = state.setdefault("autoattack", {"params": aa.get_params(), "chunks": {}})["chunks"]
        for s in range(0, args.n, args.chunk):
            key = f"{s}:{min(s + args.chunk, args.n)}"
            if key in chunks:
                continue
            r = aa.run(model, x[s : s + args.chunk], y[s : s + args.chunk], seed=0)
            chunks[key] = {
                "n": int(r.success.shape[0]),
                "clean_correct": int(r.clean_correct.sum()),
                "robust": int((~r.success).sum()),
                "seconds": r.seconds,
                "breakdown": r.info.get("breakdown", {}),
            }
            save(path, state)
            print(f"autoattack chunk {key}: {chunks[key]['robust']}/{chunks[key]['n']} robust, {r.seconds:.0f}s", file=sys.stderr)
    save(path, state)

    tr = state["training"]
    aa_chunks = state.get("autoattack", {}).get("chunks", {})
    aa_n = sum(c["n"] for c in aa_chunks.values())
    aa_acc = sum(c["robust"] for c in aa_chunks.values()) / aa_n if aa_n else None
    aa_sec = sum(c["seconds"] for c in aa_chunks.values())
    rows = [[
        f"fast_at {args.arch} ε={args.eps:g} α={args.alpha:g}, {args.epochs} ep"
        + (", clipped start" if args.clip_start else "")
        + (f", ε ramp {args.eps_ramp:g} ep" if args.eps_ramp else "")
        + (f", train ε={args.train_eps:g}" if args.train_eps is not None else "")
        + (f", start ±{args.start_scale:g}ε" if args.start_scale != 1.0 else "")
        + (", no projection" if args.no_project else ""),
        f"{tr['seconds_all_epochs'] / 60:.1f} min ({tr['threads']} thr)",
        state["clean"]["first_n"],
        state["clean"]["test_10k"],
        state["pgd50"]["robust"],
        f"{aa_acc:.3f} ({aa_n}/{args.n})" if aa_acc is not None else None,
        f"{aa_sec / 60:.1f} min",
    ]]
    print(markdown_table(
        ["model", "training time", f"clean (first {args.n})", "clean (10k)", "PGD-50×10 robust", "AutoAttack robust", "AA time"], rows
    ))
    print(f"published: {PUBLISHED}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
