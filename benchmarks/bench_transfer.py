"""Transfer attacks from the clean LeNet5 to the adversarially trained MNIST models.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_transfer.py

The adversary holds advertorch's clean-trained LeNet5 (``../shared/models``) and attacks the first
``--n`` MNIST test images on it (white box), then sends them once to each target: advertorch's
PGD-trained LeNet5, TRADES' SmallCNN and Wong–Kolter's convex-trained small CNN (plus the clean
LeNet5 itself, the white-box reference).  L∞ at ε = 0.1, 0.2, 0.3, 10 steps, untargeted, seed 0:

* ``pgd``: PGD with a random start, step ε/4 (the usual white-box setting), as a transfer attack;
* ``fgsm``: one step;
* ``mifgsm``: MI-FGSM (Dong et al. 2018), μ = 1, step ε/10;
* ``mi_di``: MI-FGSM with input diversity (Xie et al. 2019), p = 0.5, shrink to ≥ 0.9× and pad back (a fixed-size model);
* ``mi_di_bilinear``: the same with bilinear resizing (``interpolation="bilinear"``, as torchattacks' DIFGSM);
* ``mi_di_ti``: MI-DI with translation-invariant gradients (Dong et al. 2019), 5×5 kernel;
* torchattacks' ``MIFGSM`` and ``DIFGSM`` (its M-DI²-FGSM: decay 1, p = 0.5) when installed, as
  peers on the same points and budgets.

Reported per target and ε: the **transfer success rate** = share of the target's correctly
classified points whose transferred example it misclassifies, and the white-box success on the
surrogate.  Options: ``--n 1000``, ``--steps 10``, ``--seed 0``.  One torch thread.
Writes ``benchmarks/results/transfer.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import environment, load_model, markdown_table, mnist_test, write_json

import gauntlet as gt

SURROGATE = "lenet5_clntrained"
TARGETS = ("lenet5_clntrained", "lenet5_advtrained", "smallcnn_trades", "wong_kolter_small")
EPS = (0.1, 0.2, 0.3)


def wrap(net: torch.nn.Module) -> gt.models.TorchModel:
    return gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))


def ours(steps: int) -> dict[str, dict[str, Any]]:
    return {
        "fgsm": {"attack": "fgsm", "steps": 1},
        "pgd": {"attack": "pgd", "steps": steps},
        "mifgsm": {"attack": "mifgsm", "steps": steps},
        "mi_di": {"attack": "mifgsm", "steps": steps, "diversity": 0.5},
        "mi_di_bilinear": {"attack": "mifgsm", "steps": steps, "diversity": 0.5, "interpolation": "bilinear"},
        "mi_di_ti": {"attack": "mifgsm", "steps": steps, "diversity": 0.5, "ti_kernel": 5},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = mnist_test(args.n)
    surrogate = wrap(load_model(SURROGATE))
    targets = {name: wrap(load_model(name)) for name in TARGETS}
    clean = {name: m.predict(x, count=False) == y for name, m in targets.items()}

    advs: dict[str, dict[float, torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for label, params in ours(args.steps).items():
        p = dict(params)
        t0 = time.process_time()
        advs[label] = {}
        for eps in EPS:
            # pgd's step size is absolute: ε/4 per threat (the others default to ε/steps)
            extra = {"attack_params": {"step_size": eps / 4}} if p["attack"] == "pgd" else {}
            a = gt.attacks.create("transfer", surrogate=surrogate, eps=eps, **p, **extra)
            # the target is irrelevant while crafting; the surrogate's own result is what is sent
            res = a.run(surrogate, x, y, seed=args.seed)
            advs[label][eps] = res.x_adv
        seconds[label] = time.process_time() - t0

    if importlib.util.find_spec("torchattacks") is not None:
        import torchattacks

        net = load_model(SURROGATE).eval()
        for label, make in {
            "torchattacks MIFGSM": lambda e: torchattacks.MIFGSM(net, eps=e, alpha=e / args.steps, steps=args.steps, decay=1.0),
            "torchattacks DIFGSM (M-DI)": lambda e: torchattacks.DIFGSM(
                net, eps=e, alpha=e / args.steps, steps=args.steps, decay=1.0, resize_rate=0.9, diversity_prob=0.5
            ),
        }.items():
            t0 = time.process_time()
            torch.manual_seed(args.seed)
            advs[label] = {e: make(e)(x, y).detach() for e in EPS}
            seconds[label] = time.process_time() - t0

    rows = []
    out: dict[str, Any] = {"n": args.n, "steps": args.steps, "surrogate": SURROGATE, "results": {}, "cpu_seconds": seconds}
    for label, by_eps in advs.items():
        out["results"][label] = {}
        for eps, xa in by_eps.items():
            assert float((xa - x).abs().max()) <= eps + 1e-5 and float(xa.min()) >= 0 and float(xa.max()) <= 1
            cells = {}
            for name, m in targets.items():
                ok = clean[name]
                fooled = (m.predict(xa, count=False) != y) & ok
                cells[name] = float(fooled.sum()) / max(1, int(ok.sum()))
            out["results"][label][str(eps)] = cells
            rows.append([label, f"{eps:g}", *(f"{100 * cells[t]:.1f}%" for t in TARGETS)])
    print(markdown_table(["attack (on clean LeNet5)", "ε", *(f"{t}{' (white box)' if t == SURROGATE else ''}" for t in TARGETS)], rows))
    print({k: round(v, 1) for k, v in seconds.items()})
    out["environment"] = environment()
    write_json("transfer", out)


if __name__ == "__main__":
    main()
