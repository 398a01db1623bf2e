"""Adversarial-input detectors: threshold calibration, the exact scores of feature squeezing and
the Mahalanobis detector, detection of plain attacks on the digits CNN, and the headline property
that a detector-aware attack (Carlini & Wagner 2017) evades what plain attacks cannot."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.attacks import create as create_attack
from gauntlet.defenses import create, get_defense_class, list_defenses
from gauntlet.defenses.detection._base import (
    DetectionReport,
    Detector,
    DetectorAwareModel,
    calibrated_threshold,
    roc_auc,
)
from gauntlet.defenses.detection.feature_squeezing_detector import FeatureSqueezingDetector
from gauntlet.defenses.detection.mahalanobis import MahalanobisDetector, ledoit_wolf
from gauntlet.defenses.preprocessing.bit_depth_reduction import bit_depth
from gauntlet.defenses.preprocessing.median_filter import median_filter
from gauntlet.errors import CapabilityError, ConfigError, DataError
from tests.conftest import clear_argmax

pytestmark = pytest.mark.usefixtures("one_thread_module")

# On 8×8 digits (17 grey levels) a 2×2 median erases the digit (clean scores reach the maximum 2),
# so the digits tests use the 2-bit squeezer alone; the defaults are the paper's MNIST setting.
FS_DIGITS = {"bits": 2, "median_size": None}
# The penultimate layer of the 64-unit DigitsCNN separates adversarial digits poorly (TPR ≈ 0.25 at
# 10 % FPR); the first convolution's output does (Lee et al. also find lower layers stronger).
MAHA_DIGITS = {"layer": "conv1"}


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model(digits_net: nn.Module) -> gt.models.TorchModel:
    return gt.models.TorchModel(digits_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def fs(model: gt.models.TorchModel, digits_test: gt.data.Dataset) -> FeatureSqueezingDetector:
    det = create("feature_squeezing_detector", **FS_DIGITS)
    return det.fit(model, digits_test.x[:150], fpr=0.1)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def maha(model: gt.models.TorchModel, digits_train: gt.data.Dataset, digits_test: gt.data.Dataset) -> MahalanobisDetector:
    det = create("mahalanobis", **MAHA_DIGITS)
    return det.fit(model, digits_train.x[:600], digits_train.y[:600], fpr=0.1, x_calibration=digits_test.x[:150])  # type: ignore[return-value]


@pytest.fixture(scope="module")
def held_out(digits_test: gt.data.Dataset) -> tuple[Tensor, Tensor]:
    """Test digits never used in any fit or calibration."""
    return digits_test.x[150:250].clone(), digits_test.y[150:250].clone()


class _SumScore(Detector):
    """A detector whose score is the sum of the input's values: calibration against a known law."""

    name = "sum_score_for_tests"

    def _score_logits(self, x: Tensor, adaptive: bool) -> tuple[Tensor, Tensor]:
        assert self.model_ is not None
        return x.flatten(1).sum(dim=1), self.model_.scores(x, count=False)


def _flat_model(d: int = 4, k: int = 2, bounds: tuple[float, float] = (0.0, 1.0)) -> gt.models.TorchModel:
    torch.manual_seed(0)
    return gt.models.TorchModel(nn.Linear(d, k), bounds=bounds, num_classes=k, input_shape=(d,))


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------------------------------------
# registry
def test_registry_lists_both_detectors_with_kind_detector_and_rebuildable_params() -> None:
    assert {"feature_squeezing_detector", "mahalanobis"} <= set(list_defenses("detector"))
    for name, params in [("feature_squeezing_detector", FS_DIGITS), ("mahalanobis", {"layer": "fc1", "shrinkage": 0.1})]:
        d = create(name, **params)
        assert isinstance(d, Detector) and d.kind == "detector" and d.threshold is None
        assert d.get_params() == {**get_defense_class(name)().get_params(), **params}
        assert type(create(name, **d.get_params())) is type(d)
    assert create("feature_squeezing_detector").get_params() == {"bits": 1, "median_size": 2}  # Xu et al.'s MNIST setting


