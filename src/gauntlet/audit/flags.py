"""Evaluation-hygiene flags: the classic signs that an adversarial evaluation is broken.

:func:`compute_flags` probes the model directly (gradients, determinism, output scale, a PGD
run at a huge budget) and reads the audit's own results (a score-based attack beating the
gradient attacks, robust accuracy rising with ε; with a defense: a randomized model attacked
without EOT, and naive attacks reporting robustness that adaptive ones remove). Each raised flag is a dict
``{"id", "severity", "title", "explanation", "evidence"}``: the explanation says what was seen,
why it suggests a broken evaluation, and what to do. A check that could not run (e.g. gradient
checks on a model without gradients) is reported as an ``"info"`` flag saying so.

The probes run in the model's attack mode on at most ``max_samples`` inputs, use an explicit
seed (never the global RNG) and leave the model's query counters as they found them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gauntlet import norms as N
from gauntlet.audit.studies.evasion import NAIVE_SUFFIX, UnitRecord, aggregate, is_naive
from gauntlet.models.base import Model

__all__ = ["CHECKS", "compute_flags", "execution_flags"]

#: id -> title of every check :func:`compute_flags` performs (the report lists them).
CHECKS: dict[str, str] = {
    "zero_gradients": "Zero or vanishing input gradients",
    "nondeterministic_outputs": "Model outputs change between identical calls",
    "probabilities_not_logits": "Outputs look like probabilities, not logits",
    "black_box_beats_white_box": "A score-based attack beats the gradient attacks",
    "non_monotonic_eps": "Robust accuracy rises as ε grows",
    "no_full_break_at_large_eps": "Accuracy does not reach ~0 at a very large ε",
    "randomized_without_eot": "A randomized model is attacked without EOT",
    "gradient_masking_gap": "Naive attacks report robustness that adaptive attacks remove",
    "eps_covers_input_range": "An L∞ budget covers the whole input range",
    "no_ensemble": "No AutoAttack-grade ensemble ran: the robust accuracy is an upper bound",
    "no_gradient_path": "The model has no input gradients: gradient attacks were replaced by a score-based one",
    "fast_path_refused": "The model's fast execution path was refused: its queries ran eagerly",
}

# thresholds (documented in the explanations)
VANISHING = 1e-4  # first-order change of the logit margin across the whole input range
ZERO_GRAD_SHARE = 0.05  # flag when at least this share of inputs has vanishing gradients
PROB_TOL = 1e-3
#: the large-ε probe: PGD (the loss and steps gradient audits use), then a longer PGD with random
#: restarts on the points it left standing, then Square on what is still standing (only to tell
#: misleading gradients from unbreakable points).  Not APGD: its adaptive steps break even a model
#: whose gradients point the wrong way at this budget, and the check asks whether gradient
#: attacks make progress on the model, not whether anything can break it.
LARGE_EPS_PROBE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("pgd", {"steps": 20, "early_stop": True}),
    ("pgd", {"steps": 100, "restarts": 3, "early_stop": True}),
)
LARGE_EPS_FALLBACK: tuple[str, dict[str, Any]] = ("square", {"max_queries": 1000})
LARGE_EPS_SAMPLES = 128  # correctly classified probe inputs, at most
BLACK_BOX_ALPHA = 0.05  # a black box must beat the white box beyond noise (one-sided exact McNemar) ...
BLACK_BOX_MIN_LEAD = 0.10  # ... and by at least this share of the inputs compared (10 pp of robust accuracy)
MASKING_GAP = 0.10  # flag when naive robust accuracy exceeds the adaptive one by this much


def _flag(fid: str, explanation: str, evidence: dict[str, Any], severity: str = "warning", title: str | None = None) -> dict[str, Any]:
    return {"id": fid, "severity": severity, "title": title or CHECKS[fid], "explanation": explanation, "evidence": evidence}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _tolerance(n: int) -> int:
    """Smallest difference in robust samples that counts (1 sample, or 0.5% of large sets)."""
    return max(1, math.ceil(0.005 * n))


# ------------------------------------------------------------------------------------------
# probes on the model
def _margin(scores: Tensor, y: Tensor) -> Tensor:
    z_y = scores.gather(1, y[:, None]).squeeze(1)
    other = scores.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - z_y


def _input_gradients(model: Model, x: Tensor, y: Tensor) -> tuple[Tensor, str | None]:
    """Gradient of the logit margin w.r.t. the input; zeros where the graph is cut."""
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            scores = model.scores(xg, count=False)
            if not scores.requires_grad:
                return torch.zeros_like(x), "the output does not depend differentiably on the input"
            (g,) = torch.autograd.grad(_margin(scores, y).sum(), xg, allow_unused=True)
    except RuntimeError as exc:  # e.g. numpy inside forward
        return torch.zeros_like(x), f"gradient computation failed: {str(exc).splitlines()[0][:160]}"
    if g is None:
        return torch.zeros_like(x), "the output does not depend differentiably on the input"
    return g.detach(), None


def _check_gradients(model: Model, x: Tensor, y: Tensor) -> dict[str, Any] | None:
    g, reason = _input_gradients(model, x, y)
    lo, hi = model.bounds
    finite = torch.isfinite(g).flatten(1).all(dim=1)
    reach = g.nan_to_num(0.0).flatten(1).abs().sum(dim=1) * (hi - lo)  # first-order margin change over the box
    vanishing = (reach < VANISHING) | ~finite
    share = float(vanishing.float().mean())
    if share < ZERO_GRAD_SHARE:
        return None
    evidence: dict[str, Any] = {
        "share": share,
        "samples_checked": int(x.shape[0]),
        "samples_vanishing": int(vanishing.sum()),
        "non_finite": int((~finite).sum()),
        "median_gradient_l1": float(reach.median() / (hi - lo)),
        "threshold": f"||grad margin||_1 x (high - low) < {VANISHING:g}",
    }
    if reason:
        evidence["reason"] = reason
    return _flag(
        "zero_gradients",
        f"For {_pct(share)} of the {x.shape[0]} inputs checked, the gradient of the model's logit margin "
        "with respect to the input is zero or vanishing (moving every input value across its whole range "
        f"would change the margin by less than {VANISHING:g}, to first order). Gradient attacks such as FGSM, "
        "PGD and APGD then have no direction to follow and fail, so robust accuracy looks high although the "
        "model may be easy to fool: the classic sign of gradient masking (rounding or quantisation, a "
        "non-differentiable preprocessing step, detach(), a saturated softmax). What to do: audit the model "
        "without the non-differentiable step or with a differentiable approximation of it (BPDA), make it "
        "output logits, and add a score-based attack such as 'square' to the audit.",
        evidence,
    )


def _check_determinism(model: Model, x: Tensor) -> dict[str, Any] | None:
    with torch.no_grad():
        if model.has("scores"):
            a, b = model.scores(x, count=False), model.scores(x, count=False)
            diff = float((a.float() - b.float()).abs().max())
            scale = float(a.float().abs().max())
            changed = bool(diff > 1e-5 * (1.0 + scale))
            rows = int(((a.float() - b.float()).abs().amax(dim=1) > 1e-5 * (1.0 + scale)).sum())
        else:
            a, b = model.predict(x, count=False), model.predict(x, count=False)
            diff = float((a != b).float().mean())
            changed = bool((a != b).any())
            rows = int((a != b).sum())
    if not changed:
        return None
    flips = int((a.argmax(1) != b.argmax(1)).sum()) if a.dim() == 2 else rows
    return _flag(
        "nondeterministic_outputs",
        f"Two forward passes on the same {x.shape[0]} inputs gave different outputs for {rows} of them "
        f"(largest difference {diff:.3g}; {flips} predicted labels changed). Randomness in the model (dropout "
        "left on, noise layers, random preprocessing) means every attack step sees a different model, so an "
        "attack can fail by bad luck and a single run's robust accuracy is not reliable. What to do: remove "
        "the randomness for the audit (eval mode, fixed preprocessing); if the randomness is meant as a "
        "defense, attack it with Expectation over Transformation (average gradients over many draws) and "
        "report accuracy over repeated evaluations.",
        {"samples_checked": int(x.shape[0]), "samples_changed": rows, "max_abs_difference": diff, "labels_changed": flips},
    )


def _check_probabilities(model: Model, x: Tensor) -> dict[str, Any] | None:
    with torch.no_grad():
        s = model.scores(x, count=False).float()
    if s.dim() != 2 or s.shape[1] < 2:
        return None
    in_range = ((s >= -PROB_TOL) & (s <= 1 + PROB_TOL)).all(dim=1)
    sums = (s.sum(dim=1) - 1).abs() <= PROB_TOL
    share = float((in_range & sums).float().mean())
    if share < 0.95:
        return None
    declared = getattr(model, "output", "logits") == "probabilities"
    return _flag(
        "probabilities_not_logits",
        f"The model's outputs lie in [0, 1] and sum to 1 for {_pct(share)} of the {x.shape[0]} inputs checked: "
        "they look like softmax probabilities, not logits. Losses computed on probabilities saturate, so "
        "gradients vanish on confidently classified inputs and gradient attacks under-perform: robust accuracy "
        "is overestimated. What to do: audit the model without its final softmax (export logits), or wrap it "
        "so the audit sees log-probabilities.",
        {"samples_checked": int(x.shape[0]), "share_probability_rows": share, "declared_output": getattr(model, "output", None), "declared_probabilities": declared},
    )


def large_eps(norm: str, bounds: tuple[float, float], dim: int) -> float:
    """Half the input range per value, in ``norm`` (the large-ε probe's budget)."""
    half = 0.5 * (bounds[1] - bounds[0])
    return {"linf": half, "l2": half * math.sqrt(dim), "l1": half * dim}[norm]


def large_eps_allowed(n: int) -> int:
    """Survivors of the large-ε probe that still count as a full break: 1 of up to 200 inputs (an
    honest model reaches 0), then 0.5%; a model that keeps 2 or more (1.6% of 128) is flagged."""
    return _tolerance(n)


def _probe_attacks(norm: str) -> list[tuple[str, dict[str, Any]]]:
    from gauntlet.attacks.registry import get_attack_class

    return [(name, dict(params)) for name, params in LARGE_EPS_PROBE if norm in get_attack_class(name).norms]


def _probe_text(steps: Sequence[tuple[str, dict[str, Any]]]) -> str:
    def one(name: str, params: dict[str, Any]) -> str:
        n = params.get("steps") or params.get("max_queries")
        r = params.get("restarts")
        return f"{name}-{n}" + (f"×{r}" if r else "")

    return " → ".join(one(nm, p) for nm, p in steps)


def _check_large_eps(
    model: Model, x: Tensor, y: Tensor, norms_used: list[str], seed: int, *, gradients: bool = True
) -> dict[str, Any] | None:
    """At half the input range per value every input can be made almost anything, so a working
    gradient attack breaks (about) every correctly classified input.  The probe runs PGD-20, then
    PGD-100 with 3 random restarts on the points it left standing (``LARGE_EPS_PROBE``), so an
    honest model costs one cheap PGD run (every honest digits and MNIST model measured, adversarially
    trained ones included, has 0 survivors after it); Square then attacks what is still standing,
    to tell misleading gradients (Square breaks them) from inputs nothing breaks.
    Without a gradient path (``gradients=False``) Square is the probe.  Flagged: more than
    :func:`large_eps_allowed` survivors of the probe (counts, not a share, so 3-5% is not on a
    knife edge)."""
    from gauntlet.attacks.registry import create, get_attack_class

    with torch.no_grad():
        correct = model.predict(x, count=False) == y
    if not bool(correct.any()):
        return None
    xc, yc = x[correct][:LARGE_EPS_SAMPLES], y[correct][:LARGE_EPS_SAMPLES]
    n = int(xc.shape[0])
    fb_name, fb_params = LARGE_EPS_FALLBACK
    cases: list[dict[str, Any]] = []
    for j, norm in enumerate(norms_used):
        eps = large_eps(norm, model.bounds, int(xc[0].numel()))
        steps = _probe_attacks(norm) if gradients else []
        fallback = model.has("scores") and norm in get_attack_class(fb_name).norms
        if not steps and not fallback:
            continue
        standing = torch.arange(n, device=xc.device)
        try:
            for i, (name, params) in enumerate(steps):
                if standing.numel() == 0:
                    break
                res = create(name, norm=norm, eps=eps, **params).run(
                    model, xc[standing], yc[standing], seed=seed + 10 * j + i, clean_pred=yc[standing]
                )
                standing = standing[~res.success]
        except RuntimeError:  # no usable autograd graph at all: the gradient checks report it
            continue
        survivors = int(standing.numel())
        fb_left: int | None = None
        if fallback and standing.numel() > 0:
            res = create(fb_name, norm=norm, eps=eps, **fb_params).run(
                model, xc[standing], yc[standing], seed=seed + 10 * j + 9, clean_pred=yc[standing]
            )
            fb_left = int((~res.success).sum())
        elif fallback:
            fb_left = 0
        if not steps:  # Square was the probe
            survivors = int(fb_left or 0)
        cases.append({
            "norm": norm, "eps": eps, "samples": n, "survivors": survivors, "accuracy": survivors / n,
            "probe": _probe_text(steps) if steps else _probe_text([(fb_name, fb_params)]),
            "fallback": _probe_text([(fb_name, fb_params)]) if (steps and fallback) else None,
            "fallback_survivors": fb_left if steps else None,
            "allowed": large_eps_allowed(n),
        })
    bad = [c for c in cases if c["survivors"] > c["allowed"]]
    if not bad:
        return None
    w = max(bad, key=lambda c: c["accuracy"])
    fb = w["fallback_survivors"]
    if fb is None:
        why = ""
    elif fb < w["survivors"]:
        why = (
            f" The score-based {w['fallback']} then broke {w['survivors'] - fb} of them: the inputs can be broken, "
            "the gradients point the attacks the wrong way (masked or obfuscated gradients)."
        )
    else:
        why = (
            f" The score-based {w['fallback']} broke none of them either: the model's decision on these inputs does "
            "not respond to the input within this budget (a lookup, a hard-coded or non-differentiable branch)."
        )
    return _flag(
        "no_full_break_at_large_eps",
        f"At a very large budget ({w['norm']} ε={w['eps']:.4g}, half the input range per value) the probe "
        f"({w['probe']}, each attack on the points the previous ones left) still left {w['survivors']} of the "
        f"{w['samples']} correctly classified inputs ({_pct(w['accuracy'])}) classified correctly; an honest model "
        f"reaches 0 (at most {w['allowed']} is tolerated).{why} With such a budget an input can be turned into almost "
        "anything, so accuracy should fall to about 0; when it does not, the attacks cannot make progress on this "
        "model, which points to gradient masking or a broken attack setup rather than real robustness. What to do: "
        "check the gradient flags, use stronger or adaptive attacks (more steps, apgd_ce, square, BPDA/EOT) and "
        "treat the robust accuracies in this report as upper bounds.",
        {"cases": cases, "threshold": f"survivors > {w['allowed']} of {w['samples']} (1, or 0.5% of the inputs)"},
    )


def gradient_path(model: Model, x: Tensor, y: Tensor) -> str | None:
    """``None`` when input gradients flow through ``model`` on the batch ``x``; otherwise why not
    (no gradients capability, a cut graph — ``torch.round``, ``argmax``, comparisons, ``.detach()``
    —, a failing backward pass, or gradients exactly zero or non-finite on every input)."""
    if not model.has("gradients"):
        return f"the model offers no input gradients (capabilities: {', '.join(sorted(model.capabilities))})"
    queries, grad_evals = model.queries, model.grad_evals
    try:
        with model.attack_mode():
            g, reason = _input_gradients(model, x.detach(), y)
    finally:
        model.queries, model.grad_evals = queries, grad_evals
    if reason is not None:
        return reason
    finite = torch.isfinite(g)
    if not bool(finite.any()):
        return "every input gradient is NaN or infinite"
    if not bool((g[finite] != 0).any()):
        return (
            f"the input gradient is exactly zero on all {x.shape[0]} inputs probed (rounding, argmax, comparisons "
            "or another step with no useful derivative in the forward pass)"
        )
    return None


def no_gradient_path_flag(reason: str, replaced: Sequence[str], substitutes: Sequence[dict[str, Any]], skipped: Sequence[str]) -> dict[str, Any]:
    """The flag the evasion study raises when its gradient attacks could not run."""
    ran = "; ".join(f"{s['label']} ({s['queries']} queries) on {s['threat']}" for s in substitutes) or "nothing"
    skip = (
        f" No score-based attack supports {', '.join(skipped)}: those threats were not evaluated." if skipped else ""
    )
    return _flag(
        "no_gradient_path",
        f"The gradient attacks of this audit ({', '.join(replaced)}) cannot run on this model: {reason}. Instead "
        f"the audit ran the score-based Square attack, which needs only the model's outputs: {ran}.{skip} Its "
        "numbers are upper bounds on robustness, weaker than a white-box evaluation, and a model whose gradients "
        "are hidden is the classic case of obfuscated gradients (Athalye, Carlini & Wagner 2018). What to do: "
        "audit a differentiable version of the model (remove the rounding/argmax/detach step, or give the defense "
        "a BPDA stand-in through model.defense), or accept the flag with a reason if the model is a black box by "
        "design.",
        {"reason": reason, "replaced": list(replaced), "substitutes": list(substitutes), "not_evaluated": list(skipped)},
    )


# ------------------------------------------------------------------------------------------
# checks on the results
def _requires_gradients(attack_name: str) -> bool | None:
    from gauntlet.attacks.registry import get_attack_class
    from gauntlet.errors import UnknownNameError

    try:
        return "gradients" in get_attack_class(attack_name).requires
    except UnknownNameError:
        return None


def _check_black_box(units: Sequence[UnitRecord], agg: Any) -> dict[str, Any] | None:
    """A score-based attack that leaves fewer inputs robust than the gradient attacks, compared on
    the same inputs (a cross-check covers a subsample): per sample, robust to the white box means
    no gradient attack fooled it.  Flagged when the black box's lead is at least
    ``BLACK_BOX_MIN_LEAD`` of the inputs compared (and :func:`_tolerance` samples) and beyond noise
    (one-sided exact McNemar, ``BLACK_BOX_ALPHA``).  On honest models PGD-20 against a 300-query
    Square is within 5 points of 100 either way; shattered gradients give a lead of 20-60.  The
    black box's breaks are in the worst case whether or not the flag fires."""
    from gauntlet.audit.stats import mcnemar_drop_p

    kinds = {u.attack: _requires_gradients(u.attack_name) for u in units}
    by_threat: dict[tuple[str, float], dict[str, list[bool | None]]] = {}
    for (attack, norm, eps), robust in agg.robust.items():
        if attack != "worst_case" and kinds.get(attack) is not None:
            by_threat.setdefault((norm, eps), {})[attack] = robust
    cases: list[dict[str, Any]] = []
    for (norm, eps), cells in by_threat.items():
        white = {a: r for a, r in cells.items() if kinds[a] is True}
        black = {a: r for a, r in cells.items() if kinds[a] is False}
        for b_label, b in black.items():
            shared = [i for i, v in enumerate(b) if v is not None and any(w[i] is not None for w in white.values())]
            if not shared:
                continue
            wb = [all(bool(w[i]) for w in white.values() if w[i] is not None) for i in shared]
            bb = [bool(b[i]) for i in shared]
            lead = sum(wb) - sum(bb)
            if lead < max(_tolerance(len(shared)), math.ceil(BLACK_BOX_MIN_LEAD * len(shared) - 1e-9)):
                continue
            p = mcnemar_drop_p(wb, bb)
            if p >= BLACK_BOX_ALPHA:
                continue
            single = {a: sum(1 for i in shared if w[i] is not False) for a, w in white.items()}
            cases.append({
                "norm": norm, "eps": eps, "samples": len(shared),
                "black_box": b_label, "black_box_robust_accuracy": sum(bb) / len(shared),
                "best_white_box": min(single, key=lambda a: single[a]), "white_box": list(white),
                "white_box_robust_accuracy": sum(wb) / len(shared),
                "broken_only_by_black_box": sum(1 for x, z in zip(wb, bb) if x and not z),
                "p_value": p,
            })
    if not cases:
        return None
    c = max(cases, key=lambda c: c["white_box_robust_accuracy"] - c["black_box_robust_accuracy"])
    whites = ", ".join(f"'{a}'" for a in c["white_box"])
    return _flag(
        "black_box_beats_white_box",
        f"At {c['norm']} ε={c['eps']:g}, on the same {c['samples']} inputs, the score-based attack '{c['black_box']}' "
        f"left robust accuracy at {_pct(c['black_box_robust_accuracy'])}, below the gradient attacks ({whites}: "
        f"{_pct(c['white_box_robust_accuracy'])}); it broke {c['broken_only_by_black_box']} inputs that no gradient "
        f"attack broke (one-sided McNemar p = {c['p_value']:.2g}). An attack that sees only the outputs should not "
        "beat attacks that also see the gradients; when it does, the gradients are misleading (gradient masking or "
        "obfuscation) and the white-box numbers overstate robustness. What to do: trust the lower number (the "
        "worst case includes the black box's breaks), look for non-differentiable or randomised parts of the "
        "model, and use adaptive attacks (BPDA, EOT) or a stronger ensemble such as autoattack.",
        {"cases": cases, "alpha": BLACK_BOX_ALPHA, "min_lead": BLACK_BOX_MIN_LEAD},
    )


def _check_monotonic(rows: list[dict[str, Any]], worst: list[dict[str, Any]]) -> dict[str, Any] | None:
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["attack"], r["norm"]), []).append(r)
    for r in worst:
        series.setdefault(("worst case", r["norm"]), []).append(r)
    cases: list[dict[str, Any]] = []
    for (attack, norm), rs in series.items():
        rs = sorted(rs, key=lambda r: r["eps"])
        for a, b in itertools.pairwise(rs):
            if a["robust_accuracy"] is None or b["robust_accuracy"] is None:
                continue
            if a.get("attacks", []) != b.get("attacks", []):  # a worst case over other attacks (a cross-check at one ε)
                continue
            rise_count = b["robust_count"] - a["robust_count"]
            if rise_count >= _tolerance(max(a["n"], b["n"])):
                cases.append({
                    "attack": attack, "norm": norm, "eps_low": a["eps"], "eps_high": b["eps"],
                    "robust_accuracy_low": a["robust_accuracy"], "robust_accuracy_high": b["robust_accuracy"],
                })
    if not cases:
        return None
    c = max(cases, key=lambda c: c["robust_accuracy_high"] - c["robust_accuracy_low"])
    return _flag(
        "non_monotonic_eps",
        f"Robust accuracy under '{c['attack']}' ({c['norm']}) rises from {_pct(c['robust_accuracy_low'])} at "
        f"ε={c['eps_low']:g} to {_pct(c['robust_accuracy_high'])} at ε={c['eps_high']:g}. A larger budget "
        "contains every perturbation of a smaller one, so a working attack can only do better as ε grows; a "
        "rise means the attack is not optimising properly (too few steps, a bad step size, masked or noisy "
        "gradients). What to do: increase steps and restarts, use an attack with an adaptive step size "
        "(apgd_ce), and check the gradient flags.",
        {"cases": cases},
    )


