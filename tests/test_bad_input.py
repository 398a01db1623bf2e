"""Every public entry point of the core answers bad input with one line of a documented class."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.errors import (
    CapabilityError,
    ConfigError,
    DataError,
    GauntletError,
    ThreatModelError,
    UnknownNameError,
)
from gauntlet.models.base import InputSpec, Model
from tests.attack_params import budget_params


class ScoresOnly(Model):
    """A black-box model: scores and labels, no gradients."""

    capabilities = frozenset({"scores", "labels"})

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.input_spec = InputSpec((1, 8, 8))
        self.output = "logits"
        self._num_classes = 10

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg, "error messages are one non-empty line"
    return msg


@pytest.fixture()
def pgd() -> gt.attacks.Attack:
    return gt.attacks.create("pgd", eps=0.1, steps=2)


def test_unknown_attack_name_lists_close_matches() -> None:
    with pytest.raises(UnknownNameError) as e:
        gt.attacks.create("pdg", eps=0.1)
    assert "'pgd'" in one_line(e)


@pytest.mark.parametrize("eps", [0, -0.1, float("nan"), float("inf"), "0.3", [], [0.1, -1.0], True])
def test_eps_must_be_positive_and_finite(eps) -> None:
    with pytest.raises(ThreatModelError) as e:
        gt.attacks.create("pgd", eps=eps)
    assert "eps" in one_line(e)


def test_eps_is_required_for_budgeted_attacks() -> None:
    with pytest.raises(ConfigError, match="eps is required"):
        gt.attacks.create("pgd")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"norm": "l3"}, "'norm' must be one of"),
        ({"steps": 0}, "'steps' must be an int >= 1"),
        ({"steps": 2.5}, "'steps' must be an int"),
        ({"step_size": -1.0}, "'step_size'"),
        ({"restarts": 0}, "'restarts'"),
        ({"loss": "hinge"}, "'loss' must be one of"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"targeted": "yes"}, "'targeted'"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(params, fragment) -> None:
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("pgd", **{"eps": 0.1, **params})
    assert fragment in one_line(e) and one_line(e).startswith("pgd:")


def test_hyperparameters_are_keyword_only() -> None:
    cls = gt.attacks.get_attack_class("pgd")
    with pytest.raises(TypeError):
        cls("linf", 0.1)  # type: ignore[misc]


def test_gradient_attack_on_scores_only_model_names_a_black_box_alternative(digits_net, digits_batch, pgd) -> None:
    x, y = digits_batch
    with pytest.raises(CapabilityError) as e:
        pgd.run(ScoresOnly(digits_net), x, y)
    msg = one_line(e)
    assert "gradients" in msg and "'square'" in msg if "square" in gt.attacks.list_attacks() else "gradients" in msg


def test_a_raw_module_is_refused_with_a_hint(digits_net, digits_batch, pgd) -> None:
    x, y = digits_batch
    with pytest.raises(ConfigError) as e:
        pgd.run(digits_net, x, y)  # type: ignore[arg-type]
    assert "TorchModel" in one_line(e)


def _bad_x(x: torch.Tensor) -> dict[str, tuple[object, str]]:
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    inf = x.clone()
    inf[1, 0, 2, 2] = float("inf")
    return {
        "numpy": (x.numpy(), "torch.from_numpy"),
        "float64": (x.double(), "float64"),
        "int": ((x * 16).to(torch.uint8), "float tensor"),
        "nan": (nan, "NaN or inf"),
        "inf": (inf, "NaN or inf"),
        "above_bounds": (x * 16, "outside the model's bounds"),
        "below_bounds": (x - 0.5, "outside the model's bounds"),
        "wrong_shape": (x[:, :, :4, :4], "per-sample shape"),
        "no_batch_dim": (x[0, 0, 0], "shape (N, ...)"),
        "empty": (x[:0], "non-empty"),
    }


@pytest.mark.parametrize("kind", list(_bad_x(torch.zeros(2, 1, 8, 8))))
def test_bad_inputs_are_refused_with_one_line(kind, digits_model, digits_batch, pgd) -> None:
    x, y = digits_batch
    bad, fragment = _bad_x(x)[kind]
    with pytest.raises(DataError) as e:
        pgd.run(digits_model, bad, y)  # type: ignore[arg-type]
    assert fragment in one_line(e)


@pytest.mark.parametrize(
    ("make_y", "fragment"),
    [
        (lambda y: y.float(), "integer class labels"),
        (lambda y: y[:-1], "must have shape"),
        (lambda y: y + 10, "labels must be in [0, 9]"),
        (lambda y: y - 20, "labels must be in [0, 9]"),
        (lambda y: y.numpy(), "torch.Tensor"),
    ],
)
def test_bad_labels_are_refused(make_y, fragment, digits_model, digits_batch, pgd) -> None:
    x, y = digits_batch
    with pytest.raises(DataError) as e:
        pgd.run(digits_model, x, make_y(y))
    assert fragment in one_line(e)


def test_bad_seed_and_target(digits_model, digits_batch, pgd) -> None:
    x, y = digits_batch
    with pytest.raises(ConfigError, match="seed"):
        pgd.run(digits_model, x, y, seed=-1)
    with pytest.raises(ConfigError, match="targeted=True"):
        pgd.run(digits_model, x, y, target=y)
    targeted = gt.attacks.create("pgd", eps=0.1, steps=2, targeted=True)
    with pytest.raises(DataError, match="target"):
        targeted.run(digits_model, x, y, target=y[:3])
    with pytest.raises(DataError, match="labels must be in"):
        targeted.run(digits_model, x, y, target=y + 100)


def test_target_given_to_an_attack_that_picks_its_own_targets_says_which_attacks_take_one(digits_model, digits_batch) -> None:
    x, y = digits_batch
    with pytest.raises(ConfigError, match="chooses its own target classes") as e:
        gt.attacks.create("apgd_t", eps=0.1, steps=2).run(digits_model, x, y, target=y)
    assert "targeted=True" not in str(e.value).split(";")[0]


def test_clean_pred_of_the_wrong_shape_or_type_is_refused(digits_model, digits_batch, pgd) -> None:
    x, y = digits_batch
    with pytest.raises(DataError, match="clean_pred"):
        pgd.run(digits_model, x, y, clean_pred=y[:3])
    with pytest.raises(DataError, match="clean_pred"):
        pgd.run(digits_model, x, y, clean_pred=y.float())
    with pytest.raises(DataError, match="clean_pred"):
        pgd.run(digits_model, x, y, clean_pred=y + 100)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"norm": "l0"}, "'norm'"),
        ({"eps": -1}, "eps"),
        ({"eps": [0.1, 0]}, "eps[1]"),
        ({"knowledge": "grey"}, "'knowledge'"),
        ({"max_queries": 0}, "'max_queries'"),
    ],
)
def test_threat_model_is_validated_on_construction(kwargs, fragment) -> None:
    with pytest.raises(ThreatModelError) as e:
        gt.ThreatModel(**kwargs)
    assert fragment in one_line(e)


def test_threat_model_normalises_eps_and_maps_knowledge_to_capabilities() -> None:
    t = gt.ThreatModel(norm="l2", eps=[0.5, 1], knowledge="score")
    assert t.epsilons == (0.5, 1.0) and t.capabilities == {"scores", "labels"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"bounds": (1.0, 0.0)}, "low < high"),
        ({"bounds": "01"}, "bounds"),
        ({"num_classes": 1}, "'num_classes'"),
        ({"output": "softmax"}, "'output'"),
        ({"std": [0.0]}, "std"),
        ({"mean": [[0.1]]}, "mean"),
    ],
)
def test_torch_model_options_are_validated(kwargs, fragment) -> None:
    with pytest.raises(ConfigError) as e:
        gt.models.TorchModel(nn.Linear(4, 2), **kwargs)
    assert fragment in one_line(e)


def test_torch_model_refuses_a_non_module() -> None:
    with pytest.raises(ConfigError, match="CallableModel"):
        gt.models.TorchModel(lambda x: x)  # type: ignore[arg-type]


def test_every_error_is_a_gauntlet_error() -> None:
    for cls in (ConfigError, ThreatModelError, UnknownNameError, CapabilityError, DataError):
        assert issubclass(cls, GauntletError)
    assert np  # numpy used above for the conversion hint


def test_normalisation_lives_inside_the_adapter(digits_net, digits_batch) -> None:
    # attacks work in input space; the adapter applies (x - mean) / std before the network
    x, _ = digits_batch
    m = gt.models.TorchModel(digits_net, mean=[0.5], std=[0.25], num_classes=10)
    with torch.no_grad():
        assert torch.allclose(m.scores(x), digits_net((x - 0.5) / 0.25))
    assert m.queries == x.shape[0]


# ------------------------------------------------------------------------------------------------
# a declared num_classes that the model's output contradicts
class CountingNet(nn.Module):
    """A DigitsCNN with ``k`` logits that counts its forward passes (and samples)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.net = gt.models.zoo.DigitsCNN(num_classes=k)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_num_classes_that_contradicts_the_output_is_refused_at_construction_when_the_shape_is_known() -> None:
    net = CountingNet(10)
    with pytest.raises(ConfigError) as e:
        gt.models.TorchModel(net, bounds=(0, 1), num_classes=5, input_shape=(1, 8, 8))
    assert one_line(e) == (
        "TorchModel: num_classes=5 but the model outputs 10 scores per input; pass num_classes=10 or check the model"
    )
    assert net.calls == 1  # one probe forward pass


