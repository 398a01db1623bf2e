"""The verdict: the one sentence a team reads first, in ``report.json`` and at the top of ``report.html``.

Three states — ``passed``, ``failed`` and ``no_gate`` (no threshold and no ``--max-regression``:
nothing was required, so nothing passed) — and a sentence built from the headline a study offers
(:meth:`~gauntlet.audit.studies.Study.headline`; evasion: the strongest attack at the headline ε)
and the gate's rules::

    FAIL: at L∞ ε=0.1 (inputs in [0, 1]), pgd takes accuracy from 98.0% to 51.1% (95% CI 46–56%); required 60%

The rule on the headline's own metric gives ``required``/``margin``; otherwise the sentence names the
first violated rule (failed) or how many rules were met (passed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["NORM_NAMES", "build_verdict", "ci_text", "norm_name", "scale_text"]

NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1"}
_STATES = {True: "passed", False: "failed", None: "no_gate"}
_WORDS = {"passed": "PASS", "failed": "FAIL", "no_gate": "NO GATE"}


def norm_name(norm: Any) -> str:
    return NORM_NAMES.get(str(norm), str(norm))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if _num(v) else "n/a"


def ci_text(ci: Any) -> str:
    """``"95% CI 46–56%"`` from ``[0.46, 0.56]``; empty when unknown."""
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_num(v) for v in ci):
        return f"95% CI {100 * ci[0]:.0f}–{100 * ci[1]:.0f}%"
    return ""


def scale_text(report: Mapping[str, Any]) -> str:
    """``"inputs in [0, 1]"`` from the model's declared bounds; empty when unknown."""
    bounds = (report.get("model") or {}).get("bounds")
    if isinstance(bounds, Sequence) and len(bounds) == 2 and all(_num(b) for b in bounds):
        return f"inputs in [{bounds[0]:g}, {bounds[1]:g}]"
    return ""


def _same_metric(rule: Mapping[str, Any], headline: Mapping[str, Any]) -> bool:
    metric = headline.get("metric") or {}
    if rule.get("study") != headline.get("study") or rule.get("metric") != metric.get("name"):
        return False
    mine, theirs = dict(metric.get("labels") or {}), dict(rule.get("labels") or {})
    if set(mine) != set(theirs):
        return False
    for k, v in mine.items():
        w = theirs[k]
        if _num(v) and _num(w):
            if not math.isclose(float(v), float(w), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif v != w:
            return False
    return True


def build_verdict(report: Mapping[str, Any], headline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"state", "sentence", "headline"}`` for a report whose ``gate`` is final.

    ``headline`` is the first study headline (``None``: the clean accuracy stands in).
    """
    gate = report.get("gate") or {}
    state = _STATES.get(gate.get("passed"), "no_gate")
    rules = [r for r in gate.get("rules") or [] if isinstance(r, Mapping)]
    violations = list(gate.get("violations") or [])
    if headline is not None and headline.get("text"):
        lead = str(headline["text"])
    else:
        n = (report.get("data") or {}).get("n")
        lead = f"clean accuracy {_pct(report.get('clean_accuracy'))} on {n} samples" if n else "no result"
    own = next((r for r in rules if headline is not None and _same_metric(r, headline)), None)
    if state == "no_gate":
        tail = "no gate configured (no threshold or --max-regression), so nothing was required"
    elif own is not None and (state == "passed" or not own.get("passed")):
        word = "required" if own.get("kind") == "min" else "allowed at most"
        tail = f"{word} {_pct(own.get('required'))}"
        if state == "passed" and _num(own.get("margin")):
            tail += f" (margin {100 * own['margin']:+.1f} pp)"
        others = [v for v in violations if not str(v).startswith(str(own.get("what")) + ":")]
        if state == "failed" and others:
            tail += f"; and {len(others)} more violation{'s' if len(others) != 1 else ''}"
    elif state == "failed":
        tail = str(violations[0]) if violations else "the gate failed"
        if len(violations) > 1:
            tail += f" (+{len(violations) - 1} more)"
    else:
        tail = f"all {len(rules)} gate rule{'s' if len(rules) != 1 else ''} met" if rules else "the gate passed"
    sentence = f"{_WORDS[state]}: {lead}; {tail}"
    return {"state": state, "sentence": sentence, "headline": dict(headline) if headline is not None else None}
