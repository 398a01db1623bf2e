"""Evaluation-hygiene flags: each fires on a model or result built to trigger it, none on a clean model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gauntlet as gt
from gauntlet.attacks import create
from gauntlet.audit.flags import CHECKS, compute_flags
from gauntlet.audit.studies.evasion import UnitRecord

pytestmark = pytest.mark.usefixtures("one_thread_module")

REQUIRED = {"id", "severity", "title", "explanation", "evidence"}


@pytest.fixture()
def digits64(digits_test: gt.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return digits_test.x[:64].clone(), digits_test.y[:64].clone()


def wrap(module: nn.Module) -> gt.models.TorchModel:
    return gt.models.TorchModel(module, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))


class Rounded(nn.Module):
    """Quantises its input before the network: the input gradient is exactly zero everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 4) / 4)


class Detached(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach())


class AlwaysDropout(nn.Module):
    """Dropout applied even in eval mode (as in some 'randomised' defenses)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.net(x), p=0.3, training=True)


class Softmaxed(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=1)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        return -g


class ReversedGradient(nn.Module):
    """Correct forward pass, gradient pointing the wrong way: non-zero but useless to PGD."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_Reverse.apply(x))


def real_units(model: gt.models.TorchModel, x: torch.Tensor, y: torch.Tensor) -> list[UnitRecord]:
    units = []
    eps = (0.05, 0.1, 0.2)
    for name, params in [("fgsm", {}), ("pgd", {"steps": 10})]:
        r = create(name, norm="linf", eps=list(eps), **params).run(model, x, y, seed=0)
        units.append(UnitRecord(name, name, params, "linf", eps, 0, x.shape[0], r.success.tolist(), r.norms.tolist(),
                                r.queries, r.grad_evals, r.seconds))
    return units


def unit(attack: str, success: list[list[bool]], eps: tuple[float, ...], name: str | None = None) -> UnitRecord:
    n = len(success[0])
    return UnitRecord(attack, name or attack, {}, "linf", eps, 0, n, success, [[e] * n for e in eps], 10 * n, 0, 1.0)


def ids(flags: list[dict]) -> list[str]:
    return [f["id"] for f in flags]


def test_clean_undefended_digits_model_raises_no_flag_at_all(digits_model, digits64):
    x, y = digits64
    units = real_units(digits_model, x, y)
    clean = (digits_model.predict(x) == y).tolist()
    assert compute_flags(digits_model, x, y, units, clean) == []


def test_rounding_model_is_flagged_for_zero_gradients_on_every_input(digits_net, digits64):
    x, y = digits64
    flags = compute_flags(wrap(Rounded(digits_net)), x, y, [], [True] * 64)
    f = next(f for f in flags if f["id"] == "zero_gradients")
    assert f["severity"] == "warning"
    assert f["evidence"]["share"] == 1.0 and f["evidence"]["samples_vanishing"] == 64
    assert "gradient masking" in f["explanation"] and "What to do" in f["explanation"]


def test_detached_model_is_flagged_for_zero_gradients_with_the_reason(digits_net, digits64):
    x, y = digits64
    flags = compute_flags(wrap(Detached(digits_net)), x, y, [], [True] * 64)
    f = next(f for f in flags if f["id"] == "zero_gradients")
    assert f["evidence"]["share"] == 1.0
    assert "differentiabl" in f["evidence"]["reason"]


def test_dropout_left_on_is_flagged_as_nondeterministic(digits_net, digits64):
    x, y = digits64
    flags = compute_flags(wrap(AlwaysDropout(digits_net)), x, y, [], [True] * 64)
    assert "nondeterministic_outputs" in ids(flags)
    f = next(f for f in flags if f["id"] == "nondeterministic_outputs")
    assert f["evidence"]["samples_changed"] >= 60  # dropout p=0.3 on 10 logits changes almost every row
    assert "Expectation over Transformation" in f["explanation"]


def test_softmax_outputs_are_flagged_as_probabilities_not_logits(digits_net, digits64):
    x, y = digits64
    flags = compute_flags(wrap(Softmaxed(digits_net)), x, y, [], [True] * 64)
    f = next(f for f in flags if f["id"] == "probabilities_not_logits")
    assert f["evidence"]["share_probability_rows"] == 1.0
    assert f["evidence"]["declared_probabilities"] is False


def test_model_pgd_cannot_break_at_half_the_input_range_is_flagged(digits_net, digits64):
    x, y = digits64
    flags = compute_flags(wrap(ReversedGradient(digits_net)), x, y, [], [True] * 64)
    assert ids(flags) == ["no_full_break_at_large_eps"]  # gradients are non-zero, only the large-ε probe catches it
    case = flags[0]["evidence"]["cases"][0]
    assert case["norm"] == "linf" and case["eps"] == 0.5
    assert case["accuracy"] > 0.5


