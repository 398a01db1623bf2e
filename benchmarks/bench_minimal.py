"""Minimal-norm attacks against their peers: DeepFool and Carlini–Wagner L2 on an MNIST CNN.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_minimal.py

Every tool attacks the same points (the first 32 MNIST test images, pixels / 255) of the same
model (advertorch's clean-trained LeNet5, read from ``../shared/models``), on one CPU thread, with
its published defaults unless noted.  Peers that are not installed (Foolbox, ART, CleverHans) are
skipped with a note.  The script prints a markdown table: tool, attack, success rate, median
perturbation norm over the successful points, wall seconds.  Success rate and medians are taken
over the points the model classifies correctly (a clean mistake is no attack).

Options: ``--n 32`` points, ``--only gauntlet,foolbox`` to run a subset of the tools,
``--attacks deepfool,cw`` to run a subset of the attacks, ``--save file.pt`` to keep every
tool's adversarials for a per-sample comparison.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gauntlet as gt  # noqa: E402
from gauntlet.models.zoo import LeNet5  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "models" / "advertorch_lenet5_mnist_clntrained.pt"
IMAGES = SHARED / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
LABELS = SHARED / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"


def load_mnist_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(IMAGES, "rb") as f:
        raw = f.read()
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(LABELS, "rb") as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def load_model() -> torch.nn.Module:
    net = LeNet5()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


Row = tuple[str, str, float, float, float, float, float]  # tool, attack, success, median L2, median Linf, wall s, CPU s
ADVERSARIALS: dict[str, torch.Tensor] = {}  # "tool/attack" -> x_adv, written with --save


def summarise(tool: str, attack: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              x_adv: torch.Tensor, seconds: tuple[float, float]) -> Row:
    x_adv = torch.as_tensor(np.asarray(x_adv) if not isinstance(x_adv, torch.Tensor) else x_adv).float()
    x_adv = x_adv.clamp(0, 1)  # the same validity rule for every tool
    ADVERSARIALS[f"{tool}/{attack}"] = x_adv
    with torch.no_grad():
        correct = net(x).argmax(1) == y
        success = (net(x_adv).argmax(1) != y)[correct]  # judged on the clean-correct points only
    d = (x_adv - x).flatten(1)[correct]
    l2, linf = d.norm(dim=1), d.abs().amax(dim=1)
    med = (lambda v: float(v[success].median()) if bool(success.any()) else float("nan"))
    return (tool, attack, float(success.float().mean()), med(l2), med(linf), *seconds)


def timed(fn: Callable[[], object]) -> tuple[object, tuple[float, float]]:
    """``fn()`` and its (wall, process CPU) seconds; CPU time is robust to a busy machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def run_gauntlet(net, x, y, attacks) -> list[Row]:
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10)
    rows = []
    specs = []
    if "deepfool" in attacks:
        specs += [("DeepFool-L2", gt.attacks.create("deepfool", norm="l2")),
                  ("DeepFool-Linf", gt.attacks.create("deepfool", norm="linf"))]
    if "cw" in attacks:
        specs += [("C&W-L2", gt.attacks.create("cw_l2"))]
    for label, attack in specs:
        res, s = timed(lambda: attack.run(model, x, y, seed=0))
        rows.append(summarise("gauntlet", label, net, x, y, res.x_adv, s))
    return rows


def run_foolbox(net, x, y, attacks) -> list[Row]:
    import foolbox as fb

    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    rows = []
    specs = []
    if "deepfool" in attacks:
        specs += [("DeepFool-L2", fb.attacks.L2DeepFoolAttack()), ("DeepFool-Linf", fb.attacks.LinfDeepFoolAttack())]
    if "cw" in attacks:
        specs += [("C&W-L2", fb.attacks.L2CarliniWagnerAttack())]
    for label, attack in specs:
        (_, adv, _), s = timed(lambda: attack(fmodel, x, y, epsilons=None))
        rows.append(summarise("foolbox", label, net, x, y, adv, s))
    return rows


def run_art(net, x, y, attacks) -> list[Row]:
    from art.attacks.evasion import CarliniL2Method, DeepFool
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0))
    xn = x.numpy()
    rows = []
    specs = []
    if "deepfool" in attacks:
        specs += [("DeepFool-L2", DeepFool(clf, batch_size=len(xn), verbose=False))]
    if "cw" in attacks:
        specs += [("C&W-L2", CarliniL2Method(clf, batch_size=len(xn), verbose=False))]
    for label, attack in specs:
        adv, s = timed(lambda: attack.generate(xn))
        rows.append(summarise("ART", label + " (batch_size=N)", net, x, y, torch.from_numpy(adv), s))
    return rows


def run_cleverhans(net, x, y, attacks) -> list[Row]:
    rows = []
    if "cw" in attacks:
        from cleverhans.torch.attacks.carlini_wagner_l2 import carlini_wagner_l2

        adv, s = timed(lambda: carlini_wagner_l2(net, x, 10, y=y))
        rows.append(summarise("CleverHans", "C&W-L2", net, x, y, adv.detach(), s))
    return rows


TOOLS = {
    "gauntlet": (None, run_gauntlet),
    "foolbox": ("foolbox", run_foolbox),
    "art": ("art", run_art),
    "cleverhans": ("cleverhans", run_cleverhans),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--only", default=",".join(TOOLS))
    ap.add_argument("--attacks", default="deepfool,cw")
    ap.add_argument("--save", default=None, help="write every tool's adversarials to this .pt file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for p in (WEIGHTS, IMAGES, LABELS):
        if not p.exists():
            sys.exit(f"{p} not found: this benchmark needs ../shared (MNIST and the advertorch LeNet5 weights)")
    net = load_model()
    for p in net.parameters():
        p.requires_grad_(False)
    x, y = load_mnist_test(args.n)
    with torch.no_grad():
        clean = float((net(x).argmax(1) == y).float().mean())
    attacks = set(args.attacks.split(","))
    rows: list[Row] = []
    notes: list[str] = []
    for tool in args.only.split(","):
        module, fn = TOOLS[tool]
        if module is not None and not installed(module):
            notes.append(f"{tool} skipped: `{module}` is not installed (pip install --no-deps it to compare)")
            continue
        rows += fn(net, x, y, attacks)
    print(f"LeNet5 (advertorch, clean-trained), first {args.n} MNIST test images, clean accuracy {clean:.1%}, "
          f"torch {torch.__version__}, 1 thread\n")
    print("| tool | attack | success | median L2 | median L∞ | wall s | CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for tool, attack, succ, l2, linf, s, cpu in sorted(rows, key=lambda r: (r[1], r[0])):
        print(f"| {tool} | {attack} | {succ:.1%} | {l2:.4f} | {linf:.4f} | {s:.2f} | {cpu:.2f} |")
    for n in notes:
        print(f"\n_{n}_")
    if args.save:
        torch.save({"x": x, "y": y, **ADVERSARIALS}, args.save)


if __name__ == "__main__":
    main()
