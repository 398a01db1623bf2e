"""Score-based black-box attacks (NES-PGD, SPSA, ZOO, PGD through EstimatedGradients): strength,
query cost and query throughput.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_score_based.py            # --quick for a smaller run

On one torch thread it measures

1. **ZOO at its default budget** (``create("zoo", eps=0.2, max_queries=10_000)``, L∞) on an
   undefended digits CNN (target: ≥ 90% success), and on MNIST (advertorch's clean LeNet5 from
   ``../shared/models``) when the shared folder is there;
2. **NES-PGD L∞ robust accuracy vs white-box PGD-40** at the same ε on the same points (target:
   within 5 pp), with SPSA and PGD-40 through ``EstimatedGradients`` beside them;
3. **query throughput**: queries per CPU second of each score-based attack (and of a gradient
   estimate through ``EstimatedGradients``) against the bare model's forward pass under
   ``torch.inference_mode()`` at the batch size the attack sends (4096), interleaved rounds,
   median of the per-round ratios (target: ≥ 0.9);
4. a random forest (scikit-learn, through ``SklearnModel``) attacked by NES and ZOO;
5. **ZOO vs IBM ART's ZooAttack** at the same per-sample query budget, when ART is installed
   (``bash benchmarks/install_peers.sh``); otherwise it says so.

Success rates are over the points the model classifies correctly (a clean mistake is no attack);
robust accuracy is over all points, as ``AttackResult.robust_accuracy``.  Results go to
``benchmarks/results/score_based.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common as C

import gauntlet as gt
from gauntlet.attacks.base import loss_and_grad
from gauntlet.data import load_digits
from gauntlet.models.base import InputSpec, Model
from gauntlet.models.zoo import DigitsCNN, train_classifier


class ScoresOnly(Model):
    """A network behind a scores-only interface: the attacks see logits, never gradients."""

    capabilities = frozenset({"scores", "labels"})
    output = "logits"

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.input_spec = InputSpec(shape, torch.float32, (0.0, 1.0))
        self._num_classes = 10
        self.forward_cpu = 0.0  # CPU seconds spent inside the network

    def _forward(self, x: Tensor) -> Tensor:
        c0 = time.process_time()
        with torch.no_grad():
            out = self.net(x)
        self.forward_cpu += time.process_time() - c0
        return out


class Counting(nn.Module):
    """Counts the inputs a peer library feeds the network (its real query cost)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.count = 0

    def forward(self, x: Tensor) -> Tensor:
        self.count += int(x.shape[0])
        return self.net(x)


def log(msg: str) -> None:
    print(msg, flush=True)


def success_on_correct(res: gt.AttackResult) -> float:
    c = res.clean_correct
    return float(res.success[c].float().mean())


