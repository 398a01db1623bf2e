"""Model inversion on MNIST and attribute inference on synthetic tabular data (issue 13).

Must reach: an independent classifier assigns >= 90% of the reconstructed digits to the intended
class.

**Model inversion** (Fredrikson, Jha & Ristenpart 2015).  Two white-box targets: advertorch's
clean-trained MNIST LeNet5 (``../shared/models``) and a softmax regression trained here on the
60,000 MNIST training images (3 epochs, the model family Fredrikson et al. inverted).  Each is
inverted with three settings of ``model_inversion``, ``--seeds`` times per class (start: the blank
image plus seeded Gaussian noise of std 0.1, so the reconstructions differ):

* ``plain``: the paper's cost ``1 - p_c`` and plain gradient steps (``λ = 1``), no Process step;
* ``paper``: the same with the paper's Process step: a 3×3 median filter then unsharp-mask
  sharpening (amount 0.3) every 10 steps;
* ``ce+process``: ``-log p_c`` with L2-normalised steps of 0.5, same Process step.

Each setting runs up to 1000 steps (stop: cost not improved for 100 steps, or cost 0).  The
judge is a model independent of both targets: TRADES' SmallCNN (an adversarially trained MNIST
model, a demanding judge, since adversarial-noise images fool non-robust models only); the
adversarially trained LeNet5 is a second judge.  ART's ``MIFace`` (the same algorithm without the
Process step, its defaults but 1000 iterations) runs on the same targets and judges as a peer.
The first seed's reconstructions are saved as one grid, ``benchmarks/results/inversion.png``.

**Attribute inference** (Fredrikson et al. 2014, Yeom et al. 2018).  Seeded synthetic records:
a binary sensitive column (30% ones) that flips the sign of one feature's effect on the label and
shifts it, five public features (one mildly correlated with the sensitive one), 20% label noise.
Targets trained on 1,000 members: a random forest without bootstrap and an MLP (both 100% on
their members: overfit), and a logistic regression (not overfit) as the control.  The attack
(with and without the prior) on 1,000 members and 1,000 non-members, beside the two baselines
that ignore the model (the majority value; a logistic regression from the other columns and the
label), both fitted on 1,000 more attacker records.

    .venv/bin/python benchmarks/bench_inversion.py [--seeds 5] [--steps 1000] [--no-art]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import load_model, markdown_table, shared_dir, write_json
from torch import nn

import gauntlet as gt
from gauntlet.attacks.inference.attribute_inference import AttributeInference
from gauntlet.attacks.inference.model_inversion import ModelInversion
from gauntlet.data.idx import load_idx

RESULTS = Path(__file__).resolve().parent / "results"


def mnist_model(net: nn.Module) -> gt.models.TorchModel:
    return gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))


def softmax_regression(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    net = gt.models.torch_model.reinitialise(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), 0)
    gt.defenses.training.train(net, x, y, method="standard", epochs=3, batch_size=128, lr=1e-3, seed=0, progress=False)
    return net.eval()


SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {"loss": "confidence", "lr": 1.0},
    "paper": {"loss": "confidence", "lr": 1.0, "denoise": "median", "denoise_size": 3, "sharpen": 0.3, "process_every": 10},
    "ce+process": {"loss": "cross_entropy", "lr": 0.5, "normalize": True, "denoise": "median", "denoise_size": 3,
                   "sharpen": 0.3, "process_every": 10},
}


def share(pred: torch.Tensor, cls: torch.Tensor) -> float:
    return float((pred == cls).double().mean())


def per_class(pred: torch.Tensor, cls: torch.Tensor) -> list[float]:
    return [share(pred[cls == c], cls[cls == c]) for c in range(10)]


def art_miface(net: nn.Module, seeds: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ART's MIFace from the same noisy blank starts (seeds x 10 classes)."""
    from art.attacks.inference.model_inversion import MIFace
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    starts, labels = [], []
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        starts.append((0.1 * torch.randn(10, 1, 28, 28, generator=g)).clamp(0, 1))
        labels.append(torch.arange(10))
    x0 = torch.cat(starts).numpy()
    y = torch.cat(labels)
    t0 = time.perf_counter()
    out = MIFace(clf, max_iter=steps, batch_size=10, verbose=False).infer(x0, y.numpy())
    return torch.from_numpy(np.asarray(out, dtype=np.float32)), y, time.perf_counter() - t0


