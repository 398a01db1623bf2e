"""Targeted clean-label poisoning on MNIST in the transfer setting (issue 11): Poison Frogs feature
collision (one-shot kill and multi-poison) and Witches' Brew gradient matching, beside ART's
FeatureCollisionAttack and GradientMatchingAttack on the same targets and base images.

Setting: the clean-trained advertorch LeNet5 (../shared/models) is the frozen feature extractor
and the attacker's surrogate; the victim retrains only its last linear layer (200 -> 10,
full-batch Adam from the pretrained weights) on the first ``--n-train`` MNIST training images with
the poison in them.  Each of ``--targets`` test images (correctly classified by the clean victim,
drawn with a fixed seed) gets its own poisoning and retraining; its target_class (the base class)
is drawn at random among the other nine digits.  Success = the retrained victim classifies the
target as target_class.

    .venv/bin/python benchmarks/bench_poison_frogs.py            # writes benchmarks/results/poison_frogs.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, load_model, markdown_table, shared_dir, write_json

import gauntlet as gt
from gauntlet.models.features import features


def mnist_train(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = gt.data.load(str(shared_dir() / "data" / "mnist"), split="train")
    return ds.x[:n].contiguous(), ds.y[:n].to(torch.int64).contiguous()


def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    ds = gt.data.load(str(shared_dir() / "data" / "mnist"), split="test")
    return ds.x.contiguous(), ds.y.to(torch.int64).contiguous()


class Victim:
    """Frozen LeNet5 features; the last layer retrained on (poisoned) training features."""

    def __init__(self, model: gt.models.TorchModel, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.model, self.y, self.steps = model, y, steps
        self.f = features(model, x)
        self.last = model.module.linear2

    def train(self, f: torch.Tensor, y: torch.Tensor) -> torch.nn.Linear:
        lin = torch.nn.Linear(f.shape[1], 10)
        with torch.no_grad():
            lin.weight.copy_(self.last.weight)
            lin.bias.copy_(self.last.bias)
        opt = torch.optim.Adam(lin.parameters(), lr=0.01)
        for _ in range(self.steps):
            opt.zero_grad()
            F.cross_entropy(lin(f), y).backward()
            opt.step()
        return lin

    def poisoned(self, rows: torch.Tensor, x_rows: torch.Tensor) -> torch.nn.Linear:
        """Retrain with training rows ``rows`` replaced by ``x_rows`` (labels unchanged)."""
        f = self.f.clone()
        f[rows] = features(self.model, x_rows)
        return self.train(f, self.y)

    def predict(self, lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lin(features(self.model, x)).argmax(1)


def art_classifier(net: torch.nn.Module) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0),
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-poisons", type=int, default=10, help="poisons per target in the multi-poison rows")
    ap.add_argument("--fc-iter", type=int, default=200)
    ap.add_argument("--gm-steps", type=int, default=60)
    ap.add_argument("--gm-restarts", type=int, default=2)
    ap.add_argument("--victim-steps", type=int, default=200)
    ap.add_argument("--fc-betas", default="paper,0.5,0.1", help="feature-collision beta values ('paper': 0.25 * 2048^2 / 784^2)")
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument("--art-targets", type=int, default=5,
                    help="run ART's multi-poison FeatureCollisionAttack and GradientMatchingAttack on the first N targets only "
                    "(about 14 and 12 CPU s per target; ART's one-shot runs on every target)")
    ap.add_argument("--no-gm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    net = load_model("lenet5_clntrained")
    model = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 28, 28))
    x, y = mnist_train(args.n_train)
    xs, ys = mnist_test()
    victim = Victim(model, x, y, args.victim_steps)
    clean = victim.train(victim.f, y)
    g = torch.Generator().manual_seed(0)
    cand = torch.randperm(len(ys), generator=g)[: 4 * args.targets]
    pred = victim.predict(clean, xs[cand])
    targets = cand[pred == ys[cand]][: args.targets].tolist()
    classes = [int((ys[i] + 1 + torch.randint(9, (1,), generator=g)) % 10) for i in targets]
    acc_clean = float((victim.predict(clean, xs[:2000]) == ys[:2000]).double().mean())

    art = None if args.no_art else art_classifier(net)
    k = args.n_poisons
    betas = args.fc_betas.split(",")
    methods: dict[str, dict[str, Any]] = {}

    def record(name: str, hit: bool, seconds: float, **extra: float) -> None:
        m = methods.setdefault(name, {"hits": 0, "runs": 0, "seconds": 0.0, "per_target": [], "extra": {}})
        m["hits"] += int(hit)
        m["per_target"].append(int(hit))
        m["runs"] += 1
        m["seconds"] += seconds
        for key, v in extra.items():
            m["extra"].setdefault(key, []).append(v)

    for j, (i, tc) in enumerate(zip(targets, classes)):
        xt = xs[i : i + 1]
        for b in betas:
            beta = None if b == "paper" else float(b)
            tag = "paper β 1.71" if beta is None else f"β {beta:g}"
            for what, n in (("1 poison (one-shot kill)", 1), (f"{k} poisons", k)):
                name = f"feature_collision, {what}, {tag}"
                atk = gt.attacks.create("feature_collision", n_poisons=n, target_class=tc, max_iter=args.fc_iter, beta=beta)
                t0 = time.process_time()
                pd = atk.poison(x, y, seed=j, model=model, x_target=xt)
                dt = time.process_time() - t0
                rows = pd.info["rows"].flatten()
                hit = int(victim.predict(victim.poisoned(rows, pd.x[rows]), xt)) == tc
                d0 = pd.info["feature_distance_initial"]
                record(name, hit, dt, feature_ratio=float((pd.info["feature_distance"] / d0).mean()),
                       l2_to_base=float((pd.x[rows] - x[rows]).flatten(1).norm(dim=1).mean()))
                if art is not None and b == betas[0] and (n == 1 or j < args.art_targets):
                    from art.attacks.poisoning import FeatureCollisionAttack

                    # ART steps on the unsquared norm ||f(x) - f(t)|| (gradient ours / 2||f(x) - f(t)||): its learning
                    # rate is ours times 2||f(b) - f(t)|| so the first steps coincide, and its similarity_coeff gives
                    # the same beta (ART: similarity_coeff * (feature_dim / input_dim)^2)
                    fca = FeatureCollisionAttack(
                        art, xt.numpy(), "relu3", learning_rate=float(atk.learning_rate) * 2 * float(d0.mean()),
                        similarity_coeff=pd.info["beta"] / (200 / 784) ** 2, max_iter=args.fc_iter, verbose=False,
                    )
                    t0 = time.process_time()
                    xp, _ = fca.poison(x[rows].numpy())
                    dt = time.process_time() - t0
                    xp_t = torch.from_numpy(np.asarray(xp, dtype=np.float32)).view(-1, 1, 28, 28)
                    fd = (features(model, xp_t) - features(model, xt)).norm(dim=1) / d0
                    hit = int(victim.predict(victim.poisoned(rows, xp_t), xt)) == tc
                    record("ART " + name, hit, dt, feature_ratio=float(fd.mean()),
                           l2_to_base=float((xp_t - x[rows]).flatten(1).norm(dim=1).mean()))
        if args.no_gm:
            print(f"target {j + 1}/{len(targets)}: " + str({n: f"{m['hits']}/{m['runs']}" for n, m in methods.items()}), flush=True)
            continue
        atk = gt.attacks.create("gradient_matching", n_poisons=k, target_class=tc, steps=args.gm_steps, restarts=args.gm_restarts, params="last")
        t0 = time.process_time()
        pd = atk.poison(x, y, seed=j, model=model, x_target=xt)
        dt = time.process_time() - t0
        rows = pd.info["rows"].flatten()
        hit = int(victim.predict(victim.poisoned(rows, pd.x[rows]), xt)) == tc
        record(f"gradient_matching, {k} poisons, eps 16/255", hit, dt, alignment=1 - float(pd.info["alignment_loss"][0]),
               alignment_initial=1 - float(pd.info["alignment_loss_initial"][0]))
        if art is not None and j < args.art_targets:
            from art.attacks.poisoning import GradientMatchingAttack

            np.random.seed(j)
            torch.manual_seed(j)
            s = args.gm_steps
            gma = GradientMatchingAttack(
                art, percent_poison=1.0, epsilon=16 / 255, max_trials=args.gm_restarts, max_epochs=s,
                learning_rate_schedule=([1e-1, 1e-2, 1e-3, 1e-4], [s * 3 // 8, s * 5 // 8, s * 7 // 8, s]),
                batch_size=k, clip_values=(0.0, 1.0), verbose=0,
            )
            t0 = time.process_time()
            xp, _ = gma.poison(xt.numpy(), np.array([tc]), x[rows].numpy(), y[rows].numpy())
            dt = time.process_time() - t0
            xp_t = torch.from_numpy(np.asarray(xp, dtype=np.float32)).view(-1, 1, 28, 28)
            hit = int(victim.predict(victim.poisoned(rows, xp_t), xt)) == tc
            record(f"ART gradient_matching, {k} poisons, eps 16/255", hit, dt, linf=float((xp_t - x[rows]).abs().max()))
        done = {n: f"{m['hits']}/{m['runs']}" for n, m in methods.items()}
        print(f"target {j + 1}/{len(targets)} (test #{i}, {int(ys[i])} -> {tc}): {done}", flush=True)

    rows_out = []
    for name, m in methods.items():
        extra = {key: float(np.mean(v)) for key, v in m["extra"].items()}
        m["success"] = m["hits"] / m["runs"]
        m["cpu_s_per_target"] = m["seconds"] / m["runs"]
        m["extra"] = extra
        rows_out.append([name, f"{100 * m['success']:.0f}% ({m['hits']}/{m['runs']})", f"{m['cpu_s_per_target']:.2f}",
                         ", ".join(f"{key} {v:.3g}" for key, v in extra.items())])
    table = markdown_table(["method", "targeted success", "CPU s / target", "mean diagnostics"], rows_out)
    print(table)
    out = {
        "setting": {
            "feature_extractor": "advertorch_lenet5_mnist_clntrained.pt (frozen), victim retrains linear2 from its pretrained weights",
            "n_train": args.n_train, "victim_steps": args.victim_steps, "targets": targets, "target_classes": classes,
            "n_poisons": k, "fc_iter": args.fc_iter, "gm_steps": args.gm_steps, "gm_restarts": args.gm_restarts,
            "clean_victim_accuracy_first_2000_test": acc_clean,
        },
        "paper": {"shafahi2018_one_shot_kill_transfer_dog_fish": 1.0},
        "methods": methods,
        "table": table,
        "environment": environment(),
    }
    print(f"wrote {write_json('poison_frogs.json', out)}")


if __name__ == "__main__":
    main()