def test_the_construction_probe_counts_no_query_and_leaves_module_and_rng_as_they_were() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 10))
    net.train()
    stats = net[2].running_mean.clone()
    state = torch.random.get_rng_state()
    m = gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))
    assert m.queries == 0 and m.grad_evals == 0
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert torch.equal(net[2].running_mean, stats) and torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("query", ["scores", "predict"])
def test_num_classes_that_contradicts_the_output_is_refused_on_the_first_query_without_a_shape(query) -> None:
    net = CountingNet(10)
    m = gt.models.TorchModel(net, bounds=(0, 1), num_classes=5)  # no input_shape: nothing to probe with
    assert net.calls == 0
    with pytest.raises(ConfigError) as e:
        getattr(m, query)(torch.rand(3, 1, 8, 8))
    assert one_line(e) == (
        "TorchModel: num_classes=5 but the model outputs 10 scores per input; pass num_classes=10 or check the model"
    )


def test_the_output_width_is_checked_once_not_on_every_query(monkeypatch: pytest.MonkeyPatch) -> None:
    m = gt.models.TorchModel(CountingNet(10), num_classes=10)
    checks = []
    original = Model._check_outputs
    monkeypatch.setattr(Model, "_check_outputs", lambda self, out: (checks.append(1), original(self, out)))
    x = torch.rand(2, 1, 8, 8)
    for _ in range(3):
        m.scores(x)
        m.predict(x)
    assert len(checks) == 1