def inversion(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    folder = shared_dir() / "data" / "mnist"
    tr = load_idx(folder, split="train")
    te = load_idx(folder, split="test")
    x_tr, y_tr = torch.as_tensor(np.asarray(tr.x)), torch.as_tensor(np.asarray(tr.y))
    x_te, y_te = torch.as_tensor(np.asarray(te.x)), torch.as_tensor(np.asarray(te.y))
    nets = {"lenet5_clntrained": load_model("lenet5_clntrained"), "softmax_regression": softmax_regression(x_tr, y_tr)}
    judges = {"smallcnn_trades": mnist_model(load_model("smallcnn_trades")), "lenet5_advtrained": mnist_model(load_model("lenet5_advtrained"))}
    acc = {}
    for name, net in {**nets, **{k: j.module for k, j in judges.items()}}.items():
        m = mnist_model(net)
        acc[name] = float((m.predict(x_te, count=False) == y_te).double().mean())
        print(f"{name}: MNIST test accuracy {acc[name]:.4f}", flush=True)
    rows: list[dict[str, Any]] = []
    grid: list[tuple[str, torch.Tensor]] = []
    for tname, net in nets.items():
        runs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]] = {}
        for sname, setting in SETTINGS.items():
            atk = ModelInversion(steps=args.steps, patience=100, init_noise=0.1, **setting)
            target = mnist_model(net)
            imgs, cls, conf, q, ge, secs = [], [], [], 0, 0, 0.0
            for s in range(args.seeds):
                res = atk.run(target, seed=s)
                imgs.append(res.images)
                cls.append(res.classes)
                conf.append(res.confidence)
                q += res.queries
                ge += res.grad_evals
                secs += res.seconds
            runs[sname] = (torch.cat(imgs), torch.cat(cls), torch.cat(conf), {"queries": q, "grad_evals": ge, "seconds": secs})
        if not args.no_art:
            x_art, y_art, secs = art_miface(net, args.seeds, args.steps)
            target = mnist_model(net)
            with torch.no_grad():
                p = torch.softmax(target.scores(x_art, count=False).double(), 1).gather(1, y_art[:, None]).squeeze(1)
            runs["ART MIFace"] = (x_art, y_art, p, {"queries": None, "grad_evals": None, "seconds": secs})
        for sname, (x, c, conf, extra) in runs.items():
            row: dict[str, Any] = {"target": tname, "setting": sname, "reconstructions": int(c.numel()),
                                   "target_confidence": float(conf.mean()) if conf is not None else None}
            for jname, judge in judges.items():
                pred = judge.predict(x, count=False)
                row[f"share_{jname}"] = share(pred, c)
                row[f"per_class_{jname}"] = per_class(pred, c)
            row.update(extra)
            rows.append(row)
            grid.append((f"{tname}\n{sname}", x[:10]))
            print(f"{tname:18s} {sname:11s} conf {row['target_confidence']:.3f}  "
                  f"trades {row['share_smallcnn_trades']:.3f}  advlenet {row['share_lenet5_advtrained']:.3f}  "
                  f"({extra['seconds']:.0f} s)", flush=True)
    save_grid(grid, RESULTS / "inversion.png")
    return rows, {"test_accuracy": acc}


