"""Interval bound propagation (Gowal et al. 2018): bounds contain every output over the box (random
nets of every supported layer, sampled, corner and PGD points), are exact at ε = 0 and tight for
one linear layer, the elided margin bound is sound and never looser; verification agrees with
clean accuracy at ε = 0, is monotone in ε, never contradicted by PGD; the ``ibp`` defense's radius
is the largest verified ε; unsupported networks and bad input raise one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.defenses import create, get_defense_class, list_defenses
from gauntlet.defenses.certify import IBPCertifier, ibp_bounds, interval_forward, margin_bounds, verified, verified_accuracy
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN
from tests.conftest import clear_argmax

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
ACTIVATIONS = [
    lambda: nn.ReLU(), lambda: nn.LeakyReLU(0.1), lambda: nn.Tanh(), lambda: nn.Sigmoid(),
    lambda: nn.ReLU6(), lambda: nn.Hardtanh(-0.5, 0.5), lambda: nn.ELU(), lambda: nn.Softplus(),
]


def _randomize_bn(bn: nn.modules.batchnorm._BatchNorm, g: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.1)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))  # negative scales too
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A small random nn.Sequential of supported layers (float64, eval mode) and its input shape."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    act = lambda: ACTIVATIONS[draw(st.integers(0, len(ACTIVATIONS) - 1))]()  # noqa: E731
    body: list[nn.Module] = []
    if draw(st.booleans()):  # convolutional
        c, hw = draw(st.integers(1, 2)), draw(st.integers(4, 7))
        shape: tuple[int, ...] = (c, hw, hw)
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(1, 4))
            pad = draw(st.integers(0, 1))
            k, stride = draw(st.integers(1, min(3, hw + 2 * pad))), draw(st.integers(1, 2))
            body.append(nn.Conv2d(c, out, k, stride=stride, padding=pad))
            c = out
            if draw(st.booleans()):
                body.append(nn.BatchNorm2d(c))
            body.append(act())
            hw = nn.Sequential(*body).eval()(torch.zeros(1, *shape)).shape[-1]
            if hw >= 2 and draw(st.booleans()):
                body.append(nn.MaxPool2d(2) if draw(st.booleans()) else nn.AvgPool2d(2, padding=draw(st.integers(0, 1))))
                hw = nn.Sequential(*body).eval()(torch.zeros(1, *shape)).shape[-1]
        body.append(nn.Flatten())
        width = c * hw * hw
    else:
        d = draw(st.integers(1, 6))
        shape = (d,)
        width = d
    for _ in range(draw(st.integers(0, 2))):
        out = draw(st.integers(1, 6))
        body.append(nn.Linear(width, out))
        width = out
        if draw(st.booleans()):
            body.append(nn.BatchNorm1d(width))
        body.append(act())
        if draw(st.booleans()):
            body.append(nn.Dropout(0.5))
    body.append(nn.Linear(width, draw(st.integers(2, 4))))
    if draw(st.booleans()) and len(body) > 2:  # nest part of it
        cut = draw(st.integers(1, len(body) - 1))
        body = [nn.Sequential(*body[:cut]), nn.Sequential(nn.Identity(), *body[cut:])]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(*body).double()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _randomize_bn(m, g)
    return net.eval(), shape


def _corner_and_pgd_points(net: nn.Module, lo: Tensor, hi: Tensor, g: torch.Generator) -> list[Tensor]:
    """Points of the box [lo, hi]: uniform samples, random corners, and for each logit the end of a
    few signed-gradient steps maximising and minimising it."""
    pts = [lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=lo.dtype) for _ in range(16)]
    pts += [torch.where(torch.rand(lo.shape, generator=g) < 0.5, lo, hi) for _ in range(16)]
    k = net(lo).shape[1]
    step = (hi - lo) / 4
    for j in range(k):
        for sign in (1.0, -1.0):
            z = (lo + hi) / 2
            for _ in range(8):
                z = z.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(net(z)[:, j].sum() * sign, z)
                z = torch.min(torch.max(z + step * grad.sign(), lo), hi)
            pts.append(z.detach())
    return pts


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_shape=networks(), eps=st.floats(0.0, 0.5), seed=st.integers(0, 1000))
def test_every_point_of_the_box_stays_inside_the_ibp_bounds(net_shape, eps, seed) -> None:
    net, shape = net_shape
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((3, *shape), generator=g, dtype=torch.float64)
    lower, upper = ibp_bounds(net, x, eps)
    assert bool((lower <= upper).all())
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for p in _corner_and_pgd_points(net, lo, hi, g):
        with torch.no_grad():
            out = net(p)
        assert bool((out >= lower - TOL).all()), float((lower - out).max())
        assert bool((out <= upper + TOL).all()), float((out - upper).max())


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_shape=networks(), seed=st.integers(0, 1000))
def test_bounds_equal_the_output_at_eps_zero(net_shape, seed) -> None:
    net, shape = net_shape
    x = torch.rand((4, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lower, upper = ibp_bounds(net, x, 0.0)
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(lower, out, rtol=0, atol=1e-10)
    torch.testing.assert_close(upper, out, rtol=0, atol=1e-10)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(d=st.integers(1, 8), k=st.integers(1, 5), eps=st.floats(0.0, 0.6), seed=st.integers(0, 1000))
def test_bounds_of_a_single_linear_layer_are_attained_at_a_corner(d, k, eps, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, k).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    x = torch.rand(2, d, generator=g, dtype=torch.float64)
    lower, upper = ibp_bounds(nn.Sequential(layer), x, eps)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for j in range(k):
        up = layer.weight[j] > 0
        at_max = torch.where(up, hi, lo)  # the maximising corner of w_j·z over the box
        at_min = torch.where(up, lo, hi)
        with torch.no_grad():
            torch.testing.assert_close(upper[:, j], layer(at_max)[:, j], rtol=0, atol=1e-12)
            torch.testing.assert_close(lower[:, j], layer(at_min)[:, j], rtol=0, atol=1e-12)
    # a bare supported layer (no Sequential) gives the same bounds
    lower2, upper2 = ibp_bounds(layer, x, eps)
    assert torch.equal(lower, lower2) and torch.equal(upper, upper2)


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_shape=networks(), eps=st.floats(0.0, 0.3), seed=st.integers(0, 1000))
def test_elided_margin_bound_is_sound_and_never_looser_than_subtracting_logit_bounds(net_shape, eps, seed) -> None:
    net, shape = net_shape
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((3, *shape), generator=g, dtype=torch.float64)
    with torch.no_grad():
        k = net(x).shape[1]
    y = torch.randint(0, k, (3,), generator=g)
    m = margin_bounds(net, x, y, eps)
    lower, upper = ibp_bounds(net, x, eps)
    naive = lower.gather(1, y[:, None]) - upper
    naive = naive.scatter(1, y[:, None], 0.0)
    assert bool((m >= naive - 1e-9).all())
    torch.testing.assert_close(margin_bounds(net, x, y, eps, elide=False), naive)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for p in _corner_and_pgd_points(net, lo, hi, g):
        with torch.no_grad():
            out = net(p)
        margins = out.gather(1, y[:, None]) - out
        assert bool((margins >= m - TOL).all())


# ---------------------------------------------------------------------------------------------
# verification on a trained digits network
@pytest.fixture(scope="module")
def digits_mlp(digits_train) -> nn.Sequential:
    """A small MLP trained normally on the 8×8 digits (~95% clean accuracy), as nn.Sequential."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = digits_train.x, digits_train.y
    for _ in range(15):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 64):
            idx = perm[s : s + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def test_verification_at_eps_zero_is_clean_correctness_and_shrinks_as_eps_grows(digits_mlp, digits_test) -> None:
    x, y = digits_test.x, digits_test.y
    with torch.no_grad():
        logits = digits_mlp(x)
    correct = logits.argmax(1) == y
    assert float(correct.double().mean()) > 0.9
    # at ε = 0 the margin bounds are the logits' margins, computed another way: same decisions off near-ties
    clear = clear_argmax(logits, 1e-4)
    assert int(clear.sum()) >= len(y) - 3
    assert torch.equal(verified(digits_mlp, x, y, 0.0)[clear], correct[clear])
    prev = correct
    accs = []
    for eps in (0.005, 0.01, 0.02, 0.05):
        v = verified(digits_mlp, x, y, eps, batch_size=100)
        assert bool((v <= prev).all())  # verified at a larger ε ⇒ verified at every smaller one
        prev = v
        accs.append(float(v.double().mean()))
    assert accs[0] > 0.8 and accs[-1] < accs[0]
    assert verified_accuracy(digits_mlp, x, y, 0.02) == pytest.approx(accs[2])


def test_no_pgd_attack_succeeds_on_a_verified_point(digits_mlp, digits_test) -> None:
    x, y = digits_test.x[:200], digits_test.y[:200]
    eps = 0.03
    v = verified(digits_mlp, x, y, eps)
    assert 0.2 < float(v.double().mean()) < 1.0
    model = gt.models.TorchModel(digits_mlp, bounds=(0.0, 1.0), num_classes=10)
    res = gt.attacks.create("pgd", eps=eps, steps=20).run(model, x, y)
    assert int(res.success.sum()) > 0  # the attack does find adversarials among the unverified
    assert not bool((res.success & v).any())


def test_ibp_through_a_torch_model_applies_its_normalisation_to_the_box() -> None:
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double().eval()
    model = gt.models.TorchModel(net, mean=[0.5, 0.2], std=[0.25, 2.0], num_classes=4)
    x = torch.rand(3, 2, 6, 6, generator=g, dtype=torch.float64)
    lower, upper = ibp_bounds(model, x, 0.1)
    lo, hi = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
    for p in _corner_and_pgd_points(lambda z: model.scores(z, count=False), lo, hi, g):  # type: ignore[arg-type]
        out = model.scores(p, count=False).detach()
        assert bool((out >= lower - TOL).all()) and bool((out <= upper + TOL).all())
    # and is tighter than ignoring that the model's own input range is [0, 1]
    plain_lo, plain_hi = ibp_bounds(net, model._normalize(x), 0.1 / 0.25, bounds=(-10.0, 10.0))
    assert bool((upper - lower <= plain_hi - plain_lo + 1e-9).all())


def test_interval_forward_bounds_an_arbitrary_box() -> None:
    net = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, 0.5]]))
        net[0].bias.zero_()
    lo, hi = interval_forward(net, torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]]))
    assert torch.equal(lo, torch.tensor([[-2.0, 0.0]])) and torch.equal(hi, torch.tensor([[1.0, 1.5]]))
    with pytest.raises(DataError, match="lo > hi"):
        interval_forward(net, torch.ones(1, 3), torch.zeros(1, 3))


