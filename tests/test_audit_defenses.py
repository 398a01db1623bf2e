"""Defended models, certification and detection in the audit (spec `model.defense`, `certify`, `detect`).

A preprocessing defense is audited through its adaptive (BPDA + EOT) wrap, with every attack also
run against the naive wrap; certification and detection results are stored piece by piece and an
interrupted audit resumes without redoing them.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gauntlet.audit.executors as executors_mod
import gauntlet.audit.runner as runner_mod
from gauntlet.audit import load_spec, prepare, run_audit, spec_hash
from gauntlet.audit.html import render_html
from gauntlet.audit.report import comparable, validate_report
from gauntlet.audit.store import open_store
from gauntlet.data import load_digits
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


MLP_MODULE = textwrap.dedent(
    """
    from torch import nn

    def digits_mlp(num_classes: int = 10) -> nn.Sequential:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))
    """
)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small nn.Sequential MLP on digits (IBP needs a Sequential), loaded through ``arch``."""
    folder = tmp_path_factory.mktemp("mlp")
    (folder / "audit_tiny_nets.py").write_text(MLP_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        import audit_tiny_nets  # type: ignore[import-not-found]

        train = load_digits("train")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = audit_tiny_nets.digits_mlp()
        net = train_classifier(net, train.x, train.y, epochs=15, seed=0)
        path = folder / "mlp.pt"
        torch.save(net.state_dict(), path)
        yield path


def make_spec(path: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"path": str(path), "name": "digits", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 60, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.3]}],
        "attacks": [{"name": "pgd", "steps": 10}],
        "batch_size": 30,
        "seed": 0,
    }
    spec.update(over)
    return spec


def defended(path: Path, defense: dict[str, Any], **over: Any) -> dict[str, Any]:
    spec = make_spec(path, **over)
    spec["model"] = {**spec["model"], "defense": defense}
    return spec


def extras_rows(db: Path) -> list[tuple[str, int]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT study, count(*) FROM records WHERE study NOT IN ('evasion', 'core') GROUP BY study ORDER BY study"
        ).fetchall()
    finally:
        con.close()


