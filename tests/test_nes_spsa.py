"""NES-PGD and SPSA: score-only access, per-sample query budgets, early stop, strength, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion.nes import NES, score_loss
from gauntlet.attacks.evasion.spsa import SPSA
from gauntlet.errors import BudgetExceeded, CapabilityError, ConfigError
from gauntlet.models.base import InputSpec, Model


class ScoresOnly(Model):
    """A black box: logits out, no gradients (the digits net behind a query interface)."""

    capabilities = frozenset({"scores", "labels"})
    output = "logits"

    def __init__(self, net: nn.Module, shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        self.net = net
        self.input_spec = InputSpec(shape, torch.float32, (0.0, 1.0))
        self._num_classes = 10
        self.call_sizes: list[int] = []
        self.inference: list[bool] = []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self.call_sizes.append(int(x.shape[0]))
        self.inference.append(torch.is_inference_mode_enabled())
        with torch.no_grad():
            return self.net(x)


class LabelsOnly(ScoresOnly):
    capabilities = frozenset({"labels"})


class Budgeted(ScoresOnly):
    """Counts every counted query against the clean sample it belongs to (the nearest in ``norm``,
    which must be unambiguous) and raises as soon as one sample is queried past ``budget``."""

    def __init__(self, net: nn.Module, x_clean: torch.Tensor, budget: int, norm: str) -> None:
        super().__init__(net)
        self.x_clean = x_clean.flatten(1)
        self.budget = budget
        self.norm = norm
        self.per_sample = torch.zeros(x_clean.shape[0], dtype=torch.int64)
        d = torch.cdist(self.x_clean, self.x_clean, p=float("inf") if norm == "linf" else 2.0)
        d.fill_diagonal_(float("inf"))
        self.half_gap = float(d.min()) / 2

    def scores(self, x: torch.Tensor, *, count: bool = True) -> torch.Tensor:
        if count:
            d = torch.cdist(x.detach().flatten(1), self.x_clean, p=float("inf") if self.norm == "linf" else 2.0)
            dist, owner = d.min(dim=1)
            assert float(dist.max()) < self.half_gap, "a query is too far from every clean sample to attribute"
            self.per_sample += torch.bincount(owner, minlength=self.x_clean.shape[0])
            if int(self.per_sample.max()) > self.budget:
                i = int(self.per_sample.argmax())
                raise BudgetExceeded(f"sample {i} was queried {int(self.per_sample[i])} times, budget {self.budget}")
        return super().scores(x, count=count)

    __call__ = scores


def fit_forest(train: gt.data.Dataset):
    """A random forest on the digits (≈ 97% clean test accuracy): scores are probabilities."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=50, random_state=0).fit(train.x.flatten(1).numpy(), train.y.numpy())


@pytest.fixture(scope="module")
def digits_forest(digits_train):
    return fit_forest(digits_train)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nes", "spsa"])
def test_declares_scores_only_and_runs_on_a_black_box(name, digits_net, digits_batch):
    assert gt.attacks.get_attack_class(name).requires == frozenset({"scores"})
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    res = gt.attacks.create(name, eps=0.1, max_queries=60, samples=10).run(model, x, y, seed=0)
    assert res.grad_evals == 0 and res.queries == model.queries > 0
    qps = res.info["queries_per_sample"]
    assert qps.shape == (32,) and int(qps.sum()) == res.queries
    # forward-only work runs under inference mode (the base class's own checks are the exceptions)
    assert sum(model.inference) >= len(model.inference) - 2