def _defense_name(model: Model) -> str:
    pre = getattr(model, "preprocessor", None)
    return str(getattr(pre, "name", None) or type(model).__name__)


def _check_eot(model: Model) -> dict[str, Any] | None:
    """A randomized model whose gradient requests see one random draw (no EOT)."""
    if not bool(getattr(model, "randomized", False)):
        return None
    k = int(getattr(model, "eot_samples", 1) or 1)
    if k > 1:
        return None
    name = _defense_name(model)
    return _flag(
        "randomized_without_eot",
        f"The audited model is randomized ('{name}' draws fresh randomness on every call) but the attacks see "
        f"it with eot_samples = {k}: every gradient comes from a single random draw, a noisy estimate of the "
        "gradient of the prediction the deployed model makes on average. Gradient attacks then follow noise, "
        "fail by chance and robust accuracy is overestimated: the 'stochastic gradients' form of obfuscated "
        "gradients (Athalye, Carlini & Wagner 2018). What to do: attack with Expectation over Transformation: "
        "leave model.defense.eot_samples unset (10 draws) or raise it, and check that robust accuracy stops "
        "falling as eot_samples grows.",
        {"defense": name, "randomized": True, "eot_samples": k},
    )


def _check_masking_gap(rows: list[dict[str, Any]], model: Model) -> dict[str, Any] | None:
    """Naive-view robust accuracy far above the adaptive view's at the same attack and (norm, ε)."""
    naive = {(r["attack"][: -len(NAIVE_SUFFIX)], r["norm"], r["eps"]): r for r in rows if is_naive(r["attack"])}
    if not naive:
        return None
    cases: list[dict[str, Any]] = []
    for r in rows:
        nr = naive.get((r["attack"], r["norm"], r["eps"]))
        if nr is None or is_naive(r["attack"]) or r["robust_accuracy"] is None or nr["robust_accuracy"] is None:
            continue
        gap = nr["robust_accuracy"] - r["robust_accuracy"]
        if gap >= MASKING_GAP - 1e-12 and nr["robust_count"] - r["robust_count"] >= _tolerance(max(r["n"], nr["n"])):
            cases.append({
                "attack": r["attack"], "norm": r["norm"], "eps": r["eps"],
                "naive_robust_accuracy": nr["robust_accuracy"], "adaptive_robust_accuracy": r["robust_accuracy"],
                "gap": gap,
            })
    if not cases:
        return None
    cases.sort(key=lambda c: -c["gap"])
    c = cases[0]
    name = _defense_name(model)
    return _flag(
        "gradient_masking_gap",
        f"Against the naive view of the defense '{name}' (autograd through the transform as implemented, one "
        f"random draw) '{c['attack']}' at {c['norm']} ε={c['eps']:g} leaves robust accuracy at "
        f"{_pct(c['naive_robust_accuracy'])}; the adaptive attack (BPDA through non-differentiable steps, EOT "
        f"over randomness) brings it down to {_pct(c['adaptive_robust_accuracy'])}. Those "
        f"{100 * c['gap']:.1f} points were robustness that was only masking: the defense hides the gradient "
        "instead of making the model robust (Athalye, Carlini & Wagner 2018, 'Obfuscated Gradients Give a "
        "False Sense of Security'). What to do: trust the adaptive numbers (the worst case and the gate use "
        "only them), never quote the naive ones, and prefer a defense whose adaptive robust accuracy is "
        "meaningfully above the undefended model's.",
        {"cases": cases[:20], "threshold": MASKING_GAP},
    )


