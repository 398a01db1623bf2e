"""``--executor auto``: the layout choice follows its closed-form predictions, the measurement leaves
the network and the thread count alone, and an auto audit gives the local audit's report whatever
it decides (the Ray side is tested in test_audit_executors.py, which has a cluster)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gauntlet.audit import layout, load_spec, run_audit
from gauntlet.audit.executors import AutoExecutor, Task, make_executor
from gauntlet.audit.layout import LayoutTimes, choose_layout, measure_layouts, worth_measuring
from gauntlet.audit.report import comparable
from gauntlet.errors import ConfigError
from gauntlet.models.zoo import DigitsCNN


def times(one: float, intra: float, inter: float, cores: int = 2) -> LayoutTimes:
    return LayoutTimes(cores=cores, one=one, intra=intra, inter=inter, batch=64, passes=1)


def test_speedups_are_work_per_second_relative_to_one_thread() -> None:
    t = times(one=1.0, intra=0.6, inter=1.25)  # two copies of the work in 1.25 s
    assert t.intra_speedup == pytest.approx(1 / 0.6)
    assert t.inter_speedup == pytest.approx(2 / 1.25)


def test_ray_is_chosen_only_when_its_prediction_with_start_and_per_unit_overhead_is_shorter() -> None:
    # inter-op 2.0x against intra-op 1.67x one thread (BENCHMARKS §36's PGD-40 shape); units of 10 s on one thread
    t = times(one=1.0, intra=0.6, inter=1.0)
    long = choose_layout(10.0, 50, t)
    local_s = 10.0 * 50 * 0.6  # every core: 1.67x one thread
    ray_s = 10.0 * 50 / 2.0 + layout.RAY_FIXED_S + layout.RAY_UNIT_S * 50
    assert (long.layout, long.threads) == ("ray", 1)
    assert long.predicted_local_s == pytest.approx(local_s) and long.predicted_ray_s == pytest.approx(ray_s)
    # the same speed-ups on short units: Ray's overhead is not repaid, every core in process is fastest
    short = choose_layout(0.3, 50, t)
    assert (short.layout, short.threads) == ("local", 2)
    assert short.predicted_local_s == pytest.approx(0.3 * 50 * 0.6)
    assert short.predicted_ray_s is not None and short.predicted_ray_s >= short.predicted_local_s
    # a predicted gain under the margin is not taken: Ray's overheads vary with the load
    t2 = times(one=1.0, intra=0.52, inter=1.0)  # 1.92x in process against 2.0x side by side
    marginal = choose_layout(100.0, 10, t2)
    assert marginal.predicted_ray_s is not None and marginal.predicted_local_s is not None
    assert marginal.predicted_ray_s < marginal.predicted_local_s < marginal.predicted_ray_s / (1 - layout.RAY_MARGIN)
    assert marginal.layout == "local"
    # inter-op no better than intra-op: never Ray, however long the audit
    tie = choose_layout(100.0, 1000, times(one=1.0, intra=0.5, inter=1.0))
    assert (tie.layout, tie.threads) == ("local", 2)


def test_a_busy_machine_where_two_threads_are_slower_than_one_stays_on_one_thread() -> None:
    t = times(one=1.0, intra=2.0, inter=1.5)  # two threads take twice one thread's time; side by side 1.33x
    c = choose_layout(0.5, 10, t)
    assert (c.layout, c.threads) == ("local", 1)
    assert c.predicted_local_s == pytest.approx(0.5 * 10)


def test_without_ray_the_choice_stays_in_process() -> None:
    c = choose_layout(10.0, 50, times(one=1.0, intra=0.6, inter=1.0), ray=False)
    assert (c.layout, c.threads) == ("local", 2) and "not installed" in c.why and c.predicted_ray_s is None


def test_the_layouts_are_measured_only_for_enough_work_on_more_than_one_core() -> None:
    assert worth_measuring(1.0, int(layout.MEASURE_MIN_S), 2)
    assert not worth_measuring(1.0, int(layout.MEASURE_MIN_S) - 1, 2)
    assert not worth_measuring(100.0, 100, 1)
    assert not worth_measuring(100.0, 0, 2)


def test_measuring_the_layouts_leaves_the_network_and_the_thread_count_untouched() -> None:
    net = DigitsCNN().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    threads = torch.get_num_threads()
    t = measure_layouts(net, torch.rand(16, 1, 8, 8), 2, budget_s=0.05)
    assert min(t.one, t.intra, t.inter) > 0 and t.cores == 2 and t.batch == 16 and t.passes >= 1
    assert torch.get_num_threads() == threads
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="cores >= 2"):
        measure_layouts(net, torch.rand(4, 1, 8, 8), 1)


@pytest.fixture(scope="module")
def model_file(digits_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_net.state_dict(), path)
    return path


def small_spec(model_file: Path) -> dict[str, Any]:
    return {
        "model": {"path": str(model_file), "name": "digits-cnn", "version": "1", "arch": "digits_cnn"},
        "data": {"name": "digits", "n": 32, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.2]}],
        "attacks": ["fgsm", {"name": "pgd", "steps": 5}],
        "batch_size": 16,
        "seed": 0,
    }


@pytest.fixture(scope="module")
def local_report(model_file: Path) -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what auto runs these on (one thread): compare like with like
    try:
        yield run_audit(load_spec(small_spec(model_file)), store=None, executor="local").report
    finally:
        torch.set_num_threads(threads)


def test_a_short_auto_audit_runs_in_process_without_measuring_and_equals_the_local_audit(
    model_file: Path, local_report: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "MEASURE_MIN_S", 1e9)  # every audit is "short": no measurement, one thread
    spec = load_spec(small_spec(model_file))
    threads = torch.get_num_threads()
    with AutoExecutor(workers=2) as auto:
        run = run_audit(spec, store=None, executor=auto)
        assert torch.get_num_threads() == 1  # the decided layout's count stays until the executor is closed
    ex = run.report["manifest"]["executor"]
    assert ex["name"] == "auto" and ex["layout"] == "local" and ex["threads"] == 1 and ex["cores"] == 2
    assert "too little work" in ex["why"] and "measured" not in ex
    assert comparable(run.report) == comparable(local_report)
    assert torch.get_num_threads() == threads


def test_an_auto_audit_that_measures_records_what_it_measured_and_equals_the_local_audit(
    model_file: Path, local_report: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(small_spec(model_file))
    monkeypatch.setattr(layout, "MEASURE_MIN_S", 0.0)  # measure even this small audit
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    measured: list[LayoutTimes] = []
    real = layout.measure_layouts

    def measure(net: torch.nn.Module, x: torch.Tensor, cores: int, **kw: Any) -> LayoutTimes:
        # the real measurement runs on the audit's network and data; the decision then rests on fixed
        # speed-ups (this machine's would make it vary): two threads slower than one, so one thread
        measured.append(real(net, x, cores, budget_s=0.05))
        return times(one=1.0, intra=2.0, inter=1.0)

    monkeypatch.setattr(layout, "measure_layouts", measure)
    with AutoExecutor(workers=2) as auto:
        run = run_audit(spec, store=None, executor=auto)
    ex = run.report["manifest"]["executor"]
    assert (ex["layout"], ex["threads"]) == ("local", 1) and "not installed" in ex["why"]
    assert ex["measured"]["inter_speedup"] == pytest.approx(2.0) and ex["first_unit_s"] > 0
    assert len(measured) == 1 and measured[0].batch == 16 and min(measured[0].one, measured[0].inter) > 0
    assert comparable(run.report) == comparable(local_report)


def test_auto_takes_no_ray_address_and_validates_its_cores() -> None:
    assert isinstance(make_executor("auto", workers=3), AutoExecutor)
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        make_executor("auto", address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="--workers must be an int >= 1"):
        AutoExecutor(workers=0)


def test_cli_auto_lays_out_the_threads_it_is_given(model_file: Path, tmp_path: Path) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from gauntlet.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**small_spec(model_file), "attacks": ["fgsm"]}))
    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["audit", str(spec), "--out", str(tmp_path / "out"), "--store",
                                       f"sqlite:///{tmp_path / 'g.db'}", "--executor", "auto", "--threads", "1", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    ex = json.loads((tmp_path / "out" / "report.json").read_text())["manifest"]["executor"]
    assert (ex["name"], ex["cores"], ex["layout"], ex["why"]) == ("auto", 1, "local", "one CPU core")


def test_the_work_left_is_estimated_from_the_first_unit_scaled_by_cost_within_its_study() -> None:
    from gauntlet.audit.executors import _seconds_per_unit

    class Unit:
        def __init__(self, key: str, cost: float) -> None:
            self.key, self.cost = key, cost

    a, b = object(), object()  # two studies
    first = Task(a, Unit("f", 10.0), 0)
    rest = [Task(a, Unit("p", 200.0), 1), Task(a, Unit("q", 10.0), 2), Task(b, Unit("r", 1e6), 3)]
    # same study: 0.5 s x 20 and 0.5 s x 1; another study's cost scale is not comparable: as the first
    assert _seconds_per_unit(0.5, first, rest) == pytest.approx((10.0 + 0.5 + 0.5) / 3)
    assert _seconds_per_unit(0.5, first, []) == 0.5
