"""Transfer attack: no target queries, success measured on the target apart from the surrogate's,
ensembles, input diversity and translation-invariant gradients, and its bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gauntlet as gt
from gauntlet import norms as N
from gauntlet.attacks.base import loss_and_grad
from gauntlet.attacks.evasion.transfer import TransferSurrogate, gaussian_kernel
from gauntlet.errors import CapabilityError, ConfigError
from gauntlet.models.zoo import DigitsCNN, train_classifier
from tests.test_hopskipjump import LabelsOnly

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def surrogate_nets(digits_train: gt.data.Dataset) -> list[nn.Module]:
    """Two digits CNNs the adversary trained itself (other seeds, fewer epochs than the target)."""
    nets = []
    for seed in (11, 12):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = DigitsCNN()
        nets.append(train_classifier(net, digits_train.x, digits_train.y, epochs=8, seed=seed).eval())
    return nets


def wrap(net: nn.Module) -> gt.models.TorchModel:
    return gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))


def test_transfer_never_queries_the_target_and_success_is_the_targets(digits_model, digits_batch, surrogate_nets) -> None:
    x, y = digits_batch
    attack = gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), attack="mifgsm", eps=0.3, steps=10)
    res = attack.run(digits_model, x, y, seed=0)
    assert res.queries == 0 and digits_model.queries == 0 and res.grad_evals == 0
    assert float(N.norm(res.x_adv - x, "linf").max()) <= 0.3 + 1e-6
    assert torch.equal(res.success, digits_model.predict(res.x_adv, count=False) != y)
    surr = res.info["surrogate_success"]
    assert surr.shape == res.success.shape and surr.dtype == torch.bool
    assert torch.equal(surr, wrap(surrogate_nets[0]).predict(res.x_adv, count=False) != y)
    assert res.info["surrogate_grad_evals"] == 10 * x.shape[0]


def test_transfer_from_an_independent_surrogate_beats_noise_of_the_same_budget(digits_model, digits_test, surrogate_nets) -> None:
    x, y = digits_test.x[:128], digits_test.y[:128]
    keep = digits_model.predict(x, count=False) == y
    x, y = x[keep], y[keep]
    eps = 0.3
    res = gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), attack="pgd", eps=eps, steps=20).run(
        digits_model, x, y, seed=0
    )
    g = torch.Generator().manual_seed(0)
    noise = (x + eps * torch.randint(0, 2, x.shape, generator=g).float().mul(2).sub(1)).clamp(0, 1)
    noise_rate = float((digits_model.predict(noise, count=False) != y).float().mean())
    transfer_rate = float(res.success.float().mean())
    # the surrogate is white-box broken almost everywhere; a good share of it carries over
    assert float(res.info["surrogate_success"].float().mean()) >= 0.9
    assert transfer_rate >= noise_rate + 0.25, (transfer_rate, noise_rate)


def test_a_labels_only_target_can_be_attacked_by_transfer(digits_net, digits_batch, surrogate_nets) -> None:
    x, y = digits_batch
    target = LabelsOnly(digits_net)
    res = gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), eps=0.3).run(target, x, y, seed=0)
    assert res.queries == 0
    assert torch.equal(res.success, target.predict(res.x_adv, count=False) != y)


def test_an_ensemble_surrogate_averages_member_logits(digits_batch, surrogate_nets) -> None:
    x, _ = digits_batch
    members = [wrap(n) for n in surrogate_nets]
    ens = TransferSurrogate(members, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = (surrogate_nets[0](x) + surrogate_nets[1](x)) / 2
    assert torch.allclose(ens.scores(x), expected, atol=1e-5)


def test_ti_gradient_is_the_plain_gradient_smoothed_by_the_gaussian_kernel(digits_batch, surrogate_nets) -> None:
    x, y = digits_batch
    k = gaussian_kernel(5)
    assert k.shape == (5, 5) and abs(float(k.sum()) - 1) < 1e-6 and torch.equal(k, k.flip(0).t())
    plain = TransferSurrogate([wrap(surrogate_nets[0])], generator=torch.Generator())
    ti = TransferSurrogate([wrap(surrogate_nets[0])], generator=torch.Generator(), ti_kernel=5)
    _, g_plain, _ = loss_and_grad(plain, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    _, g_ti, _ = loss_and_grad(ti, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    assert torch.allclose(g_ti, F.conv2d(g_plain, k.view(1, 1, 5, 5), padding=2), atol=1e-6)


def test_input_diversity_resizes_and_pads_but_keeps_the_shape(digits_batch, surrogate_nets) -> None:
    x, _ = digits_batch
    for rate in (0.75, 1.5):  # shrink and pad back; enlarge, pad and resize back
        always = TransferSurrogate([wrap(surrogate_nets[0])], generator=torch.Generator().manual_seed(1), diversity=1.0, resize_rate=rate)
        seen = [always._diverse(x) for _ in range(8)]
        assert all(s.shape == x.shape for s in seen)
        assert any(not torch.equal(s, x) for s in seen), "diversity=1 must transform the input"
    shrunk = TransferSurrogate([wrap(surrogate_nets[0])], generator=torch.Generator().manual_seed(2), diversity=1.0, resize_rate=0.5)
    for _ in range(8):  # shrinking pads with zeros: some border row or column is blank
        s = shrunk._diverse(torch.ones_like(x))
        borders = torch.stack([s[..., 0, :].sum(), s[..., -1, :].sum(), s[..., :, 0].sum(), s[..., :, -1].sum()])
        assert bool((borders == 0).any())
    never = TransferSurrogate([wrap(surrogate_nets[0])], generator=torch.Generator(), diversity=0.0)
    assert torch.equal(never._diverse(x), x)


def test_bilinear_input_diversity_blends_pixels_where_nearest_only_copies_them(surrogate_nets) -> None:
    # a 0/1 checkerboard: nearest-neighbour resizing only ever copies 0s and 1s, bilinear mixes them
    ii, jj = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    x = ((ii + jj) % 2).float().view(1, 1, 8, 8).repeat(4, 1, 1, 1)
    for mode, mixed in (("nearest", False), ("bilinear", True)):
        s = TransferSurrogate(
            [wrap(surrogate_nets[0])], generator=torch.Generator().manual_seed(3), diversity=1.0, resize_rate=0.75, interpolation=mode,
        )
        out = [s._diverse(x) for _ in range(6)]
        inner = [((o > 1e-6) & (o < 1 - 1e-6)).any() for o in out]
        assert all(o.shape == x.shape and float(o.min()) >= 0 and float(o.max()) <= 1 for o in out)
        assert any(inner) is mixed, mode
    with pytest.raises(ConfigError, match="interpolation"):
        gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), eps=0.1, interpolation="bicubic")


def test_mi_di_ti_is_deterministic_per_seed_and_bounded(digits_model, digits_batch, surrogate_nets) -> None:
    x, y = digits_batch
    attack = gt.attacks.create(
        "transfer", surrogate=[wrap(n) for n in surrogate_nets], attack="mifgsm", eps=[0.1, 0.3],
        diversity=0.5, ti_kernel=3,
    )
    a = attack.run(digits_model, x, y, seed=4)
    b = attack.run(digits_model, x, y, seed=4)
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.info["surrogate_success"].shape == (2, x.shape[0])
    for i, e in enumerate((0.1, 0.3)):
        assert float(N.norm(a.x_adv[i] - x, "linf").max()) <= e + 1e-6
    # more budget transfers at least as well in aggregate
    assert int(a.success[1].sum()) >= int(a.success[0].sum())


def test_targeted_transfer_aims_at_the_given_classes(digits_model, digits_batch, surrogate_nets) -> None:
    x, y = digits_batch
    target = (y + 1) % 10
    res = gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), eps=0.3, steps=20, targeted=True).run(
        digits_model, x, y, target=target, seed=0
    )
    assert torch.equal(res.success, digits_model.predict(res.x_adv, count=False) == target)
    assert float(res.info["surrogate_success"].float().mean()) >= 0.8


def test_transfer_bad_input_is_one_line(digits_model, digits_batch, surrogate_nets) -> None:
    x, y = digits_batch
    flat = gt.models.TorchModel(nn.Sequential(nn.Flatten(), nn.Linear(16, 10)), num_classes=10, input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="surrogate 0 takes inputs of shape"):
        gt.attacks.create("transfer", surrogate=flat, eps=0.1).run(digits_model, x, y)
    with pytest.raises(CapabilityError, match="surrogate 0 .* offers no gradients"):
        gt.attacks.create("transfer", surrogate=LabelsOnly(surrogate_nets[0]), eps=0.1)
    with pytest.raises(ConfigError, match="not an eps-bounded gradient attack"):
        gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), attack="square", eps=0.1)
    with pytest.raises(ConfigError, match="unknown attack"):
        gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), attack="mifsgm", eps=0.1)
    with pytest.raises(ConfigError, match="surrogate"):
        gt.attacks.create("transfer", surrogate=surrogate_nets[0], eps=0.1)
    with pytest.raises(ConfigError, match="resize_rate"):
        gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), eps=0.1, resize_rate=1.0)
    with pytest.raises(ConfigError, match="ti_kernel"):
        gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), eps=0.1, ti_kernel=4)
    with pytest.raises(ConfigError, match="on transfer itself"):
        gt.attacks.create("transfer", surrogate=wrap(surrogate_nets[0]), eps=0.1, attack_params={"eps": 0.2})
    other = gt.models.TorchModel(DigitsCNN(num_classes=5), num_classes=5, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="surrogate 0 has 5 classes"):
        gt.attacks.create("transfer", surrogate=other, eps=0.1).run(digits_model, x, y)
    for e in (ConfigError, CapabilityError):
        assert issubclass(e, gt.errors.GauntletError)