def spec_error(d: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_spec(d)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------
# model.defense
def test_the_audited_model_is_the_adaptive_wrap_and_every_attack_also_runs_on_the_naive_one(model_file: Path) -> None:
    prep = prepare(load_spec(defended(model_file, {"name": "bit_depth_reduction", "bits": 1})))
    assert prep.model.adaptive is True and prep.naive_model.adaptive is False
    assert prep.model.preprocessor.bits == 1 and prep.base_model is prep.model.model
    labels = [(u.attack_label, u.naive, u.start) for u in prep.units]
    # the score-based cross-check runs on the audited (adaptive) view only; every attack also runs on
    # the undefended model, the reference the defended numbers are read against
    assert labels == [
        ("pgd", False, 0), ("pgd", False, 30), ("pgd (naive)", True, 0), ("pgd (naive)", True, 30),
        ("square (cross-check)", False, 0), ("square (cross-check)", False, 30),
        ("pgd (undefended)", False, 0), ("pgd (undefended)", False, 30),
    ]
    assert [u.undefended for u in prep.units] == [False] * 6 + [True] * 2
    assert len({u.key for u in prep.units}) == 8 and len({u.seed for u in prep.units}) == 8
    assert prep.defense_info == {"name": "bit_depth_reduction", "params": {"bits": 1}, "randomized": False, "eot_samples": 1}


def test_bit_depth_1_looks_robust_to_naive_pgd_but_not_to_bpda_and_the_worst_case_and_gate_ignore_naive_runs(
    model_file: Path, tmp_path: Path
) -> None:
    thresholds = [
        {"attack": "pgd (naive)", "norm": "linf", "eps": 0.3, "min_robust_accuracy": 0.6},
        {"attack": "worst_case", "norm": "linf", "eps": 0.3, "min_robust_accuracy": 0.6},
    ]
    spec = load_spec(defended(model_file, {"name": "bit_depth_reduction", "bits": 1}, thresholds=thresholds))
    run = run_audit(spec, out_dir=tmp_path / "out", store=None)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    validate_report(rep)
    assert rep["schema_version"] == "2.1"
    assert [(r["attack"], r["eps"]) for r in rep["results"]] == [
        ("pgd", 0.1), ("pgd", 0.3), ("pgd (naive)", 0.1), ("pgd (naive)", 0.3), ("square (cross-check)", 0.3)
    ]
    acc = {(r["attack"], r["eps"]): r["robust_accuracy"] for r in rep["results"]}
    d = rep["defense"]
    assert (d["name"], d["params"], d["randomized"], d["eot_samples"]) == ("bit_depth_reduction", {"bits": 1}, False, 1)
    assert [(r["attack"], r["eps"]) for r in d["rows"]] == [("pgd", 0.1), ("pgd", 0.3)]
    for row in d["rows"]:
        assert row["adaptive_robust_accuracy"] == acc[("pgd", row["eps"])]
        assert row["naive_robust_accuracy"] == acc[("pgd (naive)", row["eps"])]
        assert row["gap"] == pytest.approx(row["naive_robust_accuracy"] - row["adaptive_robust_accuracy"])
        # rounding has a zero gradient: naive PGD is lost, BPDA through the identity is not
        assert row["naive_robust_accuracy"] > row["adaptive_robust_accuracy"]
    assert d["rows"][1]["gap"] >= 0.3
    # the worst case is over the adaptive runs only
    # (and the Square cross-check at the largest ε, on the adaptive view too)
    assert [w["attacks"] for w in rep["worst_case"]] == [["pgd"], ["pgd", "square (cross-check)"]]
    assert rep["worst_case"][0]["robust_accuracy"] == acc[("pgd", 0.1)]
    assert rep["worst_case"][1]["robust_accuracy"] <= acc[("pgd", 0.3)]
    # a threshold on the naive label gates it explicitly; the worst-case one fails on the adaptive number
    assert run.report["gate"]["passed"] is False and len(run.report["gate"]["violations"]) == 1
    assert run.report["gate"]["violations"][0].startswith("worst_case linf ε=0.3: robust accuracy")
    # the undefended model beside the defended one: its own clean accuracy and worst case per ε, never in
    # results, the worst case or the gate
    ref = d["undefended"]
    assert not any("undefended" in r["attack"] for r in rep["results"])
    assert [(w["norm"], w["eps"], w["attacks"]) for w in ref["worst_case"]] == [
        ("linf", 0.1, ["pgd (undefended)"]), ("linf", 0.3, ["pgd (undefended)"])
    ]
    for v, w in zip(d["versus"], rep["worst_case"]):
        u = next(x for x in ref["worst_case"] if x["eps"] == v["eps"])
        assert v["defended_robust_accuracy"] == w["robust_accuracy"] and v["undefended_robust_accuracy"] == u["robust_accuracy"]
        assert v["gain"] == pytest.approx(w["robust_accuracy"] - u["robust_accuracy"])
    assert 0.0 <= ref["clean_accuracy"] <= 1.0 and ref["clean_accuracy"] >= ref["worst_case"][0]["robust_accuracy"]
    assert "pgd (undefended)" in [c["attack"] for c in rep["cost"]]  # the reference's cost is reported
    flag = next(f for f in rep["flags"] if f["id"] == "gradient_masking_gap")
    assert flag["severity"] == "warning" and "only masking" in flag["explanation"]
    assert flag["evidence"]["cases"][0]["eps"] == 0.3
    html = (tmp_path / "out" / "report.html").read_text()
    assert "id='defense'" in html and "gap (naive − adaptive)" in html and "class='masking'" in html
    assert "<table class='versus'>" in html and "undefended model" in html


def test_a_naive_run_falling_since_the_last_audit_is_no_regression(model_file: Path, tmp_path: Path) -> None:
    from gauntlet.audit.gate import compare_reports, evaluate_gate

    rep = run_audit(load_spec(defended(model_file, {"name": "bit_depth_reduction", "bits": 1}, threats=[{"norm": "linf", "eps": 0.3}])),
                    store=None).report
    before = copy.deepcopy(rep)
    for r in before["results"]:
        if r["attack"] == "pgd (naive)":
            r["robust_accuracy"] = 1.0  # the naive number "fell" from 100%
    gate = evaluate_gate(rep, [], before, 0.0)
    assert (gate["passed"], gate["violations"]) == (True, [])
    naive = next(r for r in compare_reports(before, rep)["rows"] if r["attack"] == "pgd (naive)")
    assert naive["delta"] < 0 and naive["regression"] is False
    before["results"][0]["robust_accuracy"] = 1.0  # the adaptive one did: a regression
    assert evaluate_gate(rep, [], before, 0.0)["violations"][0].startswith("pgd linf ε=0.3: robust accuracy fell")


def test_a_randomized_defense_resumes_to_the_report_of_an_uninterrupted_run(model_file: Path, tmp_path: Path) -> None:
    spec = load_spec(defended(model_file, {"name": "gaussian_noise", "sigma": 0.3, "eot_samples": 2},
                              attacks=["fgsm"], threats=[{"norm": "linf", "eps": 0.2}],
                              data={"name": "digits", "n": 40}, batch_size=20))
    reference = run_audit(spec, store=None).report
    store = f"sqlite:///{tmp_path / 'g.db'}"

    def stop_after_first_unit(ev: runner_mod.ProgressEvent) -> None:
        if ev.phase == "units" and ev.done - ev.reused >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, store=store, progress=stop_after_first_unit)
    run = run_audit(spec, store=store)
    assert run.resumed and run.reused_units == 1
    # every unit reseeds the wrapper's noise from its own seed, so where it runs does not matter
    assert comparable(run.report) == comparable(reference)