def test_black_box_attack_beating_every_gradient_attack_is_flagged(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    units = [
        unit("pgd", [[True, True] + [False] * 8], (0.1,)),  # 8/10 robust
        unit("fgsm", [[True] + [False] * 9], (0.1,)),  # 9/10 robust
        unit("square", [[True] * 7 + [False] * 3], (0.1,)),  # 3/10 robust: 5 broken that no gradient attack broke
    ]
    flags = compute_flags(digits_model, x, y, units, [True] * 10)
    assert ids(flags) == ["black_box_beats_white_box"]
    (case,) = flags[0]["evidence"]["cases"]
    assert case == {
        "norm": "linf", "eps": 0.1, "samples": 10, "black_box": "square", "black_box_robust_accuracy": 0.3,
        "best_white_box": "pgd", "white_box": ["pgd", "fgsm"], "white_box_robust_accuracy": 0.8,
        "broken_only_by_black_box": 5, "p_value": 0.5**5,
    }
    assert "'square'" in flags[0]["explanation"] and "30.0%" in flags[0]["explanation"]


def test_a_black_box_lead_within_noise_or_on_a_subsample_is_compared_on_the_same_points(digits_model, digits_test):
    x, y = digits_test.x[:20], digits_test.y[:20]
    pgd = unit("pgd", [[True] * 4 + [False] * 16], (0.1,))  # 16/20 robust
    # 4 more broken (p = 1/16): within noise
    assert compute_flags(digits_model, x, y, [pgd, unit("square", [[True] * 8 + [False] * 12], (0.1,))], [True] * 20) == []
    # a cross-check on samples 0:10 only: 5 broken there that pgd did not break, compared on those 10
    cross = UnitRecord("square (cross-check)", "square", {}, "linf", (0.1,), 0, 10, [[True] * 9 + [False]], [[0.1] * 10], 100, 0, 1.0)
    flags = compute_flags(digits_model, x, y, [pgd, cross], [True] * 20)
    assert ids(flags) == ["black_box_beats_white_box"]
    (case,) = flags[0]["evidence"]["cases"]
    assert case["samples"] == 10 and case["white_box_robust_accuracy"] == 0.6 and case["black_box_robust_accuracy"] == 0.1


def test_black_box_attack_weaker_than_gradient_attack_is_not_flagged(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    units = [unit("pgd", [[True] * 6 + [False] * 4], (0.1,)), unit("square", [[True] * 5 + [False] * 5], (0.1,))]
    assert compute_flags(digits_model, x, y, units, [True] * 10) == []


def test_robust_accuracy_rising_with_eps_is_flagged_with_the_place(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    success = [[True] * 5 + [False] * 5, [True] * 2 + [False] * 8, [True] * 6 + [False] * 4]
    flags = compute_flags(digits_model, x, y, [unit("pgd", success, (0.1, 0.2, 0.3))], [True] * 10)
    assert ids(flags) == ["non_monotonic_eps"]
    cases = flags[0]["evidence"]["cases"]
    assert {(c["attack"], c["eps_low"], c["eps_high"]) for c in cases} == {("pgd", 0.1, 0.2), ("worst case", 0.1, 0.2)}
    assert "50.0% at ε=0.1 to 80.0% at ε=0.2" in flags[0]["explanation"]


def test_labels_only_model_reports_gradient_checks_skipped_as_info(digits_net, digits64):
    x, y = digits64
    model = gt.models.CallableModel(lambda t: digits_net(t).argmax(1), output="labels", num_classes=10)
    flags = compute_flags(model, x, y, [], [True] * 64)
    assert [(f["id"], f["severity"]) for f in flags] == [("gradient_checks_skipped", "info")]


def test_checks_leave_query_counters_and_training_mode_untouched(digits_net, digits64):
    x, y = digits64
    model = wrap(digits_net)
    model.queries, model.grad_evals = 7, 3
    digits_net.train()
    try:
        compute_flags(model, x, y, [], [True] * 64)
        assert (model.queries, model.grad_evals) == (7, 3)
        assert digits_net.training
    finally:
        digits_net.eval()


def test_every_flag_has_the_documented_shape_and_a_known_id(digits_net, digits64):
    x, y = digits64
    flags = compute_flags(wrap(Rounded(Softmaxed(digits_net))), x, y, [], [True] * 64)
    assert len(flags) >= 2
    for f in flags:
        assert set(f) == REQUIRED
        assert f["id"] in CHECKS and f["severity"] in ("warning", "info")
        assert len(f["explanation"]) > 200 and "What to do" in f["explanation"]


def test_a_worst_case_over_other_attacks_at_one_eps_is_not_called_non_monotonic(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    pgd = unit("pgd", [[True] * 5 + [False] * 5, [True] * 7 + [False] * 3], (0.1, 0.2))  # 5 then 3 robust
    # a cross-check at ε = 0.1 only breaks 3 more there (within noise): the worst case is 2 at 0.1, 3 at 0.2
    cross = UnitRecord("square (cross-check)", "square", {}, "linf", (0.1,), 0, 10, [[True] * 8 + [False] * 2], [[0.1] * 10], 100, 0, 1.0)
    assert compute_flags(digits_model, x, y, [pgd, cross], [True] * 10) == []
