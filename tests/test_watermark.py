"""Trigger-set watermarking: the secret trigger set is a function of the seed, embedding makes the
owner's model answer it, and the binomial test separates the owner's model from an independent
one; the p-value matches its closed form."""

from __future__ import annotations

import math

import pytest
import torch

import gauntlet as gt
from gauntlet.defenses.privacy.watermark import binomial_p_value
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN


def test_the_binomial_p_value_matches_the_closed_form() -> None:
    # P(X >= 3) for X ~ Bin(4, 1/2) = (4 + 1) / 16
    assert binomial_p_value(3, 4, 0.5) == pytest.approx(5 / 16)
    assert binomial_p_value(0, 10, 0.1) == 1.0
    assert binomial_p_value(10, 10, 0.1) == pytest.approx(1e-10)
    assert binomial_p_value(2, 10, 0.1) == pytest.approx(1 - 0.9**10 - 10 * 0.1 * 0.9**9)


def test_the_trigger_set_is_the_seeds_secret_and_stays_in_bounds() -> None:
    wm = gt.defenses.create("watermark", trigger_size=50, seed=3)
    x, y = wm.trigger_set((1, 8, 8), 10, (0.0, 1.0))
    x2, y2 = gt.defenses.create("watermark", trigger_size=50, seed=3).trigger_set((1, 8, 8), 10)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = gt.defenses.create("watermark", trigger_size=50, seed=4).trigger_set((1, 8, 8), 10)
    assert not torch.equal(x, x3)
    assert x.shape == (50, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert int(y.min()) >= 0 and int(y.max()) < 10
    blocks, _ = gt.defenses.create("watermark", trigger_size=5, pattern="blocks").trigger_set((1, 8, 8), 10, (-1.0, 1.0))
    assert float(blocks.min()) >= -1 and torch.equal(blocks[:, :, :4, :4], blocks[:, :, :1, :1].expand(5, 1, 4, 4))


def test_the_owners_model_is_verified_and_an_independent_one_is_not(digits_train, digits_test, digits_model) -> None:
    wm = gt.defenses.create("watermark", trigger_size=60, repeats=10, seed=0)
    net = gt.models.torch_model.reinitialise(DigitsCNN(), 1)
    wm.embed(net, digits_train.x, digits_train.y, epochs=15, seed=1, progress=False)
    owner = gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    res = wm.verify(owner)
    assert res.owned and res.p_value < 1e-3 and res.match_rate > 0.9 and res.n == 60
    assert owner.queries == 60
    # the watermark costs little task accuracy
    acc = float((owner.predict(digits_test.x, count=False) == digits_test.y).double().mean())
    assert acc > 0.9
    other = wm.verify(digits_model)  # trained without the trigger set
    assert not other.owned and other.p_value > 0.05
    assert other.chance == pytest.approx(0.1) and math.isfinite(other.p_value)


def test_watermark_refuses_bad_parameters_and_models_in_one_line(digits_train) -> None:
    with pytest.raises(ConfigError, match="'trigger_size'"):
        gt.defenses.create("watermark", trigger_size=0)
    with pytest.raises(ConfigError, match="'pattern'"):
        gt.defenses.create("watermark", pattern="stripes")
    wm = gt.defenses.create("watermark")
    with pytest.raises(ConfigError, match="gauntlet Model"):
        wm.verify(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    anonymous = gt.models.CallableModel(lambda x: torch.zeros(x.shape[0], 10), output="logits")
    with pytest.raises(ConfigError, match="input_shape and num_classes"):
        wm.verify(anonymous)
    with pytest.raises(DataError, match="shape"):
        wm.embed(DigitsCNN(), digits_train.x, digits_train.y[:5])
