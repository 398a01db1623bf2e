"""Boiling-frog benchmark (issue 12): an online spam filter drifted by ham-labelled mail, undefended
and behind each online defense; and the defenses' false alarms on benign topic drift.

Setup (``gauntlet.learning.spam``): 200 messages a round, 20% real spam labelled spam, the filter
(``SGDClassifier(log_loss)`` on 2^18 hashed features) warmed up for 15 clean rounds, then 30
rounds in which the attacker sends 25% of the mail (labelled ham) and moves 5% more of its
messages' distinctive words to the spam vocabulary every round.  Measured after every round:
acceptance of 500 held-out real spam (classified ham).  Benign drift: no attacker, the ham topics
slide by 1%, 2% or 5% of the topic vocabulary per round; a refused update there is a false alarm.
Seeds 0–4.  Writes ``benchmarks/results/boiling_frog.json`` and ``boiling_frog.png`` (acceptance
per round).  Run: ``.venv/bin/python benchmarks/bench_boiling_frog.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

import gauntlet as gt
from gauntlet.learning.spam import run_stream

SEEDS = range(5)
DEFENSES: dict[str, dict[str, Any]] = {"none": {}, "holdout_validation": {"tolerance": 0.05}, "drift_detection": {}}


def main() -> None:
    out: dict[str, Any] = {"environment": C.environment(), "attacked": {}, "benign": {}}
    rows = []
    for d, params in DEFENSES.items():
        runs = []
        for seed in SEEDS:
            r = run_stream(rounds=30, attacker=gt.attacks.create("boiling_frog", share=0.25, step=0.05),
                           defense=None if d == "none" else gt.defenses.create(d, **params), seed=seed)
            runs.append({"acceptance": r.acceptance, "refused": r.refused, "first_above_50": r.first_round_above(0.5)})
        out["attacked"][d] = runs
        alarms = {}
        for drift in (0.0, 0.01, 0.02, 0.05):
            if d == "none":
                break
            rates = [run_stream(rounds=30, defense=gt.defenses.create(d, **params), drift=drift, seed=s).false_alarm_rate
                     for s in SEEDS]
            alarms[drift] = sum(rates) / len(rates)
        out["benign"][d] = alarms
        start = sum(x["acceptance"][0] for x in runs) / len(runs)
        peak = sum(max(x["acceptance"]) for x in runs) / len(runs)
        firsts = [x["first_above_50"] for x in runs]
        rows.append([d, f"{100 * start:.1f}%", f"{100 * peak:.1f}%",
                     ", ".join("never" if f is None else str(f) for f in firsts),
                     *(f"{100 * alarms[k]:.1f}%" if k in alarms else "–" for k in (0.0, 0.01, 0.02, 0.05))])
        print(rows[-1], flush=True)
    path = C.ROOT / "benchmarks" / "results" / "boiling_frog.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for d, runs in out["attacked"].items():
            n = len(runs[0]["acceptance"])
            mean = [sum(x["acceptance"][i] for x in runs) / len(runs) for i in range(n)]
            ax.plot(range(n), mean, label=d)
        ax.set_xlabel("round")
        ax.set_ylabel("held-out spam accepted")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
    except ImportError:
        pass
    print(C.markdown_table(["defense", "acceptance before", "peak acceptance (mean of 5)", "round > 50% per seed",
                            "false alarms, no drift", "drift 1%", "drift 2%", "drift 5%"], rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