# ------------------------------------------------------------------------------------------------
# calibration
def test_threshold_is_the_inverted_cdf_quantile_and_flags_at_most_floor_n_fpr() -> None:
    g = _rng(1)
    for n in (1, 7, 20, 100, 1000, 1001):
        for fpr in (0.01, 0.05, 0.1, 0.3, 0.5, 0.99):
            s = torch.randn(n, generator=g, dtype=torch.float64)
            thr = calibrated_threshold(s, fpr)
            # the order statistic s_(k), k = ⌈n(1 − fpr)⌉, in exact rational arithmetic
            k = math.ceil(n * (1 - Fraction(str(fpr))))
            assert thr == float(torch.sort(s).values[k - 1])
            # NumPy's inverted_cdf quantile agrees except where its float 1 − fpr rounds up (1 − 0.99 > 0.01)
            if (1 - fpr) * n == float(n * (1 - Fraction(str(fpr)))):
                assert thr == float(np.quantile(s.numpy(), 1 - fpr, method="inverted_cdf"))
            flagged = int((s > thr).sum())
            assert flagged == math.floor(n * Fraction(str(fpr)))  # no ties: exactly ⌊n·fpr⌋, so ≤ fpr·n
    ties = torch.tensor([0.0] * 90 + [1.0] * 10)
    assert calibrated_threshold(ties, 0.05) == 1.0 and int((ties > 1.0).sum()) == 0  # ties can only lower the FPR


def test_fit_gives_clean_fpr_at_most_target_on_calibration_set_and_close_to_it_on_a_larger_held_out_set() -> None:
    m = _flat_model()
    g = _rng(2)
    x_cal, x_new = torch.rand(2000, 4, generator=g), torch.rand(20000, 4, generator=g)
    for fpr in (0.05, 0.2):
        det = _SumScore().fit(m, x_cal, fpr=fpr)
        flagged = int(det.detect(x_cal).sum())
        assert flagged <= fpr * 2000 and flagged == math.floor(2000 * Fraction(str(fpr)))
        # exchangeable held-out data: the rate is fpr up to sampling (sd ≈ 0.005 from 2000 calibration points)
        assert abs(float(det.detect(x_new).float().mean()) - fpr) < 0.02
        assert det.threshold == calibrated_threshold(x_cal.sum(1), fpr) and det.target_fpr == fpr


def test_real_detectors_hold_their_fpr_on_the_calibration_set_and_roughly_on_held_out_digits(
    fs: FeatureSqueezingDetector, maha: MahalanobisDetector, digits_test: gt.data.Dataset
) -> None:
    cal = digits_test.x[:150]
    new = digits_test.x[150:]  # 300 held-out digits
    for det in (fs, maha):
        assert int(det.detect(cal).sum()) <= 0.1 * len(cal)
        # binomial sd on 300 points ≈ 0.017, plus the threshold's own sampling error from 150 points
        assert abs(float(det.detect(new).float().mean()) - 0.1) < 0.08


# ------------------------------------------------------------------------------------------------
# exact scores
def _tiny_image_net() -> gt.models.TorchModel:
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0, 0.5, 1.0], [-1.5, 2.0, 1.0, -0.5], [0.5, 0.5, -2.0, 1.5]]))
        lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return gt.models.TorchModel(nn.Sequential(nn.Flatten(), lin), bounds=(0.0, 1.0), num_classes=3, input_shape=(1, 2, 2))