# ---------------------------------------------------------------------------------------------
# the registered defense
def test_ibp_defense_radius_is_the_largest_verified_eps_of_the_list(digits_mlp, digits_test) -> None:
    assert "ibp" in list_defenses("certification")
    assert get_defense_class("ibp") is IBPCertifier
    x, y = digits_test.x[:150], digits_test.y[:150]
    eps = [0.01, 0.02, 0.05]
    d = create("ibp", eps=eps)
    assert d.get_params() == {"eps": eps, "bounds": None, "batch_size": 512}
    cert = d.certify(digits_mlp, x, y)
    assert cert.method == "ibp" and cert.norm == "linf"
    with torch.no_grad():
        assert torch.equal(cert.prediction, digits_mlp(x).argmax(1))
    # each point verified on its own (a batch of one rounds differently from the batch of 150), except
    # where one of its margin bounds lies within rounding of zero
    with torch.no_grad():
        low = torch.stack(
            [margin_bounds(digits_mlp, x, cert.prediction, e).scatter(1, cert.prediction[:, None], float("inf")).amin(1) for e in eps]
        )
    clear = (low.abs() > 1e-4).all(dim=0)
    assert int(clear.sum()) >= len(x) - 3
    for i in clear.nonzero().flatten().tolist():
        ok = [e for e in eps if bool(verified(digits_mlp, x[i : i + 1], cert.prediction[i : i + 1], e)[0])]
        assert float(cert.radius[i]) == (max(ok) if ok else 0.0)
    for e in eps:
        assert cert.certified_accuracy(e) == pytest.approx(verified_accuracy(digits_mlp, x, y, e))
    assert [r for r, _ in cert.curve()] == [0.0, *eps]
    assert cert.certified_accuracy(0.0) == pytest.approx(float((cert.prediction == y).double().mean()))
    d2 = json.loads(json.dumps(cert.to_dict()))
    assert d2["norm"] == "linf" and len(d2["radius"]) == 150
    # a TorchModel's bounds are used when bounds=None
    model = gt.models.TorchModel(digits_mlp, bounds=(0.0, 1.0), num_classes=10)
    assert torch.equal(create("ibp", eps=0.02).certify(model, x, y, seed=5).radius > 0, cert.radius >= 0.02)