# ------------------------------------------------------------------------------------------
def execution_flags(execution: dict[str, Any] | None) -> list[dict[str, Any]]:
    """An ``info`` flag when a fast execution path of the model (:meth:`TorchModel.execution`) was
    refused at its build check: the audit's numbers are unaffected (the module ran eagerly), only
    slower, and the flag says why so the model can be fixed or the slowdown expected."""
    if not execution:
        return []
    refused = {k: str(v) for k, v in execution.items() if k in ("forward", "gradient", "search") and str(v).startswith("eager:")}
    if not refused:
        return []
    why = "; ".join(f"{k}: {v.removeprefix('eager: ')}" for k, v in refused.items())
    return [_flag(
        "fast_path_refused",
        f"The {' and '.join(refused)} fast path of the model was refused when it was built ({why}), so those "
        "queries ran the module eagerly. Results are unaffected (eager is the reference); the audit was only "
        "slower. A module with data-dependent control flow or side effects in forward cannot be traced; "
        "TorchModel(..., fast=False) turns the fast paths off explicitly.",
        {"execution": dict(execution)},
        severity="info",
    )]


def compute_flags(
    model: Model,
    x: Tensor,
    y: Tensor,
    units: Sequence[UnitRecord],
    clean_correct: Sequence[bool],
    *,
    max_samples: int = 128,
    seed: int = 0,
    gradients: bool = True,
) -> list[dict[str, Any]]:
    """Run every hygiene check; return the raised flags (warnings) and skipped checks (info).

    Args:
        model: the audited model.
        x, y: the audited inputs and labels (the first ``max_samples`` are probed).
        units: the audit's finished units (for the result-based checks); units against a
            defense's naive view (labels ending in ``" (naive)"``) feed only the masking-gap check.
        clean_correct: per sample of ``x``, whether the model classifies it correctly.
        seed: seed of the large-ε probe.
        gradients: ``False`` when the audit found no gradient path through the model (its
            gradient attacks were replaced, see the ``no_gradient_path`` flag): the gradient checks
            are skipped and the large-ε probe is Square alone.
    """
    flags: list[dict[str, Any]] = []
    f = _check_eot(model)
    if f:
        flags.append(f)
    queries, grad_evals = model.queries, model.grad_evals
    try:
        xs = x[:max_samples].detach().to(model.device)
        ys = y[:max_samples].to(model.device).to(torch.int64)
        norms_used = list(dict.fromkeys(u.norm for u in units if u.norm in N.NORMS)) or ["linf"]
        if xs.shape[0] > 0:
            with model.attack_mode():
                f = _check_determinism(model, xs[:64])
                if f:
                    flags.append(f)
                if model.has("scores"):
                    f = _check_probabilities(model, xs)
                    if f:
                        flags.append(f)
                if model.has("gradients") and gradients:
                    f = _check_gradients(model, xs, ys)
                    if f:
                        flags.append(f)
            if model.has("gradients"):  # without a gradient path (gradients=False): Square alone
                f = _check_large_eps(model, xs, ys, norms_used, seed, gradients=gradients)
                if f:
                    flags.append(f)
            else:
                flags.append(_flag(
                    "gradient_checks_skipped",
                    "The model offers no input gradients, so the zero-gradient and large-ε PGD checks did not run. "
                    "Only score- or decision-based attacks can evaluate such a model; make sure the audit includes "
                    "one (e.g. 'square') and read its numbers as upper bounds on robustness.",
                    {"capabilities": sorted(model.capabilities)},
                    severity="info",
                    title="Gradient checks skipped",
                ))
    finally:
        model.queries, model.grad_evals = queries, grad_evals
    audited = [u for u in units if not is_naive(u.attack)]
    if audited:
        agg = aggregate(audited, [bool(c) for c in clean_correct])
        for f in (_check_black_box(audited, agg), _check_monotonic(agg.results, agg.worst_case)):
            if f:
                flags.append(f)
    if len(audited) < len(units):
        f = _check_masking_gap(aggregate(units, [bool(c) for c in clean_correct]).results, model)
        if f:
            flags.append(f)
    f = _check_eps_range(model, units)
    if f:
        flags.append(f)
    return flags


def _check_eps_range(model: Model, units: Sequence[UnitRecord]) -> dict[str, Any] | None:
    """An L∞ ε at or beyond the width of the input range: every input can become any input."""
    lo, hi = (float(b) for b in model.bounds)
    width = hi - lo
    huge = sorted({float(e) for u in units if u.norm == "linf" for e in u.eps if float(e) >= width - 1e-12})
    if not huge:
        return None
    return _flag(
        "eps_covers_input_range",
        f"The L∞ budget ε = {', '.join(f'{e:g}' for e in huge)} is at least the width of the model's input range "
        f"[{lo:g}, {hi:g}] ({width:g}): within it every input can be turned into any other input, so robust "
        "accuracy there is 0 by construction and says nothing about the model. This usually means ε is on another "
        f"scale than the inputs (e.g. ε = 8 for images in [0, 1] instead of 8/255); give ε on the scale of "
        "model.bounds.",
        {"eps": huge, "bounds": [lo, hi]},
    )
