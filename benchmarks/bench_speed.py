"""Speed of gauntlet's gradient attacks against the raw input-gradient floor and the peers.

    .venv/bin/python benchmarks/bench_speed.py [--repeats 5] [--quick]

Setting: one CPU thread, advertorch's undefended LeNet5 (``clntrained``), the first 256 MNIST
test images as one batch, L∞ ε = 0.3, step 0.01, random start.

* The **floor** is a bare PyTorch loop of exactly K forward+backward passes that compute only
  the input gradient (weights frozen, eval mode) plus the minimal L∞ update (sign step, clamp to
  the ball, clamp to [0, 1]). Nothing can run K PGD steps with less work.
* **gauntlet PGD-K** (``early_stop=False``: every step on every point) and **APGD-CE** (when
  ``apgd_ce`` is registered; its floor uses K = ``grad_evals / N``) as a ratio to that floor.
  gauntlet's ``Attack.run`` also validates the input, predicts the clean batch and re-predicts
  the projected result (the success it reports is recomputed with the model): two forward
  passes the floor does not do; the row ``floor + 2 fwd`` shows what that costs by itself.
  The row ``(audit: clean_pred shared)`` passes the clean predictions in, as an audit does (it
  predicts the clean data once for all its attacks): one verification forward instead of two.
* **Peers** at identical settings (when installed, see ``benchmarks/install_peers.sh``):
  torchattacks ``PGD``, foolbox ``LinfPGD``, cleverhans ``projected_gradient_descent`` (torch),
  ART ``ProjectedGradientDescentPyTorch``. All receive the same module with frozen weights.
* **Evaluation mode**: gauntlet PGD-40 with ``early_stop=True`` (stops spending steps on points
  already fooled) vs torchattacks PGD-40: wall-time ratio and robust accuracy of both.

Every method runs once per round, rounds interleaved (A B C … A B C …). Both wall time and the
process's CPU time are recorded; the targets use the **paired CPU ratio** (per round, this
method's CPU seconds over its reference's CPU seconds in the same round; median over rounds),
which is the figure least disturbed by other processes on a shared machine. The JSON keeps every
timing and the load average. Results: a markdown table on stdout and
``benchmarks/results/speed.json``.

Targets: PGD and APGD ≤ 1.05× their floor; evaluation mode ≥ 2× faster than torchattacks with a
robust accuracy no higher than torchattacks'. Note that gauntlet's two verification forward
passes cost about 0.8 of one forward+backward step on this model, i.e. ≈ 8% at K = 10 and ≈ 2%
at K = 40; the ``floor + 2 fwd`` rows measure exactly that.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import gauntlet as gt  # noqa: E402

EPS = 0.3
STEP = 0.01
MODEL = "lenet5_clntrained"


# ----------------------------------------------------------------------------------------------
# the raw input-gradient floor
def floor_pgd(net: nn.Module, x: Tensor, y: Tensor, steps: int, seed: int = 0) -> Tensor:
    """Exactly ``steps`` forward+backward passes (input gradient only) + the minimal L∞ update.

    The random start is drawn like gauntlet's (uniform in the ball from a generator seeded with
    ``seed``), so both follow the same trajectory up to rounding.
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = x - EPS, x + EPS
    xa = (x + (2 * torch.rand(x.shape, generator=gen) - 1) * EPS).clamp(0.0, 1.0)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(net(xa), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.minimum(torch.maximum(xa.detach() + STEP * g.sign(), lo), hi).clamp(0.0, 1.0)
    return xa


def floor_plus_verify(net: nn.Module, x: Tensor, y: Tensor, steps: int) -> Tensor:
    """The floor plus the two forward passes gauntlet's base class adds (clean and final prediction)."""
    with torch.no_grad():
        net(x).argmax(1)
    xa = floor_pgd(net, x, y, steps)
    with torch.no_grad():
        net(xa).argmax(1)
    return xa


# ----------------------------------------------------------------------------------------------
# peers (each returns the adversarial batch as a float tensor)
def peer_factories(net: nn.Module, x: Tensor, y: Tensor) -> dict[str, Callable[[int], Callable[[], Tensor]]]:
    """name -> (steps -> zero-argument callable); only peers that import."""
    out: dict[str, Callable[[int], Callable[[], Tensor]]] = {}
    try:
        import torchattacks

        def ta(steps: int) -> Callable[[], Tensor]:
            atk = torchattacks.PGD(net, eps=EPS, alpha=STEP, steps=steps, random_start=True)
            return lambda: atk(x, y)

        out["torchattacks"] = ta
    except Exception as e:  # pragma: no cover - optional
        print(f"# torchattacks unavailable: {e}", file=sys.stderr)
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(net, bounds=(0.0, 1.0))

        def fbx(steps: int) -> Callable[[], Tensor]:
            atk = fb.attacks.LinfPGD(rel_stepsize=STEP / EPS, steps=steps, random_start=True)

            def call() -> Tensor:
                _, clipped, _ = atk(fmodel, x, y, epsilons=EPS)
                return clipped

            return call

        out["foolbox"] = fbx
    except Exception as e:  # pragma: no cover - optional
        print(f"# foolbox unavailable: {e}", file=sys.stderr)
    try:
        from cleverhans.torch.attacks.projected_gradient_descent import projected_gradient_descent

        def ch(steps: int) -> Callable[[], Tensor]:
            return lambda: projected_gradient_descent(
                net, x, EPS, STEP, steps, np.inf, clip_min=0.0, clip_max=1.0, y=y,
                rand_init=True, sanity_checks=False,
            )

        out["cleverhans"] = ch
    except Exception as e:  # pragma: no cover - optional
        print(f"# cleverhans unavailable: {e}", file=sys.stderr)
    try:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=net, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
            clip_values=(0.0, 1.0), device_type="cpu",
        )
        xn, yn = x.numpy(), y.numpy()

        def art(steps: int) -> Callable[[], Tensor]:
            atk = ProjectedGradientDescentPyTorch(
                clf, norm=np.inf, eps=EPS, eps_step=STEP, max_iter=steps, targeted=False,
                num_random_init=1, batch_size=x.shape[0], verbose=False,
            )
            return lambda: torch.from_numpy(atk.generate(xn, y=yn))

        out["ART"] = art
    except Exception as e:  # pragma: no cover - optional
        print(f"# ART unavailable: {e}", file=sys.stderr)
    return out