# ---------------------------------------------------------------------------------------------
# unsupported networks and bad input
class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * 2


class ReversedSequential(nn.Sequential):
    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        for m in reversed(self):
            x = m(x)
        return x


class ScaledLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 3


@pytest.mark.parametrize(
    "net, match",
    [
        (DigitsCNN(), "DigitsCNN is not an nn.Sequential; IBP needs the network as nn.Sequential"),
        (nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)), r"layer '1' \(GELU\).*replace nn.GELU with nn.ReLU"),
        (nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=1)), r"layer '1' \(Softmax\).*remove nn.Softmax"),
        (nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.SiLU()), nn.Linear(4, 2)), r"layer '0.1' \(SiLU\)"),
        (nn.Sequential(nn.LSTM(4, 4)), r"\(LSTM\).*recurrent layers are not supported"),
        (nn.Sequential(Custom()), r"\(Custom\).*express the network as nn.Sequential"),
        (ReversedSequential(nn.Linear(4, 2)), "overrides nn.Sequential.forward"),
        (nn.Sequential(ScaledLinear(4, 2)), r"\(ScaledLinear\) is not supported"),
        (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)), "no running statistics"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(-0.5), nn.Linear(4, 2)), "negative slope"),
        (nn.Sequential(), "empty nn.Sequential"),
    ],
)
def test_unsupported_networks_raise_a_capability_error_naming_the_layer_and_a_fix(net, match) -> None:
    with pytest.raises(CapabilityError, match=match) as info:
        ibp_bounds(net, torch.rand(2, 4), 0.1)
    assert "\n" not in str(info.value)


