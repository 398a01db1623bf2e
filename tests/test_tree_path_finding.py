"""Path-finding extraction of decision trees (Tramèr et al. 2016, §4.2) from confidence scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gauntlet as gt
from gauntlet.errors import CapabilityError, ConfigError, DataError


def _tree(x: np.ndarray, y: np.ndarray, depth: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=depth, random_state=0).fit(x, y)


def _leaf_outputs_unique(tree) -> bool:
    leaves = tree.tree_.children_left == -1
    values = tree.tree_.value[leaves].reshape(int(leaves.sum()), -1)
    values = values / values.sum(axis=1, keepdims=True)
    return len({tuple(np.round(v, 6)) for v in values}) == int(leaves.sum())


def _true_splits(tree) -> list[tuple[int, float]]:
    t = tree.tree_
    return [(int(t.feature[n]), float(t.threshold[n])) for n in range(t.node_count) if t.children_left[n] != -1]


@pytest.fixture(scope="module")
def synthetic():
    """A 4-feature, 3-class problem in [0, 1]^4 with 30% of the labels redrawn at random (impure
    leaves: at depth 5 every leaf's output is its own)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3000, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).astype(int) + (x[:, 2] > 0.3 + 0.4 * x[:, 3]).astype(int)
    y = np.where(rng.uniform(size=3000) < 0.3, rng.integers(0, 3, 3000), y)
    return x[:2000], y[:2000], x[2000:], y[2000:]


def test_finds_every_leaf_and_split_of_a_synthetic_tree_and_copies_it_exactly(synthetic) -> None:
    x, y, x_test, _ = synthetic
    tree = _tree(x, y, depth=5)
    assert _leaf_outputs_unique(tree)
    target = gt.models.SklearnModel(tree, input_shape=(4,))
    eps = 1e-5
    res = gt.attacks.create("tree_path_finding", epsilon=eps).run(target, seed=0)
    assert res.info["complete"] and res.info["stopped"] is None
    assert res.info["leaves"] == tree.get_n_leaves() == res.info["distinct_outputs"]
    assert res.queries == target.queries == res.info["queries"] > 0
    # every split of the tree was found to within epsilon (sklearn's float32 thresholds)
    found = res.info["split_list"]
    for f, t in _true_splits(tree):
        assert any(g == f and abs(c - t) <= eps for g, c in found), (f, t)
    xt = torch.as_tensor(x_test, dtype=torch.float32)
    assert res.fidelity(xt) == 1.0
    # the copy returns the target's confidence vectors, not only its labels
    with torch.no_grad():
        gap = (res.model.scores(xt, count=False) - target.scores(xt, count=False)).abs().max()
    assert float(gap) < 1e-6


def test_digits_tree_depth_4_all_leaves_and_fidelity_1(digits_train, digits_test) -> None:
    x = digits_train.x.reshape(len(digits_train.y), -1).double().numpy()
    tree = _tree(x, digits_train.y.numpy(), depth=4)
    target = gt.models.SklearnModel(tree, input_shape=(1, 8, 8))
    res = gt.attacks.create("tree_path_finding").run(target, seed=0)
    assert res.info["complete"]
    assert res.info["leaves"] == tree.get_n_leaves() == 16
    assert res.fidelity(digits_test.x) == 1.0
    assert res.queries == target.queries


def test_leaves_with_identical_outputs_are_told_apart_by_their_boxes() -> None:
    # a checkerboard: four pure leaves, two outputs; the output alone cannot name a leaf
    def board(x: torch.Tensor) -> torch.Tensor:
        cls = ((x[:, 0] > 0.5) ^ (x[:, 1] > 0.5)).long()
        return torch.nn.functional.one_hot(cls, 2).float()

    target = gt.models.CallableModel(board, output="probabilities", input_shape=(2,), num_classes=2)
    res = gt.attacks.create("tree_path_finding").run(target, seed=0)
    assert res.info["leaves"] == 4 and res.info["distinct_outputs"] == 2 and res.info["complete"]
    grid = torch.rand(2000, 2, generator=torch.Generator().manual_seed(1))
    grid = grid[((grid - 0.5).abs() > 1e-3).all(dim=1)]  # off the thresholds' epsilon bands
    assert res.fidelity(grid) == 1.0


def test_budget_is_never_exceeded_and_a_small_one_stops_cleanly(synthetic) -> None:
    x, y, x_test, _ = synthetic
    tree = _tree(x, y, depth=5)
    full = gt.attacks.create("tree_path_finding").run(gt.models.SklearnModel(tree, input_shape=(4,)), seed=0)
    # a budget that holds the whole run changes nothing
    target = gt.models.SklearnModel(tree, input_shape=(4,))
    res = gt.attacks.create("tree_path_finding", max_queries=full.queries).run(target, seed=0)
    assert res.info["complete"] and res.queries == full.queries == target.queries
    # a small one: the attack stops with the leaves it finished, within the budget, and says so
    for budget in (1, 40, full.queries // 3):
        target = gt.models.SklearnModel(tree, input_shape=(4,))
        res = gt.attacks.create("tree_path_finding", max_queries=budget).run(target, seed=0)
        assert res.queries == target.queries <= budget
        assert not res.info["complete"] and "max_queries" in res.info["stopped"]
        assert res.info["leaves"] < full.info["leaves"]
        with torch.no_grad():
            out = res.model.scores(torch.as_tensor(x_test[:10], dtype=torch.float32))
        assert out.shape == (10, 3)
    assert res.info["leaves"] > 0


def test_labels_only_target_is_told_to_use_copycat(synthetic) -> None:
    x, y, _, _ = synthetic
    tree = _tree(x, y, depth=3)

    def labels(v: torch.Tensor) -> np.ndarray:
        return tree.predict(v.double().numpy())

    target = gt.models.CallableModel(labels, output="labels", input_shape=(4,), num_classes=3)
    with pytest.raises(CapabilityError, match="copycat"):
        gt.attacks.create("tree_path_finding").run(target, seed=0)


def test_bad_input_is_a_one_line_config_error() -> None:
    for bad in ({"epsilon": 0.0}, {"epsilon": 0.7}, {"max_queries": 0}):
        with pytest.raises(ConfigError):
            gt.attacks.create("tree_path_finding", **bad)
    fn = lambda v: torch.ones(len(v), 2) / 2
    unbounded = gt.models.CallableModel(fn, output="probabilities", input_shape=(2,), bounds=(-np.inf, np.inf))
    with pytest.raises(ConfigError, match="finite bounds") as info:
        gt.attacks.create("tree_path_finding").run(unbounded, seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="input_shape"):
        gt.attacks.create("tree_path_finding").run(gt.models.CallableModel(fn, output="probabilities"), seed=0)


def test_a_smooth_target_is_refused_as_not_a_tree_within_a_bounded_number_of_queries() -> None:
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    target = gt.models.CallableModel(lambda v: torch.softmax(v @ w.T, dim=1), output="probabilities",
                                     input_shape=(2,), num_classes=3)
    with pytest.raises(DataError, match="not a decision tree") as info:
        gt.attacks.create("tree_path_finding", max_outputs=200).run(target, seed=0)
    assert "\n" not in str(info.value)
    assert target.queries < 1000
