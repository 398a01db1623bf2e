"""Contract suite: every registered attack, in every norm it supports, keeps the invariants."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet import norms as N
from tests.attack_params import FAST_PARAMS, NORMS, PIXEL_BUDGET

EPS = {"linf": 0.1, "l2": 0.6, "l1": 3.0}
CASES = [(name, norm) for name in gt.attacks.list_attacks("evasion") for norm in NORMS.get(name, ("linf",))]


def make(name: str, norm: str, eps: float | list[float]) -> gt.attacks.Attack:
    cls = gt.attacks.get_attack_class(name)
    params = dict(FAST_PARAMS[name])
    if "norm" in cls._param_names():
        params["norm"] = norm
    if takes_eps(name):
        params["eps"] = eps
    return gt.attacks.create(name, **params)


def takes_eps(name: str) -> bool:
    """Sparse attacks (one-pixel, patch, sticker) bound a pixel count or a region, not an ε."""
    return "eps" in gt.attacks.get_attack_class(name)._param_names()


def bound(name: str, norm: str) -> float:
    """The largest perturbation the contract parameters allow, in ``norm``."""
    return EPS[norm] if takes_eps(name) else float(PIXEL_BUDGET[name])


def test_every_registered_attack_has_contract_parameters() -> None:
    missing = set(gt.attacks.list_attacks("evasion")) - set(FAST_PARAMS)
    assert not missing, f"add fast contract parameters to tests/attack_params.py for {sorted(missing)}"
    sparse = {n for n in gt.attacks.list_attacks("evasion") if not takes_eps(n)}
    assert sparse <= set(PIXEL_BUDGET), f"add the pixel budget of {sorted(sparse - set(PIXEL_BUDGET))} to PIXEL_BUDGET"


def test_every_attack_has_a_description_and_keyword_only_parameters() -> None:
    for name in gt.attacks.list_attacks("evasion"):
        cls = gt.attacks.get_attack_class(name)
        assert cls.description and "\n" not in cls.description, name
        norm = NORMS[name][0]
        attack = make(name, norm, EPS.get(norm, 0.0))
        # hyperparameters are stored as given and rebuild an identical attack
        rebuilt = gt.attacks.create(name, **attack.get_params())
        assert rebuilt.get_params() == attack.get_params()


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_attack_respects_ball_bounds_shape_and_determinism(name, norm, digits_model, digits_batch) -> None:
    x, y = digits_batch
    x, y = x[:8], y[:8]
    x_before = x.clone()
    eps = bound(name, norm)
    attack = make(name, norm, EPS.get(norm, 0.0))
    r1 = attack.run(digits_model, x, y, seed=3)
    assert torch.equal(x, x_before), "the attack modified its input in place"
    assert r1.x_adv.shape == x.shape and r1.x_adv.dtype == x.dtype and r1.x_adv.device == x.device
    assert not r1.x_adv.requires_grad
    assert float(r1.x_adv.min()) >= 0.0 and float(r1.x_adv.max()) <= 1.0
    measured = N.norm(r1.x_adv - x, norm)
    assert float(measured.max()) <= eps * (1 + 1e-5) + 1e-6
    assert torch.allclose(r1.norms, measured)
    # success is what the model says, not what the attack claims
    pred = digits_model.predict(r1.x_adv, count=False)
    assert torch.equal(r1.success, pred != y)
    assert r1.seed == 3 and r1.params == attack.get_params() and r1.seconds > 0
    r2 = attack.run(digits_model, x, y, seed=3)
    assert torch.equal(r1.x_adv, r2.x_adv), "same seed must give the same output"


@pytest.mark.parametrize("name", gt.attacks.list_attacks("evasion"))
def test_attack_restores_model_mode_and_parameter_grad_flags(name, digits_net, digits_batch) -> None:
    x, y = digits_batch
    digits_net.train()
    flags = [p.requires_grad for p in digits_net.parameters()]
    try:
        model = gt.models.TorchModel(digits_net, num_classes=10)
        norm = NORMS[name][0]
        make(name, norm, EPS.get(norm, 0.0)).run(model, x[:4], y[:4], seed=0)
        assert digits_net.training, "train mode was not restored"
        assert [p.requires_grad for p in digits_net.parameters()] == flags
        assert all(p.grad is None for p in digits_net.parameters()), "the attack left weight gradients behind"
    finally:
        digits_net.eval()


@pytest.mark.parametrize("name", gt.attacks.list_attacks("evasion"))
def test_attack_with_several_eps_returns_one_result_per_eps(name, digits_model, digits_batch) -> None:
    if not takes_eps(name):
        pytest.skip(f"{name} bounds a pixel count or a region, not an eps")
    x, y = digits_batch
    norm = NORMS[name][0]
    epsilons = [EPS[norm] / 4, EPS[norm]]
    res = make(name, norm, epsilons).run(digits_model, x[:6], y[:6], seed=0)
    assert res.x_adv.shape == (2, *x[:6].shape) and res.success.shape == (2, 6)
    for i, e in enumerate(epsilons):
        one = res.at(i)
        assert one.eps == e
        assert float(N.norm(one.x_adv - x[:6], norm).max()) <= e * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("name", gt.attacks.list_attacks("evasion"))
def test_attack_counts_its_queries(name, digits_model, digits_batch) -> None:
    x, y = digits_batch
    norm = NORMS[name][0]
    res = make(name, norm, EPS.get(norm, 0.0)).run(digits_model, x[:4], y[:4], seed=0)
    if gt.attacks.get_attack_class(name).requires:
        assert res.queries > 0
    else:  # a transfer attack crafts on its own surrogates: the target is never queried
        assert res.queries == 0
    assert res.queries == digits_model.queries, "reported queries must equal what the model counted"
    budget = FAST_PARAMS[name].get("max_queries")
    if budget is not None:
        assert res.queries <= (budget + 1) * 4 * FAST_PARAMS[name].get("restarts", 1)
