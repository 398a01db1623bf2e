"""TorchModel's forward-only fast path (a frozen TorchScript copy, issue 14): equal to eager on every
zoo architecture and on random small modules, built once per weights (never per batch size), rebuilt
on a weight change, never used in train mode, with hooks, with ``fast=False`` or under autograd,
refused with one log line when the module cannot be traced, and never pickled."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.attacks.base import loss_and_grad
from gauntlet.errors import ConfigError
from gauntlet.models._fast import MIN_BATCH
from gauntlet.models.features import features
from gauntlet.models.zoo import ARCHITECTURES, DigitsCNN, LeNet5

LOGGER = "gauntlet.models._fast"
N = MIN_BATCH  # the smallest batch that takes the fast path
CANDIDATE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def seeded(factory, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory().eval()


def input_shape(net: nn.Module) -> tuple[int, ...]:
    """The first candidate per-sample shape the network runs on (the zoo has no shape registry)."""
    for shape in CANDIDATE_SHAPES:
        try:
            with torch.no_grad():
                net(torch.zeros(1, *shape))
        except RuntimeError:
            continue
        return shape
    raise AssertionError(f"{type(net).__name__} runs on none of {CANDIDATE_SHAPES}")


def rand(n: int, shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def no_grad_scores(model: gt.models.TorchModel, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.scores(x)


def eager(net: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return net(x)


@pytest.fixture()
def digits() -> tuple[nn.Module, gt.models.TorchModel]:
    net = seeded(DigitsCNN)
    return net, gt.models.TorchModel(net, num_classes=10, input_shape=(1, 8, 8))


# ------------------------------------------------------------------------------------------------
# exactness
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_fast_logits_equal_eager_within_1e5_on_every_zoo_architecture(arch: str) -> None:
    net = seeded(ARCHITECTURES[arch])
    shape = input_shape(net)
    model = gt.models.TorchModel(net, num_classes=10, input_shape=shape)
    x = rand(N, shape)
    out = no_grad_scores(model, x)
    assert model.fast_path == "frozen"
    assert (out - eager(net, x)).abs().max() <= 1e-5


def random_module(seed: int) -> nn.Module:
    """A Sequential of Conv/BatchNorm/ReLU/MaxPool/Flatten/Linear, sizes and BN statistics drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda *xs: xs[int(torch.randint(len(xs), (1,), generator=g))]
    c1, c2, hidden = pick(4, 8), pick(8, 16), pick(16, 32)
    layers: list[nn.Module] = [nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2)]
    if seed % 2:
        layers += [nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU()]
    else:
        c2 = c1
    layers += [nn.Flatten(), nn.Linear(c2 * 4 * 4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 5)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


@pytest.mark.parametrize("seed", range(4))
def test_fast_logits_equal_eager_within_1e5_on_random_small_modules(seed: int) -> None:
    net = random_module(seed)
    model = gt.models.TorchModel(net, num_classes=5, mean=0.4, std=0.2)
    x = rand(N + 1, (1, 8, 8), seed)
    out = no_grad_scores(model, x)
    assert model.fast_path == "frozen"
    assert (out - eager(net, (x - 0.4) / 0.2)).abs().max() <= 1e-5


def test_predict_takes_the_fast_path_and_its_outputs_are_ordinary_tensors(digits) -> None:
    net, model = digits
    x = rand(N, (1, 8, 8))
    assert torch.equal(model.predict(x), eager(net, x).argmax(1))
    assert model.fast_path == "frozen" and model.queries == N
    out = no_grad_scores(model, x)
    assert not out.is_inference()
    out[0, 0] = 0.0  # callers may edit the scores in place, as they could eager ones


def test_first_use_under_inference_mode_builds_the_copy_and_matches_eager(digits) -> None:
    net, model = digits
    x = rand(N, (1, 8, 8))
    with torch.inference_mode():
        out = model.scores(x)
    assert model.fast_path == "frozen" and out.is_inference()
    assert (out - eager(net, x)).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------
# one build per weights
def test_batch_sizes_from_1_to_1024_do_not_retrace(digits) -> None:
    net, model = digits
    model._frozen.min_batch = 1  # the frozen graph itself, on small batches too
    for n in (1, 2, 3, 7, 64, 255, 1024, 5):
        x = rand(n, (1, 8, 8), n)
        assert (no_grad_scores(model, x) - eager(net, x)).abs().max() <= 1e-5
    assert model._frozen.builds == 1


def test_batches_below_min_batch_run_eagerly_and_build_nothing(digits) -> None:
    net, model = digits
    for n in (1, 8, N - 1):
        x = rand(n, (1, 8, 8))
        assert torch.equal(no_grad_scores(model, x), eager(net, x))
    assert model.fast_path == "pending" and model._frozen.builds == 0


def test_an_inplace_weight_update_rebuilds_and_the_new_logits_are_right(digits) -> None:
    net, model = digits
    x = rand(N, (1, 8, 8))
    no_grad_scores(model, x)
    with torch.no_grad():
        net.fc2.weight.mul_(-2.0)
    out = no_grad_scores(model, x)
    assert model._frozen.builds == 2
    assert (out - eager(net, x)).abs().max() <= 1e-5


def test_load_state_dict_rebuilds_and_the_new_logits_are_right(digits) -> None:
    net, model = digits
    x = rand(N, (1, 8, 8))
    before = no_grad_scores(model, x)
    net.load_state_dict(seeded(DigitsCNN, seed=5).state_dict())
    out = no_grad_scores(model, x)
    assert model._frozen.builds == 2
    assert (out - eager(net, x)).abs().max() <= 1e-5 and not torch.allclose(out, before)
    no_grad_scores(model, x)
    assert model._frozen.builds == 2  # unchanged weights: the copy is reused


# ------------------------------------------------------------------------------------------------
# where the eager module runs
def test_a_module_in_train_mode_runs_eagerly() -> None:
    net = random_module(0).train()
    model = gt.models.TorchModel(net, num_classes=5)
    stats = net[1].running_mean.clone()
    no_grad_scores(model, rand(N, (1, 8, 8)))
    assert not torch.equal(net[1].running_mean, stats)  # batch norm updated its statistics: eager ran
    assert model.fast_path == "pending" and model._frozen.builds == 0


def test_fast_false_runs_eagerly_and_is_validated(digits) -> None:
    net, _ = digits
    model = gt.models.TorchModel(net, num_classes=10, fast=False)
    x = rand(N, (1, 8, 8))
    assert torch.equal(no_grad_scores(model, x), eager(net, x))
    assert model.fast_path == "off" and model._frozen.builds == 0
    with pytest.raises(ConfigError, match="parameter 'fast'"):
        gt.models.TorchModel(net, fast=1)  # type: ignore[arg-type]


def test_forward_hooks_run_eagerly_so_feature_capture_still_sees_activations(digits) -> None:
    net, model = digits
    x = rand(N, (1, 8, 8))
    no_grad_scores(model, x)
    feats = features(model, x)
    assert feats.shape == (N, 64)
    assert torch.allclose(feats, F.relu(net.fc1(F.max_pool2d(F.relu(net.conv2(F.relu(net.conv1(x)))), 2).flatten(1))))


def test_gradients_still_equal_eager_autograd(digits) -> None:
    net, model = digits
    x, y = rand(N, (1, 8, 8)), torch.arange(N) % 10
    no_grad_scores(model, x)  # the frozen copy exists, and must not be used under autograd
    _, grad, _ = loss_and_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    xg = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.cross_entropy(net(xg), y, reduction="sum"), xg)
    assert torch.equal(grad, ref)
    assert model._frozen.builds == 1


