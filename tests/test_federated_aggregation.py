"""Robust aggregation rules (defenses.federated) and malicious-client updates (attacks.poisoning.federated):
oracles against Flower's own aggregation code, closed forms, robustness bounds, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.poisoning.federated import craft
from gauntlet.attacks.poisoning.federated.alie import alie_z
from gauntlet.defenses.federated import aggregate
from gauntlet.errors import ConfigError, DataError, UnknownNameError

RULES = {"mean": {}, "krum": {"f": 2}, "multi_krum": {"f": 2}, "median": {}, "trimmed_mean": {"beta": 2},
         "bulyan": {"f": 1}, "centered_clipping": {}}


def _stack(n: int = 11, d: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _flower(u: torch.Tensor, w: list[int] | None = None) -> list[tuple[list[np.ndarray], int]]:
    w = w or [1] * u.shape[0]
    # two "layers" per client, so the oracle also exercises Flower's per-layer handling
    return [([row[:15].numpy().copy(), row[15:].numpy().copy()], k) for row, k in zip(u, w)]


def _cat(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([a.ravel() for a in arrays]))


def test_registered_rules_are_the_issues_names_plus_the_two_added_defenses() -> None:
    assert set(gt.defenses.list_defenses("aggregation")) == {
        "mean", "krum", "multi_krum", "median", "trimmed_mean", "bulyan", "centered_clipping", "fltrust"}


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_returns_a_d_vector_and_an_accepted_mask(name: str) -> None:
    u = _stack()
    res = gt.defenses.create(name, **RULES[name]).aggregate(u)
    assert res.update.shape == (u.shape[1],) and res.update.dtype == u.dtype
    assert res.accepted.shape == (u.shape[0],) and res.accepted.dtype == torch.bool and bool(res.accepted.any())
    assert torch.equal(aggregate(name, u, **RULES[name]), res.update)


def test_krum_and_multi_krum_match_flowers_aggregate_krum() -> None:
    from flwr.server.strategy.aggregate import aggregate_krum

    u = _stack(seed=1)
    w = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    ours = aggregate("krum", u, f=2)
    theirs = _cat(aggregate_krum(_flower(u, w), num_malicious=2, to_keep=0))
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    ours = aggregate("multi_krum", u, f=2, m=5, weights=torch.tensor(w, dtype=torch.float64))
    theirs = _cat(aggregate_krum(_flower(u, w), num_malicious=2, to_keep=5))
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [10, 11])
def test_median_matches_flowers_aggregate_median_for_even_and_odd_n(n: int) -> None:
    from flwr.server.strategy.aggregate import aggregate_median

    u = _stack(n=n, seed=2)
    assert torch.allclose(aggregate("median", u), _cat(aggregate_median(_flower(u))), rtol=1e-12, atol=1e-12)


def test_trimmed_mean_beta_counts_clients_and_matches_flowers_fraction() -> None:
    from flwr.server.strategy.aggregate import aggregate_trimmed_avg

    u = _stack(n=10, seed=3)
    ours = aggregate("trimmed_mean", u, beta=2)
    assert torch.allclose(ours, _cat(aggregate_trimmed_avg(_flower(u), 0.2)), rtol=1e-12, atol=1e-12)
    # closed form: one coordinate 0..9 -> drop 0, 1, 8, 9 -> mean of 2..7 = 4.5
    col = torch.arange(10.0)[torch.randperm(10, generator=torch.Generator().manual_seed(0))][:, None]
    assert aggregate("trimmed_mean", col, beta=2).item() == pytest.approx(4.5)


def test_bulyan_matches_flowers_iterative_bulyan() -> None:
    from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

    u = _stack(n=11, seed=4)
    theirs = _cat(aggregate_bulyan(_flower(u), num_malicious=2, aggregation_rule=aggregate_krum, to_keep=0))
    assert torch.allclose(aggregate("bulyan", u, f=2), theirs, rtol=1e-9, atol=1e-12)


def test_weighted_mean_is_fedavg() -> None:
    u = _stack(n=4)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert torch.allclose(aggregate("mean", u, weights=w), (w[:, None] * u).sum(0) / w.sum())


def test_krum_never_selects_a_far_outlier_and_reports_the_others_rejected() -> None:
    u = _stack(n=10, d=20, seed=5)
    u[:2] += 100.0  # two Byzantine clients far away
    res = gt.defenses.create("krum", f=2).aggregate(u)
    assert res.info["selected"][0] >= 2 and res.rejected == [i for i in range(10) if i != res.info["selected"][0]]
    res = gt.defenses.create("multi_krum", f=2).aggregate(u)
    assert res.rejected[:2] == [0, 1] and len(res.rejected) == 2


def test_median_and_trimmed_mean_stay_inside_the_honest_range_per_coordinate() -> None:
    u = _stack(n=10, d=50, seed=6)
    honest = u[2:].clone()
    u[:2] = 1e6
    for name, kw in [("median", {}), ("trimmed_mean", {"beta": 2})]:
        agg = aggregate(name, u, **kw)
        assert bool((agg <= honest.max(0).values + 1e-12).all()) and bool((agg >= honest.min(0).values - 1e-12).all())


def test_centered_clipping_moves_at_most_tau_over_n_per_client_and_iteration() -> None:
    u = torch.zeros(10, 8, dtype=torch.float64)
    u[0] = 1e9  # one Byzantine client, arbitrarily far
    center = torch.zeros(8, dtype=torch.float64)
    out = aggregate("centered_clipping", u, tau=0.5, iters=3, reference=center)
    assert out.norm().item() <= 3 * 0.5 / 10 + 1e-12
    # all honest and inside the radius: one iteration is the plain mean
    h = _stack(n=6, d=8, seed=7) * 0.01
    assert torch.allclose(aggregate("centered_clipping", h, tau=10.0, iters=1), h.mean(0))


def test_fltrust_zeroes_clients_that_point_away_and_caps_the_norm() -> None:
    g0 = torch.ones(6, dtype=torch.float64)
    u = torch.stack([g0 * 2, g0 * 0.5, -g0 * 1e6, g0 * 1e6])
    res = gt.defenses.create("fltrust").aggregate(u, reference=g0)
    assert res.rejected == [2]
    assert res.update.norm().item() == pytest.approx(g0.norm().item())
    assert torch.allclose(res.update, g0)


def test_alie_uses_baruchs_z_and_stays_inside_the_honest_spread() -> None:
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)  # s = 4, Φ⁻¹(0.6)
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)  # s = 14, Φ⁻¹(0.72)
    h = _stack(n=8, d=30, seed=8)
    out = craft("alie", h, n_malicious=2)
    assert out.shape == (2, 30) and torch.equal(out[0], out[1])
    z = alie_z(10, 2)
    assert torch.allclose(out[0], h.mean(0) - z * h.std(0))


def test_ipm_turns_the_inner_product_with_the_honest_mean_negative() -> None:
    h = _stack(n=8, d=30, seed=9) + 1.0
    out = craft("ipm", h, n_malicious=3, eps=0.2)
    assert torch.allclose(out, (-0.2 * h.mean(0)).expand(3, -1))
    mixed = torch.cat([h, out]).mean(0)
    assert float(craft("ipm", h, n_malicious=3, eps=10.0)[0] @ h.mean(0)) < 0
    assert float(torch.cat([h, craft("ipm", h, n_malicious=8, eps=10.0)]).mean(0) @ h.mean(0)) < 0
    assert float(mixed @ h.mean(0)) > 0  # small eps: the mean survives; that is what robust rules then miss


def test_sign_flip_and_scaling_transform_the_clients_own_updates() -> None:
    h = _stack(n=8, d=5, seed=10)
    own = _stack(n=2, d=5, seed=11)
    assert torch.equal(craft("sign_flip", h, n_malicious=2, own=own, scale=3.0), -3.0 * own)
    # model replacement: with the boost n/m, FedAvg's mean is the attacker's update plus the honest ones / n
    boosted = craft("scaling", h, n_malicious=2, own=own.mean(0, keepdim=True).expand(2, -1))
    assert torch.allclose(torch.cat([h, boosted]).mean(0), own.mean(0) + h.sum(0) / 10)
    assert torch.equal(craft("scaling", h, n_malicious=2, own=own, factor=2.0, flip=True), -2.0 * own)


# -- bad input ------------------------------------------------------------------------------------
def test_krum_with_too_few_clients_names_its_bound() -> None:
    with pytest.raises(ConfigError, match=r"krum: 6 client updates are too few for Krum with f=2 \(n > 2f \+ 2\); it needs at least 7"):
        aggregate("krum", _stack(n=6), f=2)
    with pytest.raises(ConfigError, match=r"n >= 4f \+ 3"):
        aggregate("bulyan", _stack(n=10), f=2)
    with pytest.raises(ConfigError, match=r"n > 2·beta"):
        aggregate("trimmed_mean", _stack(n=4), beta=2)


def test_bad_updates_are_one_line_data_errors() -> None:
    u = _stack(n=5)
    u[3, 2] = float("nan")
    with pytest.raises(DataError, match=r"clients \[3\] hold NaN or inf"):
        aggregate("median", u)
    with pytest.raises(DataError, match=r"shape \(n_clients, d\)"):
        aggregate("median", torch.zeros(5))
    with pytest.raises(DataError, match=r"floating point"):
        aggregate("mean", torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(DataError, match=r"weights must be a \(5,\) tensor"):
        aggregate("mean", _stack(n=5), weights=torch.ones(4))
    with pytest.raises(ConfigError, match=r"fltrust: needs reference="):
        aggregate("fltrust", _stack(n=5))


def test_an_unknown_rule_suggests_the_close_name() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'krum'"):
        aggregate("kurm", _stack())
    with pytest.raises(ConfigError, match=r"not an aggregation rule"):
        aggregate("median_filter", _stack())


def test_bad_attack_input_is_named() -> None:
    with pytest.raises(ConfigError, match=r"n_malicious must be an int >= 1"):
        craft("alie", _stack(), n_malicious=0)
    with pytest.raises(DataError, match=r"own must hold one update per malicious client \(2\)"):
        craft("sign_flip", _stack(), n_malicious=2, own=_stack(n=3))
    with pytest.raises(DataError, match=r"NaN or inf"):
        craft("ipm", torch.full((3, 2), math.inf), n_malicious=1)