def test_the_eot_flag_fires_for_gaussian_noise_attacked_with_one_draw_and_not_with_the_default(model_file: Path) -> None:
    common = {"attacks": ["fgsm"], "threats": [{"norm": "linf", "eps": 0.1}], "data": {"name": "digits", "n": 40}, "batch_size": 40}
    one = run_audit(load_spec(defended(model_file, {"name": "gaussian_noise", "sigma": 0.2, "eot_samples": 1}, **common)), store=None).report
    default = run_audit(load_spec(defended(model_file, {"name": "gaussian_noise", "sigma": 0.2}, **common)), store=None).report
    validate_report(one)
    assert (one["defense"]["randomized"], one["defense"]["eot_samples"]) == (True, 1)
    assert (default["defense"]["randomized"], default["defense"]["eot_samples"]) == (True, 10)
    flag = next(f for f in one["flags"] if f["id"] == "randomized_without_eot")
    assert flag["evidence"] == {"defense": "gaussian_noise", "randomized": True, "eot_samples": 1}
    assert "Expectation over Transformation" in flag["explanation"]
    assert "randomized_without_eot" not in [f["id"] for f in default["flags"]]


# ------------------------------------------------------------------------------------------------
# certify
def test_certification_is_stored_chunk_by_chunk_resumes_mid_way_and_gives_monotone_curves(
    mlp_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(make_spec(
        mlp_file,
        model={"path": str(mlp_file), "name": "mlp", "arch": "audit_tiny_nets:digits_mlp"},
        attacks=["fgsm"], threats=[{"norm": "linf", "eps": 0.05}], batch_size=20,
        certify=[
            {"name": "ibp", "eps": [0.005, 0.01, 0.02]},
            {"name": "randomized_smoothing", "sigma": 0.25, "n0": 10, "n": 40, "alpha": 0.01, "radii": [0.2, 0, 0.1]},
        ],
    ))
    monkeypatch.syspath_prepend(str(mlp_file.parent))
    reference = run_audit(spec, store=None).report
    db = tmp_path / "g.db"
    # a store from before the records table existed (schema 1: units and extras): opening it adds the table
    open_store(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE records")
    con.commit()
    con.close()

    def stop_at(study: str, k: int):
        """Interrupt once ``k`` fresh units of ``study`` are done (k = 0: at the first merge)."""
        fresh: list[str] = []

        def cb(ev: runner_mod.ProgressEvent) -> None:
            if ev.phase == "units" and ev.study == study:
                fresh.append(ev.message)
            if (k and len(fresh) >= k) or (not k and ev.phase == "merge"):
                raise KeyboardInterrupt
        return cb

    with pytest.raises(KeyboardInterrupt):
        run_audit(spec, store=f"sqlite:///{db}", progress=stop_at("certify", 4))
    assert extras_rows(db) == [("certify", 4)]  # 6 chunks: 2 methods x 3 batches of 20

    calls: list[str] = []
    real = executors_mod.run_task

    def counted(env: Any, task: Any) -> Any:
        if task.study.name == "certify":
            calls.append(task.key)
        return real(env, task)

    monkeypatch.setattr(executors_mod, "run_task", counted)
    with pytest.raises(KeyboardInterrupt):  # stopped after the certification, before the report
        run_audit(spec, store=f"sqlite:///{db}", progress=stop_at("certify", 0))
    assert len(calls) == 2 and extras_rows(db) == [("certify", 6)]
    calls.clear()
    run = run_audit(spec, store=f"sqlite:///{db}")
    # 3 fgsm + 3 batches of the Square cross-check (fgsm alone is gradient-only) + 6 certify
    assert calls == [] and run.resumed and run.report["manifest"]["units_reused"] == 12
    assert comparable(run.report) == comparable(reference)
    validate_report(run.report)

    ibp, rs = run.report["certification"]
    assert (ibp["method"], ibp["norm"], ibp["n"], ibp["chunks"]) == ("ibp", "linf", 60, 3)
    assert [r for r, _ in ibp["curve"]] == [0.0, 0.005, 0.01, 0.02]
    # IBP certifies the clean prediction, so at radius 0 certified accuracy is clean accuracy
    assert ibp["curve"][0][1] == pytest.approx(run.report["clean_accuracy"]) and ibp["abstain_rate"] == 0.0
    assert [r for r, _ in rs["curve"]] == [0.0, 0.1, 0.2]  # the spec's radii, sorted
    assert (rs["method"], rs["norm"], rs["params"]["n"], rs["params"]["sigma"]) == ("randomized_smoothing", "l2", 40, 0.25)
    for c in (ibp, rs):
        accs = [a for _, a in c["curve"]]
        assert all(b <= a for a, b in zip(accs, accs[1:])), c["curve"]
        assert 0.0 <= c["abstain_rate"] <= 1.0 and c["average_certified_radius"] >= 0.0
    assert ibp["curve"][-1][1] < ibp["curve"][0][1]  # the curve actually falls
    html = render_html(run.report)
    assert "id='certification'" in html and "data-cert='linf'" in html and "data-cert='l2'" in html


def test_ibp_on_a_network_it_cannot_read_fails_before_anything_is_written(model_file: Path, tmp_path: Path) -> None:
    spec = load_spec(make_spec(model_file, certify={"name": "ibp", "eps": 0.01}))
    with pytest.raises(CapabilityError, match=r"^certify\[0\]: ibp: DigitsCNN is not an nn.Sequential") as info:
        run_audit(spec, out_dir=tmp_path / "out", store=f"sqlite:///{tmp_path / 'g.db'}")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "g.db").exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# detect
def test_detection_fits_on_the_calibration_samples_and_reports_plain_and_detector_aware_rows(
    model_file: Path, tmp_path: Path
) -> None:
    spec = load_spec(make_spec(
        model_file, attacks=["fgsm", {"name": "pgd", "steps": 10}], threats=[{"norm": "linf", "eps": 0.1}],
        detect=[
            {"name": "mahalanobis", "calibration": 30, "attacks": ["pgd"], "fpr": 0.1},
            {"name": "feature_squeezing_detector", "bits": 1, "median_size": None, "adaptive": False},
        ],
    ))
    events: list[tuple[str, str, int]] = []
    run = run_audit(spec, out_dir=tmp_path / "out", store=f"sqlite:///{tmp_path / 'g.db'}",
                    progress=lambda e: events.append((e.phase, e.study, e.total)))
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    validate_report(rep)
    assert rep == json.loads(json.dumps(run.report))
    maha, fs = rep["detection"]
    assert (maha["detector"], maha["target_fpr"], maha["n"], maha["calibration_samples"], maha["fit_samples"]) == (
        "mahalanobis", 0.1, 30, 30, 15
    )  # the Gaussians are fitted on 15 samples, the threshold set on the other 15
    assert [(r["attack"], r["adaptive"], r["eps"]) for r in maha["rows"]] == [("pgd", False, 0.1), ("pgd", True, 0.1)]
    # default calibration: half the 60 samples; default attacks: every attack listed by name; plain only
    assert (fs["detector"], fs["params"], fs["n"], fs["calibration_samples"]) == (
        "feature_squeezing_detector", {"bits": 1, "median_size": None}, 30, 30
    )
    assert [(r["attack"], r["adaptive"]) for r in fs["rows"]] == [("fgsm", False), ("pgd", False)]
    for d in (maha, fs):
        for r in d["rows"]:
            assert r["n"] == 30 and 0 <= r["undetected_success_rate"] <= r["success_rate"] <= 1
    # 8 units in all: fgsm and pgd x 2 batches, 2 batches of the Square cross-check, 2 detectors
    assert [e for e in events if e[1] == "detect"] == [("units", "detect", 8), ("units", "detect", 8), ("merge", "detect", 8)]
    assert extras_rows(tmp_path / "g.db") == [("detect", 2)]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "id='detection'" in html and "detector-aware" in html


# ------------------------------------------------------------------------------------------------
# the schema
def test_the_schema_accepts_1_0_reports_and_checks_the_new_sections_strictly(model_file: Path) -> None:
    rep = run_audit(load_spec(defended(
        model_file, {"name": "bit_depth_reduction", "bits": 1}, attacks=["fgsm"], threats=[{"norm": "linf", "eps": 0.1}],
        certify={"name": "randomized_smoothing", "sigma": 0.25, "n0": 5, "n": 20},
    )), store=None).report
    validate_report(rep)
    old = {k: v for k, v in copy.deepcopy(rep).items() if k not in ("defense", "certification", "detection")}
    validate_report({**old, "schema_version": "1.0"})
    cases = [
        (lambda r: r["defense"]["rows"][0].update(gap=1.5), "report.defense.rows[0].gap: must be <= 1"),
        (lambda r: r["defense"].pop("eot_samples"), "report.defense: missing required key 'eot_samples'"),
        (lambda r: r["certification"][0]["curve"].__setitem__(0, [0.0, 0.5, 3]), "report.certification[0].curve[0]: allows at most 2"),
        (lambda r: r["certification"][0].update(curve=[]), "report.certification[0].curve: needs at least 1"),
        (lambda r: r["certification"][0].update(abstain_rate=-0.1), "report.certification[0].abstain_rate: must be >= 0"),
        (lambda r: r.update(detection=[{"detector": "x"}]), "report.detection[0]: missing required key 'params'"),
        (lambda r: r.update(schema_version="1.2"), "report.schema_version: must be one of ['1.0', '1.1', '2.0', '2.1']"),
    ]
    for mutate, message in cases:
        broken = copy.deepcopy(rep)
        mutate(broken)
        with pytest.raises(DataError) as exc:
            validate_report(broken)
        assert str(exc.value).startswith(message), str(exc.value)


# ------------------------------------------------------------------------------------------------
# the spec
BASE: dict[str, Any] = {
    "model": {"path": "model.pt", "name": "digits-cnn"},
    "data": {"name": "digits", "n": 80, "seed": 0},
    "threats": [{"norm": "linf", "eps": [0.1, 0.2]}],
    "attacks": ["fgsm", {"name": "pgd", "steps": 20}],
}


def with_(**blocks: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    if "defense" in blocks:
        d["model"]["defense"] = blocks.pop("defense")
    d.update(blocks)
    return d


@pytest.mark.parametrize(
    "blocks, expected",
    [
        ({"defense": {"name": "bit_depth"}}, "model.defense.name: unknown defense 'bit_depth'; did you mean 'bit_depth_reduction'?"),
        ({"defense": {"name": "pgd_at"}}, "model.defense.name: 'pgd_at' is a training defense, but model.defense takes a preprocessing defense: bit_depth_reduction,"),
        ({"defense": {"name": "mahalanobis"}}, "model.defense.name: 'mahalanobis' is a detector defense"),
        ({"defense": {"name": "bit_depth_reduction", "bitz": 1}}, "model.defense.bitz: bit_depth_reduction has no parameter 'bitz'; did you mean 'bits'?"),
        ({"defense": {"name": "bit_depth_reduction", "bits": 0}}, "model.defense.bits: must be an int >= 1 and <= 16, got 0"),
        ({"defense": {"name": "bit_depth_reduction", "eot_samples": 5}}, "model.defense.eot_samples: bit_depth_reduction is deterministic"),
        ({"defense": {"name": "gaussian_noise", "eot_samples": 0}}, "model.defense.eot_samples: must be >= 1, got 0"),
        ({"certify": [{"name": "randomized_smoothing", "sigma": -0.5}]}, "certify[0].sigma: must be a finite number > 0, got -0.5"),
        ({"certify": [{"name": "randomized_smoothing", "sigma": 0.25, "n": 0}]}, "certify[0].n: must be an int >= 1, got 0"),
        ({"certify": [{"name": "ibp", "epsilon": 0.1}]}, "certify[0].epsilon: ibp has no parameter 'epsilon'; did you mean 'eps'?"),
        ({"certify": [{"name": "ibp", "eps": [0.1, -0.1]}]}, "certify[0].eps: must be a finite number > 0 or a non-empty list"),
        ({"certify": [{"name": "ibp", "radii": [-1]}]}, "certify[0].radii[0]: must be a finite number >= 0, got -1.0"),
        ({"certify": [{"name": "feature_squeezing_detector"}]}, "certify[0].name: 'feature_squeezing_detector' is a detector defense, but certify takes a certification method: ibp, randomized_smoothing"),
        ({"detect": [{"name": "mahalanobis", "calibration": 80}]}, "detect[0].calibration: must be < data.n (80) so that samples remain"),
        ({"detect": [{"name": "mahalanobis", "calibration": 1}]}, "detect[0].calibration: must be >= 2, got 1"),
        ({"detect": [{"name": "mahalanobis", "fpr": 0}]}, "detect[0].fpr: must be a number in (0, 1)"),
        ({"detect": [{"name": "mahalanobis", "shrinkage": 2.0}]}, "detect[0].shrinkage: must be one of 'auto' or a finite number >= 0 and <= 1, got 2.0"),
        ({"detect": [{"name": "mahalanobis", "attacks": ["pgd", "pdg"]}]}, "detect[0].attacks[1]: no attack labelled 'pdg' in attacks; did you mean 'pgd'?"),
        ({"detect": [{"name": "randomized_smoothing"}]}, "detect[0].name: 'randomized_smoothing' is a certification defense, but detect takes a detector"),
        ({"attacks": [{"name": "pgd", "label": "pgd (naive)"}]}, "attacks[0].label: labels ending in '(naive)' are reserved"),
        ({"thresholds": [{"attack": "pgd (naive)", "norm": "linf", "eps": 0.1, "min_robust_accuracy": 0.5}]},
         "thresholds[0].attack: no attack labelled 'pgd (naive)' in attacks; use one of 'fgsm', 'pgd', 'worst_case'; runs against a naive view exist only when model.defense is set"),
    ],
)
def test_bad_defense_certify_and_detect_blocks_give_one_line_errors_naming_their_place(blocks: dict[str, Any], expected: str) -> None:
    assert spec_error(with_(**blocks)).startswith(expected)


def test_errors_in_a_yaml_spec_name_the_line_of_the_bad_key(tmp_path: Path) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(textwrap.dedent(
        """\
        model:
          path: model.pt
          defense: {name: bit_depth_reduction, bits: 1}
        data: {name: digits, n: 80}
        threats: [{norm: linf, eps: 0.1}]
        attacks: [pgd]
        certify:
          - name: randomized_smoothing
            sigma: 0.25
            alpha: 2
        """
    ))
    with pytest.raises(ConfigError, match=r"^certify\[0\]\.alpha: must be a finite number > 0 and < 1, got 2 \(spec.yaml, line 10\)$"):
        load_spec(f)


def test_calibration_not_below_the_number_of_audited_samples_is_refused_once_the_data_is_loaded(
    model_file: Path, tmp_path: Path
) -> None:
    spec = make_spec(model_file, data={"name": "digits"}, detect={"name": "feature_squeezing_detector", "calibration": 450})
    with pytest.raises(ConfigError, match=r"^detect\[0\]\.calibration: must be < the 450 audited samples"):
        run_audit(load_spec(spec), store=f"sqlite:///{tmp_path / 'g.db'}")
    assert not (tmp_path / "g.db").exists()


def test_the_spec_hash_changes_with_the_defense_certify_and_detect_blocks_but_not_with_thresholds() -> None:
    base = spec_hash(load_spec(with_()))
    hashes = [
        spec_hash(load_spec(with_(defense={"name": "bit_depth_reduction", "bits": 1}))),
        spec_hash(load_spec(with_(defense={"name": "bit_depth_reduction", "bits": 2}))),
        spec_hash(load_spec(with_(defense={"name": "gaussian_noise", "sigma": 0.1, "eot_samples": 4}))),
        spec_hash(load_spec(with_(certify={"name": "ibp", "eps": 0.1}))),
        spec_hash(load_spec(with_(certify={"name": "ibp", "eps": 0.2}))),
        spec_hash(load_spec(with_(detect={"name": "mahalanobis"}))),
        spec_hash(load_spec(with_(detect={"name": "mahalanobis", "fpr": 0.1}))),
    ]
    assert len({base, *hashes}) == 1 + len(hashes)
    gated = with_(defense={"name": "bit_depth_reduction", "bits": 1},
                  thresholds=[{"attack": "pgd (naive)", "norm": "linf", "eps": 0.1, "min_robust_accuracy": 0.5}])
    assert spec_hash(load_spec(gated)) == hashes[0]


def test_fail_under_may_name_a_naive_label_but_only_when_the_spec_has_a_defense() -> None:
    from gauntlet.audit.gate import parse_threshold
    from gauntlet.audit.spec import check_thresholds

    th = parse_threshold("pgd (naive):linf:0.1=50%")
    assert (th.attack, th.norm, th.eps, th.min_robust_accuracy) == ("pgd (naive)", "linf", 0.1, 0.5)
    check_thresholds(load_spec(with_(defense={"name": "bit_depth_reduction", "bits": 1})), [th], lambda i, t: "--fail-under")
    with pytest.raises(ConfigError, match=r"^--fail-under\.attack: no attack labelled 'pgd \(naive\)'"):
        check_thresholds(load_spec(with_()), [th], lambda i, t: "--fail-under")
