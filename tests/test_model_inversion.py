"""Model inversion (Fredrikson et al. 2015) on the 8x8 digits: reconstructions, filters, judge."""

from __future__ import annotations

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks.inference.model_inversion import (
    InversionResult,
    ModelInversion,
    gaussian_filter,
    median_filter,
    sharpen,
    total_variation,
)
from gauntlet.errors import CapabilityError, ConfigError, DataError


@pytest.fixture(scope="module")
def judge(digits_train: gt.data.Dataset) -> gt.models.SklearnModel:
    """An independent classifier: a logistic regression on the pixels (not the target's CNN)."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    clf = LogisticRegression(max_iter=2000).fit(digits_train.x.flatten(1).numpy(), digits_train.y.numpy())
    return gt.models.SklearnModel(clf, input_shape=(1, 8, 8), num_classes=10)


def _softmax_p(model: gt.models.TorchModel, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model.scores(x, count=False).double(), dim=1).gather(1, c[:, None]).squeeze(1)


def test_registered() -> None:
    atk = gt.attacks.create("model_inversion", steps=10)
    assert isinstance(atk, ModelInversion)
    assert atk.kind == "inference" and atk.needs == "gradients"
    assert "Fredrikson" in atk.reference and "2015" in atk.reference
    assert atk.get_params()["steps"] == 10
    assert not hasattr(atk, "needs_population")  # the audit's privacy block takes membership attacks only


def test_reconstructions_in_bounds_confident_and_judged(digits_model: gt.models.TorchModel, judge: gt.models.SklearnModel) -> None:
    atk = ModelInversion(steps=200, lr=0.5, normalize=True, loss="cross_entropy", denoise="median", sharpen=0.3, process_every=10)
    res = atk.run(digits_model, seed=0)
    assert res.images.shape == (10, 1, 8, 8)
    assert res.classes.tolist() == list(range(10))
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    # the reported confidence is the target's p_c of the returned image
    p = _softmax_p(digits_model, res.images, res.classes)
    torch.testing.assert_close(res.confidence, p, atol=1e-5, rtol=0)
    assert float(res.confidence.min()) > 0.9
    assert res.evaluate(judge) >= 0.9
    assert res.grad_evals > 0 and res.queries >= res.grad_evals
    assert (res.iterations <= 200).all()


def test_paper_cost_with_process_step(digits_model: gt.models.TorchModel, judge: gt.models.SklearnModel) -> None:
    """The paper's cost 1 - p_c, plain gradient steps, median denoising and sharpening."""
    res = ModelInversion(steps=300, lr=1.0, loss="confidence", denoise="median", sharpen=0.3, process_every=10).run(digits_model)
    assert float(res.confidence.mean()) > 0.9
    torch.testing.assert_close(res.cost, 1 - res.confidence, atol=1e-5, rtol=0)
    assert res.evaluate(judge) >= 0.8


def test_blank_start_is_far_from_every_class(digits_model: gt.models.TorchModel) -> None:
    """A guard on the test above: the zero image itself is not already confident for each class."""
    p = _softmax_p(digits_model, torch.zeros(10, 1, 8, 8), torch.arange(10))
    assert float(p.mean()) < 0.5


def test_constant_image_unchanged_by_denoising() -> None:
    x = torch.full((2, 1, 9, 9), 0.37)
    torch.testing.assert_close(median_filter(x, 3), x)
    torch.testing.assert_close(median_filter(x, 5), x)
    torch.testing.assert_close(gaussian_filter(x, 0.8), x)
    torch.testing.assert_close(sharpen(x, 0.7), x)
    assert total_variation(x).abs().max() == 0


def test_median_removes_an_outlier_and_gaussian_spreads_it() -> None:
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    assert float(median_filter(x).abs().max()) == 0.0
    g = gaussian_filter(x, 1.0)
    assert 0 < float(g[0, 0, 3, 3]) < 1.0 and float(g[0, 0, 3, 4]) > 0
    torch.testing.assert_close(g.sum(), torch.tensor(1.0))  # mass kept away from the edges


def test_sharpening_a_step_edge_increases_contrast() -> None:
    x = torch.full((1, 1, 8, 8), 0.25)
    x[..., 4:] = 0.75
    y = sharpen(x, 1.0, sigma=1.0)
    assert float(y.max() - y.min()) > 0.5 + 0.05
    assert float(y[0, 0, 0, 3]) < 0.25  # each side overshoots away from the other
    assert float(y[0, 0, 0, 4]) > 0.75
    torch.testing.assert_close(y[..., 0], x[..., 0])  # the flat far columns are unchanged
    # anisotropic TV of the step: one jump of 0.5 in each of the 8 rows of 7 horizontal pairs
    torch.testing.assert_close(total_variation(x), torch.tensor([0.5 * 8 / (8 * 7)]))


def test_process_step_changes_the_image(digits_model: gt.models.TorchModel) -> None:
    g = torch.Generator().manual_seed(0)
    noisy = torch.rand(3, 1, 8, 8, generator=g)
    atk = ModelInversion(denoise="median", sharpen=0.5)
    out = atk.process(noisy, (0.0, 1.0))
    assert not torch.allclose(out, noisy)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(total_variation(out).mean()) < float(total_variation(noisy).mean())
    plain = ModelInversion(steps=60, lr=1.0, patience=None).run(digits_model, classes=[3])
    processed = ModelInversion(steps=60, lr=1.0, patience=None, denoise="median", process_every=5).run(digits_model, classes=[3])
    assert not torch.allclose(plain.images, processed.images)


