"""The contract every registered poisoning attack keeps, whatever it does: it returns a
PoisonedDataset whose mask counts exactly the poison rows it changed or added, inside the bounds,
with clean rows untouched and labels valid; it never modifies the caller's tensors or global RNG;
it is deterministic given the seed; and its success measure is a share in [0, 1] (its ``goal``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.poisoning import BackdoorAttack, PoisonedDataset
from gauntlet.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

POISONING = gt.attacks.list_attacks("poisoning")

#: small settings so every attack runs in a second on 300 digits (the methods' own tests pin strength)
FAST: dict[str, dict[str, Any]] = {
    "availability": {"steps": 2, "inner_steps": 2, "batch_size": None},
    "clean_label_backdoor": {"steps": 2},
    "feature_collision": {"max_iter": 5, "n_poisons": 2},
    "gradient_matching": {"steps": 2, "restarts": 1, "n_poisons": 2},
    "label_flip": {},
}


def test_every_poisoning_attack_is_covered_here() -> None:
    assert {"badnets", "blended", "clean_label_backdoor", "label_flip", "availability", "feature_collision", "gradient_matching"} <= set(POISONING)


def _run(name: str, digits_train, digits_model, seed: int = 0) -> tuple[Any, PoisonedDataset, torch.Tensor, torch.Tensor]:
    x, y = digits_train.x[:300], digits_train.y[:300]
    atk = gt.attacks.create(name, fraction=0.05, **FAST.get(name, {}))
    kwargs: dict[str, Any] = {"seed": seed}
    if atk.needs_model:
        kwargs["model"] = digits_model
    if atk.needs_target:
        tc = int(getattr(atk, "target_class", 0) or 0)
        kwargs["x_target"] = digits_train.x[300:][digits_train.y[300:] != tc][:1]
    return atk, atk.poison(x, y, **kwargs), x, y


@pytest.mark.parametrize("name", POISONING)
def test_the_mask_counts_exactly_the_rows_that_changed_and_everything_stays_valid(name, digits_train, digits_model) -> None:
    x_before, y_before = digits_train.x[:300].clone(), digits_train.y[:300].clone()
    rng = torch.get_rng_state()
    atk, pd, x, y = _run(name, digits_train, digits_model)
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "poison must not modify the caller's tensors"
    assert torch.equal(torch.get_rng_state(), rng), "poison must not touch the global RNG"
    assert isinstance(pd, PoisonedDataset) and pd.attack == name and pd.params == atk.get_params()
    n = x.shape[0]
    assert pd.is_poison.dtype == torch.bool and pd.is_poison.shape == (len(pd),) and pd.x.shape[1:] == x.shape[1:]
    assert 1 <= pd.n_poison <= max(1, round(0.05 * n)) + 2 and len(pd) >= n
    assert float(pd.x.min()) >= 0.0 and float(pd.x.max()) <= 1.0 and bool(torch.isfinite(pd.x).all())
    assert pd.y.dtype == torch.int64 and int(pd.y.min()) >= 0 and int(pd.y.max()) <= 9
    # rows [0, n) are the training rows; poison there may differ from them, clean ones may not
    base = ~pd.is_poison[:n]
    assert torch.equal(pd.x[:n][base], x[base]) and torch.equal(pd.y[:n][base], y[base])
    changed = (pd.x[:n] != x).flatten(1).any(dim=1) | (pd.y[:n] != y)
    assert not bool((changed & ~pd.is_poison[:n]).any())
    assert bool(pd.is_poison[n:].all()), "rows an attack inserts are poison"
    assert atk.goal in ("backdoor", "targeted", "availability")
    assert atk.goal != "backdoor" or isinstance(atk, BackdoorAttack)


@pytest.mark.parametrize("name", POISONING)
def test_the_same_seed_gives_the_same_poison(name, digits_train, digits_model) -> None:
    _, a, _, _ = _run(name, digits_train, digits_model, seed=3)
    _, b, _, _ = _run(name, digits_train, digits_model, seed=3)
    assert torch.equal(a.is_poison, b.is_poison) and torch.equal(a.y, b.y)
    assert torch.allclose(a.x, b.x, atol=1e-6)


@pytest.mark.parametrize("name", POISONING)
def test_success_is_a_share_and_bad_budgets_are_refused(name, digits_train, digits_test, digits_model) -> None:
    atk, pd, _, _ = _run(name, digits_train, digits_model)
    v = atk.success_rate(digits_model, digits_test.x[:100], digits_test.y[:100], pd)
    assert 0.0 <= v <= 1.0
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="fraction") as info:
            gt.attacks.create(name, fraction=bad)
        assert "\n" not in str(info.value)
