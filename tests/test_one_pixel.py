"""One-pixel attack: L0 budget, per-sample query ledger, early stop, closed-form planted models, strength."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.evasion.one_pixel import OnePixel, apply_pixels, three_distinct_others
from gauntlet.errors import BudgetExceeded, CapabilityError, ConfigError
from gauntlet.models.base import InputSpec, Model
from tests.test_nes_spsa import LabelsOnly, ScoresOnly, fit_forest, one_line


class Ledger(Model):
    """Scores of ``fn``; every counted query is charged to the clean sample it was made from and
    checked against ``budget``; a sample queried again after a call that fooled it is an error.

    ``attribute`` gives, per query row, the index of its clean sample (or raises when ambiguous).
    """

    capabilities = frozenset({"scores", "labels"})
    output = "logits"

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        budget: int,
        attribute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.fn = fn
        self.x_clean, self.y = x.flatten(1), y
        self.budget = budget
        self.attribute = attribute
        self.input_spec = InputSpec(tuple(x.shape[1:]), torch.float32, (0.0, 1.0))
        self._num_classes = num_classes
        self.per_sample = torch.zeros(x.shape[0], dtype=torch.int64)
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool)
        self.queried_after_success = 0
        self.call_sizes: list[int] = []
        self.inference: list[bool] = []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(x)

    def scores(self, x: torch.Tensor, *, count: bool = True) -> torch.Tensor:
        out = super().scores(x, count=count)
        if count:
            self.call_sizes.append(int(x.shape[0]))
            self.inference.append(torch.is_inference_mode_enabled())
            owner = self.attribute(x.detach().flatten(1), self.x_clean)
            self.queried_after_success += int(self.fooled[owner].sum())
            self.per_sample += torch.bincount(owner, minlength=self.x_clean.shape[0])
            if int(self.per_sample.max()) > self.budget:
                i = int(self.per_sample.argmax())
                raise BudgetExceeded(f"sample {i} was queried {int(self.per_sample[i])} times, budget {self.budget}")
            self.fooled[owner[out.argmax(dim=1) != self.y[owner]]] = True
        return out

    __call__ = scores


def by_changed_positions(limit: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Owner = the clean sample a query differs from in the fewest elements (at most ``limit``, unique)."""

    def attribute(q: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        diff = (q[:, None, :] != clean[None, :, :]).sum(dim=2)
        two = diff.topk(2, dim=1, largest=False).values
        assert int(two[:, 0].max()) <= limit and bool((two[:, 1] > two[:, 0]).all()), "ambiguous query"
        return diff.argmin(dim=1)

    return attribute


# ---------------------------------------------------------------------------------------------
# planted models with a closed-form answer: 8x8 images in [0, 1], two classes
A, B = (2, 5), (6, 1)


def single_pixel_model(x: torch.Tensor) -> torch.Tensor:
    """Class 1 exactly when pixel A is above 0.75 (channels averaged)."""
    v = x.reshape(x.shape[0], -1, 8, 8)[:, :, A[0], A[1]].mean(dim=1)
    return torch.stack([torch.zeros_like(v), 8 * (v - 0.75)], dim=1)


def two_pixel_model(x: torch.Tensor) -> torch.Tensor:
    """Class 1 exactly when pixels A and B sum above 1.5: no single pixel can flip it."""
    z = x.reshape(x.shape[0], 8, 8)
    v = z[:, A[0], A[1]] + z[:, B[0], B[1]]
    return torch.stack([torch.zeros_like(v), 8 * (v - 1.5)], dim=1)


def planted_inputs(n: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, channels, 8, 8, generator=g) * 0.9 + 0.05  # every pixel differs between samples
    x[:, :, A[0], A[1]] = 0.1
    x[:, :, B[0], B[1]] = 0.1
    return x, torch.zeros(n, dtype=torch.int64)


def changed_positions(adv: torch.Tensor, x: torch.Tensor) -> list[set[tuple[int, int]]]:
    diff = (adv != x).reshape(x.shape[0], -1, 8, 8).any(dim=1)
    return [{(int(r), int(c)) for r, c in d.nonzero().tolist()} for d in diff]


def test_one_pixel_finds_the_single_pixel_that_flips_a_planted_model():
    x, y = planted_inputs(8)
    model = gt.models.CallableModel(single_pixel_model, output="logits", num_classes=2, input_shape=(1, 8, 8))
    # DE needs a population wide enough not to collapse on a landscape flat at 63 of 64 positions
    res = gt.attacks.create("one_pixel", pixels=1, max_queries=2000, popsize=50).run(model, x, y, seed=0)
    assert bool(res.success.all())
    assert changed_positions(res.x_adv, x) == [{A}] * 8  # the only pixel that matters, and nothing else
    assert bool((res.x_adv[:, 0, A[0], A[1]] > 0.75).all())  # the closed-form threshold
    assert torch.equal(res.norms, torch.ones(8))


def test_two_pixels_are_needed_and_found_when_no_single_pixel_can_flip_the_model():
    x, y = planted_inputs(6)
    model = gt.models.CallableModel(two_pixel_model, output="logits", num_classes=2, input_shape=(1, 8, 8))
    one = gt.attacks.create("one_pixel", pixels=1, max_queries=300, popsize=20).run(model, x, y, seed=0)
    assert not bool(one.success.any())  # max over one pixel of x_A + x_B is 1.1 < 1.5
    assert bool((one.info["queries_per_sample"] == 300).all())  # the whole budget, then the fittest try
    two = gt.attacks.create("one_pixel", pixels=2, max_queries=6000, popsize=50).run(model, x, y, seed=0)
    assert bool(two.success.all())
    assert changed_positions(two.x_adv, x) == [{A, B}] * 6
    assert bool((two.x_adv[:, 0, A[0], A[1]] + two.x_adv[:, 0, B[0], B[1]] > 1.5).all())


def test_a_pixel_counts_once_with_all_its_channels():
    x, y = planted_inputs(4, channels=3)
    model = gt.models.CallableModel(single_pixel_model, output="logits", num_classes=2, input_shape=(3, 8, 8))
    res = gt.attacks.create("one_pixel", pixels=1, max_queries=2000, popsize=50).run(model, x, y, seed=0)
    assert bool(res.success.all())
    assert torch.equal(N.norm(res.x_adv - x, "l0"), torch.ones(4))
    assert changed_positions(res.x_adv, x) == [{A}] * 4
    assert bool((res.x_adv[:, :, A[0], A[1]].mean(dim=1) > 0.75).all())  # one value per channel, all three set


@pytest.mark.parametrize(("budget", "popsize"), [(57, 10), (5, 10), (1, 10), (300, 20)])
def test_no_sample_is_queried_past_max_queries_nor_after_it_is_fooled(budget, popsize, digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    model = Ledger(digits_net, x, y, budget, by_changed_positions(2), 10)
    res = gt.attacks.create("one_pixel", pixels=2, max_queries=budget, popsize=popsize).run(model, x, y, seed=0)
    qps = res.info["queries_per_sample"]
    assert torch.equal(qps, model.per_sample), "queries_per_sample must be what each sample really cost"
    assert int(qps.max()) <= budget and int(qps.sum()) == res.queries == model.queries
    assert model.queried_after_success == 0, "a sample was queried again after a generation fooled it"
    assert bool((qps[~res.clean_correct] == 1).all())
    standing = res.clean_correct & ~res.success
    assert bool((qps[standing] == budget).all())  # the initial population and last generation are cut to fit
    # a fooled sample stopped after the generation that fooled it: 1 + popsize · (generations + 1)
    won = res.clean_correct & res.success
    if budget >= 1 + popsize:
        assert bool((((qps[won] - 1) % popsize == 0) | (qps[won] == budget)).all())
    if budget == 300:
        assert bool((qps[won] < budget).any())  # early stop saved queries
    assert sum(model.inference) == len(model.inference)  # every counted query under inference_mode


def test_calls_are_chunked_and_the_chunking_does_not_change_the_result():
    x, y = planted_inputs(5)
    runs = []
    for chunk in (7, 4096):
        model = Ledger(two_pixel_model, x, y, 800, by_changed_positions(2), 2)
        res = gt.attacks.create("one_pixel", pixels=2, max_queries=800, popsize=20, max_batch_size=chunk).run(
            model, x, y, seed=0
        )
        runs.append(res)
        assert max(model.call_sizes) <= chunk
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].info["queries_per_sample"], runs[1].info["queries_per_sample"])


