"""STRIP on a DigitsCNN backdoored by 10% BadNets (solid 2×2 corner trigger): at inference time
triggered test inputs are flagged at a high rate while clean inputs are rejected near the chosen
false-rejection rate; on the training rows it finds the poison with or without a held-out clean
pool; deterministic per seed; bad input is one line."""

from __future__ import annotations

import statistics

import pytest
import torch
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]  # scikit-learn ships no type information

import gauntlet as gt
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def attack():
    return gt.attacks.create("badnets", fraction=0.10, target_class=0, patch_size=2, pattern="square", margin=0)


@pytest.fixture(scope="module")
def poisoned(attack, digits_train):
    return attack.poison(digits_train.x, digits_train.y, seed=0)


@pytest.fixture(scope="module")
def victim(poisoned) -> gt.models.TorchModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN()
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        net = train_classifier(net, poisoned.x, poisoned.y, epochs=15, seed=0)
    return gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def fitted(victim, digits_test):
    """STRIP fitted on the first half of the clean test digits (the held-out overlay pool)."""
    return gt.defenses.create("strip").fit(victim, digits_test.x[:225], seed=0)


def test_the_victim_obeys_the_trigger(attack, victim, digits_test) -> None:
    assert attack.attack_success_rate(victim, digits_test.x, digits_test.y) >= 0.9  # measured 0.97


def test_triggered_test_inputs_are_flagged_and_clean_ones_rejected_near_the_chosen_rate(attack, fitted, digits_test) -> None:
    x, y = digits_test.x[225:], digits_test.y[225:]  # held out from the pool
    clean_flags, clean_entropy = fitted.check(x, seed=1)
    trig_flags, trig_entropy = fitted.check(attack.apply_trigger(x[y != 0]), seed=1)
    # measured at false_rejection_rate 0.01: clean FRR 0.009 (2 of 225), detection 0.995 (199 of 200)
    assert float(clean_flags.float().mean()) <= 0.04
    assert float(trig_flags.float().mean()) >= 0.95
    assert float(trig_entropy.mean()) < 0.25 * float(clean_entropy.mean()), "a trigger survives the blend"
    assert torch.equal(fitted.is_triggered(x, seed=1), clean_flags)


def test_the_threshold_is_the_normal_quantile_of_the_clean_entropies(fitted) -> None:
    ent = fitted.calibration_entropy_.double()
    mu, sigma = float(ent.mean()), float(ent.std(unbiased=False))
    assert fitted.entropy_mean_ == pytest.approx(mu) and fitted.entropy_std_ == pytest.approx(sigma)
    assert fitted.threshold_ == pytest.approx(statistics.NormalDist(mu, sigma).inv_cdf(0.01))
    assert float((ent < fitted.threshold_).double().mean()) <= 0.03  # the calibration set's own FRR
    # entropies are in bits, in [0, log2(10)]
    assert 0 <= float(ent.min()) and float(ent.max()) <= torch.log2(torch.tensor(10.0)).item()


def test_detect_finds_the_poison_rows_of_the_training_set(poisoned, victim, fitted) -> None:
    pd = poisoned
    own = gt.defenses.create("strip").detect(victim, pd.x, pd.y, seed=0)  # training rows as the overlay pool
    pr = own.precision_recall(pd.is_poison)
    # measured: precision 0.98, recall 0.91 (robust normal fit of the training entropies)
    assert pr["precision"] >= 0.9 and pr["recall"] >= 0.8, pr
    assert float(roc_auc_score(pd.is_poison.numpy(), own.scores.numpy())) >= 0.97
    assert own.info["pool"] == "training rows" and torch.equal(own.scores, -own.info["entropy"])
    held = fitted.detect(victim, pd.x, pd.y, seed=0)  # the fitted clean pool and threshold
    pr = held.precision_recall(pd.is_poison)
    assert pr["recall"] >= 0.95 and pr["precision"] >= 0.8, pr  # measured 1.00 / 0.89
    assert held.info["pool"] == "fitted" and held.info["threshold"] == fitted.threshold_


def test_results_repeat_per_seed(fitted, digits_test) -> None:
    x = digits_test.x[225:265]
    a, b, c = fitted.check(x, seed=2)[1], fitted.check(x, seed=2)[1], fitted.check(x, seed=3)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_averaging_blend_halves_the_trigger_and_is_weaker(attack, victim, digits_test) -> None:
    # ART's STRIP blends 0.5·x + 0.5·overlay; the authors' code adds and saturates
    x, y = digits_test.x[225:325], digits_test.y[225:325]
    trig = attack.apply_trigger(x[y != 0])
    add = gt.defenses.create("strip", blend="add").fit(victim, digits_test.x[:225])
    avg = gt.defenses.create("strip", blend="average").fit(victim, digits_test.x[:225])
    assert float(add.is_triggered(trig).float().mean()) > float(avg.is_triggered(trig).float().mean()) + 0.5  # measured 0.99 vs 0.18


@pytest.mark.parametrize(
    ("params", "call", "error", "match"),
    [
        ({"false_rejection_rate": 0.0}, None, ConfigError, "parameter 'false_rejection_rate'"),
        ({"n_samples": 0}, None, ConfigError, "parameter 'n_samples'"),
        ({"blend": "max"}, None, ConfigError, "parameter 'blend'"),
        ({}, "check_unfitted", ConfigError, "not fitted; call fit"),
        ({}, "other_model", ConfigError, "fitted on another model"),
        ({}, "no_model", ConfigError, "reads a network trained on the data"),
        ({}, "module", ConfigError, "wrap it first"),
        ({}, "labels_only", CapabilityError, "returns labels only"),
        ({}, "shape", DataError, r"per-sample shape \(1, 4, 4\)"),
        ({}, "range", DataError, "bounds"),
        ({}, "tiny_pool", DataError, "at least 2 clean inputs"),
    ],
)
def test_bad_input_is_one_line(victim, digits_test, params, call, error, match) -> None:
    x = digits_test.x[:20]
    y = digits_test.y[:20]
    with pytest.raises(error, match=match) as info:
        strip = gt.defenses.create("strip", **params)
        if call == "check_unfitted":
            strip.check(x)
        elif call == "other_model":
            strip.fit(victim, x)
            other = gt.models.TorchModel(victim.module, num_classes=10, input_shape=(1, 8, 8))
            strip.detect(other, x, y)
        elif call == "no_model":
            strip.detect(None, x, y)
        elif call == "module":
            strip.detect(victim.module, x, y)
        elif call == "labels_only":
            strip.detect(gt.models.CallableModel(lambda z: victim.predict(z, count=False), output="labels"), x, y)
        elif call == "shape":
            strip.fit(victim, x[:, :, :4, :4].contiguous())
        elif call == "range":
            strip.fit(victim, x * 255)
        elif call == "tiny_pool":
            strip.fit(victim, x[:1])
    assert "\n" not in str(info.value)
