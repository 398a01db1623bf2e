"""Spectral signatures (Tran et al. 2018) on digits: a DigitsCNN trained on 3% BadNets poison
(40 rows, 23% of the target class) is obeyed by the trigger, and the sanitizer finds the poison
(whitened: every poison row within its 1.5x removal budget; the paper's unwhitened scores rank
worse), scores are comparable across classes, the removal budgets are exact, it is deterministic,
and bad input is a one-line error."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.attacks.poisoning import PoisonedDataset
from gauntlet.defenses.sanitize import SanitizationResult
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

FRACTION = 0.03


@pytest.fixture(scope="module")
def backdoored(digits_train) -> tuple[gt.attacks.Attack, PoisonedDataset, gt.models.TorchModel]:
    """BadNets (a 2x2 corner square, 3% of the rows relabelled 0) and a DigitsCNN trained on it."""
    atk = gt.attacks.create("badnets", fraction=FRACTION, target_class=0, patch_size=2, pattern="square", margin=0)
    pd = atk.poison(digits_train.x, digits_train.y, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = train_classifier(net, pd.x, pd.y, epochs=15, seed=0)
    finally:
        torch.set_num_threads(before)
    return atk, pd, gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a random positive row outscores a random negative one (ties count half)."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def test_the_backdoored_model_obeys_the_trigger(backdoored, digits_test) -> None:
    atk, _, model = backdoored
    assert atk.attack_success_rate(model, digits_test.x, digits_test.y) >= 0.85


def test_whitened_scores_put_every_poison_row_inside_the_removal_budget(backdoored) -> None:
    _, pd, model = backdoored
    res = gt.defenses.create("spectral_signatures", expected_fraction=FRACTION).detect(model, pd.x, pd.y)
    assert isinstance(res, SanitizationResult) and res.scores.shape == (len(pd),) and res.flagged.dtype == torch.bool
    assert res.n_flagged == math.ceil(1.5 * FRACTION * len(pd))  # 61 rows for 40 poison
    pr = res.precision_recall(pd.is_poison)
    assert pr["recall"] == 1.0 and pr["precision"] >= 0.6, pr
    assert auc(res.scores, pd.is_poison) >= 0.99
    # the flagged rows are exactly the highest scores
    assert float(res.scores[res.flagged].min()) >= float(res.scores[~res.flagged].max())
    assert res.info["per_class"][0]["flagged"] >= pd.n_poison


def test_the_papers_unwhitened_scores_rank_the_poison_worse(backdoored) -> None:
    _, pd, model = backdoored
    white = gt.defenses.create("spectral_signatures", expected_fraction=FRACTION).detect(model, pd.x, pd.y)
    raw = gt.defenses.create("spectral_signatures", expected_fraction=FRACTION, whiten=False).detect(model, pd.x, pd.y)
    assert auc(raw.scores, pd.is_poison) < auc(white.scores, pd.is_poison)
    assert raw.precision_recall(pd.is_poison)["recall"] < 0.9  # measured 0.55: the top direction is not the poison's
    # the paper's tau is the squared projection of the mean-centred row, kept beside the scores
    assert raw.info["tau"].shape == (len(pd),) and float(raw.info["tau"].min()) >= 0


def test_scores_are_squared_robust_z_scores_comparable_across_classes(backdoored) -> None:
    _, pd, model = backdoored
    res = gt.defenses.create("spectral_signatures", expected_fraction=FRACTION).detect(model, pd.x, pd.y)
    # the median of ((p - median) / (1.4826 MAD))^2 is 1 / 1.4826^2 in every class, whatever its spread
    for c in range(10):
        assert float(res.scores[pd.y == c].median()) == pytest.approx(1 / 1.4826**2, rel=0.05), c
    # so one threshold serves every class: the typical poison row outscores almost every clean row
    clean = res.scores[~pd.is_poison].sort().values
    assert float(res.scores[pd.is_poison].median()) > float(clean[int(0.999 * clean.numel())])


def test_the_papers_per_class_budget_removes_the_top_share_of_every_class(backdoored) -> None:
    _, pd, model = backdoored
    eps = 0.25  # an upper bound on the share of poison in a class (23% in the target class)
    res = gt.defenses.create("spectral_signatures", expected_fraction=eps, budget="per_class").detect(model, pd.x, pd.y)
    for c in range(10):
        rows = pd.y == c
        k = math.ceil(1.5 * eps * int(rows.sum()))
        assert int(res.flagged[rows].sum()) == k, c
        s, f = res.scores[rows], res.flagged[rows]
        assert float(s[f].min()) >= float(s[~f].max()), c
    assert res.precision_recall(pd.is_poison)["recall"] == 1.0


def test_detection_is_deterministic_and_leaves_its_inputs_alone(backdoored) -> None:
    _, pd, model = backdoored
    x0 = pd.x.clone()
    san = gt.defenses.create("spectral_signatures", expected_fraction=FRACTION)
    a, b = san.detect(model, pd.x, pd.y, seed=0), san.detect(model, pd.x, pd.y, seed=5)
    assert torch.equal(a.flagged, b.flagged) and torch.allclose(a.scores, b.scores)
    assert torch.equal(pd.x, x0) and a.method == "spectral_signatures" and a.params == san.get_params()
    assert model.queries == 0, "reading features is not an attack query"


def test_it_is_a_registered_sanitizer_that_rebuilds_from_its_params() -> None:
    assert "spectral_signatures" in gt.defenses.list_defenses("sanitizer")
    san = gt.defenses.create("spectral_signatures", expected_fraction=0.1, budget="per_class", whiten=False)
    assert gt.defenses.create("spectral_signatures", **san.get_params()).get_params() == san.get_params()


class NoLinear(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("fraction0", ConfigError, "parameter 'expected_fraction' must be a finite number > 0 and < 1"),
        ("budget", ConfigError, "parameter 'budget' must be one of 'global', 'per_class'"),
        ("whiten", ConfigError, "parameter 'whiten' must be a bool"),
        ("layer_type", ConfigError, "parameter 'layer' must be a submodule name"),
        ("no_model", ConfigError, "reads a network trained on the data"),
        ("callable", CapabilityError, "needs a gauntlet TorchModel"),
        ("no_linear", ConfigError, "no nn.Linear layer"),
        ("layer_name", ConfigError, "no submodule named 'fc9'; did you mean"),
        ("shape", DataError, "per-sample shape (1, 4, 4) but the model expects (1, 8, 8)"),
        ("y_length", DataError, "y must have shape (50,) to match x"),
        ("nan", DataError, "NaN"),
    ],
)
def test_bad_input_is_one_line(backdoored, case, error, match) -> None:
    _, pd, model = backdoored
    x, y = pd.x[:50], pd.y[:50]
    with pytest.raises(error, match=re.escape(match)) as info:
        if case == "fraction0":
            gt.defenses.create("spectral_signatures", expected_fraction=0.0)
        elif case == "budget":
            gt.defenses.create("spectral_signatures", budget="everywhere")
        elif case == "whiten":
            gt.defenses.create("spectral_signatures", whiten="yes")
        elif case == "layer_type":
            gt.defenses.create("spectral_signatures", layer=3)
        san = gt.defenses.create("spectral_signatures", layer="fc9" if case == "layer_name" else None)
        if case == "no_model":
            san.detect(None, x, y)
        elif case == "callable":
            san.detect(gt.models.CallableModel(lambda v: model.scores(v, count=False), num_classes=10), x, y)
        elif case == "no_linear":
            san.detect(gt.models.TorchModel(NoLinear(), num_classes=10, input_shape=(1, 8, 8)), x, y)
        elif case == "shape":
            san.detect(model, x[:, :, :4, :4], y)
        elif case == "y_length":
            san.detect(model, x, y[:40])
        elif case == "nan":
            san.detect(model, torch.where(x > 0.5, torch.nan, x), y)
        else:
            san.detect(model, x, y)
    assert "\n" not in str(info.value)