def test_few_pixels_flip_most_digits_and_respect_the_pixel_budget(digits_model, digits_batch):
    x, y = digits_batch
    res = gt.attacks.create("one_pixel", pixels=3, max_queries=1000, popsize=50).run(digits_model, x, y, seed=0)
    assert res.norm == "l0" and res.grad_evals == 0
    assert float(res.norms.max()) <= 3 and torch.equal(res.norms, N.norm(res.x_adv - x, "l0"))
    assert torch.equal(res.success, digits_model.predict(res.x_adv, count=False) != y)
    assert res.success_rate >= 0.5  # measured 0.78-0.84 (seeds 0, 1, 2; 0.25 with one pixel)
    assert res.queries == digits_model.queries == int(res.info["queries_per_sample"].sum())
    assert res.info["median_queries_successful"] < 1000


def test_targeted_reaches_the_target(digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    target = (y + 3) % 10
    res = gt.attacks.create("one_pixel", pixels=5, max_queries=2000, popsize=50, targeted=True).run(
        ScoresOnly(digits_net), x, y, seed=0, target=target
    )
    assert res.targeted and torch.equal(res.target, target)
    assert res.success_rate >= 0.25  # measured 0.5 (seeds 0, 1, 2)
    assert float(res.norms.max()) <= 5


def test_attacks_a_random_forest_through_the_sklearn_adapter(digits_train, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    model = gt.models.SklearnModel(fit_forest(digits_train), input_shape=(1, 8, 8))
    res = gt.attacks.create("one_pixel", pixels=3, max_queries=600, popsize=30).run(model, x, y, seed=0)
    assert res.success_rate >= 0.3  # measured 0.5-0.62 (seeds 0, 1, 2)
    assert int(res.info["queries_per_sample"].max()) <= 600
    assert float(res.norms.max()) <= 3


@pytest.mark.parametrize("options", [{}, {"crossover": 0.5}, {"init": "normal"}])
def test_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone(options, digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:8], y[:8]
    attack = gt.attacks.create("one_pixel", pixels=2, max_queries=200, popsize=20, **options)
    state = torch.get_rng_state()
    a = attack.run(ScoresOnly(digits_net), x, y, seed=5)
    b = attack.run(ScoresOnly(digits_net), x, y, seed=5)
    c = attack.run(ScoresOnly(digits_net), x, y, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_crossover_and_the_normal_init_change_the_search(digits_net, digits_batch):
    x, y = digits_batch
    x, y = x[:8], y[:8]
    base = gt.attacks.create("one_pixel", pixels=2, max_queries=200, popsize=20).run(ScoresOnly(digits_net), x, y, seed=0)
    for options in ({"crossover": 0.5}, {"init": "normal"}):
        other = gt.attacks.create("one_pixel", pixels=2, max_queries=200, popsize=20, **options)
        res = other.run(ScoresOnly(digits_net), x, y, seed=0)
        assert not torch.equal(res.x_adv, base.x_adv)
        assert float(res.norms.max()) <= 2


def test_de_rand_1_draws_three_distinct_other_members():
    g = torch.Generator().manual_seed(0)
    r1, r2, r3 = three_distinct_others(200, 5, g, torch.device("cpu"))
    i = torch.arange(5).expand(200, 5)
    for r in (r1, r2, r3):
        assert bool(((r >= 0) & (r < 5) & (r != i)).all())
    assert bool(((r1 != r2) & (r1 != r3) & (r2 != r3)).all())
    # uniform over the other members: each of the 4 others is drawn about a quarter of the time
    counts = torch.bincount((r1 - i - 1).remainder(5).flatten(), minlength=5)
    assert int(counts[4]) == 0 and int(counts[:4].min()) > 200 * 5 / 4 * 0.8


def test_apply_pixels_floors_positions_and_sets_every_channel():
    x = torch.zeros(1, 3, 4, 4)
    cand = torch.tensor([[[1.9, 3.2, 0.1, 0.2, 0.3], [0.0, 0.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)
    out = apply_pixels(x, cand)
    assert torch.allclose(out[0, :, 1, 3], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(out[0, :, 0, 0], torch.ones(3))
    assert int((out != 0).any(dim=1).sum()) == 2 and torch.equal(x, torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_queries": 0}, "one_pixel: parameter 'max_queries' must be an int >= 1, got 0"),
        ({"pixels": 0}, "one_pixel: parameter 'pixels' must be an int >= 1, got 0"),
        ({"popsize": 3}, "one_pixel: parameter 'popsize' must be an int >= 4, got 3"),
        ({"mutation": 0.0}, "one_pixel: parameter 'mutation' must be a finite number > 0 and <= 2, got 0.0"),
        ({"crossover": 1.5}, "one_pixel: parameter 'crossover' must be a finite number > 0 and <= 1 or None, got 1.5"),
        ({"init": "gauss"}, "one_pixel: parameter 'init' must be one of 'normal', 'uniform', got 'gauss'"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, message):
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("one_pixel", **params)
    assert one_line(e) == message


def test_takes_no_eps():
    with pytest.raises(ConfigError):
        gt.attacks.create("one_pixel", eps=0.1)


def test_a_labels_only_model_is_refused_naming_hopskipjump(digits_net, digits_batch):
    x, y = digits_batch
    with pytest.raises(CapabilityError) as e:
        gt.attacks.create("one_pixel").run(LabelsOnly(digits_net), x, y)
    msg = one_line(e)
    assert msg.startswith("one_pixel needs scores") and "hopskipjump" in msg.lower()


def test_registered_as_one_pixel_with_scores_and_l0():
    cls = gt.attacks.get_attack_class("one_pixel")
    assert cls is OnePixel and cls.requires == frozenset({"scores"}) and cls.norms == ("l0",)
    attack = gt.attacks.create("one_pixel")
    assert attack.get_params()["popsize"] == 400 and attack.get_params()["mutation"] == 0.5
    assert attack.get_params()["crossover"] is None
