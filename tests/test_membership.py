"""Membership inference: the result's metrics against closed forms, what each attack scores,
the reference-model design and cache (resume, reuse), and the errors on bad use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gauntlet as gt
from gauntlet.attacks.inference import MembershipResult, ReferenceModels
from gauntlet.errors import CapabilityError, ConfigError, DataError

RECIPE = {"method": "standard", "epochs": 40, "batch_size": 64, "lr": 3e-3}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def overfit(digits_train, tmp_path_factory):
    """An MLP trained to 100% on 200 digits (members) and 200 held-out digits (non-members)."""
    x, y = digits_train.x, digits_train.y
    members, nonmembers = (x[:200], y[:200]), (x[200:400], y[200:400])
    population = (x[400:800], y[400:800])
    net = gt.models.torch_model.reinitialise(mlp(), 7)
    gt.defenses.training.train(net, *members, seed=7, progress=False, **RECIPE)
    model = gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    return model, members, nonmembers, population, tmp_path_factory.mktemp("membership-cache")


def _result(scores, truth) -> MembershipResult:
    return MembershipResult(scores=torch.tensor(scores, dtype=torch.float64), is_member=torch.tensor(truth), attack="x")


def test_metrics_match_closed_forms_on_known_scores() -> None:
    perfect = _result([3.0, 2.0, 1.0, 0.0], [True, True, False, False])
    assert perfect.auc == 1.0 and perfect.tpr_at(0.0) == 1.0 and perfect.balanced_accuracy == 1.0
    # one member below one non-member: 3 of 4 member/non-member pairs ordered right
    mixed = _result([3.0, 1.0, 2.0, 0.0], [True, True, False, False])
    assert mixed.auc == pytest.approx(0.75)
    assert mixed.tpr_at(0.0) == 0.5 and mixed.tpr_at(0.5) == 1.0
    assert mixed.balanced_accuracy == pytest.approx(0.75)
    fpr, tpr = mixed.roc()
    assert fpr[0] == 0 and tpr[-1] == 1 and (fpr[1:] >= fpr[:-1]).all()
    with pytest.raises(ConfigError, match="fpr"):
        mixed.tpr_at(2)


def test_loss_threshold_scores_are_the_negative_loss_with_one_query_each(overfit) -> None:
    model, members, nonmembers, _, _ = overfit
    res = gt.attacks.create("loss_threshold").run(model, members=members, nonmembers=nonmembers)
    x, y = torch.cat([members[0], nonmembers[0]]), torch.cat([members[1], nonmembers[1]])
    with torch.no_grad():
        expect = -F.cross_entropy(model.scores(x, count=False).double(), y, reduction="none")
    assert torch.allclose(res.scores, expect, atol=1e-9)
    assert res.queries == 400 and res.is_member.sum() == 200
    assert res.auc > 0.55  # the model is overfit: members have lower loss


def test_confidence_threshold_of_max_needs_no_label_and_of_label_ranks_like_the_loss(overfit) -> None:
    model, members, nonmembers, _, _ = overfit
    by_label = gt.attacks.create("confidence_threshold").run(model, members=members, nonmembers=nonmembers)
    loss = gt.attacks.create("loss_threshold").run(model, members=members, nonmembers=nonmembers)
    assert by_label.auc == pytest.approx(loss.auc, abs=1e-6)  # p_y = exp(-loss): same ranking
    top = gt.attacks.create("confidence_threshold", of="max").run(model, members=members, nonmembers=nonmembers)
    assert ((top.scores > 0) & (top.scores <= 1)).all()


def test_the_reference_design_puts_every_candidate_in_exactly_half_the_models() -> None:
    refs = ReferenceModels(mlp(), 6, RECIPE, bounds=(0.0, 1.0), num_classes=10, cache_dir=None)  # type: ignore[arg-type]
    masks = refs.design(50, torch.Generator().manual_seed(0))
    assert masks.shape == (6, 50) and (masks.sum(dim=0) == 3).all()
    other = refs.design(50, torch.Generator().manual_seed(1))
    assert not torch.equal(masks, other)


def test_lira_online_beats_the_loss_threshold_on_an_overfit_model_and_reuses_its_cache(overfit) -> None:
    model, members, nonmembers, _, cache = overfit
    lira = gt.attacks.create("lira", reference_models=8, architecture=mlp(), train=RECIPE, cache_dir=cache)
    res = lira.run(model, members=members, nonmembers=nonmembers, seed=0)
    loss = gt.attacks.create("loss_threshold").run(model, members=members, nonmembers=nonmembers)
    assert res.auc > loss.auc + 0.03
    assert res.info["reference_models"] == 8 and res.info["global_variance"]
    ckpts = sorted(cache.rglob("ref_*.pt"))
    assert len(ckpts) == 8
    # a finished cache is loaded, not retrained: the same scores, and the files untouched
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    again = lira.run(model, members=members, nonmembers=nonmembers, seed=0)
    assert torch.equal(again.scores, res.scores)
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps


def test_reference_training_interrupted_resumes_and_gives_the_same_attack(overfit, tmp_path) -> None:
    model, members, nonmembers, _, _ = overfit
    lira = gt.attacks.create("lira", reference_models=2, online=False, architecture=mlp(), train=RECIPE, cache_dir=tmp_path)
    first = lira.run(model, members=members, nonmembers=nonmembers, seed=3)
    victim = sorted(tmp_path.rglob("ref_1.pt"))[0]
    victim.unlink()  # as if the run had died before this model finished
    second = lira.run(model, members=members, nonmembers=nonmembers, seed=3)
    assert victim.exists()
    assert torch.allclose(second.scores, first.scores, atol=1e-9)


def test_rmia_uses_population_points_and_scores_in_the_unit_interval(overfit) -> None:
    model, members, nonmembers, population, cache = overfit
    res = gt.attacks.create("rmia", reference_models=2, architecture=mlp(), train=RECIPE, cache_dir=cache).run(
        model, members=members, nonmembers=nonmembers, population=population, seed=0
    )
    assert res.info["population_points"] == 400
    assert ((res.scores > -1e-6) & (res.scores < 1 + 1e-6)).all()
    assert res.auc > 0.55


def test_membership_attacks_refuse_bad_use_in_one_line(overfit, digits_test) -> None:
    model, members, nonmembers, _, cache = overfit
    labels_only = gt.defenses.create("labels_only").wrap(model)
    with pytest.raises(CapabilityError, match="'label_only'"):
        gt.attacks.create("loss_threshold").run(labels_only, members=members, nonmembers=nonmembers)
    with pytest.raises(ConfigError, match="reference_models"):
        gt.attacks.create("lira", reference_models=1)
    with pytest.raises(ConfigError, match="even"):
        gt.attacks.create("lira", reference_models=3)
    with pytest.raises(DataError, match="labels of shape"):
        gt.attacks.create("loss_threshold").run(model, members=(members[0], members[1][:5]), nonmembers=nonmembers)
    with pytest.raises(DataError, match="per-sample shape"):
        gt.attacks.create("loss_threshold").run(model, members=(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64)), nonmembers=nonmembers)
    with pytest.raises(ConfigError, match="population"):
        gt.attacks.create("rmia", architecture=mlp(), cache_dir=cache).run(model, members=members, nonmembers=nonmembers)
    callable_model = gt.models.CallableModel(lambda x: model.scores(x, count=False), output="logits", num_classes=10)
    with pytest.raises(ConfigError, match="architecture="):
        gt.attacks.create("lira", cache_dir=cache).run(callable_model, members=members, nonmembers=nonmembers)
    with pytest.raises(DataError, match="outside the model's bounds"):
        gt.attacks.create("loss_threshold").run(model, members=(members[0] + 2, members[1]), nonmembers=nonmembers)
