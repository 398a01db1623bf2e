"""Label-only membership inference (Choquette-Choo et al. 2021) through labels-only targets:
augmentation consistency (shares, exact query counts, the translations themselves) and the
HopSkipJump boundary distance, and the refusal of score-based attacks on such targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.attacks.inference.label_only import translate
from gauntlet.errors import CapabilityError, ConfigError, DataError

RECIPE = {"method": "standard", "epochs": 40, "batch_size": 64, "lr": 3e-3}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def overfit(digits_train):
    """An MLP trained to 100% on 200 digits (members) and 200 held-out digits (non-members)."""
    x, y = digits_train.x, digits_train.y
    members, nonmembers = (x[:200], y[:200]), (x[200:400], y[200:400])
    net = gt.models.torch_model.reinitialise(mlp(), 7)
    gt.defenses.training.train(net, *members, seed=7, progress=False, **RECIPE)
    model = gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    return model, members, nonmembers


def test_translate_moves_pads_rolls_and_mirrors_each_image_on_its_own() -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(2, 1, 3, 4)
    dy, dx, flip = torch.tensor([1, 0]), torch.tensor([0, -1]), torch.tensor([False, True])
    padded = translate(x, dy, dx, flip, roll=False, fill=-1.0)
    assert torch.equal(padded[0, 0, 0], torch.full((4,), -1.0)) and torch.equal(padded[0, 0, 1:], x[0, 0, :2])
    # mirrored, then moved one column left: the mirror's columns 1..3, then the fill
    assert torch.equal(padded[1, 0], torch.cat([x[1, 0].flip(-1)[:, 1:], torch.full((3, 1), -1.0)], dim=1))
    rolled = translate(x, dy, dx, flip, roll=True, fill=-1.0)
    assert torch.equal(rolled[0], torch.roll(x[0], 1, dims=-2))
    assert torch.equal(rolled[1], torch.roll(x[1].flip(-1), -1, dims=-1))
    same = translate(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool), roll=False, fill=0.0)
    assert torch.equal(same, x)


def test_augmentation_scores_are_shares_with_n_times_augmentations_queries(overfit) -> None:
    model, members, nonmembers = overfit
    labels_only = gt.defenses.create("labels_only").wrap(model)
    res = gt.attacks.create("label_only", augmentations=6, shift=1).run(labels_only, members=members, nonmembers=nonmembers, seed=0)
    assert res.queries == 400 * 6
    assert ((res.scores >= 0) & (res.scores <= 1)).all()
    assert torch.allclose(res.scores * 6, (res.scores * 6).round(), atol=1e-9)  # k of 6 answers right
    assert res.info == {"method": "augmentation", "augmentations": 6}
    again = gt.attacks.create("label_only", augmentations=6, shift=1).run(labels_only, members=members, nonmembers=nonmembers, seed=0)
    assert torch.equal(again.scores, res.scores)  # seeded
    # the first query is the candidate itself: without any shift, or with one query only, the
    # score is 1 iff the candidate is labelled right (the gap attack)
    x, y = torch.cat([members[0], nonmembers[0]]), torch.cat([members[1], nonmembers[1]])
    right = (model.predict(x, count=False) == y).double()
    plain = gt.attacks.create("label_only", augmentations=3, shift=0).run(labels_only, members=members, nonmembers=nonmembers)
    assert torch.equal(plain.scores, right)
    gap = gt.attacks.create("label_only", augmentations=1, shift=3).run(labels_only, members=members, nonmembers=nonmembers)
    assert torch.equal(gap.scores, right) and gap.queries == 400
    # shifted queries lose some labels: the scores are no longer only 0 or 1
    assert ((res.scores > 0) & (res.scores < 1)).any() and (res.scores <= right + 5 / 6 + 1e-9).all()
    # a CallableModel that answers labels only; flips and wrap-around translations too
    fn = gt.models.CallableModel(lambda t: model.predict(t, count=False), output="labels", num_classes=10, bounds=(0.0, 1.0))
    flipped = gt.attacks.create("label_only", augmentations=4, flip=True, mode="roll").run(fn, members=members, nonmembers=nonmembers, seed=1)
    assert flipped.queries == 400 * 4 and ((flipped.scores >= 0) & (flipped.scores <= 1)).all()


def test_boundary_distances_come_from_hopskipjump_and_are_zero_when_misclassified(overfit) -> None:
    model, members, nonmembers = overfit
    members, nonmembers = (members[0][:40], members[1][:40]), (nonmembers[0][:40], nonmembers[1][:40])
    labels_only = gt.defenses.create("labels_only").wrap(model)
    res = gt.attacks.create("label_only", method="boundary", max_queries=60).run(labels_only, members=members, nonmembers=nonmembers, seed=0)
    x, y = torch.cat([members[0], nonmembers[0]]), torch.cat([members[1], nonmembers[1]])
    right = model.predict(x, count=False) == y
    assert (res.scores >= 0).all()
    assert (res.scores[~right] == 0).all() and (res.scores[right] > 0).all()
    assert res.info["correct"] == int(right.sum())
    # N label queries, then at most max_queries per correctly classified candidate
    assert 80 < res.queries <= 80 + 60 * int(right.sum())
    # the distances are those of HopSkipJump's adversarial points (it found one for each here)
    assert res.info["no_adversarial_found"] == 0
    hsj = gt.attacks.create("hopskipjump", norm="l2", max_queries=60).run(model, x[right], y[right], seed=0)
    assert torch.allclose(res.scores[right], hsj.norms.double(), rtol=1e-4)


def test_label_only_refuses_bad_use_and_score_attacks_point_to_it(overfit) -> None:
    model, members, nonmembers = overfit
    labels_only = gt.defenses.create("labels_only").wrap(model)
    with pytest.raises(CapabilityError, match="'label_only'"):
        gt.attacks.create("loss_threshold").run(labels_only, members=members, nonmembers=nonmembers)
    with pytest.raises(ConfigError, match="method"):
        gt.attacks.create("label_only", method="gap")
    with pytest.raises(ConfigError, match="augmentations"):
        gt.attacks.create("label_only", augmentations=0)
    with pytest.raises(ConfigError, match="shift"):
        gt.attacks.create("label_only", shift=-1)
    with pytest.raises(ConfigError, match="max_queries"):
        gt.attacks.create("label_only", method="boundary", max_queries=0)
    flat = gt.models.CallableModel(lambda t: model.predict(t.reshape(-1, 1, 8, 8), count=False), output="labels", num_classes=10, bounds=(0.0, 1.0))
    with pytest.raises(DataError, match="method='boundary'"):
        gt.attacks.create("label_only").run(
            flat, members=(members[0].reshape(-1, 64), members[1]), nonmembers=(nonmembers[0].reshape(-1, 64), nonmembers[1])
        )
