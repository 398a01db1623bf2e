"""Reduced-precision searches (issue 14): ``search_precision="bfloat16"`` runs an attack's search
queries in bfloat16 where ``TorchModel`` offers it, and every success it claims is re-verified in
full precision, so the reported success is always a full-precision figure.

The verification is pinned on every machine with a model whose "reduced" scores lie (they push
every input into class 0); the real bfloat16 path only where the CPU runs bfloat16 natively."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.errors import ConfigError
from gauntlet.models._layout import bf16_native
from gauntlet.models.zoo import LeNet5
from tests.test_fast_forward import rand, seeded

N = 40


class LyingReducedModel(gt.models.TorchModel):
    """A TorchModel whose reduced-precision scores are wrong on purpose: class 0 gets +100, so the
    search believes every input of another class is fooled.  Full-precision scores are exact."""

    reduced_calls = 0

    @contextlib.contextmanager
    def search_precision(self, dtype: torch.dtype | None) -> Iterator[bool]:
        previous = self._search_dtype
        self._search_dtype = dtype
        try:
            yield dtype is not None
        finally:
            self._search_dtype = previous

    def _forward(self, x: Tensor) -> Tensor:
        out = self.module(self._normalize(x))
        if self._search_dtype is not None:
            self.reduced_calls += 1
            out = out + 100.0 * torch.nn.functional.one_hot(torch.zeros(x.shape[0], dtype=torch.long), out.shape[1])
        return out


def _points(model: gt.models.TorchModel, k: int = N) -> tuple[Tensor, Tensor]:
    """Inputs the model classifies as a class other than 0 (the lie makes them look fooled)."""
    x = rand(4 * k, (1, 28, 28), seed=3)
    y = model.predict(x, count=False)
    keep = (y != 0).nonzero().squeeze(1)[:k]
    return x[keep], y[keep]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("square", {"eps": 0.02, "max_queries": 30}),
        ("apgd_ce", {"eps": 0.02, "steps": 5, "early_stop": True}),
        ("apgd_t", {"eps": 0.02, "steps": 5, "n_target_classes": 2, "early_stop": True}),
        ("fab", {"eps": 0.02, "steps": 5, "n_target_classes": 2}),
        ("autoattack", {"eps": 0.02, "steps": 3, "n_target_classes": 2, "square_queries": 20}),
    ],
)
def test_every_success_a_reduced_search_claims_is_reverified_in_full_precision(name: str, params: dict) -> None:
    net = seeded(LeNet5)
    model = LyingReducedModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    x, y = _points(model)
    res = gt.attacks.create(name, search_precision="bfloat16", **params).run(model, x, y, seed=0)
    assert model.reduced_calls > 0  # the search did query in "reduced precision"
    honest = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28), fast=False)
    truth = honest.predict(res.x_adv) != y
    assert torch.equal(res.success, truth)
    # the lie claims every point at once; at a tiny ε almost none is really fooled
    assert int(res.success.sum()) < N // 2
    if name == "autoattack":
        rows = res.info["breakdown"]["0.02"].values()
        assert sum(r.get("rejected", 0) for r in rows) > 0
        assert all(r.get("search_precision") == "bfloat16" for r in rows)
    else:
        prec = res.info["precision"]
        assert prec["search"] == "bfloat16" and prec["rejected"] > 0 and prec["checked"] >= prec["rejected"]


def test_full_precision_is_the_default_and_never_enters_the_reduced_context() -> None:
    net = seeded(LeNet5)
    model = LyingReducedModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    x, y = _points(model, 8)
    res = gt.attacks.create("square", eps=0.02, max_queries=10).run(model, x, y, seed=0)
    assert model.reduced_calls == 0 and "precision" not in res.info


def test_an_unknown_search_precision_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="search_precision"):
        gt.attacks.create("apgd_ce", eps=0.1, search_precision="float16")
    aa = gt.attacks.create("autoattack", eps=0.1, search_precision="bfloat16")
    assert all(p["search_precision"] == "bfloat16" for _, _, p in aa.suite(10))


def test_the_model_says_why_it_cannot_search_in_bfloat16() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    model = gt.models.TorchModel(mlp, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    with model.search_precision(torch.bfloat16) as on:
        assert not on
    assert model.search_note.startswith("full precision: ")
    off = gt.models.TorchModel(seeded(LeNet5), num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28), fast=False)
    with off.search_precision(torch.bfloat16) as on:
        assert not on
    assert off.search_note == "full precision: fast=False"
    with pytest.raises(ConfigError, match="torch.bfloat16"):
        with model.search_precision(torch.float16):
            pass
    res = gt.attacks.create("square", eps=0.05, max_queries=5, search_precision="bfloat16").run(
        off, rand(4, (1, 28, 28)), torch.arange(4)
    )
    assert res.info["precision"]["search"] == "full precision: fast=False"


@pytest.mark.skipif(not bf16_native(), reason="this CPU has no native bfloat16: the reduced path is not offered here")
def test_the_bfloat16_path_is_close_to_float32_and_full_precision_returns_inside_it() -> None:
    net = seeded(LeNet5)
    model = gt.models.TorchModel(net, num_classes=10, bounds=(0.0, 1.0), input_shape=(1, 28, 28))
    x = rand(N, (1, 28, 28))
    with torch.no_grad(), model.attack_mode():  # where attacks search: eval, frozen weights
        full = model.scores(x)
        with model.search_precision(torch.bfloat16) as on:
            assert on
            low = model.scores(x)
            with model.search_precision(None):
                again = model.scores(x)
        after = model.scores(x)
    assert model.search_path == "channels_last_bfloat16" and low.dtype == torch.float32
    scale = max(1.0, float(full.abs().max()))
    assert float((low - full).abs().max()) <= 5e-2 * scale
    assert not torch.equal(low, full)  # it really ran in reduced precision
    assert torch.equal(again, full) and torch.equal(after, full)
    # input gradients through the reduced path point the same way
    xg = x.clone().requires_grad_(True)
    with model.attack_mode(), model.search_precision(torch.bfloat16):
        (g_low,) = torch.autograd.grad(model.scores(xg).logsumexp(1).sum(), xg)
    with model.attack_mode():
        (g_full,) = torch.autograd.grad(model.scores(xg).logsumexp(1).sum(), xg)
    cos = torch.nn.functional.cosine_similarity(g_low.flatten(1), g_full.flatten(1))
    assert float(cos.min()) > 0.9


@pytest.mark.skipif(not bf16_native(), reason="this CPU has no native bfloat16: the reduced path is not offered here")
def test_a_bfloat16_apgd_is_as_strong_as_float32_on_the_digits_net(digits_net: nn.Module, digits_batch) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_batch
    model = gt.models.TorchModel(digits_net, num_classes=10, bounds=(0.0, 1.0), input_shape=tuple(x.shape[1:]))
    full = gt.attacks.create("apgd_ce", eps=0.1, steps=20).run(model, x, y, seed=0)
    low = gt.attacks.create("apgd_ce", eps=0.1, steps=20, search_precision="bfloat16").run(model, x, y, seed=0)
    assert low.info["precision"]["search"] in ("bfloat16", model.search_note)
    assert abs(float(low.success.float().mean()) - float(full.success.float().mean())) <= 0.05