def digits_net() -> nn.Module:
    """The tests' undefended DigitsCNN recipe (~97% clean test accuracy)."""
    train = load_digits("train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN()
    return train_classifier(net, train.x, train.y, epochs=15, seed=0).eval()


# ----------------------------------------------------------------------------------------------
def zoo_row(model: Model, x: Tensor, y: Tensor, eps: float, label: str) -> dict[str, Any]:
    res = gt.attacks.create("zoo", eps=eps, max_queries=10_000).run(model, x, y, seed=0)
    qps = res.info["queries_per_sample"]
    c = res.clean_correct
    row = {
        "model": label, "attack": "zoo (default: L∞, 10 000 queries)", "eps": eps, "n": int(x.shape[0]),
        "clean_accuracy": float(c.float().mean()), "success_on_correct": success_on_correct(res),
        "median_queries_successful": float(qps[res.success & c].double().median()) if bool((res.success & c).any()) else None,
        "mean_queries_per_sample": float(qps[c].double().mean()), "max_queries_per_sample": int(qps.max()),
        "seconds": res.seconds,
    }
    log(f"  zoo {label} eps={eps}: success {row['success_on_correct']:.3f}, median queries {row['median_queries_successful']}")
    return row


def strength_rows(net: nn.Module, shape: tuple[int, ...], x: Tensor, y: Tensor, eps: float, label: str,
                  budget: int) -> list[dict[str, Any]]:
    white = gt.models.TorchModel(net, num_classes=10, input_shape=shape)
    rows = []

    def add(name: str, res: gt.AttackResult, access: str) -> None:
        qps = res.info.get("queries_per_sample")
        rows.append({
            "model": label, "attack": name, "access": access, "eps": eps, "n": int(x.shape[0]),
            "robust_accuracy": float(res.robust_accuracy),
            "mean_queries_per_sample": float(qps.double().mean()) if qps is not None else res.queries / x.shape[0],
            "seconds": res.seconds,
        })
        log(f"  {label} eps={eps} {name}: robust {float(res.robust_accuracy):.3f} ({res.seconds:.1f} s)")

    add("pgd-40", gt.attacks.create("pgd", eps=eps, steps=40).run(white, x, y, seed=0), "white-box")
    bb = ScoresOnly(net, shape)
    add(f"nes (L∞, {budget} queries)", gt.attacks.create("nes", eps=eps, max_queries=budget).run(bb, x, y, seed=0), "scores")
    add(f"spsa ({budget} queries)", gt.attacks.create("spsa", eps=eps, max_queries=budget).run(bb, x, y, seed=0), "scores")
    est = gt.models.EstimatedGradients(ScoresOnly(net, shape), method="nes", samples=100)
    add("pgd-40 through EstimatedGradients(nes, 100 samples)",
        gt.attacks.create("pgd", eps=eps, steps=40).run(est, x, y, seed=0), "scores")
    return rows


# ----------------------------------------------------------------------------------------------
def throughput(net: nn.Module, shape: tuple[int, ...], pool: Tensor, labels: Tensor, repeats: int,
               label: str) -> list[dict[str, Any]]:
    """Queries per CPU second of each score-based attack vs the bare forward at batch 4096."""
    with torch.inference_mode():
        correct = net(pool).argmax(1) == labels
    x, y = pool[correct][:64], labels[correct][:64]  # 64 standing points × 64 queries = 4096 per call
    assert x.shape[0] == 64, "need 64 correctly classified points"
    batch = 4096
    xb = x.repeat(batch // 64, *([1] * (x.dim() - 1))).contiguous()
    bb = ScoresOnly(net, shape)
    iters = 8
    runs: dict[str, Any] = {
        # ε so small that nothing falls: every call carries the full batch
        "nes": gt.attacks.create("nes", eps=1e-4, samples=64, max_queries=1 + iters * 65),
        "spsa": gt.attacks.create("spsa", eps=1e-4, samples=64, max_queries=1 + iters * 65),
        "zoo": gt.attacks.create("zoo", eps=1e-4, coordinates=32, max_queries=1 + iters * 65),
    }
    est = gt.models.EstimatedGradients(ScoresOnly(net, shape), samples=64)

    def bare() -> int:
        with torch.inference_mode():
            for _ in range(iters):
                net(xb)
        return iters * batch

    share: dict[str, list[float]] = {}

    def attack(name: str) -> Any:
        def go() -> int:
            bb.reset_counters()
            bb.forward_cpu = 0.0
            c0 = time.process_time()
            res = runs[name].run(bb, x, y, seed=0)
            share.setdefault(name, []).append(bb.forward_cpu / (time.process_time() - c0))
            return res.queries

        return go

    def estimate() -> int:
        est.reset_counters()
        inner = est.model
        assert isinstance(inner, ScoresOnly)
        inner.forward_cpu = 0.0
        c0 = time.process_time()
        with est.attack_mode():
            for _ in range(iters):
                loss_and_grad(est, x, lambda z: torch.nn.functional.cross_entropy(z, y, reduction="none"))
        share.setdefault("EstimatedGradients (PGD step)", []).append(inner.forward_cpu / (time.process_time() - c0))
        return est.queries

    fns = {"bare forward": bare, **{n: attack(n) for n in runs}, "EstimatedGradients (PGD step)": estimate}
    _, cpu, last = C.interleaved(fns, repeats, warmup=1)
    rate = {k: [last[k] / t for t in cpu[k]] for k in fns}
    rows = []
    for k in fns:
        ratios = [a / b for a, b in zip(rate[k], rate["bare forward"])]
        rows.append({
            "model": label, "what": k, "batch": batch, "queries": int(last[k]),
            "queries_per_cpu_s": statistics.median(rate[k]),
            "ratio_to_bare": statistics.median(ratios), "ratio_spread": [min(ratios), max(ratios)],
            "forward_share": statistics.median(share[k]) if k in share else 1.0,
        })
        log(f"  {label} {k}: {statistics.median(rate[k]):,.0f} queries/s, ratio {statistics.median(ratios):.3f}, "
            f"forward share {rows[-1]['forward_share']:.3f}")
    return rows


# ----------------------------------------------------------------------------------------------
def forest_rows(x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    from sklearn.ensemble import RandomForestClassifier

    train = load_digits("train")
    rf = RandomForestClassifier(n_estimators=100, random_state=0).fit(train.x.flatten(1).numpy(), train.y.numpy())
    rows = []
    for name, params in [
        ("nes", {"max_queries": 2000, "sigma": 0.1}),
        ("zoo", {"max_queries": 2000, "h": 0.1, "learning_rate": 0.1}),
        ("square", {"max_queries": 2000}),
    ]:
        model = gt.models.SklearnModel(rf, input_shape=(1, 8, 8))
        res = gt.attacks.create(name, eps=0.2, **params).run(model, x, y, seed=0)
        qps = res.info.get("queries_per_sample")
        rows.append({
            "model": "random forest (100 trees), digits", "attack": name, "params": params, "eps": 0.2,
            "n": int(x.shape[0]), "clean_accuracy": float(res.clean_correct.float().mean()),
            "success_on_correct": success_on_correct(res),
            "mean_queries_per_sample": float(qps.double().mean()) if qps is not None else res.queries / x.shape[0],
            "seconds": res.seconds,
        })
        log(f"  forest {name}: success {rows[-1]['success_on_correct']:.3f} ({res.seconds:.1f} s)")
    return rows


# ----------------------------------------------------------------------------------------------
def art_rows(net: nn.Module, x: Tensor, y: Tensor, eps: float) -> list[dict[str, Any]]:
    """IBM ART's ZooAttack at the same per-sample budget as ours (10 000 queries)."""
    if importlib.util.find_spec("art") is None:
        log("  ART is not installed (bash benchmarks/install_peers.sh): no peer comparison")
        return [{"tool": "art", "note": "not installed"}]
    import art
    from art.attacks.evasion import ZooAttack
    from art.estimators.classification import PyTorchClassifier

    d = int(x[0].numel())
    nb_parallel = min(128, d)  # ART draws coordinates without replacement: at most the input size
    per_iter = 2 * nb_parallel + 1  # two probes per coordinate, one loss evaluation
    max_iter = 10_000 // per_iter
    with torch.no_grad():
        correct = (net(x).argmax(1) == y).numpy()
    rows = []
    for const in (1e-3, 1.0, 100.0):
        counting = Counting(net).eval()
        clf = PyTorchClassifier(
            model=counting, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
            clip_values=(0.0, 1.0), device_type="cpu",
        )
        attack = ZooAttack(
            clf, learning_rate=0.01, max_iter=max_iter, binary_search_steps=1, initial_const=const,
            abort_early=False, use_resize=False, use_importance=False, nb_parallel=nb_parallel, batch_size=1,
            variable_h=1e-4, verbose=False,
        )
        np.random.seed(0)  # ART draws coordinates from NumPy's global RNG
        t0 = time.perf_counter()
        x_adv = attack.generate(x.numpy())
        seconds = time.perf_counter() - t0
        x_adv_t = torch.from_numpy(x_adv).float().clamp(0, 1)
        with torch.no_grad():
            fooled = (net(x_adv_t).argmax(1) != y).numpy()
        delta = (x_adv_t - x).flatten(1)
        linf, l2 = delta.abs().amax(1).numpy(), delta.norm(dim=1).numpy()
        ok = fooled & correct
        rows.append({
            "tool": f"art {art.__version__}", "attack": f"ZooAttack (ADAM, initial_const={const}, 1 binary-search step, no early abort)",
            "max_iter": max_iter, "nb_parallel": nb_parallel, "n": int(x.shape[0]),
            "queries_per_sample": counting.count / x.shape[0],
            "success_on_correct_any_norm": float(ok[correct].mean()),
            "success_on_correct_within_linf_eps": float((ok & (linf <= eps + 1e-6))[correct].mean()),
            "median_l2_successful": float(np.median(l2[ok])) if ok.any() else None,
            "median_linf_successful": float(np.median(linf[ok])) if ok.any() else None,
            "seconds": seconds,
        })
        log(f"  ART zoo c={const}: success {rows[-1]['success_on_correct_any_norm']:.3f} (within L∞ {eps}: "
            f"{rows[-1]['success_on_correct_within_linf_eps']:.3f}), {rows[-1]['queries_per_sample']:.0f} queries/sample")
    ours = gt.attacks.create("zoo", eps=eps, max_queries=10_000).run(ScoresOnly(net, tuple(x.shape[1:])), x, y, seed=0)
    delta = (ours.x_adv - x).flatten(1)
    ok = (ours.success & ours.clean_correct)
    rows.append({
        "tool": "gauntlet", "attack": f"zoo (L∞ ε = {eps}, 10 000 queries)", "n": int(x.shape[0]),
        "queries_per_sample": ours.queries / x.shape[0],
        "success_on_correct_any_norm": success_on_correct(ours),
        "success_on_correct_within_linf_eps": success_on_correct(ours),
        "median_l2_successful": float(delta.norm(dim=1)[ok].median()) if bool(ok.any()) else None,
        "median_linf_successful": float(delta.abs().amax(1)[ok].median()) if bool(ok.any()) else None,
        "seconds": ours.seconds,
    })
    log(f"  gauntlet zoo: success {rows[-1]['success_on_correct_any_norm']:.3f}, {rows[-1]['queries_per_sample']:.0f} queries/sample")
    return rows


# ----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer points and rounds")
    ap.add_argument("--n", type=int, default=None, help="digits test points (default 200, --quick 64)")
    ap.add_argument("--repeats", type=int, default=None, help="throughput rounds (default 5, --quick 3)")
    ap.add_argument("--no-mnist", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated sections: zoo,strength,throughput,forest,art")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else {"zoo", "strength", "throughput", "forest", "art"}
    torch.set_num_threads(1)
    n = args.n or (64 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 5)
    out: dict[str, Any] = {"environment": C.environment(), "n_digits": n}

    log("digits: training the undefended DigitsCNN")
    net = digits_net()
    test = load_digits("test")
    x, y = test.x[:n].contiguous(), test.y[:n].contiguous()
    shape = (1, 8, 8)

    zoo: list[dict[str, Any]] = []
    strength: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    forest: list[dict[str, Any]] = []
    if "zoo" in only:
        log("1. ZOO at its default budget")
        zoo.append(zoo_row(ScoresOnly(net, shape), x, y, 0.2, "DigitsCNN"))
    if "strength" in only:
        log("2. NES-PGD / SPSA vs white-box PGD")
        strength += strength_rows(net, shape, x, y, 0.1, "DigitsCNN", 10_000)
    if "throughput" in only:
        log("3. throughput")
        speed += throughput(net, shape, test.x[:200], test.y[:200], repeats, "DigitsCNN")
    if "forest" in only:
        log("4. random forest")
        forest += forest_rows(x[:100], y[:100])

    mnist_note = None
    if not args.no_mnist:
        try:
            C.shared_dir()
            lenet = C.load_model("lenet5_clntrained")
            xm, ym = C.mnist_test(100 if not args.quick else 32)
            log("MNIST LeNet5 (clean-trained)")
            if "zoo" in only:
                zoo.append(zoo_row(ScoresOnly(lenet, (1, 28, 28)), xm, ym, 0.2, "LeNet5 (MNIST)"))
                zoo.append(zoo_row(ScoresOnly(lenet, (1, 28, 28)), xm, ym, 0.3, "LeNet5 (MNIST)"))
            if "strength" in only:
                strength += strength_rows(lenet, (1, 28, 28), xm, ym, 0.15, "LeNet5 (MNIST)", 10_000)
            if "throughput" in only:
                xs, ys = C.mnist_test(200)
                speed += throughput(lenet, (1, 28, 28), xs, ys, repeats, "LeNet5 (MNIST)")
        except SystemExit as e:  # no ../shared: digits only
            mnist_note = str(e)
            log(f"MNIST skipped: {e}")
    peers = [] if args.no_peers or "art" not in only else art_rows(net, x[: min(n, 100)], y[: min(n, 100)], 0.2)

    out.update({"zoo": zoo, "strength": strength, "throughput": speed, "forest": forest, "art": peers,
                "mnist_note": mnist_note})
    suffix = "" if args.only is None else "_" + "_".join(sorted(only))
    path = C.write_json(f"score_based{suffix}.json", out)

    tables = [
        ("ZOO at its default budget", zoo,
         ["model", "ε (L∞)", "n", "clean acc", "success (clean-correct)", "median queries (successful)", "max queries/sample"],
         lambda r: [r["model"], r["eps"], r["n"], r["clean_accuracy"], r["success_on_correct"],
                    r["median_queries_successful"], r["max_queries_per_sample"]]),
        ("Robust accuracy: score-based vs white-box PGD", strength,
         ["model", "ε (L∞)", "attack", "access", "robust acc", "mean queries/sample", "seconds"],
         lambda r: [r["model"], r["eps"], r["attack"], r["access"], r["robust_accuracy"],
                    round(r["mean_queries_per_sample"]), round(r["seconds"], 1)]),
        ("Query throughput (batch 4096, CPU time, median of paired rounds)", speed,
         ["model", "what", "queries / CPU s", "ratio to bare forward", "ratio range", "CPU share in the network"],
         lambda r: [r["model"], r["what"], round(r["queries_per_cpu_s"]), r["ratio_to_bare"],
                    f"{r['ratio_spread'][0]:.3f}–{r['ratio_spread'][1]:.3f}", r["forward_share"]]),
        ("Random forest", forest,
         ["attack", "params", "n", "clean acc", "success (clean-correct)", "mean queries/sample"],
         lambda r: [r["attack"], r["params"], r["n"], r["clean_accuracy"], r["success_on_correct"],
                    round(r["mean_queries_per_sample"])]),
    ]
    for title, rows, headers, cells in tables:
        if rows:
            log(f"\n### {title}")
            log(C.markdown_table(headers, [cells(r) for r in rows]))
    if peers and "note" not in peers[0]:
        log("\n### ZOO vs ART's ZooAttack (same per-sample budget)")
        log(C.markdown_table(
            ["tool", "attack", "queries/sample", "success (any norm)", f"success within L∞ {0.2}", "median L2", "median L∞", "seconds"],
            [[r["tool"], r["attack"], round(r["queries_per_sample"]), r["success_on_correct_any_norm"],
              r["success_on_correct_within_linf_eps"], r["median_l2_successful"], r["median_linf_successful"],
              round(r["seconds"], 1)] for r in peers],
        ))
    log(f"\nwrote {path}")


if __name__ == "__main__":
    main()
