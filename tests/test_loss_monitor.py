"""loss_monitor: per-sample loss trajectories of a fresh copy of the architecture, trained through
the Trainer's per-epoch callback.  Flipped labels keep a high loss ("high" mode); a BadNets
backdoor at 10% is learned before the clean task (low loss, "low" mode, Anti-Backdoor Learning)
while a 1% one is not learned yet and looks like flipped labels; the given model's weights and the
caller's RNG are untouched; deterministic per seed; bad input is one line."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]  # scikit-learn ships no type information

import gauntlet as gt
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def arch() -> gt.models.TorchModel:
    """The architecture to monitor (its weights are never used: loss_monitor re-initialises a copy)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return gt.models.TorchModel(DigitsCNN(), num_classes=10, input_shape=(1, 8, 8))


def flip_labels(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random label flipping: ``fraction`` of the rows get a uniformly drawn *other* label."""
    g = torch.Generator().manual_seed(seed)
    n = int(y.shape[0])
    k = round(fraction * n)
    rows = torch.randperm(n, generator=g)[:k]
    flipped = y.clone()
    flipped[rows] = (y[rows] + torch.randint(1, 10, (k,), generator=g)) % 10
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rows] = True
    return flipped, mask


def badnets(digits_train, fraction: float):
    atk = gt.attacks.create("badnets", fraction=fraction, target_class=0, patch_size=2, pattern="square", margin=0)
    return atk.poison(digits_train.x, digits_train.y, seed=0)


def auc(mask: torch.Tensor, scores: torch.Tensor) -> float:
    return float(roc_auc_score(mask.numpy(), scores.numpy()))


def test_high_mode_flags_flipped_labels(digits_train, arch) -> None:
    y, mask = flip_labels(digits_train.y, 0.05, seed=0)
    res = gt.defenses.create("loss_monitor", mode="high", epochs=3, expected_fraction=0.05).detect(arch, digits_train.x, y, seed=0)
    pr = res.precision_recall(mask)
    # measured: AUC 0.971, precision 0.54, recall 0.82
    assert auc(mask, res.scores) >= 0.93, auc(mask, res.scores)
    assert pr["recall"] >= 0.7 and pr["precision"] >= 0.45, pr
    losses = res.info["losses"]
    assert losses.shape == (3, len(y)) and torch.equal(res.scores, losses.mean(0))
    assert float(losses[:, mask].mean()) > 2 * float(losses[:, ~mask].mean()), "flipped rows resist being learned"
    assert len(res.info["train_history"]) == 3


def test_low_mode_flags_a_10_percent_backdoor_learned_before_the_clean_task(digits_train, arch) -> None:
    pd = badnets(digits_train, 0.10)
    res = gt.defenses.create("loss_monitor", mode="low", epochs=2, expected_fraction=0.10).detect(arch, pd.x, pd.y, seed=0)
    pr = res.precision_recall(pd.is_poison)
    # measured (seeds 0/1/2): AUC 0.925/0.910/0.946, recall 0.60/0.58/0.78, precision 0.40/0.39/0.52
    assert auc(pd.is_poison, res.scores) >= 0.88, auc(pd.is_poison, res.scores)
    assert pr["recall"] >= 0.5 and pr["precision"] >= 0.33, pr
    assert torch.equal(res.scores, -res.info["losses"].mean(0))


def test_a_1_percent_backdoor_is_not_learned_early_so_high_mode_catches_it(digits_train, arch) -> None:
    # 13 poison rows are too few to teach the trigger in 3 epochs: they behave like flipped labels
    pd = badnets(digits_train, 0.01)
    high = gt.defenses.create("loss_monitor", mode="high", epochs=3, expected_fraction=0.01).detect(arch, pd.x, pd.y, seed=0)
    assert auc(pd.is_poison, high.scores) >= 0.93, auc(pd.is_poison, high.scores)  # measured 0.974
    assert high.precision_recall(pd.is_poison)["recall"] >= 0.45  # measured 0.62 (8 of 13)


def test_the_given_model_and_the_callers_rng_are_untouched_and_results_repeat_per_seed(digits_train, arch) -> None:
    x, y = digits_train.x[:300], digits_train.y[:300]
    before = {k: v.clone() for k, v in arch.module.state_dict().items()}
    san = gt.defenses.create("loss_monitor", epochs=1)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    a = san.detect(arch, x, y, seed=5)
    assert torch.equal(torch.get_rng_state(), rng), "detect must not draw from the global RNG"
    assert all(torch.equal(v, before[k]) for k, v in arch.module.state_dict().items())
    b, c = san.detect(arch, x, y, seed=5), san.detect(arch, x, y, seed=6)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.flagged, b.flagged)
    assert not torch.equal(a.scores, c.scores), "the seed drives initialisation and shuffling"


def test_a_normalising_torch_model_trains_its_copy_on_the_same_raw_inputs(digits_train) -> None:
    model = gt.models.TorchModel(DigitsCNN(), num_classes=10, input_shape=(1, 8, 8), mean=0.3, std=0.4)
    res = gt.defenses.create("loss_monitor", epochs=1).detect(model, digits_train.x[:200], digits_train.y[:200])
    assert res.info["losses"].shape == (1, 200) and bool(torch.isfinite(res.scores).all())


@pytest.mark.parametrize(
    ("params", "call", "error", "match"),
    [
        ({"mode": "middle"}, None, ConfigError, "parameter 'mode'"),
        ({"epochs": 0}, None, ConfigError, "parameter 'epochs'"),
        ({"expected_fraction": 1.5}, None, ConfigError, "parameter 'expected_fraction'"),
        ({}, "no_model", ConfigError, "reads a network trained on the data"),
        ({}, "module", CapabilityError, "needs a gauntlet TorchModel"),
        ({}, "mismatch", DataError, r"must have shape \(60,\)"),
        ({}, "nan", DataError, "NaN"),
    ],
)
def test_bad_input_is_one_line(digits_train, arch, params, call, error, match) -> None:
    x, y = digits_train.x[:60], digits_train.y[:60]
    with pytest.raises(error, match=match) as info:
        san = gt.defenses.create("loss_monitor", **params)
        if call == "no_model":
            san.detect(None, x, y)
        elif call == "module":
            san.detect(arch.module, x, y)
        elif call == "mismatch":
            san.detect(arch, x, y[:30])
        elif call == "nan":
            san.detect(arch, torch.where(x > 0.5, torch.nan, x), y)
    assert "\n" not in str(info.value)
