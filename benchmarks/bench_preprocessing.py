"""Preprocessing defenses under naive vs adaptive (BPDA / EOT) PGD.

For each registered input-preprocessing defense in front of the public clean-trained LeNet5
(advertorch) on the first 500 MNIST test images: clean accuracy of the defended model (the real
transform, one random draw), and robust accuracy under PGD-40 L∞ at ε = 0.1 and 0.3 when the
attack sees the naive view (autograd through the transform as implemented, one draw) or the
adaptive one (BPDA with the identity for non-differentiable transforms, Athalye et al. 2018, exact
autograd for differentiable ones; EOT over 10 draws for randomized ones).  Robust accuracy = correct on the clean image *and* on the
final adversarial image, as judged by the deployed defense (one fresh draw).

PGD: one random start, step 2.5 ε / steps, seed 0, 1 torch thread.  On deterministic defenses it
runs in evaluation mode (``early_stop=True``: a sample leaves the loop once misclassified, which is
exact there because the attacked forward value is the real transform's).  On randomized ones it runs
every step on every sample (``early_stop=False``): one lucky noisy misclassification during the
search says nothing about the fresh draw that judges the final image.

    .venv/bin/python benchmarks/bench_preprocessing.py [--n 500] [--steps 40]

Writes ``benchmarks/results/preprocessing.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, load_model, markdown_table, mnist_test, write_json  # noqa: E402

import gauntlet as gt  # noqa: E402
from gauntlet.attacks import create as create_attack  # noqa: E402
from gauntlet.defenses import create  # noqa: E402

DEFENSES: list[tuple[str, dict]] = [
    ("bit_depth_reduction", {"bits": 1}),  # Xu et al. 2018's MNIST setting
    ("bit_depth_reduction", {"bits": 4}),  # their CIFAR-10 / ImageNet setting
    ("median_filter", {"size": 2}),  # Xu et al. 2018's MNIST setting
    ("jpeg_compression", {"quality": 75}),
    ("spatial_smoothing", {"sigma": 1.0}),
    ("gaussian_noise", {"sigma": 0.3}),
    ("random_resize_pad", {"max_pad": 3}),  # Xie et al.'s 299 -> [299, 331) is ~11 % of the side
]
EPS = (0.1, 0.3)


def robust(res: gt.attacks.AttackResult) -> float:
    return float((res.clean_correct & ~res.success).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eot", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)

    x, y = mnist_test(args.n)
    net = load_model("lenet5_clntrained")
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
    undefended_clean = float((model.predict(x) == y).float().mean())
    rows, records = [], []
    base = {}
    for eps in EPS:
        res = create_attack("pgd", eps=eps, steps=args.steps, early_stop=True).run(model, x, y, seed=0)
        base[eps] = robust(res)
    rows.append(["none (undefended)", "—", undefended_clean, *[v for e in EPS for v in (base[e], base[e])], "—"])
    print(f"undefended: clean {undefended_clean:.3f}, robust {base}", flush=True)

    for name, params in DEFENSES:
        d = create(name, **params)
        clean = float((d.wrap(model, seed=0).predict(x) == y).float().mean())
        rec = {"defense": name, "params": params, "randomized": d.randomized, "clean_accuracy": clean, "eps": {}}
        cells = []
        t_def = time.perf_counter()
        for eps in EPS:
            pgd = create_attack("pgd", eps=eps, steps=args.steps, early_stop=not d.randomized)
            out = {}
            for view, adaptive in (("naive", False), ("adaptive", True)):
                eot = args.eot if (adaptive and d.randomized) else None
                wrapped = d.wrap(model, adaptive=adaptive, eot_samples=eot, seed=1)
                t0 = time.perf_counter()
                res = pgd.run(wrapped, x, y, seed=0)
                out[view] = {
                    "robust_accuracy": robust(res),
                    "eot_samples": wrapped.eot_samples,
                    "queries": res.queries,
                    "grad_evals": res.grad_evals,
                    "seconds": time.perf_counter() - t0,
                }
                print(f"{name} eps={eps} {view}: {out[view]}", flush=True)
            rec["eps"][str(eps)] = out
            cells += [out["naive"]["robust_accuracy"], out["adaptive"]["robust_accuracy"]]
        view_desc = (
            f"autograd + EOT-{args.eot}" if d.randomized and d.differentiable
            else f"BPDA(identity) + EOT-{args.eot}" if d.randomized
            else "autograd (= naive)" if d.differentiable
            else "BPDA(identity)"
        )
        rec["adaptive_view"] = view_desc
        rec["seconds"] = time.perf_counter() - t_def
        records.append(rec)
        label = f"{name} ({', '.join(f'{k}={v}' for k, v in params.items())})"
        rows.append([label, view_desc, clean, *cells, f"{rec['seconds']:.0f}"])

    headers = ["defense", "adaptive view", "clean acc"]
    for e in EPS:
        headers += [f"PGD ε={e} naive", f"PGD ε={e} adaptive"]
    headers.append("seconds")
    table = markdown_table(headers, rows)
    print()
    print(f"LeNet5 (advertorch, clean-trained), first {args.n} MNIST test images, PGD-{args.steps} L∞, robust accuracy")
    print(table)
    path = write_json(
        "preprocessing.json",
        {
            "benchmark": "preprocessing defenses, naive vs adaptive PGD",
            "model": "advertorch_lenet5_mnist_clntrained",
            "n": args.n,
            "attack": {
                "name": "pgd",
                "norm": "linf",
                "steps": args.steps,
                "early_stop": "True on deterministic defenses, False on randomized ones",
                "seed": 0,
                "eps": list(EPS),
            },
            "undefended": {"clean_accuracy": undefended_clean, "robust_accuracy": {str(e): base[e] for e in EPS}},
            "defenses": records,
            "table": table,
            "environment": environment(),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
