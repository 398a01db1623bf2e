"""Ensemble defenses: exact combinations, the majority vote's BPDA surrogate, member checks,
counting, attack mode, and that the ensemble is attacked as a whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.attacks import create as create_attack
from gauntlet.attacks.base import loss_and_grad
from gauntlet.attacks.losses import cross_entropy
from gauntlet.defenses import create, list_defenses
from gauntlet.defenses.ensemble._base import Ensemble, EnsembleModel
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, train_classifier


@pytest.fixture(scope="module")
def extra_nets(digits_train: gt.data.Dataset) -> list[nn.Module]:
    """Two more digits CNNs from other seeds (10 epochs each)."""
    nets = []
    for seed in (1, 2):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = DigitsCNN()
        nets.append(train_classifier(net, digits_train.x, digits_train.y, epochs=10, seed=seed))
    return nets


def _tm(net: nn.Module, **kw: object) -> gt.models.TorchModel:
    args = {"bounds": (0.0, 1.0), "num_classes": 10, "input_shape": (1, 8, 8), **kw}
    return gt.models.TorchModel(net, **args)  # type: ignore[arg-type]


@pytest.fixture()
def members(digits_net: nn.Module, extra_nets: list[nn.Module]) -> list[gt.models.TorchModel]:
    return [_tm(digits_net)] + [_tm(n) for n in extra_nets]


class Constant(nn.Module):
    """Predicts one class for every input, with logits that still depend on the input."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)
            self.fc.bias.zero_()
            self.fc.bias[label] = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _robust(res: gt.attacks.AttackResult) -> float:
    return float((res.clean_correct & ~res.success).float().mean())


def test_registry_holds_both_ensembles_with_kind() -> None:
    assert {"logit_average", "majority_vote"} <= set(list_defenses("ensemble"))
    for name in ("logit_average", "majority_vote"):
        assert isinstance(create(name), Ensemble) and create(name).kind == "ensemble"


def test_logit_average_is_the_mean_of_member_logits(members: list[gt.models.TorchModel], digits_batch: tuple) -> None:
    x, _ = digits_batch
    e = create("logit_average").wrap(members)
    assert isinstance(e, EnsembleModel) and e.output == "logits" and e.num_classes == 10
    assert e.capabilities == frozenset({"gradients", "scores", "labels"})
    ref = torch.stack([m.scores(x) for m in members]).mean(0)
    assert torch.allclose(e.scores(x), ref, atol=1e-6)
    assert torch.equal(e.predict(x), ref.argmax(1))


def test_probability_space_average_returns_logits_whose_softmax_is_the_mean_probability(
    members: list[gt.models.TorchModel], digits_batch: tuple
) -> None:
    x, _ = digits_batch
    e = create("logit_average", space="probabilities").wrap(members)
    ref = torch.stack([m.scores(x).softmax(1) for m in members]).mean(0)
    assert torch.allclose(e.scores(x).softmax(1), ref, atol=1e-6)
    assert torch.allclose(e.scores(x).exp().sum(1), torch.ones(x.shape[0]), atol=1e-5)  # log of a distribution


def test_majority_vote_scores_are_vote_shares_and_ties_go_to_the_lowest_class(
    members: list[gt.models.TorchModel], digits_batch: tuple
) -> None:
    x, _ = digits_batch
    e = create("majority_vote").wrap(members)
    assert e.output == "probabilities"
    preds = torch.stack([m.predict(x) for m in members])  # (3, N)
    expected = torch.stack([(preds == c).float().mean(0) for c in range(10)], dim=1)
    assert torch.equal(e.scores(x), expected)
    tie = create("majority_vote").wrap([_tm(Constant(7)), _tm(Constant(3))])
    s = tie.scores(x)
    assert torch.equal(s[:, 3], torch.full((x.shape[0],), 0.5)) and torch.equal(s[:, 7], s[:, 3])
    assert torch.equal(tie.predict(x), torch.full((x.shape[0],), 3))
    two_to_one = create("majority_vote").wrap([_tm(Constant(7)), _tm(Constant(3)), _tm(Constant(7))])
    assert torch.equal(two_to_one.predict(x), torch.full((x.shape[0],), 7))


def test_majority_vote_gradient_is_the_mean_probability_surrogate(
    members: list[gt.models.TorchModel], digits_batch: tuple
) -> None:
    x, y = digits_batch
    e = create("majority_vote").wrap(members)
    xg = x.clone().requires_grad_(True)
    out = e.scores(xg)
    # forward value: the votes (as s + (votes - s), so up to rounding; vote shares are multiples of 1/3)
    torch.testing.assert_close(out.detach(), e.scores(x), rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), xg)
    xr = x.clone().requires_grad_(True)
    surrogate = torch.stack([m.scores(xr).softmax(1) for m in members]).mean(0)
    (g_ref,) = torch.autograd.grad(surrogate.gather(1, y[:, None]).sum(), xr)
    assert torch.allclose(g, g_ref, atol=1e-7) and float(g.abs().sum()) > 0


