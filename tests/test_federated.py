"""Federated learning on Flower (gauntlet.learning.federated): client splits, the attacker on the
wire, the robust strategy's rejections, per-round records, resuming between rounds, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gauntlet.errors import ConfigError, DataError, StoreError, UnknownNameError
from gauntlet.learning.federated import Federation, split_clients

pytest.importorskip("flwr", reason="Flower is the federated extra (pip install 'gauntlet[federated]')")


@pytest.fixture(scope="module")
def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return (x[p[:1200]], y[p[:1200]]), (x[p[1200:]], y[p[1200:]])


def _mlp() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


# -- splits ---------------------------------------------------------------------------------------
def test_iid_split_is_a_partition_into_near_equal_shards() -> None:
    y = torch.arange(103) % 10
    parts = split_clients(y, 10, seed=1)
    assert sorted(torch.cat(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} <= {10, 11}
    assert [p.tolist() for p in split_clients(y, 10, seed=1)] == [p.tolist() for p in parts]


def test_dirichlet_split_is_a_partition_and_skews_labels_as_alpha_shrinks() -> None:
    y = torch.arange(5000) % 10

    def skew(alpha: float) -> float:
        parts = split_clients(y, 10, alpha=alpha, seed=0)
        assert sorted(torch.cat(parts).tolist()) == list(range(5000))
        return sum(float(torch.bincount(y[p], minlength=10).max()) / len(p) for p in parts) / 10

    assert skew(0.1) > 0.5 > skew(100.0) and skew(100.0) < 0.2


def test_a_split_that_leaves_a_client_empty_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"left clients \[.*\] without data; raise alpha"):
        split_clients(torch.zeros(12, dtype=torch.int64), 10, alpha=0.01, seed=0)
    with pytest.raises(DataError, match=r"5 rows cannot give 10 clients"):
        split_clients(torch.zeros(5, dtype=torch.int64), 10)


# -- configuration errors -------------------------------------------------------------------------
def test_a_malicious_share_outside_0_1_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"federation: parameter 'malicious' must be a finite number >= 0 and < 1, got 1.0"):
        Federation(malicious=1.0)
    with pytest.raises(ConfigError, match=r"at least one must be honest"):
        Federation(clients=2, malicious=0.9, attack="alie")


def test_more_byzantine_clients_than_krum_tolerates_names_the_bound() -> None:
    with pytest.raises(ConfigError, match=r"10 clients are too few for Krum with f=4 \(n > 2f \+ 2\); it needs at least 11"):
        Federation(clients=10, strategy="krum", strategy_params={"f": 4})


def test_unknown_names_suggest_the_close_one() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'median'"):
        Federation(strategy="mediann")
    with pytest.raises(UnknownNameError, match=r"did you mean 'alie'"):
        Federation(attack="alei", malicious=0.2)
    with pytest.raises(ConfigError, match=r"Flower strategy 'flower:geomed' is not one of"):
        Federation(strategy="flower:geomed")
    with pytest.raises(ConfigError, match=r"needs malicious > 0"):
        Federation(attack="ipm")
    with pytest.raises(ConfigError, match=r"not a backdoor attack"):
        Federation(malicious=0.1, backdoor="label_flip")


# -- Flower runs ----------------------------------------------------------------------------------
def test_fedavg_learns_and_an_interrupted_run_resumes_from_its_last_round(digits, tmp_path: Path) -> None:
    train, test = digits
    kw: dict[str, Any] = {"clients": 4, "lr": 0.2, "num_cpus": 1, "checkpoint_dir": tmp_path}
    first = Federation(rounds=2, **kw).run(_mlp(), train, test, seed=3)
    assert [r.round for r in first.rounds] == [1, 2] and first.resumed_from == 0
    assert first.accuracy > first.initial_accuracy + 0.2
    assert first.client_sizes == [300] * 4 and first.malicious == []
    # the same run asked for 3 rounds trains only the third
    more = Federation(rounds=3, **kw).run(_mlp(), train, test, seed=3)
    assert more.resumed_from == 2 and [r.round for r in more.rounds] == [1, 2, 3]
    assert [r.accuracy for r in more.rounds[:2]] == [r.accuracy for r in first.rounds]
    assert more.accuracy >= first.accuracy - 0.05
    # finished: nothing left to run, and the final model is the checkpointed one
    again = Federation(rounds=3, **kw).run(_mlp(), train, test, seed=3)
    assert again.resumed_from == 3 and again.accuracy == more.accuracy
    with torch.inference_mode():
        acc = float((again.module(test[0]).argmax(1) == test[1]).float().mean())
    assert acc == pytest.approx(more.accuracy, abs=1e-6)
    with pytest.raises(StoreError, match=r"holds 3 finished rounds, more than the 2 asked"):
        Federation(rounds=2, **kw).run(_mlp(), train, test, seed=3)
    # another seed is another run: its checkpoint is refused rather than mixed in
    with pytest.raises(StoreError, match=r"is of a different run"):
        Federation(rounds=3, **kw).run(_mlp(), train, test, seed=4)


def test_krum_rejects_the_boosted_flipped_client_every_round_while_fedavg_suffers(digits) -> None:
    train, test = digits
    kw: dict[str, Any] = {"clients": 5, "rounds": 2, "lr": 0.2, "num_cpus": 1, "attack": "scaling",
                          "attack_params": {"flip": True}, "malicious": 0.2}
    krum = Federation(strategy="krum", strategy_params={"f": 1}, **kw).run(_mlp(), train, test, seed=0)
    assert len(krum.malicious) == 1
    for r in krum.rounds:
        assert r.rejected is not None and krum.malicious[0] in r.rejected and len(r.rejected) == 4
        assert r.malicious_rejected == 1
    mean = Federation(strategy="mean", **kw).run(_mlp(), train, test, seed=0)
    assert all(r.rejected == [] for r in mean.rounds)
    assert krum.accuracy > mean.accuracy + 0.2


def test_local_steps_1_is_fedsgd_one_minibatch_step_per_round() -> None:
    from gauntlet.learning.federated import _local_train

    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 10
    net, ref = _mlp(), _mlp()
    _local_train(net, x, y, epochs=3, batch_size=16, lr=0.1, momentum=0.0, seed=5, steps=1)
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(5))[:16]
    ref.train()
    torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert Federation(local_steps=1).local_steps == 1
    with pytest.raises(ConfigError, match=r"parameter 'local_steps' must be an int >= 1"):
        Federation(local_steps=0)