@pytest.mark.parametrize(
    ("name", "norm", "eps", "budget", "samples"),
    [("nes", "linf", 0.1, 57, 10), ("nes", "l2", 0.3, 40, 12), ("spsa", "linf", 0.08, 64, 16), ("nes", "linf", 0.1, 2, 10)],
)
def test_no_sample_is_ever_queried_past_max_queries(name, norm, eps, budget, samples, digits_net, digits_batch):
    x, y = digits_batch
    model = Budgeted(digits_net, x, budget, norm)
    attack = gt.attacks.create(name, norm=norm, eps=eps, max_queries=budget, samples=samples, max_batch_size=64)
    res = attack.run(model, x, y, seed=0)  # raises BudgetExceeded past the budget
    qps = res.info["queries_per_sample"]
    assert torch.equal(qps, model.per_sample), "queries_per_sample must be what each sample really cost"
    assert int(qps.max()) <= budget and int(qps.sum()) == res.queries
    # standing points spend the whole budget, down to the last affordable pair of queries
    standing = ~res.success
    if budget >= 3:
        assert bool((qps[standing] >= budget - 1).all())
    assert max(model.call_sizes) <= 64


@pytest.mark.parametrize("name", ["nes", "spsa"])
def test_points_stop_being_queried_once_fooled(name, digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create(name, eps=0.2, max_queries=2000, samples=20).run(ScoresOnly(digits_net), x, y, seed=0)
    qps = res.info["queries_per_sample"]
    # a clean mistake costs the one query that finds it
    assert bool((qps[~res.clean_correct] == 1).all())
    # the fooled points stopped early; mean/median of the successful ones are reported
    fooled = res.success & res.clean_correct
    assert int(fooled.sum()) > 20 and float(qps[fooled].double().mean()) < 1000
    assert res.info["mean_queries_successful"] == pytest.approx(float(qps[res.success].double().mean()))


def test_nes_linf_and_l2_drive_undefended_digits_accuracy_down(digits_net, digits_batch):
    x, y = digits_batch
    model = ScoresOnly(digits_net)
    res = gt.attacks.create("nes", eps=0.2, max_queries=3000).run(model, x, y, seed=0)
    assert float(res.clean_correct.float().mean()) > 0.9
    assert res.robust_accuracy <= 0.07  # measured 1/32; white-box PGD-40 leaves 0/32
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.2 + 1e-6
    res2 = gt.attacks.create("nes", norm="l2", eps=1.5, max_queries=3000).run(model, x, y, seed=0)
    assert res2.robust_accuracy <= 0.25  # measured 0/32
    assert float(N.norm(res2.x_adv - x, "l2").max()) <= 1.5 * (1 + 1e-5)


def test_spsa_drives_undefended_digits_accuracy_down(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("spsa", eps=0.2, max_queries=4000).run(ScoresOnly(digits_net), x, y, seed=0)
    assert res.robust_accuracy <= 0.1


@pytest.mark.parametrize("name", ["nes", "spsa"])
def test_score_based_robust_accuracy_is_close_to_white_box_pgd(name, digits_net, digits_batch, digits_model):
    x, y = digits_batch
    eps = 0.1
    white = gt.attacks.create("pgd", eps=eps, steps=40).run(digits_model, x, y, seed=0)
    black = gt.attacks.create(name, eps=eps, max_queries=2000).run(ScoresOnly(digits_net), x, y, seed=0)
    # measured on these 32 digits: PGD-40 0.625, NES 0.656, SPSA 0.688
    assert black.robust_accuracy <= white.robust_accuracy + 0.125


def test_nes_targeted_reaches_the_target_class(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("nes", eps=0.3, max_queries=3000, targeted=True).run(ScoresOnly(digits_net), x, y, seed=0)
    assert bool((res.target != y).all())
    assert res.success_rate >= 0.7  # measured 0.97


@pytest.mark.parametrize("name", ["nes", "spsa"])
def test_same_seed_same_result_other_seed_other_result(name, digits_net, digits_batch):
    x, y = digits_batch
    attack = gt.attacks.create(name, eps=0.1, max_queries=200, samples=10)
    a = attack.run(ScoresOnly(digits_net), x, y, seed=1)
    b = attack.run(ScoresOnly(digits_net), x, y, seed=1)
    c = attack.run(ScoresOnly(digits_net), x, y, seed=2)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.info["queries_per_sample"], b.info["queries_per_sample"])
    assert not torch.equal(a.x_adv, c.x_adv)


def test_several_eps_report_queries_per_eps_and_sample(digits_net, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("nes", eps=[0.05, 0.2], max_queries=150, samples=10, batch_size=16).run(
        ScoresOnly(digits_net), x, y, seed=0
    )
    qps = res.info["queries_per_sample"]
    assert qps.shape == (2, 32) and int(qps.sum()) == res.queries and int(qps.max()) <= 150
    assert float(qps[1].double().mean()) < float(qps[0].double().mean())  # the larger ε falls sooner


def test_random_forest_is_attacked_through_its_probabilities(digits_forest, digits_batch):
    x, y = digits_batch
    model = gt.models.SklearnModel(digits_forest, input_shape=(1, 8, 8))
    # a forest's scores are piecewise constant: σ must be large enough to cross its thresholds
    res = gt.attacks.create("nes", eps=0.2, max_queries=1000, sigma=0.1).run(model, x, y, seed=0)
    assert float(res.clean_correct.float().mean()) > 0.85
    assert res.success_rate >= 0.5  # measured 0.72 (0.84 at 2000 queries)
    assert int(res.info["queries_per_sample"].max()) <= 1000


def test_callable_model_numpy_black_box(digits_net, digits_batch):
    x, y = digits_batch

    def fn(t: torch.Tensor):
        with torch.no_grad():
            return digits_net(t).numpy()

    model = gt.models.CallableModel(fn, num_classes=10, input_shape=(1, 8, 8))
    res = gt.attacks.create("spsa", eps=0.2, max_queries=1500, samples=32, learning_rate=0.02).run(model, x, y, seed=0)
    assert res.robust_accuracy <= 0.2 and res.queries == model.queries  # measured 0.06


def test_score_loss_cross_entropy_reads_probabilities_as_such():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(score_loss("ce", logits, y, None, "logits"), ce)
    assert torch.allclose(score_loss("ce", logits.softmax(1), y, None, "probabilities"), ce, atol=1e-6)
    t = torch.tensor([1, 1])
    assert torch.allclose(score_loss("margin", logits, y, t, "logits"), torch.tensor([-1.5, -2.0]))


# ---------------------------------------------------------------------------------------------
# errors
@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nes", {"samples": 3}, "nes: parameter 'samples' must be an even int >= 2, got 3"),
        ("nes", {"max_queries": 0}, "nes: parameter 'max_queries' must be an int >= 1, got 0"),
        ("nes", {"sigma": -0.1}, "nes: parameter 'sigma' must be a finite number > 0, got -0.1"),
        ("nes", {"momentum": 1.0}, "nes: parameter 'momentum' must be a finite number >= 0 and < 1, got 1.0"),
        ("nes", {"norm": "l1"}, "nes: parameter 'norm' must be one of 'l2', 'linf', got 'l1'"),
        ("spsa", {"norm": "l2"}, "spsa: parameter 'norm' must be one of 'linf', got 'l2'"),
        ("spsa", {"learning_rate": 0}, "spsa: parameter 'learning_rate' must be a finite number > 0, got 0"),
        ("spsa", {"loss": "dlr"}, "spsa: parameter 'loss' must be one of 'ce', 'margin', got 'dlr'"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(name, params, message):
    with pytest.raises(ConfigError) as e:
        gt.attacks.create(name, eps=0.1, **params)
    assert one_line(e) == message


@pytest.mark.parametrize("name", ["nes", "spsa"])
def test_a_labels_only_model_is_refused_naming_hopskipjump(name, digits_net, digits_batch):
    x, y = digits_batch
    model = LabelsOnly(digits_net)
    with pytest.raises(CapabilityError) as e:
        gt.attacks.create(name, eps=0.1).run(model, x, y)
    msg = one_line(e)
    assert msg.startswith(f"{name} needs scores") and "hopskipjump" in msg.lower()
    assert model.queries == 0


def test_classes_are_registered_under_their_names():
    assert gt.attacks.get_attack_class("nes") is NES and gt.attacks.get_attack_class("spsa") is SPSA
    assert NES.norms == ("linf", "l2") and SPSA.norms == ("linf",)
