"""Activation clustering (Chen et al. 2018) on digits: on a DigitsCNN trained on 3% BadNets poison
the target class splits into a small, well-separated cluster that is exactly the poison; on a
clean network (and on the poisoned one's clean classes) the silhouette criterion flags no class
wholesale, where the relative-size criterion alone does; scores rank poison first; it is
deterministic for a seed; bad input is a one-line error."""

from __future__ import annotations

import re

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.poisoning import PoisonedDataset
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backdoored(digits_train) -> tuple[PoisonedDataset, gt.models.TorchModel]:
    """BadNets (a 2x2 corner square, 3% of the rows relabelled 0) and a DigitsCNN trained on it."""
    atk = gt.attacks.create("badnets", fraction=0.03, target_class=0, patch_size=2, pattern="square", margin=0)
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
    return pd, gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def found(backdoored):
    pd, model = backdoored
    return gt.defenses.create("activation_clustering").detect(model, pd.x, pd.y, seed=0)


def test_the_poisoned_class_splits_off_the_poison(backdoored, found) -> None:
    pd, _ = backdoored
    info = found.info["per_class"]
    assert info[0]["poisonous"] and info[0]["silhouette"] > 0.25 and info[0]["smaller_share"] < 0.35
    assert [c for c, d in info.items() if d["poisonous"]] == [0]
    pr = found.precision_recall(pd.is_poison)
    assert pr["recall"] >= 0.95 and pr["precision"] >= 0.9, pr  # measured: exactly the 40 poison rows


def test_scores_rank_the_poison_first_and_the_flagged_rows_on_top_of_their_class(backdoored, found) -> None:
    pd, _ = backdoored
    s = found.scores
    assert float(s[pd.is_poison].min()) > float(torch.quantile(s[~pd.is_poison], 0.99))
    rows = pd.y == 0
    f = found.flagged[rows]
    assert float(s[rows][f].min()) > float(s[rows][~f].max()), "2-means' smaller cluster is the top of the class"


def test_the_silhouette_criterion_does_not_flag_a_clean_class_wholesale(digits_train, digits_net) -> None:
    clean = gt.models.TorchModel(digits_net, num_classes=10, input_shape=(1, 8, 8))
    x, y = digits_train.x, digits_train.y
    by_silhouette = gt.defenses.create("activation_clustering").detect(clean, x, y, seed=0)
    by_size = gt.defenses.create("activation_clustering", criterion="size").detect(clean, x, y, seed=0)
    assert by_silhouette.n_flagged == 0
    assert all(not d["poisonous"] and d["silhouette"] <= 0.25 for d in by_silhouette.info["per_class"].values())
    # 2-means cuts some clean classes unevenly (1s, 7s, 9s written two ways): size alone removes them
    uneven = [c for c, d in by_size.info["per_class"].items() if d["smaller_share"] < 0.35]
    assert uneven and [c for c, d in by_size.info["per_class"].items() if d["poisonous"]] == uneven
    assert by_size.n_flagged > 0


def test_every_class_flagged_by_silhouette_is_flagged_by_size(backdoored, found) -> None:
    pd, model = backdoored
    size = gt.defenses.create("activation_clustering", criterion="size").detect(model, pd.x, pd.y, seed=0)
    assert bool((found.flagged <= size.flagged).all())
    low = gt.defenses.create("activation_clustering", silhouette_threshold=0.1).detect(model, pd.x, pd.y, seed=0)
    assert bool((found.flagged <= low.flagged).all()) and low.n_flagged >= found.n_flagged


def test_pca_reduction_runs_and_detection_is_deterministic_for_a_seed(backdoored, found) -> None:
    pd, model = backdoored
    again = gt.defenses.create("activation_clustering").detect(model, pd.x, pd.y, seed=0)
    assert torch.equal(again.flagged, found.flagged) and torch.equal(again.scores, found.scores)
    pca = gt.defenses.create("activation_clustering", reduce="pca", nb_dims=5).detect(model, pd.x, pd.y, seed=1)
    assert pca.scores.shape == (len(pd),) and all(d["dims"] == 5 for d in pca.info["per_class"].values())
    assert found.method == "activation_clustering" and model.queries == 0


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("reduce", ConfigError, "parameter 'reduce' must be one of 'ica', 'pca'"),
        ("criterion", ConfigError, "parameter 'criterion' must be one of 'silhouette', 'size'"),
        ("nb_dims", ConfigError, "parameter 'nb_dims' must be an int >= 1"),
        ("size_threshold", ConfigError, "parameter 'size_threshold' must be a finite number > 0 and <= 0.5"),
        ("callable", CapabilityError, "needs a gauntlet TorchModel"),
        ("shape", DataError, "per-sample shape (1, 8, 4) but the model expects (1, 8, 8)"),
        ("y_dtype", DataError, "y must hold integer class labels"),
        ("inf", DataError, "NaN or inf"),
    ],
)
def test_bad_input_is_one_line(backdoored, case, error, match) -> None:
    pd, model = backdoored
    x, y = pd.x[:60], pd.y[:60]
    with pytest.raises(error, match=re.escape(match)) as info:
        if case in ("reduce", "criterion", "nb_dims", "size_threshold"):
            gt.defenses.create("activation_clustering", **{case: {"reduce": "tsne", "criterion": "distance", "nb_dims": 0,
                                                                  "size_threshold": 0.7}[case]})
        san = gt.defenses.create("activation_clustering")
        if case == "callable":
            san.detect(gt.models.CallableModel(lambda v: model.scores(v, count=False), num_classes=10), x, y)
        elif case == "shape":
            san.detect(model, x[..., :4], y)
        elif case == "y_dtype":
            san.detect(model, x, y.float())
        elif case == "inf":
            san.detect(model, torch.where(x > 0.5, torch.inf, x), y)
    assert "\n" not in str(info.value)
