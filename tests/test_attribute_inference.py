"""Attribute inference (Fredrikson et al. 2014 / Yeom et al. 2018) on seeded synthetic tabular data."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.inference.attribute_inference import AttributeInference, AttributeResult
from gauntlet.errors import CapabilityError, ConfigError, DataError

D = 7  # column 0: the sensitive binary attribute; columns 1-6: public features
BOUNDS = (-8.0, 8.0)


def synthetic(n: int, seed: int, p_sensitive: float = 0.3, flip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Records whose binary sensitive column 0 changes the label: it flips the sign of feature 5's
    effect and shifts the logit, and feature 1 is mildly correlated with it; 20% of the labels are
    flipped, so an overfit model has to memorise its members."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(n, generator=g) < p_sensitive).double()
    z = torch.randn(n, D - 1, generator=g, dtype=torch.float64)
    z[:, 0] += 0.8 * s
    logit = 1.2 * z[:, 1] - z[:, 2] + 0.5 * z[:, 3] + 2.5 * (2 * s - 1) * z[:, 4] + s
    y = (logit + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    noisy = torch.rand(n, generator=g) < flip
    y[noisy] = 1 - y[noisy]
    return torch.cat([s[:, None], z], dim=1).clamp(*BOUNDS).float(), y


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"members": synthetic(300, 0), "nonmembers": synthetic(300, 1), "attacker": synthetic(300, 2)}


@pytest.fixture(scope="module")
def overfit(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> gt.models.SklearnModel:
    """A random forest without bootstrap: every tree fits every member (100% training accuracy)."""
    from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-untyped]

    x, y = data["members"]
    forest = RandomForestClassifier(n_estimators=50, bootstrap=False, max_features=0.5, random_state=0)
    forest.fit(x.numpy(), y.numpy())
    assert forest.score(x.numpy(), y.numpy()) == 1.0
    return gt.models.SklearnModel(forest, bounds=BOUNDS, input_shape=(D,), num_classes=2)


def test_registered() -> None:
    atk = gt.attacks.create("attribute_inference", prior=True)
    assert isinstance(atk, AttributeInference)
    assert atk.kind == "inference" and atk.needs == "scores"
    assert "Fredrikson" in atk.reference and "Yeom" in atk.reference
    assert not hasattr(atk, "needs_population")  # the audit's privacy block takes membership attacks only


def test_beats_the_prior_only_baseline_on_members(overfit: gt.models.SklearnModel, data: dict) -> None:
    x, y = data["members"]
    res = AttributeInference().run(overfit, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=data["attacker"])
    assert isinstance(res, AttributeResult)
    assert res.queries == 2 * len(y)
    truth = x[:, 0]
    # the majority baseline predicts "0" (70% of records) for everyone
    assert torch.equal(res.baseline_predicted, torch.zeros(len(y)))
    assert res.baseline_accuracy == pytest.approx(float((truth == 0).double().mean()))
    assert 0.6 < res.baseline_accuracy < 0.8
    assert res.accuracy() >= res.baseline_accuracy + 0.15
    assert res.accuracy(truth) == res.accuracy()
    # non-members leak much less: the gap is the model's memory of its members
    xo, yo = data["nonmembers"]
    out = AttributeInference().run(overfit, x=xo, y=yo, column=0, values=[0.0, 1.0], baseline_data=data["attacker"])
    assert out.accuracy() < res.accuracy() - 0.15


def test_predictions_follow_the_scores(overfit: gt.models.SklearnModel, data: dict) -> None:
    x, y = data["members"]
    res = AttributeInference().run(overfit, x=x[:20], y=y[:20], column=0, values=[0.0, 1.0])
    # recompute log p_y of each completion by hand
    for v_index, v in enumerate((0.0, 1.0)):
        xv = x[:20].clone()
        xv[:, 0] = v
        p = overfit.scores(xv, count=False).double().gather(1, y[:20, None]).squeeze(1)
        torch.testing.assert_close(res.scores[:, v_index].exp(), p, atol=1e-6, rtol=0)  # float32 scores, renormalised
    best = res.scores.max(dim=1).values
    assert torch.equal(res.scores.gather(1, res.predicted_index[:, None]).squeeze(1), best)
    assert torch.equal(res.predicted, res.values[res.predicted_index].float())
    with pytest.raises(ConfigError, match="baseline_data"):
        _ = res.baseline_accuracy


def test_prior_weights_the_scores(overfit: gt.models.SklearnModel, data: dict) -> None:
    x, y = data["members"]
    plain = AttributeInference().run(overfit, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=data["attacker"])
    mapped = AttributeInference(prior=True).run(overfit, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=data["attacker"])
    prior = torch.tensor(mapped.info["prior"], dtype=torch.float64)
    assert prior[0] > prior[1] and float(prior.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(mapped.scores, plain.scores + prior.log()[None, :])
    assert int((mapped.predicted == 0).sum()) >= int((plain.predicted == 0).sum())
    with pytest.raises(ConfigError, match="baseline_data"):
        AttributeInference(prior=True).run(overfit, x=x, y=y, column=0, values=[0.0, 1.0])


def test_classifier_baseline_uses_the_other_columns(overfit: gt.models.SklearnModel, data: dict) -> None:
    x, y = data["nonmembers"]
    res = AttributeInference(baseline="classifier").run(overfit, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=data["attacker"], seed=0)
    assert res.baseline_predicted is not None and set(res.baseline_predicted.unique().tolist()) <= {0.0, 1.0}
    # column 1 is correlated with the sensitive value, so the classifier does at least as well as the majority
    majority = float((x[:, 0] == 0).double().mean())
    assert res.baseline_accuracy >= majority - 0.02
    again = AttributeInference(baseline="classifier").run(overfit, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=data["attacker"], seed=0)
    assert torch.equal(res.baseline_predicted, again.baseline_predicted)


def test_scores_only_needed(data: dict) -> None:
    x, y = data["members"]
    labels_only = gt.models.CallableModel(lambda t: torch.zeros(t.shape[0], dtype=torch.long), output="labels",
                                          bounds=BOUNDS, num_classes=2, input_shape=(D,))
    with pytest.raises(CapabilityError) as err:
        AttributeInference().run(labels_only, x=x, y=y, column=0, values=[0.0, 1.0])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"column": 7}, ConfigError, r"column must be an int index .* \[0, 6\]"),
        ({"column": "s"}, ConfigError, "column must be an int"),
        ({"values": [1.0]}, ConfigError, "at least 2"),
        ({"values": [0.0, 0.0]}, ConfigError, "duplicates"),
        ({"values": [0.0, 9.0]}, ConfigError, "outside the model's bounds"),
        ({"values": "ab"}, ConfigError, "values"),
        ({"values": [0.0, float("nan")]}, ConfigError, "finite"),
    ],
)
def test_bad_column_and_values_one_line(overfit: gt.models.SklearnModel, data: dict, kwargs: dict, error: type, fragment: str) -> None:
    x, y = data["members"]
    args = {"x": x, "y": y, "column": 0, "values": [0.0, 1.0], **kwargs}
    with pytest.raises(error, match=fragment) as err:
        AttributeInference().run(overfit, **args)
    assert "\n" not in str(err.value)


def test_bad_records_and_baseline_data(overfit: gt.models.SklearnModel, data: dict) -> None:
    x, y = data["members"]
    with pytest.raises(DataError, match="columns"):
        AttributeInference().run(overfit, x=x[:, :5], y=y, column=0, values=[0.0, 1.0])
    with pytest.raises(DataError, match="labels of shape"):
        AttributeInference().run(overfit, x=x, y=y[:-1], column=0, values=[0.0, 1.0])
    bx, by = data["attacker"]
    bad = bx.clone()
    bad[0, 0] = 0.5
    with pytest.raises(DataError, match="outside"):
        AttributeInference().run(overfit, x=x, y=y, column=0, values=[0.0, 1.0], baseline_data=(bad, by))
    with pytest.raises(ConfigError, match="'baseline'"):
        AttributeInference(baseline="oracle")