def test_feature_squeezing_score_is_the_max_l1_softmax_gap_on_a_hand_computed_case() -> None:
    m = _tiny_image_net()
    x = torch.tensor([[[[0.2, 0.7], [0.45, 0.9]]]])
    squeezed_bits = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # 1 bit: below 0.5 → 0, above → 1
    # 2×2 median, window reaching one pixel up/left, symmetric padding, upper median of 4 values
    squeezed_median = torch.tensor([[[[0.2, 0.7], [0.45, 0.7]]]])
    assert torch.equal(bit_depth(x, 1), squeezed_bits) and torch.allclose(median_filter(x, 2), squeezed_median)
    w, b = m.module[1].weight.detach(), m.module[1].bias.detach()

    def p(v: Tensor) -> Tensor:
        z = v.flatten(1) @ w.T + b
        return torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)

    l1_bits = float((p(x) - p(squeezed_bits)).abs().sum())
    l1_median = float((p(x) - p(squeezed_median)).abs().sum())
    det = create("feature_squeezing_detector", bits=1, median_size=2).fit(m, torch.rand(50, 1, 2, 2, generator=_rng(0)))
    assert float(det.score(x)) == pytest.approx(max(l1_bits, l1_median), abs=1e-6)
    only_bits = create("feature_squeezing_detector", bits=1, median_size=None).fit(m, torch.rand(50, 1, 2, 2, generator=_rng(0)))
    assert float(only_bits.score(x)) == pytest.approx(l1_bits, abs=1e-6)
    only_median = create("feature_squeezing_detector", bits=None, median_size=2).fit(m, torch.rand(50, 1, 2, 2, generator=_rng(0)))
    assert float(only_median.score(x)) == pytest.approx(l1_median, abs=1e-6)


def test_bit_depth_squeezer_passes_gradients_straight_through_only_in_the_adaptive_view() -> None:
    m = _tiny_image_net()
    det = create("feature_squeezing_detector", bits=1, median_size=None).fit(m, torch.rand(50, 1, 2, 2, generator=_rng(0)))
    x = torch.tensor([[[[0.2, 0.7], [0.45, 0.9]]]])
    q = bit_depth(x, 1)
    net = m.module

    def grad(fn) -> Tensor:  # type: ignore[no-untyped-def]
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xg).sum(), xg)
        return g

    naive = grad(lambda v: det.score(v))
    adaptive = grad(lambda v: det.score(v, adaptive=True))
    # naive: the squeezed copy is a constant; adaptive (BPDA): it moves with x (identity backward)
    want_naive = grad(lambda v: (F.softmax(net(v), 1) - F.softmax(net(q), 1)).abs().sum(1))
    want_adaptive = grad(lambda v: (F.softmax(net(v), 1) - F.softmax(net(v + (q - x)), 1)).abs().sum(1))
    assert torch.allclose(naive, want_naive, atol=1e-6) and torch.allclose(adaptive, want_adaptive, atol=1e-6)
    assert not torch.allclose(naive, adaptive, atol=1e-4)
    assert float(det.score(x, adaptive=True)) == float(det.score(x))  # same value in both views


def _gaussian_setup() -> tuple[gt.models.TorchModel, Tensor, Tensor, Tensor]:
    g = _rng(3)
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.8, 0.0, 0.0], [0.0, 0.3, 1.5, 0.0], [0.2, 0.0, 0.4, 0.6]], dtype=torch.float64)
    cov = a @ a.T
    y = torch.arange(3).repeat_interleave(4000)
    x = (means[y] + torch.randn(len(y), 4, generator=g, dtype=torch.float64) @ a.T).float()
    # a linear classifier: the features it reads (the input of its last nn.Linear) are x itself
    model = _flat_model(4, 3, bounds=(-40.0, 40.0))
    return model, x, y, torch.linalg.inv(cov)


def test_mahalanobis_recovers_known_gaussians_and_scores_the_true_min_distance() -> None:
    model, x, y, precision = _gaussian_setup()
    det = create("mahalanobis", shrinkage=0.0).fit(model, x, y, fpr=0.05)
    assert isinstance(det, MahalanobisDetector)
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(det.means_, means, atol=0.08)
    assert float(torch.linalg.norm(det.precision_ - precision) / torch.linalg.norm(precision)) < 0.05
    probe = torch.randn(200, 4, generator=_rng(4)) * 3
    diff = probe.double()[:, None, :] - means[None]
    true = torch.einsum("ncd,de,nce->nc", diff, precision, diff).amin(dim=1)
    assert torch.allclose(det.score(probe).double(), true, rtol=0.06, atol=0.05)
    # the calibrated threshold sits near the χ²₄ 95 % quantile (9.49) for a Gaussian's own points
    assert det.threshold == pytest.approx(9.49, rel=0.08)