def test_a_model_that_fails_on_its_declared_input_shape_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError) as e:
        gt.models.TorchModel(gt.models.zoo.DigitsCNN(), num_classes=10, input_shape=(1, 28, 28))
    msg = one_line(e)
    assert msg.startswith("TorchModel: the model fails on one input of per-sample shape (1, 28, 28) (RuntimeError: ")
    assert msg.endswith("); check input_shape or the model")


def test_an_attack_on_a_model_with_the_wrong_num_classes_names_the_mismatch(digits_batch) -> None:
    x, y = digits_batch
    m = gt.models.TorchModel(CountingNet(10), num_classes=12)
    with pytest.raises(ConfigError, match=r"num_classes=12 but the model outputs 10 scores per input"):
        gt.attacks.create("fgsm", eps=0.1).run(m, x, y)


# ------------------------------------------------------------------------------------------------
# a subset larger than the data
def test_a_subset_larger_than_the_split_is_refused_with_both_counts() -> None:
    with pytest.raises(ConfigError) as e:
        gt.data.load("digits", split="test", n=500)
    assert one_line(e) == "load: n=500 but the test split of digits has 450 samples; use n <= 450 or omit n"
    with pytest.raises(ConfigError, match=r"^load: n=1348 but the train split of digits has 1347 samples"):
        gt.data.load("digits", split="train", n=1348)
    with pytest.raises(ConfigError, match=r"^load: n=1798 but digits has 1797 samples; use n <= 1797 or omit n$"):
        gt.data.load("digits", split="all", n=1798)
    assert len(gt.data.load("digits", split="test", n=450)) == 450  # all of it is fine


def test_a_subset_larger_than_a_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((4, 1, 2, 2), dtype=np.float32), y=np.arange(4) % 2)
    with pytest.raises(ConfigError) as e:
        gt.data.load(path, n=5)
    assert one_line(e) == f"load: n=5 but {path} (split='test') has 4 samples; use n <= 4 or omit n"


