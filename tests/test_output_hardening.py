"""Output hardening (top_k, rounding, labels_only, output_noise): what the hardened API releases,
that the label never changes, that it is a black box, and the errors on bad use."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.defenses.privacy import HardenedModel
from gauntlet.errors import CapabilityError, ConfigError

NAMES = ("top_k", "rounding", "labels_only", "output_noise")


def _probs(model: gt.models.Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model.scores(x, count=False), dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_every_hardening_keeps_the_label_of_every_input(name, digits_model, digits_test) -> None:
    x = digits_test.x[:200]
    hardened = gt.defenses.create(name).wrap(digits_model, seed=0)
    assert isinstance(hardened, HardenedModel)
    assert torch.equal(hardened.predict(x), digits_model.predict(x, count=False))


@pytest.mark.parametrize("name", NAMES)
def test_a_hardened_model_is_a_black_box_that_counts_its_queries(name, digits_model, digits_test) -> None:
    hardened = gt.defenses.create(name).wrap(digits_model)
    assert not hardened.has("gradients")
    hardened.predict(digits_test.x[:7])
    assert hardened.queries == 7 and digits_model.queries == 7


def test_top_k_releases_exactly_the_k_largest_probabilities(digits_model, digits_test) -> None:
    x = digits_test.x[:50]
    p = _probs(digits_model, x)
    out = gt.defenses.create("top_k", k=3).wrap(digits_model).scores(x)
    assert ((out > 0).sum(dim=1) <= 3).all()
    kept = p.topk(3, dim=1)
    assert torch.allclose(out.gather(1, kept.indices), kept.values)
    renorm = gt.defenses.create("top_k", k=3, renormalize=True).wrap(digits_model).scores(x)
    assert torch.allclose(renorm.sum(dim=1), torch.ones(50, dtype=renorm.dtype), atol=1e-6)


def test_rounding_releases_values_on_the_decimal_grid_within_half_a_step(digits_model, digits_test) -> None:
    x = digits_test.x[:100]
    p = _probs(digits_model, x).double()
    out = gt.defenses.create("rounding", decimals=2).wrap(digits_model).scores(x).double()
    assert torch.allclose(out * 100, torch.round(out * 100), atol=1e-4)
    assert (out - p).abs().max() <= 0.01 + 1e-6  # the label's value is rounded up, the rest to nearest


def test_rounding_to_zero_decimals_still_keeps_the_label_on_near_ties() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.34, 0.33, 0.33], [0.2, 0.41, 0.39]])
    out = gt.defenses.create("rounding", decimals=0).release(probs, torch.Generator())
    assert torch.equal(out.argmax(dim=1), probs.argmax(dim=1))
    assert (out.argmax(dim=1, keepdim=True) == probs.argmax(dim=1, keepdim=True)).all()
    assert ((out == out.max(dim=1, keepdim=True).values).sum(dim=1) == 1).all()  # no tie for the top


def test_labels_only_refuses_scores_and_names_decision_based_attacks(digits_model, digits_test) -> None:
    hardened = gt.defenses.create("labels_only").wrap(digits_model)
    assert hardened.capabilities == frozenset({"labels"})
    with pytest.raises(CapabilityError, match="labels only"):
        hardened.scores(digits_test.x[:2])


def test_output_noise_perturbs_confidences_differently_per_query_and_reproducibly_per_seed(digits_model, digits_test) -> None:
    x = digits_test.x[:100]
    p = _probs(digits_model, x)
    defense = gt.defenses.create("output_noise", sigma=0.5)
    a = defense.wrap(digits_model, seed=3)
    first, second = a.scores(x), a.scores(x)
    assert not torch.allclose(first, second)                          # fresh noise per query
    assert torch.allclose(defense.wrap(digits_model, seed=3).scores(x), first)  # same seed, same answers
    assert torch.allclose(first.sum(dim=1), torch.ones(100), atol=1e-5)
    assert (first - p).abs().mean() > 1e-3
    lap = gt.defenses.create("output_noise", sigma=0.5, distribution="laplace").wrap(digits_model).scores(x)
    assert torch.equal(lap.argmax(dim=1), p.argmax(dim=1))


def test_output_defenses_refuse_bad_parameters_and_labels_only_models_in_one_line(digits_model) -> None:
    with pytest.raises(ConfigError, match="'k'"):
        gt.defenses.create("top_k", k=0)
    with pytest.raises(ConfigError, match="'decimals'"):
        gt.defenses.create("rounding", decimals=-1)
    with pytest.raises(ConfigError, match="'distribution'"):
        gt.defenses.create("output_noise", distribution="uniform")
    labels_only = gt.defenses.create("labels_only").wrap(digits_model)
    with pytest.raises(CapabilityError, match="no scores to harden"):
        gt.defenses.create("rounding").wrap(labels_only)
    with pytest.raises(ConfigError, match="gauntlet Model"):
        gt.defenses.create("top_k").wrap(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_output_kinds_are_listed_by_kind() -> None:
    assert set(gt.defenses.list_defenses("output")) == set(NAMES)
    assert gt.defenses.list_defenses("monitor") == ["prada"]