def save_grid(grid: list[tuple[str, torch.Tensor]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(grid), 10, figsize=(12, 1.35 * len(grid)))
    for r, (label, x) in enumerate(grid):
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(x[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(str(c), fontsize=9)
    fig.suptitle("model_inversion: one reconstruction per class (seed 0); rows: target / setting", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
def synthetic(n: int, seed: int, p_sensitive: float = 0.3, flip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Column 0: binary sensitive attribute; 1-6: public features (1 correlated with column 0);
    the label depends on column 0 (sign of feature 5's effect, a shift); 20% label noise."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(n, generator=g) < p_sensitive).double()
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    z[:, 0] += 0.8 * s
    logit = 1.2 * z[:, 1] - z[:, 2] + 0.5 * z[:, 3] + 2.5 * (2 * s - 1) * z[:, 4] + s
    y = (logit + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    noisy = torch.rand(n, generator=g) < flip
    y[noisy] = 1 - y[noisy]
    return torch.cat([s[:, None], z], dim=1).clamp(-8, 8).float(), y


def attribute(args: argparse.Namespace) -> list[dict[str, Any]]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    n = args.records
    members, nonmembers, attacker = synthetic(n, 0), synthetic(n, 1), synthetic(n, 2)
    estimators = {
        "random forest (no bootstrap)": RandomForestClassifier(n_estimators=100, bootstrap=False, max_features=0.5, random_state=0),
        "MLP 256-256": MLPClassifier((256, 256), max_iter=3000, random_state=0),
        "logistic regression (control)": LogisticRegression(max_iter=1000),
    }
    rows = []
    for mname, est in estimators.items():
        est.fit(members[0].numpy(), members[1].numpy())
        model = gt.models.SklearnModel(est, bounds=(-8.0, 8.0), input_shape=(7,), num_classes=2)
        tr_acc = float(est.score(members[0].numpy(), members[1].numpy()))
        te_acc = float(est.score(nonmembers[0].numpy(), nonmembers[1].numpy()))
        for split, (x, y) in (("members", members), ("non-members", nonmembers)):
            row: dict[str, Any] = {"model": mname, "train_acc": tr_acc, "test_acc": te_acc, "records": split}
            for prior in (False, True):
                res = AttributeInference(prior=prior, baseline="classifier").run(
                    model, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=attacker, seed=0
                )
                maj = AttributeInference(prior=prior, baseline="majority").run(
                    model, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=attacker, seed=0
                )
                row["attack_prior" if prior else "attack"] = res.accuracy()
                row["queries"] = res.queries
                row["baseline_classifier"] = res.baseline_accuracy
                row["baseline_majority"] = maj.baseline_accuracy
            rows.append(row)
            print(f"{mname:30s} {split:11s} attack {row['attack']:.3f} (prior {row['attack_prior']:.3f})  "
                  f"baselines: majority {row['baseline_majority']:.3f}, classifier {row['baseline_classifier']:.3f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5, help="reconstructions per class and setting")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--records", type=int, default=1000, help="members, non-members and attacker records each")
    ap.add_argument("--no-art", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    inv_rows, extra = inversion(args)
    attr_rows = attribute(args)
    print()
    print(markdown_table(
        ["target", "setting", "reconstructions", "target p_c", "judged correct: TRADES SmallCNN", "judged correct: adv. LeNet5", "grad evals", "seconds"],
        [[r["target"], r["setting"], r["reconstructions"], r["target_confidence"], r["share_smallcnn_trades"],
          r["share_lenet5_advtrained"], r["grad_evals"], round(r["seconds"], 1)] for r in inv_rows],
    ))
    print()
    print(markdown_table(
        ["target", "setting"] + [str(c) for c in range(10)],
        [[r["target"], r["setting"]] + [round(v, 2) for v in r["per_class_smallcnn_trades"]] for r in inv_rows],
    ))
    print()
    print(markdown_table(
        ["model", "train / test acc", "records", "attack", "attack + prior", "baseline: majority", "baseline: classifier"],
        [[r["model"], f"{r['train_acc']:.3f} / {r['test_acc']:.3f}", r["records"], r["attack"], r["attack_prior"],
          r["baseline_majority"], r["baseline_classifier"]] for r in attr_rows],
    ))
    path = write_json("inversion.json", {
        "inversion": inv_rows, "attribute_inference": attr_rows, **extra,
        "settings": SETTINGS, "seeds": args.seeds, "steps": args.steps, "records": args.records,
        "seconds": time.perf_counter() - t0, "torch_threads": 1,
    })
    print(f"\nwrote {path} and {RESULTS / 'inversion.png'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
