"""Poison Frogs feature collision: clean-label poisons that stay near their bases while their
features collide with the target's, deterministic by seed, a victim that retrains its last layer
on them misclassifies the target, and bad input is one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gauntlet as gt
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.features import features

pytestmark = pytest.mark.usefixtures("one_thread")


def retrain_head(model: gt.models.TorchModel, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> torch.nn.Linear:
    """The transfer-learning victim: the surrogate's frozen feature extractor and its last layer
    retrained (full-batch Adam, from the surrogate's weights) on ``(x, y)``."""
    f = features(model, x)
    last = model.module.fc2
    lin = torch.nn.Linear(f.shape[1], 10)
    with torch.no_grad():
        lin.weight.copy_(last.weight)
        lin.bias.copy_(last.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(lin(f), y).backward()
        opt.step()
    return lin


def test_poisons_keep_their_labels_stay_near_their_bases_and_collide_with_the_target_in_feature_space(
    digits_train, digits_test, digits_model
) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[digits_test.y == 3][:2]
    atk = gt.attacks.create("feature_collision", n_poisons=2, target_class=5, max_iter=200, beta=0.25)
    pd = atk.poison(x, y, seed=0, model=digits_model, x_target=xt)
    rows = pd.info["rows"]
    assert rows.shape == (2, 2) and pd.n_poison == 4 and len(pd) == len(y)
    assert torch.equal(pd.y, y) and bool((y[rows.flatten()] == 5).all()), "clean-label: the bases are of target_class, labels unchanged"
    assert torch.equal(pd.x[~pd.is_poison], x[~pd.is_poison]) and bool(pd.is_poison[rows.flatten()].all())
    # feature distance to the target falls by more than 10x
    d0, d1 = pd.info["feature_distance_initial"], pd.info["feature_distance"]
    assert bool((d1 < 0.1 * d0).all()), (d0, d1)
    measured = (features(digits_model, pd.x[rows.flatten()]) - features(digits_model, xt[pd.info["target_index"]])).norm(dim=1)
    assert torch.allclose(measured, d1, rtol=1e-3, atol=1e-4)
    assert float(pd.x.min()) >= 0 and float(pd.x.max()) <= 1


def test_the_proximal_step_keeps_poisons_closer_to_their_bases_as_beta_grows(digits_train, digits_test, digits_model) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[digits_test.y == 3][:3]
    dist = {}
    for beta in (0.0, 4.0, 64.0):
        pd = gt.attacks.create("feature_collision", n_poisons=1, target_class=5, max_iter=150, beta=beta).poison(
            x, y, seed=0, model=digits_model, x_target=xt
        )
        r = pd.info["rows"].flatten()
        dist[beta] = (pd.x[r] - x[r]).flatten(1).norm(dim=1)
    target_to_base = (xt - x[r]).flatten(1).norm(dim=1)
    assert bool((dist[64.0] < dist[4.0]).all()) and bool((dist[4.0] < dist[0.0]).all()), dist
    assert bool((dist[64.0] < 0.6 * target_to_base).all()), "a strong beta keeps the poison much nearer its base than the target"


def test_same_seed_same_poison_other_seed_other_bases_and_add_mode_appends(digits_train, digits_test, digits_model) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[:1]
    atk = gt.attacks.create("feature_collision", n_poisons=3, target_class=1, max_iter=20)
    a = atk.poison(x, y, seed=4, model=digits_model, x_target=xt)
    b = atk.poison(x, y, seed=4, model=digits_model, x_target=xt)
    assert torch.equal(a.x, b.x) and torch.equal(a.is_poison, b.is_poison)
    assert a.info["beta"] == 0.25 * (2048 / 64) ** 2, "the paper's beta0 * 2048^2 / dim_b^2 by default"
    assert not torch.equal(atk.poison(x, y, seed=5, model=digits_model, x_target=xt).is_poison, a.is_poison)
    add = gt.attacks.create("feature_collision", n_poisons=3, target_class=1, max_iter=20, mode="add").poison(
        x, y, seed=4, model=digits_model, x_target=xt
    )
    assert len(add) == len(y) + 3 and torch.equal(add.x[: len(y)], x) and bool(add.is_poison[len(y) :].all())
    assert torch.equal(add.x[len(y) :], a.x[a.info["rows"].flatten()]) and torch.equal(add.y[len(y) :], torch.ones(3, dtype=torch.long))
    # the fraction budget, split over the targets, when n_poisons is not given; closest bases are nearer in feature space
    frac = gt.attacks.create("feature_collision", fraction=0.01, target_class=1, max_iter=1, base_selection="closest")
    pd = frac.poison(x, y, model=digits_model, x_target=digits_test.x[:2])
    assert pd.info["rows"].shape == (2, round(0.01 * len(y)) // 2)
    near = (features(digits_model, x[pd.info["rows"][0]]) - features(digits_model, digits_test.x[:1])).norm(dim=1).max()
    ones = (y == 1).nonzero().flatten()
    assert float(near) <= float((features(digits_model, x[ones]) - features(digits_model, digits_test.x[:1])).norm(dim=1).median())


def test_the_watermark_blends_the_target_into_the_base_the_proximal_step_anchors_to(digits_train, digits_test, digits_model) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[:2]
    # a huge beta pins each poison to its (watermarked) base: b' = 0.7 b + 0.3 t
    pd = gt.attacks.create("feature_collision", n_poisons=2, target_class=4, max_iter=5, beta=1e6, opacity=0.3).poison(
        x, y, seed=0, model=digits_model, x_target=xt
    )
    r = pd.info["rows"].flatten()
    assert torch.allclose(pd.x[r], 0.7 * x[r] + 0.3 * xt[pd.info["target_index"]], atol=1e-3)


def test_a_victim_retraining_its_last_layer_on_the_poison_misclassifies_the_target(digits_train, digits_test, digits_model) -> None:
    x, y = digits_train.x, digits_train.y
    clean = retrain_head(digits_model, x, y)
    xs, ys = digits_test.x, digits_test.y
    pred = clean(features(digits_model, xs)).argmax(1)
    g = torch.Generator().manual_seed(1)
    idx = [i for i in torch.randperm(len(ys), generator=g)[:8].tolist() if int(pred[i]) == int(ys[i])][:6]
    hits = base_hits = 0
    for i in idx:
        tc = int((ys[i] + 1 + torch.randint(9, (1,), generator=g)) % 10)
        atk = gt.attacks.create("feature_collision", n_poisons=10, target_class=tc, max_iter=200, beta=0.25)
        pd = atk.poison(x, y, seed=0, model=digits_model, x_target=xs[i : i + 1])
        hits += int(retrain_head(digits_model, pd.x, pd.y)(features(digits_model, xs[i : i + 1])).argmax()) == tc
        # the same ten base images, unperturbed, added once more: no collision, no harm
        r = pd.info["rows"].flatten()
        xb, yb = torch.cat([x, x[r]]), torch.cat([y, y[r]])
        base_hits += int(retrain_head(digits_model, xb, yb)(features(digits_model, xs[i : i + 1])).argmax()) == tc
    # measured: 6 of 6 targets with 10 poisons each; the unperturbed bases: 0 of 6
    assert len(idx) == 6 and hits >= 4 and base_hits == 0, (hits, base_hits)


@pytest.mark.parametrize(
    ("params", "call", "error", "match"),
    [
        ({"opacity": 1.0}, None, ConfigError, "parameter 'opacity'"),
        ({"learning_rate": 0.0}, None, ConfigError, "parameter 'learning_rate'"),
        ({"n_poisons": 0}, None, ConfigError, "parameter 'n_poisons'"),
        ({"layer": ""}, None, ConfigError, "parameter 'layer'"),
        ({}, "no_target", ConfigError, "needs the attacker's target inputs"),
        ({}, "no_model", ConfigError, "needs the victim's or a surrogate model"),
        ({}, "shape", DataError, "x_target has per-sample shape"),
        ({}, "not_torch", CapabilityError, "must be a gauntlet TorchModel"),
        ({"n_poisons": 500}, "poison", DataError, "need 500 training images of target_class 0"),
        ({"layer": "fc9"}, "poison", ConfigError, "no submodule named 'fc9'"),
        ({"target_class": 10}, "poison", DataError, "target_class 10 does not exist"),
    ],
)
def test_bad_input_is_one_line(digits_train, digits_test, digits_model, params, call, error, match) -> None:
    x, y = digits_train.x, digits_train.y
    xt = digits_test.x[:1]
    with pytest.raises(error, match=match) as info:
        atk = gt.attacks.create("feature_collision", max_iter=1, **params)
        if call == "poison":
            atk.poison(x, y, model=digits_model, x_target=xt)
        elif call == "no_target":
            atk.poison(x, y, model=digits_model)
        elif call == "no_model":
            atk.poison(x, y, x_target=xt)
        elif call == "shape":
            atk.poison(x, y, model=digits_model, x_target=xt[:, :, :4])
        elif call == "not_torch":
            atk.poison(x, y, model=digits_model.module, x_target=xt)
    assert "\n" not in str(info.value)
