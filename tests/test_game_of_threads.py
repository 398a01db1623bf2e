"""Asynchronous SGD, the Game-of-Threads scheduler and the staleness defenses, on sklearn's digits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import shared_path
from sklearn.datasets import load_digits

import gauntlet as gt
from gauntlet.attacks.poisoning.game_of_threads import GameOfThreads
from gauntlet.errors import ConfigError, DataError
from gauntlet.learning.async_sgd import AsyncRunResult, AsyncSGD, RoundRobin, SchedulerView

TARGET = 3
STEPS = 600


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def sim(data: Any) -> AsyncSGD:
    xt, yt, _, _ = data
    return AsyncSGD(None, xt, yt, workers=8, batch_size=16, lr=0.5, seed=0)


def _run(sim: AsyncSGD, data: Any, **kw: Any) -> AsyncRunResult:
    return sim.run(steps=STEPS, eval_x=data[2], eval_y=data[3], **kw)


@pytest.fixture(scope="module")
def benign(sim: AsyncSGD, data: Any) -> AsyncRunResult:
    return _run(sim, data)


@pytest.fixture(scope="module")
def attacked(sim: AsyncSGD, data: Any) -> AsyncRunResult:
    return GameOfThreads(target_class=TARGET).run(sim, steps=STEPS, eval_x=data[2], eval_y=data[3])


def test_round_robin_gives_every_update_the_staleness_workers_minus_one(benign: AsyncRunResult) -> None:
    # the first round starts from version 0: its updates are 0, 1, ..., 6 steps stale
    assert benign.staleness_histogram() == {**{s: 1 for s in range(7)}, 7: STEPS - 7}
    assert benign.dropped == 0
    assert benign.final_accuracy > 0.8  # the benign run learns digits


def test_the_same_seed_gives_the_same_run(sim: AsyncSGD, data: Any, benign: AsyncRunResult) -> None:
    again = _run(sim, data)
    assert again.accuracy == benign.accuracy
    assert np.array_equal(again.class_share, benign.class_share)


def test_class_shares_are_a_distribution_over_the_classes(benign: AsyncRunResult, attacked: AsyncRunResult) -> None:
    for r in (benign, attacked):
        assert r.class_share.shape == (len(r.eval_steps), 10)
        assert np.allclose(r.class_share.sum(axis=1), 1.0)
    assert benign.eval_steps[-1] == STEPS


def test_scheduling_alone_moves_the_target_share_by_at_least_20_points(benign: AsyncRunResult, attacked: AsyncRunResult) -> None:
    moved = attacked.final_share[TARGET] - benign.final_share[TARGET]
    assert moved >= 0.20, f"target share moved only {moved:.3f}"
    assert max(attacked.staleness) > 100  # the burst is made of long-paused updates


def test_the_attack_only_reorders_honest_updates(sim: AsyncSGD, benign: AsyncRunResult, attacked: AsyncRunResult) -> None:
    # every worker's mini-batches are the honest sequence of its own generator (a prefix of the benign run's)
    for w in range(sim.workers):
        a, b = attacked.batches[w], benign.batches[w]
        short = min(len(a), len(b))
        assert short >= 1
        assert all(np.array_equal(a[i], b[i]) for i in range(short))
        # and are what a fresh uniform draw with that worker's generator gives
        rng = np.random.default_rng([sim.seed, w])
        assert all(np.array_equal(np.sort(rng.choice(sim.x.shape[0], sim.batch_size, replace=False)), bi) for bi in a)
    # each applied update is one of those computed batches, applied once
    assert len(set(attacked.applied)) == len(attacked.applied) == STEPS
    assert all(k < len(attacked.batches[w]) for w, k in attacked.applied)


def test_bounded_staleness_removes_most_of_the_effect(sim: AsyncSGD, data: Any, benign: AsyncRunResult, attacked: AsyncRunResult) -> None:
    moved = attacked.final_share[TARGET] - benign.final_share[TARGET]
    for on_reject in ("drop", "recompute"):
        d = gt.defenses.create("bounded_staleness", tau=16, on_reject=on_reject)
        r = GameOfThreads(target_class=TARGET).run(sim, steps=STEPS, eval_x=data[2], eval_y=data[3], defense=d)
        left = r.final_share[TARGET] - benign.final_share[TARGET]
        assert left < 0.25 * moved, (on_reject, left, moved)
        assert r.dropped >= 1 and max(r.staleness) <= 16


def test_staleness_weighting_removes_most_of_the_effect(sim: AsyncSGD, data: Any, benign: AsyncRunResult, attacked: AsyncRunResult) -> None:
    moved = attacked.final_share[TARGET] - benign.final_share[TARGET]
    d = gt.defenses.create("staleness_weighting")
    r = GameOfThreads(target_class=TARGET).run(sim, steps=STEPS, eval_x=data[2], eval_y=data[3], defense=d)
    assert r.final_share[TARGET] - benign.final_share[TARGET] < 0.25 * moved


def test_a_bound_above_the_benign_staleness_costs_the_benign_run_nothing(sim: AsyncSGD, data: Any, benign: AsyncRunResult) -> None:
    r = _run(sim, data, defense=gt.defenses.create("bounded_staleness", tau=7))
    assert r.accuracy == benign.accuracy and r.dropped == 0
    assert r.steps_to(0.8) == benign.steps_to(0.8) is not None


def test_a_bound_below_the_benign_staleness_drops_updates_and_caps_what_is_applied(sim: AsyncSGD, data: Any) -> None:
    r = _run(sim, data, defense=gt.defenses.create("bounded_staleness", tau=3))
    assert r.dropped > 0 and max(r.staleness) <= 3
    assert r.dropped + len(r.staleness) == STEPS


def test_staleness_weighting_is_lr_over_one_plus_staleness() -> None:
    d = gt.defenses.create("staleness_weighting")
    assert [d.scale(s) for s in (0, 1, 7)] == pytest.approx([1.0, 0.5, 0.125])
    free = gt.defenses.create("staleness_weighting", free=7, power=2.0)
    assert free.scale(7) == pytest.approx(1.0) and free.scale(9) == pytest.approx(1 / 9)


def test_the_slow_goal_makes_a_share_of_updates_window_steps_stale(sim: AsyncSGD, data: Any) -> None:
    r = GameOfThreads(goal="slow", max_held=4, window=50).run(sim, steps=STEPS, eval_x=data[2], eval_y=data[3])
    stale = np.asarray(r.staleness)
    # 4 held threads released every ~54 steps: about 4 / 54 of the updates are >= 50 steps stale
    assert 0.05 < (stale >= 50).mean() < 0.1
    assert stale.max() <= 60
    assert len(r.staleness) == STEPS


def test_steps_to_is_none_when_the_accuracy_is_never_reached(benign: AsyncRunResult) -> None:
    assert benign.steps_to(1.01) is None
    assert benign.steps_to(0.0) == benign.eval_steps[0]


def test_registered_with_defaults_and_rebuilt_from_params() -> None:
    a = gt.attacks.create("game_of_threads")
    assert a.kind == "scheduling" and gt.attacks.create("game_of_threads", **a.get_params()).get_params() == a.get_params()
    for name in ("bounded_staleness", "staleness_weighting"):
        d = gt.defenses.create(name)
        assert d.kind == "staleness" and gt.defenses.create(name, **d.get_params()).get_params() == d.get_params()


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"goal": "chaos"}, "goal"),
        ({"max_held": 0}, "max_held"),
        ({"window": 0}, "window"),
        ({"min_share": 1.5}, "min_share"),
        ({"target_class": -1}, "target_class"),
    ],
)
def test_bad_attack_parameters_name_the_parameter(params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        GameOfThreads(**params)


@pytest.mark.parametrize(("params", "fragment"), [({"tau": -1}, "tau"), ({"on_reject": "ignore"}, "on_reject")])
def test_bad_bound_parameters_name_the_parameter(params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        gt.defenses.create("bounded_staleness", **params)


def test_bad_weighting_power_is_refused() -> None:
    with pytest.raises(ConfigError, match="power"):
        gt.defenses.create("staleness_weighting", power=0.0)


def test_holding_every_thread_is_refused(sim: AsyncSGD, data: Any) -> None:
    with pytest.raises(ConfigError, match="max_held=8 must be below the 8 workers"):
        GameOfThreads(max_held=8).run(sim, steps=5, eval_x=data[2], eval_y=data[3])


def test_a_target_class_beyond_the_labels_is_refused(sim: AsyncSGD, data: Any) -> None:
    with pytest.raises(ConfigError, match="target_class=10"):
        GameOfThreads(target_class=10).run(sim, steps=5, eval_x=data[2], eval_y=data[3])


def test_a_scheduler_that_picks_an_idle_worker_is_refused(sim: AsyncSGD, data: Any) -> None:
    class Bad:
        def pick(self, view: SchedulerView) -> int:
            return 99

    with pytest.raises(ConfigError, match="no pending update"):
        sim.run(steps=3, scheduler=Bad(), eval_x=data[2], eval_y=data[3])


def test_a_defense_without_scale_is_refused(sim: AsyncSGD, data: Any) -> None:
    with pytest.raises(ConfigError, match="staleness defense"):
        sim.run(steps=3, defense=gt.defenses.create("median"), eval_x=data[2], eval_y=data[3])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "err", "fragment"),
    [
        (lambda x, y: (x.double().long(), y), DataError, "floating"),
        (lambda x, y: (x, y[:-1]), DataError, "to match x"),
        (lambda x, y: (x, y.float()), DataError, "integer labels"),
        (lambda x, y: (torch.where(x > 0.5, torch.nan, x), y), DataError, "NaN"),
    ],
)
def test_bad_training_data_is_refused(data: Any, make: Any, err: type, fragment: str) -> None:
    x, y = make(data[0], data[1])
    with pytest.raises(err, match=fragment):
        AsyncSGD(None, x, y)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [({"workers": 0}, "workers"), ({"batch_size": 5000}, "exceeds"), ({"lr": 0.0}, "lr"), ({"seed": -1}, "seed")],
)
def test_bad_simulation_settings_are_refused(data: Any, kw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        AsyncSGD(None, data[0], data[1], **kw)


def test_bad_eval_data_and_steps_are_refused(sim: AsyncSGD, data: Any) -> None:
    with pytest.raises(DataError, match="eval y"):
        sim.run(steps=3, eval_x=data[2], eval_y=data[3][:-1])
    with pytest.raises(ConfigError, match="steps"):
        sim.run(steps=0, eval_x=data[2], eval_y=data[3])


def test_round_robin_picks_the_oldest_read() -> None:
    from gauntlet.learning.async_sgd import PendingUpdate

    lab = np.zeros(2, dtype=np.int64)
    view = SchedulerView(0, 10, 5, 3, 10, {0: PendingUpdate(0, 4, lab), 1: PendingUpdate(1, 2, lab), 2: PendingUpdate(2, 3, lab)})
    assert RoundRobin().pick(view) == 1


@pytest.mark.slow
def test_mnist_scheduling_moves_the_target_share_by_20_points_and_the_bound_takes_it_back() -> None:
    ds = gt.data.load(str(shared_path("data", "mnist")), split="train")
    te = gt.data.load(str(shared_path("data", "mnist")), split="test")
    sim = AsyncSGD(None, ds.x, ds.y.long(), workers=16, batch_size=8, lr=0.1, seed=1)
    kw: dict[str, Any] = {"steps": 2000, "eval_x": te.x, "eval_y": te.y.long(), "eval_every": 200}
    attack = GameOfThreads(target_class=5, max_held=14, min_share=0.25)
    benign = sim.run(**kw)
    attacked = attack.run(sim, **kw)
    guarded = attack.run(sim, defense=gt.defenses.create("bounded_staleness", tau=32), **kw)
    moved = attacked.final_share[5] - benign.final_share[5]
    assert moved >= 0.20
    assert abs(guarded.final_share[5] - benign.final_share[5]) < 0.25 * moved