def test_judge_share_on_hand_made_inputs() -> None:
    # a judge that labels an image by round(10 * its mean pixel)
    judge = gt.models.CallableModel(
        lambda x: torch.nn.functional.one_hot((x.flatten(1).mean(1) * 10).round().long().clamp(0, 9), 10).float(),
        num_classes=10, input_shape=(1, 4, 4),
    )
    images = torch.stack([torch.full((1, 4, 4), v) for v in (0.0, 0.1, 0.2, 0.5)])
    res = InversionResult(
        images=images, classes=torch.tensor([0, 1, 7, 5]), confidence=torch.ones(4, dtype=torch.float64),
        cost=torch.zeros(4, dtype=torch.float64), iterations=torch.zeros(4, dtype=torch.int64),
    )
    assert res.judge(judge).tolist() == [0, 1, 2, 5]
    assert res.evaluate(judge) == pytest.approx(0.75)
    wrong = gt.models.CallableModel(lambda x: torch.zeros(x.shape[0], 10), num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(DataError, match="per-sample shape"):
        res.evaluate(wrong)


def test_same_seed_same_images(digits_model: gt.models.TorchModel) -> None:
    atk = ModelInversion(steps=40, lr=0.5, normalize=True, loss="cross_entropy", init_noise=0.2, restarts=2, denoise="gaussian")
    a = atk.run(digits_model, classes=[1, 4], seed=3)
    b = atk.run(digits_model, classes=[1, 4], seed=3)
    c = atk.run(digits_model, classes=[1, 4], seed=4)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert a.images.shape == (2, 1, 8, 8) and a.classes.tolist() == [1, 4]
    assert len(a.info["restart_costs"]) == 2 and len(a.info["restart_costs"][0]) == 2


def test_stopping_rules(digits_model: gt.models.TorchModel) -> None:
    res = ModelInversion(steps=500, lr=0.5, normalize=True, loss="cross_entropy", gamma=0.5).run(digits_model, classes=[0, 2])
    assert (res.cost <= 0.5).all()
    assert (res.iterations < 500).all()
    assert res.info["stop_reasons"] == {"gamma": 2}


def test_mean_start_uses_auxiliary_data(digits_model: gt.models.TorchModel, digits_train: gt.data.Dataset) -> None:
    res = ModelInversion(steps=1, start="mean", patience=None).run(digits_model, classes=[5], auxiliary=digits_train.x[:100])
    assert res.images.shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError, match="auxiliary"):
        ModelInversion(start="mean").run(digits_model)
    with pytest.raises(DataError, match="per-sample shape"):
        ModelInversion(start="mean").run(digits_model, auxiliary=torch.zeros(3, 64))


def test_scores_only_target_is_refused_unless_estimated(digits_train: gt.data.Dataset, judge: gt.models.SklearnModel) -> None:
    with pytest.raises(CapabilityError) as err:
        ModelInversion().run(judge)
    msg = str(err.value)
    assert "\n" not in msg and "gradients='estimated'" in msg
    atk = ModelInversion(steps=15, lr=0.5, normalize=True, loss="cross_entropy", patience=None,
                         gradients="estimated", estimator={"samples": 20, "sigma": 0.01})
    before = _p_sklearn(judge, torch.zeros(2, 1, 8, 8), torch.tensor([2, 6]))
    res = atk.run(judge, classes=[2, 6], seed=0)
    assert (res.confidence > torch.as_tensor(before)).all()
    assert res.queries >= 15 * 2 * 20  # the estimation queries are counted
    labels_only = gt.models.CallableModel(lambda x: torch.zeros(x.shape[0], dtype=torch.long), output="labels",
                                          num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(CapabilityError, match="labels only"):
        atk.run(labels_only)


def _p_sklearn(model: gt.models.SklearnModel, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return model.scores(x, count=False).double().gather(1, c[:, None]).squeeze(1)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"steps": 0}, "'steps'"),
        ({"denoise": "bilateral"}, "'denoise'"),
        ({"denoise_size": 4}, "odd int"),
        ({"loss": "hinge"}, "'loss'"),
        ({"estimator": {"seed": 1}}, "'estimator'"),
        ({"lr": -1.0}, "'lr'"),
    ],
)
def test_bad_hyperparameters_one_line(params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        ModelInversion(**params)
    assert "\n" not in str(err.value)


def test_bad_classes_and_shapes(digits_model: gt.models.TorchModel) -> None:
    with pytest.raises(DataError, match=r"outside \[0, 9\]"):
        ModelInversion(steps=1).run(digits_model, classes=[3, 10])
    with pytest.raises(DataError, match="empty"):
        ModelInversion(steps=1).run(digits_model, classes=[])
    flat = gt.models.TorchModel(torch.nn.Linear(64, 10), num_classes=10, input_shape=(64,))
    with pytest.raises(ConfigError, match="denoise='none'"):
        ModelInversion(denoise="median").run(flat)
    res = ModelInversion(steps=5).run(flat, classes=2)  # flat inputs work without the filters
    assert res.images.shape == (1, 64)