def test_a_model_that_hides_its_layers_is_a_capability_error() -> None:
    model = gt.models.CallableModel(lambda x: x.flatten(1)[:, :3], num_classes=3)
    with pytest.raises(CapabilityError, match="IBP needs the network's layers"):
        create("ibp", eps=0.1).certify(model, torch.rand(2, 4))


def test_bad_arguments_are_one_line_config_or_data_errors() -> None:
    net = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.rand(2, 4), torch.tensor([0, 2])
    cases = [
        (lambda: ibp_bounds(net, x, -0.1), ConfigError, "eps must be a finite number >= 0"),
        (lambda: ibp_bounds(net, x, float("nan")), ConfigError, "eps must be a finite number >= 0"),
        (lambda: ibp_bounds(net, x, 0.1, bounds=(1.0, 0.0)), ConfigError, "bounds must be a pair"),
        (lambda: ibp_bounds(net, x * 2 + 1, 0.1), DataError, "outside the bounds"),
        (lambda: ibp_bounds(net, torch.full((2, 4), float("nan")), 0.1), DataError, "NaN or inf"),
        (lambda: ibp_bounds(net, x.double(), 0.1), DataError, "dtype torch.float64"),
        (lambda: ibp_bounds(net, x.numpy(), 0.1), DataError, "must be a torch.Tensor, got ndarray"),
        (lambda: ibp_bounds(net, torch.rand(2, 5), 0.1), DataError, r"layer '0' \(Linear\) cannot take input of shape \(2, 5\)"),
        (lambda: verified(net, x, torch.tensor([0, 3]), 0.1), DataError, "labels in"),
        (lambda: verified(net, x, torch.tensor([0]), 0.1), DataError, r"shape \(2,\)"),
        (lambda: verified(net, x, y.float(), 0.1), DataError, "integer class labels"),
        (lambda: verified(net, x, y, 0.1, batch_size=0), ConfigError, "batch_size must be an int >= 1"),
        (lambda: margin_bounds(net, x, y, 0.1, elide="yes"), ConfigError, "elide must be a bool"),  # type: ignore[arg-type]
        (lambda: create("ibp", eps=0.0), ConfigError, "parameter 'eps' must be a finite number > 0 or a non-empty list"),
        (lambda: create("ibp", eps=[]), ConfigError, "parameter 'eps' must be"),
        (lambda: create("ibp", eps=[0.1, -0.2]), ConfigError, "parameter 'eps' must be"),
        (lambda: create("ibp", eps=0.1, bounds=(1, 0)), ConfigError, "parameter 'bounds' must be"),
        (lambda: create("ibp", eps=0.1, batch_size=0), ConfigError, "parameter 'batch_size' must be an int >= 1"),
        (lambda: create("ibp", epsilon=0.1), ConfigError, "unknown parameter 'epsilon'; did you mean 'eps'"),
        (lambda: create("ibp", eps=0.1).certify(net, x, y, seed=-1), ConfigError, "seed must be an int >= 0"),
        (lambda: create("ibp", eps=0.1).certify(net, x, torch.tensor([0, 9])), DataError, "labels in"),
    ]
    for fn, err, match in cases:
        with pytest.raises(err, match=match) as info:
            fn()
        assert "\n" not in str(info.value)
