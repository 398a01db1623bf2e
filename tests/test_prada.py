"""PRADA query monitoring: the growing-set / minimum-distance bookkeeping of Juuti et al., the
Shapiro-Wilk alarm, per-client state, calibration at a false-alarm rate, and a wrapped model
that answers unchanged while it watches."""

from __future__ import annotations

import logging

import pytest
import torch

import gauntlet as gt
from gauntlet.errors import ConfigError, DataError


def _benign(digits_test, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return digits_test.x[torch.randperm(len(digits_test.x), generator=g)[:n]]


def _crafted(digits_test, n: int, seed: int) -> torch.Tensor:
    """A synthetic stream in the style of Jacobian-based augmentation: a few seeds, then small
    steps of +-lambda from the previous round (many near-duplicates at one distance)."""
    g = torch.Generator().manual_seed(seed)
    cur = digits_test.x[:10]
    rounds = [cur]
    while sum(len(r) for r in rounds) < n:
        cur = (cur + 0.05 * torch.sign(torch.randn(cur.shape, generator=g))).clamp(0, 1)
        rounds.append(cur)
    return torch.cat(rounds)[:n]


def test_the_growing_set_admits_a_query_only_beyond_the_class_threshold() -> None:
    mon = gt.defenses.create("prada", min_queries=3).monitor()
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [0.0, 1.0]])
    mon.observe(x, torch.zeros(4, dtype=torch.int64), client="a")
    state = mon._clients["a"]
    # first query seeds G_0; the second is 5 away (joins, T = 5 - 0); the duplicate is 0 away
    # (does not join); the last is 1 away from (0, 0): below T = 5, does not join
    assert state.distances == pytest.approx([5.0, 0.0, 1.0])
    assert state.growing[0].shape[0] == 2
    assert state.threshold[0] == pytest.approx(5.0)


def test_benign_natural_streams_stay_quiet_while_a_crafted_stream_raises_the_alarm(digits_model, digits_test) -> None:
    prada = gt.defenses.create("prada")
    benign = [_benign(digits_test, 300, s) for s in range(5)]
    delta = prada.calibrate(digits_model, benign, fpr=0.0)
    assert 0 < delta < 1
    for s in range(5, 8):
        watched = prada.wrap(digits_model)
        watched.predict(_benign(digits_test, 300, s))
        # fresh benign streams can fall slightly below the calibrated delta: bound it loosely
        assert watched.statistic > delta - 0.05
    attacked = prada.wrap(digits_model)
    for chunk in _crafted(digits_test, 450, 0).split(50):
        attacked.scores(chunk)
    assert attacked.alarm and attacked.fired_at is not None and attacked.fired_at <= 450
    assert attacked.statistic < delta


def test_a_monitored_model_answers_exactly_like_the_model_and_counts_queries(digits_model, digits_test) -> None:
    watched = gt.defenses.create("prada").wrap(digits_model)
    x = digits_test.x[:40]
    assert torch.equal(watched.scores(x), digits_model.scores(x, count=False))
    assert torch.equal(watched.predict(x), digits_model.predict(x, count=False))
    assert watched.queries == 80 and watched.monitor.queries() == 80
    watched.predict(x, count=False)  # uncounted queries are not part of the client's stream
    assert watched.monitor.queries() == 80


def test_clients_are_monitored_separately_and_the_alarm_is_logged_once(digits_model, digits_test, caplog) -> None:
    prada = gt.defenses.create("prada", delta=0.9)
    mon = prada.monitor()
    crafted = _crafted(digits_test, 450, 1)
    benign = _benign(digits_test, 300, 9)
    with caplog.at_level(logging.WARNING, logger="gauntlet"):
        mon.observe(benign, digits_model.predict(benign, count=False), client="alice")
        mon.observe(crafted, digits_model.predict(crafted, count=False), client="mallory")
    assert mon.clients == ["alice", "mallory"]
    assert mon.fired_at("mallory") is not None
    assert mon.queries("alice") == 300 and mon.queries("mallory") == 450
    alarms = [r for r in caplog.records if "extraction alarm" in r.getMessage()]
    assert len(alarms) == (mon.fired_at("alice") is not None) + 1


def test_prada_refuses_bad_parameters_and_inputs_in_one_line(digits_model, digits_test) -> None:
    with pytest.raises(ConfigError, match="'delta'"):
        gt.defenses.create("prada", delta=1.5)
    with pytest.raises(ConfigError, match="'min_queries'"):
        gt.defenses.create("prada", min_queries=2)
    prada = gt.defenses.create("prada")
    with pytest.raises(DataError, match="labels must have shape"):
        prada.monitor().observe(digits_test.x[:3], torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="more than min_queries"):
        prada.calibrate(digits_model, [digits_test.x[:50]])
    with pytest.raises(ConfigError, match="fpr"):
        prada.calibrate(digits_model, [digits_test.x[:200]], fpr=1.0)