def test_another_input_shape_runs_eagerly_without_retracing() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    model = gt.models.TorchModel(net, num_classes=3)
    no_grad_scores(model, rand(N, (1, 8, 8)))
    x = rand(N, (1, 12, 12))
    assert torch.equal(no_grad_scores(model, x), eager(net, x))
    assert model._frozen.builds == 1 and model.fast_path == "frozen"


# ------------------------------------------------------------------------------------------------
# refused: one log line, eager outputs
class Branchy(nn.Module):
    """Data-dependent Python control flow on a tensor value: a trace would keep one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        if x.mean() > 0:
            return self.fc(x)
        return -self.fc(x)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.fc(x)}


def test_data_dependent_control_flow_is_refused_with_one_log_line_and_correct_outputs(caplog) -> None:
    net = Branchy().eval()
    model = gt.models.TorchModel(net, num_classes=3, bounds=(-1.0, 1.0))
    pos, neg = torch.full((N, 4), 0.5), torch.full((N, 4), -0.5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for x in (pos, neg, pos, neg):
            assert torch.equal(no_grad_scores(model, x), eager(net, x))
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and "TracerWarning" in lines[0].getMessage() and "Branchy" in lines[0].getMessage()
    assert model.fast_path.startswith("eager: the trace may not generalise")


def test_a_module_that_returns_a_dict_is_refused_with_one_log_line(caplog) -> None:
    net = DictOut().eval()
    model = gt.models.TorchModel(net)
    x = rand(N, (4,))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            out = no_grad_scores(model, x)
            assert torch.equal(out["logits"], eager(net, x)["logits"])  # type: ignore[index]
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    assert model.fast_path == "eager: the module returns dict, not one tensor"


def test_a_module_that_fails_eagerly_raises_its_own_error_and_keeps_the_fast_path(digits) -> None:
    _, model = digits
    with pytest.raises(RuntimeError):
        no_grad_scores(model, rand(N, (1, 5, 5)))
    assert model.fast_path == "pending"
    no_grad_scores(model, rand(N, (1, 8, 8)))
    assert model.fast_path == "frozen"


# ------------------------------------------------------------------------------------------------
# pickling
def test_pickle_and_deepcopy_drop_the_frozen_copy_and_rebuild_it(digits) -> None:
    _, model = digits
    x = rand(N, (1, 8, 8))
    ref = no_grad_scores(model, x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert clone.fast_path == "pending"
        assert (no_grad_scores(clone, x) - ref).abs().max() <= 1e-5
        assert clone.fast_path == "frozen"
    assert model._frozen.builds == 1


def test_warm_up_builds_both_paths_once_and_execution_reports_them_with_their_cost() -> None:
    net = seeded(LeNet5)
    model = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    assert model.execution()["forward"] == "pending"
    info = model.warm_up(rand(5, (1, 28, 28)))  # fewer inputs than a fast batch: repeated up to one
    assert (info["forward"], info["gradient"]) == ("frozen", "channels_last")
    assert info["build_seconds"] > 0 and model.queries == 0 and model.grad_evals == 0
    assert all(p.requires_grad for p in net.parameters())  # attack mode restored
    again = model.warm_up(rand(40, (1, 28, 28)))
    assert model._frozen.builds == 1 and model._grad.builds == 1 and again["build_seconds"] == info["build_seconds"]


def test_a_refused_forward_path_is_an_info_flag_of_the_audit_naming_why() -> None:
    from gauntlet.audit.flags import CHECKS, execution_flags

    model = gt.models.TorchModel(Branchy().eval(), num_classes=3, bounds=(-1.0, 1.0))
    info = model.warm_up(torch.full((N, 4), 0.5))
    assert info["forward"].startswith("eager: ")
    (flag,) = execution_flags(info)
    assert flag["id"] == "fast_path_refused" and flag["severity"] == "info" and flag["title"] == CHECKS["fast_path_refused"]
    assert "forward" in flag["explanation"] and "trace may not generalise" in flag["explanation"]
    fine = gt.models.TorchModel(seeded(LeNet5), num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    assert execution_flags(fine.warm_up(rand(N, (1, 28, 28)))) == [] and execution_flags(None) == []
