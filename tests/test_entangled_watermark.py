"""Entangled watermarks (EWE): the soft nearest neighbour loss matches its closed form, embedding
makes the owner's model answer the target class on held-out watermarked source-class inputs, an
independently trained model answers them otherwise, and bad input is refused in one line."""

from __future__ import annotations

import math

import pytest
import torch

import gauntlet as gt
from gauntlet.defenses.privacy.entangled_watermark import EntangledWatermark, hidden_layers, soft_nearest_neighbour_loss
from gauntlet.defenses.privacy.watermark import WatermarkResult
from gauntlet.defenses.training import TrainingResult
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.zoo import DigitsCNN, LeNet5


def test_the_snnl_matches_its_closed_form_and_grows_with_entanglement() -> None:
    # rows 0 and 1 coincide (label 0), row 2 is orthogonal to them (label 1); cosine distances 0 and 1
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = float(soft_nearest_neighbour_loss(h, torch.tensor([0, 0, 1]), 1.0))
    p01 = 1.0 / (1e-5 + 1.0 + math.exp(-1.0))
    want = (2 * -math.log(1e-5 + p01) - math.log(1e-5)) / 3
    assert got == pytest.approx(want, rel=1e-6)
    # two separated clusters: low loss when the labels follow the clusters, high when they are mixed
    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 5, generator=g) + torch.tensor([5.0, 0, 0, 0, 0])
    b = torch.rand(20, 5, generator=g) + torch.tensor([0, 0, 0, 0, 5.0])
    feats = torch.cat([a, b])
    split = torch.arange(40) < 20
    mixed = torch.arange(40) % 2 == 0
    assert float(soft_nearest_neighbour_loss(feats, split, 0.1)) < 0.05
    assert float(soft_nearest_neighbour_loss(feats, mixed, 0.1)) > 0.5


def test_the_default_snnl_layers_are_the_hidden_convolutions_and_linears() -> None:
    assert hidden_layers(DigitsCNN()) == ["conv1", "conv2", "fc1"]
    assert hidden_layers(LeNet5()) == ["conv1", "conv2", "linear1"]


@pytest.fixture(scope="module")
def embedded(digits_train) -> tuple[EntangledWatermark, torch.nn.Module, TrainingResult]:
    wm = gt.defenses.create("entangled_watermark", verification_size=40, watermark_epochs=6, seed=3)
    assert isinstance(wm, EntangledWatermark)
    net = gt.models.torch_model.reinitialise(DigitsCNN(), 1)
    res = wm.embed(net, digits_train.x, digits_train.y, epochs=8, batch_size=64, seed=1, progress=False)
    return wm, net, res


def test_the_owners_model_is_verified_and_an_independent_one_is_not(embedded, digits_test, digits_model) -> None:
    wm, net, res = embedded
    assert res.method == "entangled_watermark_training" and len(res.history) == 6
    assert len(res.info["pretraining"].history) == 8 and len(res.info["temperatures"]) == 3
    r, c = wm.trigger_position
    assert 0 <= r <= 8 - 3 and 0 <= c <= 8 - 3
    # the held-out inputs are watermarked source-class images inside the bounds
    xv = wm.verification_x
    assert xv.shape == (40, 1, 8, 8) and float(xv.min()) >= 0 and float(xv.max()) <= 1
    owner = gt.models.TorchModel(net.eval(), bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    res_owner = wm.verify(owner)
    assert isinstance(res_owner, WatermarkResult)
    assert res_owner.owned and res_owner.p_value < 1e-3 and res_owner.match_rate > 0.8 and res_owner.n == 40
    assert owner.queries == 40
    acc = float((owner.predict(digits_test.x, count=False) == digits_test.y).double().mean())
    assert acc > 0.9  # the watermark costs little task accuracy
    other = wm.verify(digits_model)  # trained without the watermark
    assert not other.owned and other.p_value > 0.05 and other.chance == pytest.approx(0.1)
    assert int((wm.answers(digits_model) == wm.target).sum()) < 40 * 0.1


def test_entangled_watermark_refuses_bad_parameters_and_data_in_one_line(digits_train, digits_model) -> None:
    with pytest.raises(ConfigError, match="source and target must be different classes, got 4 for both"):
        gt.defenses.create("entangled_watermark", source=4, target=4)
    with pytest.raises(ConfigError, match="'trigger_size'"):
        gt.defenses.create("entangled_watermark", trigger_size=0)
    with pytest.raises(ConfigError, match="'layers'"):
        gt.defenses.create("entangled_watermark", layers=[])
    x, y = digits_train.x, digits_train.y
    with pytest.raises(ConfigError, match="the source class 12 does not exist: the module outputs 10 classes"):
        gt.defenses.create("entangled_watermark", source=12).embed(DigitsCNN(), x, y)
    with pytest.raises(ConfigError, match=r"the trigger \(9×9\) is larger than the images \(8×8\)"):
        gt.defenses.create("entangled_watermark", trigger_size=9).embed(DigitsCNN(), x, y)
    with pytest.raises(DataError, match="rows of the source class 1; it needs verification_size=500"):
        gt.defenses.create("entangled_watermark", verification_size=500).embed(DigitsCNN(), x, y)
    with pytest.raises(DataError, match=r"images \(N, C, H, W\)"):
        gt.defenses.create("entangled_watermark").embed(DigitsCNN(), x.flatten(1), y)
    with pytest.raises(ConfigError, match="checkpoints are not supported"):
        gt.defenses.create("entangled_watermark").embed(DigitsCNN(), x, y, checkpoint="x.pt")
    with pytest.raises(ConfigError, match="unknown parameter"):
        gt.defenses.create("entangled_watermark").embed(DigitsCNN(), x, y, epochz=3)
    wm = gt.defenses.create("entangled_watermark")
    with pytest.raises(ConfigError, match=r"nothing is embedded yet; call embed\(module, x, y\) first"):
        wm.verify(digits_model)
    with pytest.raises(ConfigError, match="gauntlet Model"):
        wm.verify(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
