"""Shilling attacks on the matrix-factorisation recommender and the fake-profile detector."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.errors import ConfigError, DataError
from gauntlet.learning.recommender import MatrixFactorization, Ratings, prediction_shift, synthetic_ratings

torch.set_num_threads(1)
ATTACKS = ["random_shilling", "average_shilling", "bandwagon_shilling", "optimized_shilling"]


@pytest.fixture(scope="module")
def data() -> Ratings:
    return synthetic_ratings(n_users=300, n_items=150, mean_activity=20.0, seed=3)


@pytest.fixture(scope="module")
def target(data: Ratings) -> int:
    c = data.item_counts()
    return int(torch.nonzero((c >= 3) & (c <= 8)).flatten()[0])


def test_synthetic_ratings_are_seeded_long_tailed_and_in_range(data: Ratings) -> None:
    again = synthetic_ratings(n_users=300, n_items=150, mean_activity=20.0, seed=3)
    assert torch.equal(data.users, again.users) and torch.equal(data.ratings, again.ratings)
    assert float(data.ratings.min()) >= 1 and float(data.ratings.max()) <= 5
    c = data.item_counts().sort(descending=True).values.double()
    assert float(c[:15].sum() / c.sum()) > 0.25  # the 10% most popular items hold over a quarter of the ratings


def test_top_k_never_recommends_rated_items(data: Ratings) -> None:
    mf = MatrixFactorization(epochs=20).fit(data)
    top = mf.top_k(10)
    assert not bool(data.rated().gather(1, top).any())


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_appends_push_profiles_with_a_fake_mask(name: str, data: Ratings, target: int) -> None:
    extra = {"surrogate_epochs": 20} if name == "optimized_shilling" else {}
    res = gt.attacks.create(name, n_fake=6, filler_size=0.1, target_item=target, **extra).inject(data)
    assert res.n_fake == 6 and res.poisoned.n_users == data.n_users + 6 and res.is_fake[data.n_users :].all()
    assert len(res.poisoned) == len(data) + 6 * (1 + 15)
    on_target = res.fake_items == target
    assert int(on_target.sum()) == 6 and bool((res.fake_ratings[on_target] == 5).all())
    again = gt.attacks.create(name, n_fake=6, filler_size=0.1, target_item=target, **extra).inject(data)
    assert torch.equal(res.fake_items, again.fake_items) and torch.equal(res.fake_ratings, again.fake_ratings)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["average_shilling", "optimized_shilling"])
def test_attack_raises_the_target_prediction_and_hit_ratio(name: str, data: Ratings, target: int) -> None:
    genuine = torch.arange(data.n_users)
    before = MatrixFactorization(epochs=80).fit(data)
    res = gt.attacks.create(name, fraction=0.05, filler_size=0.1, target_item=target).inject(data)
    after = MatrixFactorization(epochs=80).fit(res.poisoned)
    assert prediction_shift(before, after, target, genuine) > 0.2
    assert after.hit_ratio_at(10, target, genuine) > before.hit_ratio_at(10, target, genuine)


@pytest.mark.slow
def test_detector_finds_average_attack_profiles_within_the_budget(data: Ratings, target: int) -> None:
    det = gt.defenses.create("fake_profiles", sim_rounds=1).fit(data)
    res = gt.attacks.create("average_shilling", fraction=0.03, filler_size=0.1, target_item=target, seed=5).inject(data)
    out = det.detect(res.poisoned, is_fake=res.is_fake)
    assert out.info["recall"] >= 0.6 and out.info["fpr"] <= 0.1
    assert out.flagged.shape == (res.poisoned.n_users,) and out.precision_recall(res.is_fake)["recall"] == out.info["recall"]


def test_attack_without_target_is_a_config_error(data: Ratings) -> None:
    with pytest.raises(ConfigError, match="target_item"):
        gt.attacks.create("random_shilling").inject(data)


def test_target_out_of_range_is_a_config_error(data: Ratings) -> None:
    with pytest.raises(ConfigError, match="target_item"):
        gt.attacks.create("random_shilling", target_item=10_000).inject(data)


@pytest.mark.parametrize("params", [{"fraction": 0.0}, {"fraction": 1.5}, {"filler_size": 0.0}, {"n_fake": 0}])
def test_bad_budget_is_a_config_error(params: dict) -> None:
    with pytest.raises(ConfigError):
        gt.attacks.create("average_shilling", **params)


def test_inject_into_non_ratings_is_a_data_error() -> None:
    with pytest.raises(DataError, match="Ratings"):
        gt.attacks.create("random_shilling", target_item=0).inject(torch.zeros(3, 3))


def test_ratings_outside_one_to_five_are_a_data_error() -> None:
    with pytest.raises(DataError, match=r"\[1, 5\]"):
        Ratings(torch.tensor([0]), torch.tensor([0]), torch.tensor([7.0]), 1, 1)


def test_detect_before_fit_is_a_config_error(data: Ratings) -> None:
    with pytest.raises(ConfigError, match="fit"):
        gt.defenses.create("fake_profiles").detect(data)


def test_detector_rejects_a_mask_of_the_wrong_shape(data: Ratings) -> None:
    det = gt.defenses.create("fake_profiles")
    det.classifier_, det.threshold_ = None, 0.5  # the shape check comes before any scoring
    with pytest.raises(DataError, match="is_fake"):
        det.detect(data, is_fake=torch.zeros(3, dtype=torch.bool))