def test_majority_vote_accepts_labels_only_members_without_gradients(
    members: list[gt.models.TorchModel], digits_batch: tuple
) -> None:
    x, _ = digits_batch
    net = members[0].module
    labels_only = gt.models.CallableModel(
        lambda z: net(z).argmax(1), output="labels", num_classes=10, input_shape=(1, 8, 8)
    )
    e = create("majority_vote").wrap([members[1], labels_only, members[2]])
    assert e.capabilities == frozenset({"scores", "labels"})
    preds = torch.stack([members[1].predict(x), members[0].predict(x), members[2].predict(x)])
    expected = torch.stack([(preds == c).float().mean(0) for c in range(10)], dim=1)
    assert torch.equal(e.scores(x), expected)
    with pytest.raises(ConfigError, match="model 1 returns labels only; use majority_vote"):
        create("logit_average").wrap([members[1], labels_only])


def test_counters_attack_mode_and_randomized_flag(
    digits_net: nn.Module, members: list[gt.models.TorchModel], digits_batch: tuple
) -> None:
    x, y = digits_batch
    n = x.shape[0]
    e = create("logit_average").wrap(members)
    loss_and_grad(e, x, lambda z: cross_entropy(z, y))
    e.predict(x)
    assert (e.queries, e.grad_evals) == (2 * n, n)
    assert all(m.queries == 2 * n for m in members)
    assert not e.randomized

    noisy = create("gaussian_noise", sigma=0.1).wrap(members[0], eot_samples=4)
    mixed = create("logit_average", space="probabilities").wrap([noisy, members[1]])
    assert mixed.randomized
    loss_and_grad(mixed, x, lambda z: cross_entropy(z, y))
    assert (mixed.queries, mixed.grad_evals) == (4 * n, 4 * n)  # a query costs the EOT member's 4 draws

    digits_net.train()
    try:
        with e.attack_mode():
            assert not any(m.module.training for m in members)
            assert not any(p.requires_grad for m in members for p in m.module.parameters())
        assert digits_net.training and all(p.requires_grad for p in digits_net.parameters())
    finally:
        digits_net.eval()


@pytest.mark.parametrize("name,params", [("logit_average", {}), ("logit_average", {"space": "probabilities"}), ("majority_vote", {})])
def test_pgd_on_the_whole_ensemble_breaks_it_and_beats_transfer_from_one_member(
    name: str, params: dict, members: list[gt.models.TorchModel], digits_test: gt.data.Dataset
) -> None:
    x, y = digits_test.x[:150], digits_test.y[:150]
    e = create(name, **params).wrap(members)
    clean = float((e.predict(x) == y).float().mean())
    pgd = create_attack("pgd", eps=0.2, steps=10)
    white = _robust(pgd.run(e, x, y, seed=0))
    transfer_adv = pgd.run(members[0], x, y, seed=0).x_adv
    transfer = float(((e.predict(transfer_adv) == y) & (e.predict(x) == y)).float().mean())
    assert clean >= 0.9
    assert white <= 0.15, f"PGD on the {name} ensemble left robust accuracy {white:.3f}"
    assert white <= transfer, f"attacking the whole ensemble ({white:.3f}) must not be weaker than transfer ({transfer:.3f})"


def test_wrap_names_the_first_mismatching_member(digits_net: nn.Module, members: list[gt.models.TorchModel]) -> None:
    la = create("logit_average")
    nine = nn.Sequential(digits_net, nn.Linear(10, 9))  # a 9-class model (its num_classes must match its output)
    with pytest.raises(ConfigError, match="model 1 has 9 classes but model 0 has 10"):
        la.wrap([members[0], _tm(nine, num_classes=9)])
    with pytest.raises(ConfigError, match=r"model 1 has bounds \(0.0, 255.0\) but model 0 has \(0.0, 1.0\)"):
        la.wrap([members[0], _tm(digits_net, bounds=(0.0, 255.0)), _tm(nine, num_classes=9)])
    with pytest.raises(ConfigError, match=r"model 2 has input shape \(1, 4, 16\) but model 0 has \(1, 8, 8\)"):
        la.wrap([members[0], _tm(digits_net, input_shape=None), _tm(digits_net, input_shape=(1, 4, 16))])
    with pytest.raises(ConfigError, match="model 1 does not declare num_classes"):
        la.wrap([members[0], gt.models.TorchModel(digits_net)])
    probs = gt.models.TorchModel(nn.Sequential(digits_net, nn.Softmax(1)), num_classes=10, output="probabilities")
    with pytest.raises(ConfigError, match="model 1 outputs probabilities, not logits; use space='probabilities'"):
        la.wrap([members[0], probs])
    create("logit_average", space="probabilities").wrap([members[0], probs])  # fine in probability space


def test_wrap_rejects_non_models_and_too_few_members(digits_net: nn.Module, members: list[gt.models.TorchModel]) -> None:
    mv = create("majority_vote")
    with pytest.raises(ConfigError, match="model 1 must be a gauntlet Model, got DigitsCNN; wrap it"):
        mv.wrap([members[0], digits_net])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="at least 2 models, got 1"):
        mv.wrap([members[0]])
    with pytest.raises(ConfigError, match="models must be a list of gauntlet Models, got TorchModel"):
        mv.wrap(members[0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="parameter 'space' must be one of"):
        create("logit_average", space="votes")


def test_ensemble_rejects_wrongly_shaped_batches(members: list[gt.models.TorchModel]) -> None:
    e = create("logit_average").wrap(members)
    with pytest.raises(DataError, match=r"x must have shape \(N, 1, 8, 8\), got \(4, 64\)"):
        e.scores(torch.rand(4, 64))
    with pytest.raises(DataError, match="x must be a torch.Tensor, got list"):
        e.predict([[0.0] * 64])  # type: ignore[arg-type]