def test_dataset_subset_refuses_more_than_it_holds() -> None:
    ds = gt.data.load("digits")
    with pytest.raises(ConfigError) as e:
        ds.subset(451)
    assert one_line(e) == "Dataset.subset: n=451 but digits-test has 450 samples; use n <= 450 or omit n"
    with pytest.raises(ConfigError, match="n must be a positive int or None, got 0"):
        ds.subset(0)
    assert ds.subset(450) is ds and ds.subset(None) is ds


# ------------------------------------------------------------------------------------------------
# unknown hyperparameters and eps given as a string
def test_an_unknown_attack_parameter_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("pgd", stepz=3)
    assert one_line(e) == (
        "pgd: unknown parameter 'stepz'; did you mean 'steps'? pgd takes norm, eps, steps, step_size, restarts, "
        "random_start, loss, early_stop, targeted, batch_size"
    )


@pytest.mark.parametrize("name", gt.attacks.list_attacks())
def test_every_attack_refuses_an_unknown_parameter_with_its_list(name) -> None:
    with pytest.raises(ConfigError) as e:
        gt.attacks.create(name, **budget_params(name), zzz=1)
    known = ", ".join(gt.attacks.get_attack_class(name)._param_names()) or "no parameters"
    assert one_line(e) == f"{name}: unknown parameter 'zzz'; {name} takes {known}"


@pytest.mark.parametrize("name", gt.defenses.list_defenses())
def test_every_defense_refuses_an_unknown_parameter_with_its_list(name) -> None:
    with pytest.raises(ConfigError) as e:
        gt.defenses.create(name, zzz=1)
    known = ", ".join(gt.defenses.get_defense_class(name)._param_names()) or "no parameters"
    assert one_line(e) == f"{name}: unknown parameter 'zzz'; {name} takes {known}"


def test_several_unknown_parameters_are_named_together() -> None:
    with pytest.raises(ConfigError) as e:
        gt.defenses.create("median_filter", sizee=3, zzz=1)
    assert one_line(e) == "median_filter: unknown parameters 'sizee', 'zzz'; did you mean 'size'? median_filter takes size"


def test_eps_given_as_a_string_is_named_as_the_string() -> None:
    with pytest.raises(ThreatModelError) as e:
        gt.attacks.create("pgd", eps="0.1")
    assert one_line(e) == "pgd: parameter 'eps' must be a number > 0 or a list of them, got the string '0.1'"
    with pytest.raises(ThreatModelError) as e:
        gt.attacks.create("pgd", eps=[0.05, "0.1"])
    assert one_line(e) == "pgd: eps[1] must be a finite number > 0, got the string '0.1'"
    with pytest.raises(ConfigError) as e:
        gt.attacks.create("pgd", eps=0.1, steps="3")
    assert one_line(e) == "pgd: parameter 'steps' must be an int >= 1, got the string '3'"


# ------------------------------------------------------------------------------------------------
# inputs that require grad
_NO_WARNING_SCRIPT = """
import warnings, torch, gauntlet as gt
from gauntlet.models.zoo import DigitsCNN
warnings.simplefilter("error")
torch.manual_seed(0)
model = gt.models.TorchModel(DigitsCNN().eval(), num_classes=10, input_shape=(1, 8, 8))
ds = gt.data.load("digits", n=4)
x = ds.x.clone().requires_grad_(True)
for name in gt.attacks.list_attacks("evasion"):
    cls = gt.attacks.get_attack_class(name)
    names = cls._param_names()
    params = {"eps": 0.1} if "eps" in names and not cls.minimal else {}
    params.update({"steps": 2} if "steps" in names else {})
    params.update({"max_queries": 100} if "max_queries" in names else {})
    params.update({"surrogate": model} if "surrogate" in names else {})
    res = gt.attacks.create(name, **params).run(model, x, ds.y)
    assert not res.x_adv.requires_grad and x.grad is None, name
print("ok")
"""


def test_inputs_that_require_grad_are_attacked_without_a_warning() -> None:
    # torch warns once per process ("Converting a tensor with requires_grad=True to a scalar ..."),
    # so a fresh interpreter runs every attack with every warning turned into an error
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _NO_WARNING_SCRIPT], check=False, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_inputs_that_require_grad_pass_the_batch_check_without_a_warning(digits_model, digits_batch) -> None:
    x, y = digits_batch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = gt.attacks.create("pgd", eps=0.1, steps=2).run(digits_model, x.clone().requires_grad_(True), y)
    assert not res.x_adv.requires_grad