def peer_apgd(net: nn.Module, x: Tensor, y: Tensor, steps: int) -> Callable[[], Tensor] | None:
    try:
        import torchattacks
    except Exception:
        return None
    atk = torchattacks.APGD(net, norm="Linf", eps=EPS, steps=steps, n_restarts=1, loss="ce", seed=0)
    return lambda: atk(x, y)


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (medians are reported)")
    ap.add_argument("--quick", action="store_true", help="PGD-10 and evaluation mode only, 3 rounds unless --repeats")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", metavar="REGEX", help="time only the methods whose name matches (plus their references)")
    ap.add_argument("--json", default="speed.json", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    if args.quick and "--repeats" not in " ".join(argv if argv is not None else sys.argv):
        args.repeats = 3
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # peers draw their random start from the global RNG

    x, y = C.mnist_test(args.batch)
    net = C.load_model(MODEL)
    for p in net.parameters():
        p.requires_grad_(False)
    n = x.shape[0]
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 28, 28))

    ks = [10] if args.quick else [10, 40]
    # name -> dict(fn, settings, group, ref)
    methods: dict[str, dict[str, Any]] = {}

    def add(name: str, fn: Callable[[], Any], settings: str, ref: str | None) -> None:
        methods[name] = {"fn": fn, "settings": settings, "ref": ref}

    with torch.no_grad():
        clean_pred = net(x).argmax(1)

    def g_pgd(steps: int, early_stop: bool, shared_clean: bool = False) -> Callable[[], gt.AttackResult]:
        atk = gt.attacks.create(
            "pgd", norm="linf", eps=EPS, steps=steps, step_size=STEP, random_start=True, early_stop=early_stop
        )
        if shared_clean:  # as inside an audit, which predicts the clean data once for every attack
            return lambda: atk.run(model, x, y, seed=0, clean_pred=clean_pred)
        return lambda: atk.run(model, x, y, seed=0)

    peers = {} if args.no_peers else peer_factories(net, x, y)
    common = f"ε={EPS}, step={STEP}, rand start"
    for k in ks:
        floor = f"floor K={k}"
        add(floor, lambda k=k: floor_pgd(net, x, y, k), f"{k} fwd+bwd + sign/clamp", None)
        add(f"floor K={k} + 2 fwd", lambda k=k: floor_plus_verify(net, x, y, k), "floor + clean & final predict", floor)
        add(f"gauntlet PGD-{k}", g_pgd(k, False), f"{common}, early_stop=False", floor)
        add(f"gauntlet PGD-{k} (audit: clean_pred shared)", g_pgd(k, False, True),
            f"{common}, early_stop=False, clean_pred given", floor)
        for pname, make in peers.items():
            add(f"{pname} PGD-{k}", make(k), common, floor)

    def wanted(name: str) -> bool:
        return args.only is None or re.search(args.only, name) is not None

    # APGD-CE, when the attack exists
    apgd_k = None
    if not args.quick and (wanted("gauntlet APGD-CE") or wanted("torchattacks APGD-CE")):
        try:
            apgd = gt.attacks.create("apgd_ce", eps=EPS, steps=100)
            probe = apgd.run(model, x, y, seed=0)  # also tells how many gradient passes it makes
        except Exception as e:
            print(f"# gauntlet apgd_ce unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            apgd = None
        if apgd is not None:
            apgd_k = round(probe.grad_evals / n)
            floor = f"floor K={apgd_k}"
            if floor not in methods:
                add(floor, lambda: floor_pgd(net, x, y, apgd_k), f"{apgd_k} fwd+bwd + sign/clamp", None)
            add("gauntlet APGD-CE", lambda: apgd.run(model, x, y, seed=0),
                f"ε={EPS}, 100 steps, grad_evals/N={probe.grad_evals / n:g}", floor)
            ta_apgd = None if args.no_peers else peer_apgd(net, x, y, 100)
            if ta_apgd is not None:
                add("torchattacks APGD-CE", ta_apgd, f"ε={EPS}, 100 steps, 1 restart", floor)

    # evaluation mode (its own torchattacks row, so that --quick has one too)
    eval_ref = "torchattacks PGD-40 (eval)" if "torchattacks" in peers else None
    add("gauntlet PGD-40 early_stop", g_pgd(40, True), f"{common}, early_stop=True", eval_ref)
    if eval_ref:
        add(eval_ref, peers["torchattacks"](40), common, None)

    if args.only is not None:
        keep = {k for k in methods if wanted(k)}
        keep |= {methods[k]["ref"] for k in keep if methods[k]["ref"]}
        methods = {k: v for k, v in methods.items() if k in keep}
        if not methods:
            raise SystemExit(f"--only {args.only!r} matches no method")

    # cheap pre-warm of every code path (lazy imports, kernel selection)
    floor_pgd(net, x, y, 2)
    g_pgd(1, False)()
    for make in peers.values():
        make(1)()

    wall, cpu, last = C.interleaved(
        {k: v["fn"] for k, v in methods.items()}, args.repeats, warmup=0,
        progress=lambda s: print("#", s, file=sys.stderr, flush=True),
    )

    # accuracy and sanity of each method's last output
    def adv_of(out: Any) -> Tensor:
        return out.x_adv if isinstance(out, gt.AttackResult) else out

    with torch.no_grad():
        clean_acc = float((net(x).argmax(1) == y).float().mean())
    rows, records = [], {}
    for name, m in methods.items():
        adv = adv_of(last[name]).detach().float()
        with torch.no_grad():
            rob = float((net(adv).argmax(1) == y).float().mean())
        ref = m["ref"]
        rec: dict[str, Any] = {
            "settings": m["settings"], "reference": ref,
            "wall_s": wall[name], "cpu_s": cpu[name],
            "median_wall_s": C.median(wall[name]), "median_cpu_s": C.median(cpu[name]),
            "spread_wall": C.spread(wall[name]), "spread_cpu": C.spread(cpu[name]),
            "robust_accuracy": rob, "max_linf": float((adv - x).abs().amax()),
            "in_bounds": bool(adv.min() >= 0 and adv.max() <= 1),
        }
        if ref:
            rec["ratio_wall"] = rec["median_wall_s"] / C.median(wall[ref])
            rec["ratio_cpu"] = rec["median_cpu_s"] / C.median(cpu[ref])
            rec["paired_ratio_wall"] = C.median(C.paired_ratios(wall[name], wall[ref]))
            rec["paired_ratio_cpu"] = C.median(C.paired_ratios(cpu[name], cpu[ref]))
        if isinstance(last[name], gt.AttackResult):
            r = last[name]
            rec.update(grad_evals_per_sample=r.grad_evals / n, queries_per_sample=r.queries / n,
                       reported_robust_accuracy=float(r.robust_accuracy), attack_seconds=r.seconds)
        records[name] = rec
        rows.append([
            name, m["settings"], rec["median_wall_s"], rec["median_cpu_s"], f"{100 * rec['spread_cpu']:.0f}%",
            f"{rec['paired_ratio_cpu']:.3f}" if ref else "—", f"{rec['ratio_wall']:.3f}" if ref else "—",
            ref or "—", f"{100 * rob:.1f}%",
        ])

    env = C.environment()
    print(f"\nLeNet5 ({MODEL}), batch {n} of the first MNIST test images (clean accuracy {100 * clean_acc:.1f}%), "
          f"{args.threads} thread(s), {args.repeats} interleaved rounds; load average at the end {env['loadavg']}\n")
    print(C.markdown_table(
        ["method", "settings", "wall s", "CPU s", "CPU spread", "ratio (CPU, paired)", "ratio (wall)", "ratio to",
         "robust acc"], rows))
    print("\nwall s / CPU s: medians over the rounds; CPU s is this process's CPU time (time.process_time), "
          "much less affected than wall time by other processes on the machine. CPU spread = (max - min) / median. "
          "ratio (CPU, paired) = median over rounds of (this CPU time / the reference's CPU time in the same round): "
          "the figure the targets use. ratio (wall) = ratio of the wall-time medians.")

    targets = {}
    for k in ks:
        if f"gauntlet PGD-{k}" not in records:
            continue
        r = records[f"gauntlet PGD-{k}"]
        targets[f"pgd{k}_vs_floor<=1.05"] = {"ratio_cpu_paired": r["paired_ratio_cpu"], "ratio_wall": r["ratio_wall"],
                                             "met": r["paired_ratio_cpu"] <= 1.05}
    if "gauntlet APGD-CE" in records:
        r = records["gauntlet APGD-CE"]
        targets["apgd_vs_floor<=1.05"] = {"ratio_cpu_paired": r["paired_ratio_cpu"], "ratio_wall": r["ratio_wall"],
                                          "met": r["paired_ratio_cpu"] <= 1.05}
    if "torchattacks PGD-40 (eval)" in records and "gauntlet PGD-40 early_stop" in records:
        ours, theirs = records["gauntlet PGD-40 early_stop"], records["torchattacks PGD-40 (eval)"]
        speedup = theirs["median_wall_s"] / ours["median_wall_s"]
        speedup_cpu = 1.0 / ours["paired_ratio_cpu"]
        targets["eval_speedup_vs_torchattacks>=2"] = {
            "speedup_cpu_paired": speedup_cpu, "speedup_wall": speedup, "met": speedup_cpu >= 2.0,
            "robust_accuracy_ours": ours["robust_accuracy"], "robust_accuracy_torchattacks": theirs["robust_accuracy"],
            "ours_not_weaker": ours["robust_accuracy"] <= theirs["robust_accuracy"],
        }
    print("\ntargets:")
    for k, v in targets.items():
        print(f"  {k}: " + ", ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()))

    path = C.write_json(args.json, {
        "benchmark": "speed", "model": MODEL, "batch": n, "eps": EPS, "step": STEP, "clean_accuracy": clean_acc,
        "repeats": args.repeats, "quick": args.quick, "apgd_floor_k": apgd_k,
        "environment": env, "methods": records, "targets": targets,
    })
    print(f"\nwrote {path.relative_to(C.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