def test_mahalanobis_ranks_points_farther_from_every_class_higher() -> None:
    model, x, y, _ = _gaussian_setup()
    det = create("mahalanobis").fit(model, x, y, fpr=0.05)
    direction = torch.tensor([[0.0, 0.0, 1.0, -1.0]]) / math.sqrt(2)  # away from all three means
    radii = torch.tensor([0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    s = det.score(radii[:, None] * direction)
    assert bool((s[1:] > s[:-1]).all())
    far = det.detect(torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    assert bool(far.all()) and not bool(det.detect(torch.tensor([[4.0, 0.0, 0.0, 0.0]])).any())


def test_ledoit_wolf_matches_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.covariance")
    x = torch.randn(60, 10, generator=_rng(5), dtype=torch.float64) * torch.linspace(0.1, 3.0, 10, dtype=torch.float64)
    cov, alpha = ledoit_wolf(x)
    want_cov, want_alpha = sk.ledoit_wolf(x.numpy(), assume_centered=True)
    assert alpha == pytest.approx(want_alpha, rel=1e-9) and np.allclose(cov.numpy(), want_cov, rtol=1e-9, atol=1e-12)


def test_mahalanobis_reads_the_penultimate_input_by_default_and_a_named_output_on_request(
    model: gt.models.TorchModel, digits_train: gt.data.Dataset
) -> None:
    net = model.module
    x = digits_train.x[:5]
    with torch.no_grad():
        h = F.max_pool2d(F.relu(net.conv2(F.relu(net.conv1(x)))), 2).flatten(1)
        fc1_out = net.fc1(h)
    xs, ys = digits_train.x[:200], digits_train.y[:200]
    default = create("mahalanobis").fit(model, xs, ys)
    named = create("mahalanobis", layer="fc1").fit(model, xs, ys)
    assert torch.allclose(default.features(x)[0], F.relu(fc1_out), atol=1e-5)  # input of fc2
    assert torch.allclose(named.features(x)[0], fc1_out, atol=1e-5)


def test_mahalanobis_noise_option_scores_at_the_gradient_step_towards_the_closest_class(
    model: gt.models.TorchModel, digits_train: gt.data.Dataset
) -> None:
    xs, ys = digits_train.x[:300], digits_train.y[:300]
    plain = create("mahalanobis").fit(model, xs, ys)
    noisy = create("mahalanobis", noise_magnitude=0.01).fit(model, xs, ys)
    x = digits_train.x[300:310].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(plain.score(x).sum(), x)
    with torch.no_grad():
        want = plain.distances(plain._features(model, x - 0.01 * g.sign())[0]).amin(1).float()
        assert torch.allclose(noisy.score(x.detach()), want, rtol=1e-5, atol=1e-4)
        assert bool((want < plain.score(x.detach())).all())  # the step brings points closer to a class


def test_roc_auc_counts_pairs_and_half_ties() -> None:
    assert roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert roc_auc(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0])) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert math.isnan(roc_auc(torch.tensor([0.0]), torch.tensor([])))


# ------------------------------------------------------------------------------------------------
# the detector-aware model
def test_detector_aware_model_adds_a_detected_class_that_wins_exactly_when_the_detector_flags(
    model: gt.models.TorchModel, fs: FeatureSqueezingDetector, digits_test: gt.data.Dataset
) -> None:
    aware = DetectorAwareModel(model, fs, scale=0.5)
    x = torch.cat([digits_test.x[150:190], (digits_test.x[150:190] + 0.3 * torch.rand(40, 1, 8, 8, generator=_rng(6))).clamp(0, 1)])
    assert aware.num_classes == 11 and aware.capabilities == model.capabilities and aware.input_spec == model.input_spec
    with torch.no_grad():
        g = aware.scores(x)
        z = model.scores(x)
        s = fs.score(x)
    assert g.shape == (80, 11)
    # the first K logits are the classifier's, computed in one batch with the squeezed copies
    torch.testing.assert_close(g[:, :10], z, rtol=1e-5, atol=1e-5)
    want = z.amax(1) + 0.5 * (s - fs.threshold) / fs.score_unit_
    assert torch.allclose(g[:, 10], want, atol=1e-5)
    flagged = fs.detect(x)
    assert 0 < int(flagged.sum()) < 80
    assert torch.equal(aware.predict(x) == 10, flagged)
    clear = ~flagged & clear_argmax(z, 1e-4)  # the argmax of the two batchings may differ only at near-ties
    assert int(clear.sum()) >= int((~flagged).sum()) - 2
    assert torch.equal(aware.predict(x)[clear], model.predict(x)[clear])
    # a gradient request sees the detector through BPDA: the extra logit has a gradient
    xg = x[:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(aware.scores(xg)[:, 10].sum(), xg)
    assert float(grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------
# detection of plain attacks on the digits CNN
@pytest.mark.parametrize("which", ["fs", "maha"])
def test_detectors_flag_plain_fgsm_and_pgd_far_above_their_false_positive_rate(
    which: str, request: pytest.FixtureRequest, model: gt.models.TorchModel, held_out: tuple[Tensor, Tensor]
) -> None:
    det: Detector = request.getfixturevalue(which)
    x, y = held_out
    attacks = {"fgsm": create_attack("fgsm", eps=0.1), "pgd": create_attack("pgd", eps=0.1, steps=10)}
    rep = det.evaluate(model, x, y, attacks, adaptive=False)
    assert [(r.attack, r.adaptive) for r in rep.rows] == [("fgsm", False), ("pgd", False)]
    assert rep.clean_accuracy > 0.9 and rep.clean_fpr <= 0.2
    for r in rep.rows:
        assert r.success_rate > 0.3  # the attack does fool the classifier, so there is something to detect
        assert r.tpr >= 0.75 and r.tpr >= rep.clean_fpr + 0.5, (which, r)
        assert r.auroc >= 0.9
        assert r.undetected_success_rate <= 0.25 * r.success_rate + 1e-9


# ------------------------------------------------------------------------------------------------
# the adaptive (detector-aware) attack
def test_detector_aware_pgd_evades_mahalanobis_where_plain_pgd_is_caught(
    model: gt.models.TorchModel, maha: MahalanobisDetector, held_out: tuple[Tensor, Tensor]
) -> None:
    x, y = held_out
    rep = maha.evaluate(model, x, y, {"pgd": create_attack("pgd", eps=0.3, steps=20)}, seed=0)
    plain, aware = rep.row("pgd", adaptive=False), rep.row("pgd", adaptive=True)
    assert plain.success_rate > 0.95 and plain.tpr > 0.9 and plain.undetected_success_rate < 0.1
    assert aware.undetected_success_rate >= plain.undetected_success_rate + 0.6, (plain, aware)
    assert aware.tpr < 0.3
    assert aware.union_undetected_success_rate is not None
    assert aware.union_undetected_success_rate >= aware.undetected_success_rate and plain.union_undetected_success_rate is None


def test_detector_aware_cw_l2_evades_feature_squeezing_where_plain_cw_l2_is_caught(
    model: gt.models.TorchModel, fs: FeatureSqueezingDetector, held_out: tuple[Tensor, Tensor]
) -> None:
    x, y = held_out[0][:40], held_out[1][:40]
    cw = create_attack("cw_l2", steps=30, binary_search_steps=4, learning_rate=0.1, final_steps=0)
    rep = fs.evaluate(model, x, y, {"cw": cw}, seed=0)
    plain, aware = rep.row("cw", adaptive=False), rep.row("cw", adaptive=True)
    assert plain.success_rate > 0.95 and plain.tpr > 0.7  # minimal, low-confidence adversarials are flagged
    assert aware.undetected_success_rate >= plain.undetected_success_rate + 0.5, (plain, aware)
    assert aware.tpr < 0.2


def test_report_is_json_able_and_notes_attacks_without_a_targeted_mode(
    model: gt.models.TorchModel, fs: FeatureSqueezingDetector, held_out: tuple[Tensor, Tensor]
) -> None:
    x, y = held_out[0][:20], held_out[1][:20]
    rep = fs.evaluate(model, x, y, {"fgsm": create_attack("fgsm", eps=[0.05, 0.1]), "deepfool": create_attack("deepfool", steps=10)})
    assert isinstance(rep, DetectionReport)
    assert [(r.attack, r.eps, r.adaptive) for r in rep.rows] == [
        ("fgsm", 0.05, False), ("fgsm", 0.05, True), ("fgsm", 0.1, False), ("fgsm", 0.1, True), ("deepfool", None, False)
    ]
    assert rep.notes == ["deepfool: no targeted mode, so no detector-aware run"]
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["detector"] == "feature_squeezing_detector" and d["target_fpr"] == 0.1 and len(d["rows"]) == 5
    for row in d["rows"]:
        assert row["threshold"] == fs.threshold and row["n"] == 20
        assert set(row) >= {"attack", "adaptive", "clean_fpr", "success_rate", "tpr", "undetected_success_rate"}


# ------------------------------------------------------------------------------------------------
# bad input: one-line errors
@pytest.mark.parametrize("call", ["score", "detect", "calibrate", "evaluate", "aware", "features"])
def test_unfitted_detector_says_to_call_fit_first(call: str, model: gt.models.TorchModel, held_out: tuple[Tensor, Tensor]) -> None:
    det = create("mahalanobis")
    x, y = held_out
    fns = {
        "score": lambda: det.score(x),
        "detect": lambda: det.detect(x),
        "calibrate": lambda: det.calibrate(x),
        "evaluate": lambda: det.evaluate(model, x, y, {"fgsm": create_attack("fgsm", eps=0.1)}),
        "aware": lambda: DetectorAwareModel(model, det),
        "features": lambda: det.features(x),
    }
    with pytest.raises(ConfigError) as e:
        fns[call]()
    assert "call fit" in _one_line(e)


def test_mahalanobis_fit_without_labels_is_a_data_error(model: gt.models.TorchModel, held_out: tuple[Tensor, Tensor]) -> None:
    with pytest.raises(DataError) as e:
        create("mahalanobis").fit(model, held_out[0])
    assert "y_clean" in _one_line(e)


def test_mahalanobis_needs_a_torch_model(model: gt.models.TorchModel, held_out: tuple[Tensor, Tensor]) -> None:
    x, y = held_out
    others = [
        gt.models.CallableModel(lambda v: model.scores(v), num_classes=10, input_shape=(1, 8, 8)),
        create("median_filter", size=2).wrap(model),
    ]
    for other in others:
        with pytest.raises(CapabilityError) as e:
            create("mahalanobis").fit(other, x, y)
        assert "TorchModel" in _one_line(e)


@pytest.mark.parametrize("fpr", [0, 0.0, 1, 1.0, 1.5, -0.1, True, "0.05", float("nan")])
def test_fpr_outside_the_open_unit_interval_is_rejected(fpr: object, model: gt.models.TorchModel, held_out: tuple[Tensor, Tensor]) -> None:
    with pytest.raises(ConfigError) as e:
        create("feature_squeezing_detector").fit(model, held_out[0], fpr=fpr)  # type: ignore[arg-type]
    assert "fpr must be a number in (0, 1)" in _one_line(e)


@pytest.mark.parametrize(
    "name,params",
    [
        ("feature_squeezing_detector", {"bits": 0}),
        ("feature_squeezing_detector", {"bits": 17}),
        ("feature_squeezing_detector", {"median_size": 1}),
        ("feature_squeezing_detector", {"bits": 2.0}),
        ("feature_squeezing_detector", {"bits": None, "median_size": None}),
        ("mahalanobis", {"shrinkage": 1.5}),
        ("mahalanobis", {"shrinkage": "lw"}),
        ("mahalanobis", {"layer": ""}),
        ("mahalanobis", {"layer": 3}),
        ("mahalanobis", {"noise_magnitude": -0.1}),
    ],
)
def test_bad_hyperparameters_are_one_line_config_errors(name: str, params: dict) -> None:
    with pytest.raises(ConfigError) as e:
        create(name, **params)
    assert _one_line(e).startswith(name)


def test_bad_inputs_and_arguments_are_one_line_errors(
    model: gt.models.TorchModel, fs: FeatureSqueezingDetector, held_out: tuple[Tensor, Tensor], digits_train: gt.data.Dataset
) -> None:
    x, y = held_out
    pgd = create_attack("pgd", eps=0.1, steps=2)
    cases: list[tuple[type[Exception], object, str]] = [
        (DataError, lambda: fs.score(x.clone().fill_(float("nan"))), "NaN"),
        (DataError, lambda: fs.detect(x * 2), "outside the model's bounds"),
        (DataError, lambda: fs.score(x[:, :, :4]), "per-sample shape"),
        (DataError, lambda: fs.score(x.numpy()), "torch.Tensor"),  # type: ignore[arg-type]
        (DataError, lambda: create("mahalanobis").fit(model, x, y[:5]), "shape"),
        (DataError, lambda: create("mahalanobis").fit(model, x, y.float()), "integer"),
        (DataError, lambda: create("mahalanobis").fit(model, x, y + 10), "labels"),
        (DataError, lambda: create("mahalanobis").fit(model, x, torch.zeros_like(y)), "single class"),
        (ConfigError, lambda: create("mahalanobis", layer="fc9").fit(model, x, y), "no submodule named 'fc9'"),
        (ConfigError, lambda: fs.fit(model, x, batch_size=0), "batch_size"),
        (ConfigError, lambda: fs.fit(model.module, x), "TorchModel(module"),
        (ConfigError, lambda: fs.evaluate(model, x, y, {}), "non-empty mapping"),
        (ConfigError, lambda: fs.evaluate(model, x, y, {"pgd": "pgd"}), "Attack objects"),
        (ConfigError, lambda: fs.evaluate(model, x, y, {"t": create_attack("pgd", eps=0.1, targeted=True)}), "targeted"),
        (ConfigError, lambda: fs.evaluate(model, x, y, {"pgd": pgd}, adaptive_targets=0), "adaptive_targets"),
        (ConfigError, lambda: fs.evaluate(model, x, y, {"pgd": pgd}, adaptive_scale=0.0), "adaptive_scale"),
        (ConfigError, lambda: fs.evaluate(model, x, y, {"pgd": pgd}, seed=-1), "seed"),
        (DataError, lambda: fs.evaluate(model, x, y[:3], {"pgd": pgd}), "shape"),
        (ConfigError, lambda: fs.evaluate(_tiny_image_net(), torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), {"pgd": pgd}), "not the model"),
        (ConfigError, lambda: DetectorAwareModel(model, fs, scale=-1.0), "scale"),
        (ConfigError, lambda: create("feature_squeezing_detector").fit(_flat_model(), torch.rand(5, 4)), "median_size needs image inputs"),
        (CapabilityError, lambda: fs.fit(gt.models.CallableModel(lambda v: model.predict(v), output="labels", num_classes=10), x), "labels only"),
    ]
    for err, fn, fragment in cases:
        with pytest.raises(err) as e:
            fn()  # type: ignore[operator]
        assert fragment in _one_line(e), (fragment, str(e.value))
    # a failed call leaves the fitted detector usable
    assert fs.detect(x).shape == (100,)
