"""Backdoor benchmark (issue 11): BadNets, blended and clean-label backdoors on MNIST, beside IBM
ART's PoisoningAttackBackdoor on the same poison rows.

Each victim is advertorch's LeNet5 trained from the same initialisation, in the same batch order,
with the same optimiser (``gauntlet.models.zoo.train_classifier``: Adam, lr 1e-3, batch 128) on the
60,000 MNIST training images, poisoned or not; only the training data differ.  Reported per row:
the clean test accuracy (10,000 test images) beside the clean model's, and the attack success rate
(ASR: share of the test images *not* of the target class sent to the target class once they carry
the trigger).  The clean model's "ASR" (the trigger on a model that never saw poison) is the floor.

* ``badnets``: 1% of the rows, target 0, a 3x3 checkerboard one pixel from the bottom-right corner
  (gauntlet's defaults); ``--variants`` adds a solid square and margin 0;
* ``art_backdoor``: ART 1.20's ``PoisoningAttackBackdoor(add_pattern_bd)`` on exactly the rows
  BadNets poisoned (its 4-pixel pattern two pixels from the corner), relabelled 0;
* ``blended``: Chen et al.'s random-noise blend, alpha 0.2, at 1% and 10% (ASR at test alpha 0.2
  and 0.3);
* ``clean_label_backdoor``: Turner et al.'s label-consistent attack, 5% of the set (~half of
  class 0), PGD L-inf 0.3 (40 steps) on advertorch's adversarially trained LeNet5 as surrogate (the
  paper perturbs with adversarially trained models), beside the same rows with the trigger only
  (``eps=0``).

Trained weights are cached under ``benchmarks/results/cache/`` (not committed), so a rerun only
evaluates.  One torch thread.  Run: ``.venv/bin/python benchmarks/bench_backdoor.py``
(``--only NAME,...`` for a subset, ``--no-cache`` to retrain, ``--variants`` for the BadNets variants).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

import gauntlet as gt
from gauntlet.models.zoo import LeNet5, train_classifier

CACHE = C.RESULTS / "cache"
EPOCHS, BATCH, LR, SEED = 2, 128, 1e-3, 0
TARGET = 0


def mnist(split: str) -> tuple[Tensor, Tensor]:
    from gauntlet.data import load_idx

    ds = load_idx(C.shared_dir() / "data" / "mnist", split=split)
    return ds.x.contiguous(), ds.y.to(torch.int64).contiguous()


def train(tag: str, x: Tensor, y: Tensor, *, use_cache: bool, log: Any) -> tuple[gt.models.TorchModel, float, bool]:
    """LeNet5 trained on ``(x, y)`` (same init and batch order every time); cached by data hash."""
    h = hashlib.sha256()
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    h.update(f"lenet5 e{EPOCHS} b{BATCH} lr{LR} s{SEED}".encode())
    path = CACHE / f"{tag}-{h.hexdigest()[:16]}.pt"
    meta = path.with_suffix(".json")
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = LeNet5()
    if use_cache and path.exists() and meta.exists():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        cpu, cached = float(json.loads(meta.read_text())["train_cpu_s"]), True
    else:
        log(f"  training {tag} ({EPOCHS} epochs on {len(y)} rows)...")
        c0 = time.process_time()
        train_classifier(net, x, y, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED)
        cpu, cached = time.process_time() - c0, False
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
        meta.write_text(json.dumps({"train_cpu_s": cpu}))
    net.eval()
    return gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28)), cpu, cached


def accuracy(model: gt.models.TorchModel, x: Tensor, y: Tensor) -> float:
    return float((model.predict(x, count=False) == y).double().mean())


def asr_of(model: gt.models.TorchModel, trigger: Any, x: Tensor, y: Tensor) -> float:
    keep = y != TARGET
    return float((model.predict(trigger(x[keep]), count=False) == TARGET).double().mean())


def art_trigger(x: Tensor) -> Tensor:
    from art.attacks.poisoning.perturbations import add_pattern_bd

    return torch.from_numpy(add_pattern_bd(x.numpy(), channels_first=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    ap.add_argument("--no-cache", action="store_true", help="retrain even when cached weights exist")
    ap.add_argument("--variants", action="store_true", help="also train BadNets with a solid square and with margin 0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    only = {s for s in args.only.split(",") if s}
    use_cache = not args.no_cache
    log = lambda m: print(m, file=sys.stderr, flush=True)

    x, y = mnist("train")
    xt, yt = mnist("test")
    log(f"MNIST train {tuple(x.shape)}, test {tuple(xt.shape)}")
    clean, clean_cpu, clean_cached = train("clean", x, y, use_cache=use_cache, log=log)
    acc_clean = accuracy(clean, xt, yt)
    log(f"clean LeNet5: accuracy {acc_clean:.4f}")

    rows: list[dict[str, Any]] = []

    def record(name: str, tool: str, setting: str, pd_x: Tensor, pd_y: Tensor, mask: Tensor, triggers: dict[str, Any],
               poison_s: float, extra: dict[str, Any] | None = None) -> None:
        model, cpu, cached = train(name, pd_x, pd_y, use_cache=use_cache, log=log)
        acc = accuracy(model, xt, yt)
        asr = {k: asr_of(model, t, xt, yt) for k, t in triggers.items()}
        floor = {k: asr_of(clean, t, xt, yt) for k, t in triggers.items()}
        row = {
            "name": name, "tool": tool, "setting": setting, "n_poison": int(mask.sum()),
            "fraction": float(mask.double().mean()), "clean_acc_clean_model": acc_clean, "clean_acc": acc,
            "acc_drop_pp": 100 * (acc_clean - acc), "asr": asr, "asr_clean_model": floor,
            "poison_s": poison_s, "train_cpu_s": cpu, "cached": cached, **(extra or {}),
        }
        rows.append(row)
        log(f"{name}: acc {acc:.4f} (clean {acc_clean:.4f}), ASR {asr}, floor {floor}")

    def want(name: str) -> bool:
        return not only or name in only

    # -- BadNets (gauntlet defaults) and ART on the same rows ----------------------------------------
    bad = gt.attacks.create("badnets", fraction=0.01, target_class=TARGET, patch_size=3)
    t0 = time.perf_counter()
    pd_bad = bad.poison(x, y, seed=SEED)
    bad_s = time.perf_counter() - t0
    if want("badnets"):
        record("badnets", "gauntlet", "1%, 3x3 checkerboard, margin 1 (defaults)", pd_bad.x, pd_bad.y, pd_bad.is_poison,
               {"trigger": bad.apply_trigger}, bad_s)
    if want("art_backdoor"):
        from art.attacks.poisoning import PoisoningAttackBackdoor
        from art.attacks.poisoning.perturbations import add_pattern_bd

        art = PoisoningAttackBackdoor(lambda a: add_pattern_bd(a, channels_first=True))
        rows_idx = pd_bad.info["rows"]
        t0 = time.perf_counter()
        target_onehot = np.zeros((len(rows_idx), 10), dtype=np.float32)
        target_onehot[:, TARGET] = 1
        px_np, py_np = art.poison(x[rows_idx].numpy(), y=target_onehot)
        art_s = time.perf_counter() - t0
        ax, ay = x.clone(), y.clone()
        ax[rows_idx] = torch.from_numpy(px_np)
        ay[rows_idx] = torch.from_numpy(py_np.argmax(1)).to(torch.int64)
        record("art_backdoor", "ART 1.20.1", "same 1% rows, add_pattern_bd (4 px, distance 2)", ax, ay, pd_bad.is_poison,
               {"trigger": art_trigger}, art_s)
    # BadNets variants: which trigger settings carry 1% poison
    for name, kw, setting in [
        ("badnets_square", {"pattern": "square"}, "1%, 3x3 solid square, margin 1"),
        ("badnets_margin0", {"margin": 0}, "1%, 3x3 checkerboard, margin 0"),
    ]:
        if not (name in only or (args.variants and want(name))):
            continue
        atk = gt.attacks.create("badnets", fraction=0.01, target_class=TARGET, patch_size=3, **kw)
        t0 = time.perf_counter()
        pd = atk.poison(x, y, seed=SEED)
        record(name, "gauntlet", setting, pd.x, pd.y, pd.is_poison, {"trigger": atk.apply_trigger}, time.perf_counter() - t0)

    # -- blended --------------------------------------------------------------------------------------
    for frac in (0.01, 0.1):
        name = f"blended_{round(frac * 100)}pct"
        if not want(name):
            continue
        atk = gt.attacks.create("blended", fraction=frac, target_class=TARGET, pattern="random", alpha=0.2)
        strong = gt.attacks.create("blended", fraction=frac, target_class=TARGET, pattern="random", alpha=0.2, test_alpha=0.3)
        t0 = time.perf_counter()
        pd = atk.poison(x, y, seed=SEED)
        record(name, "gauntlet", f"{frac:.0%}, random pattern, alpha 0.2", pd.x, pd.y, pd.is_poison,
               {"test_alpha_0.2": atk.apply_trigger, "test_alpha_0.3": strong.apply_trigger}, time.perf_counter() - t0)

    # -- clean-label ----------------------------------------------------------------------------------
    if want("clean_label_pgd") or want("clean_label_no_pgd") or "clean_label_pgd_clean_surrogate" in only:
        adv_trained = gt.models.TorchModel(C.load_model("lenet5_advtrained"), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))
        for name, eps in (("clean_label_pgd", 0.3), ("clean_label_no_pgd", 0.0), ("clean_label_pgd_clean_surrogate", 0.3)):
            if name == "clean_label_pgd_clean_surrogate" and name not in only:
                continue  # opt-in: --only clean_label_pgd_clean_surrogate
            if not want(name):
                continue
            surrogate = clean if name.endswith("clean_surrogate") else adv_trained
            atk = gt.attacks.create("clean_label_backdoor", fraction=0.05, target_class=TARGET, eps=eps)
            t0, c0 = time.perf_counter(), time.process_time()
            pd = atk.poison(x, y, seed=SEED, model=surrogate)
            poison_s, poison_cpu = time.perf_counter() - t0, time.process_time() - c0
            assert torch.equal(pd.y, y), "clean-label poison keeps every label"
            which = "the clean LeNet5 (the victim's twin)" if surrogate is clean else "the adv-trained LeNet5"
            setting = "5% (class 0 only), " + (f"PGD L-inf 0.3 x40 on {which}" if eps else "trigger only (eps=0)")
            record(name, "gauntlet", setting, pd.x, pd.y, pd.is_poison, {"trigger": atk.apply_trigger}, poison_s,
                   {"poison_cpu_s": poison_cpu, "surrogate_fooled": pd.info.get("surrogate_fooled")})

    headers = ["attack", "tool", "setting", "poison rows", "clean acc (clean model)", "clean acc (poisoned)", "Δ pp", "ASR", "ASR on clean model"]
    table = []
    for r in rows:
        asr = ", ".join(f"{v:.1%}" if len(r["asr"]) == 1 else f"{k.replace('test_alpha_', 'α ')}: {v:.1%}" for k, v in r["asr"].items())
        floor = ", ".join(f"{v:.1%}" for v in r["asr_clean_model"].values())
        table.append([r["name"], r["tool"], r["setting"], r["n_poison"], f"{r['clean_acc_clean_model']:.2%}",
                      f"{r['clean_acc']:.2%}", f"{r['acc_drop_pp']:+.2f}", asr, floor])
    print(C.markdown_table(headers, table))
    out = {
        "benchmark": "backdoor", "data": "MNIST 60k train / 10k test", "model": "LeNet5 (advertorch architecture)",
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "optimizer": "Adam", "seed": SEED},
        "target_class": TARGET, "clean_model": {"accuracy": acc_clean, "train_cpu_s": clean_cpu, "cached": clean_cached},
        "rows": rows, "environment": C.environment(),
    }
    if only:
        prev = C.RESULTS / "backdoor.json"
        if prev.exists():  # merge a partial rerun into the stored results
            old = json.loads(prev.read_text())
            keep = [r for r in old.get("rows", []) if r["name"] not in {r2["name"] for r2 in rows}]
            out["rows"] = keep + rows
    path = C.write_json("backdoor.json", out)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
