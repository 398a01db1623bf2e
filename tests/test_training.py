"""Training defenses: every method trains, adversarial training buys robustness, losses match their
closed forms, runs are deterministic and resume bitwise, bad data and hyperparameters are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gauntlet as gt
from gauntlet.defenses import create, get_defense_class, list_defenses
from gauntlet.defenses.training._base import (
    TrainContext,
    Trainer,
    accuracy,
    load_checkpoint,
    lr_at,
    perturb,
    train,
)
from gauntlet.errors import ConfigError, DataError, UnknownNameError
from gauntlet.models.zoo import DigitsCNN

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("standard", "fast_at", "pgd_at", "trades", "distillation", "label_smoothing")
EPS = 0.1  # L∞ radius on the [0, 1]-scaled 8×8 digits

# Settings that train each method to a useful model on digits in about a second.
SETTINGS: dict[str, dict[str, Any]] = {
    "standard": dict(epochs=6, lr=1e-2, batch_size=64, lr_schedule="cyclic"),
    "fast_at": dict(eps=EPS, epochs=6, lr=1e-2, batch_size=64, lr_schedule="cyclic"),
    "pgd_at": dict(eps=EPS, steps=3, step_size=EPS / 2, epochs=6, lr=1e-2, batch_size=64, lr_schedule="cyclic"),
    "trades": dict(eps=EPS, steps=3, step_size=EPS / 2, epochs=6, lr=1e-2, batch_size=64, lr_schedule="cyclic"),
    "distillation": dict(temperature=100.0, epochs=8, lr=1e-2, batch_size=64),
    "label_smoothing": dict(smoothing=0.1, epochs=6, lr=1e-2, batch_size=64, lr_schedule="cyclic"),
}


def fresh_cnn(seed: int = 0) -> DigitsCNN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DigitsCNN()


class DropoutMLP(nn.Module):
    """A tiny MLP with dropout, so the forked global RNG matters for determinism and resume."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TwoClassLinear(nn.Module):
    """z = W x + b with two classes: the CE input gradient for label 0 has sign(W1 - W0) everywhere."""

    def __init__(self, d: int = 12) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.fc = nn.Linear(d, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, d, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def robust_accuracy(net: nn.Module, x: Tensor, y: Tensor, eps: float = EPS, loss: str = "ce") -> float:
    model = gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10)
    res = gt.attacks.create("pgd", norm="linf", eps=eps, steps=20, loss=loss).run(model, x, y, seed=0)
    return 1.0 - float(res.success.float().mean())


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


_TRAINED: dict[str, Any] = {}


@pytest.fixture()
def trained(digits_train: gt.data.Dataset):
    """Train each method once per session (DigitsCNN, settings above) and cache the result."""

    def get(method: str) -> Any:
        if method not in _TRAINED:
            net = fresh_cnn()
            _TRAINED[method] = train(
                net, digits_train.x, digits_train.y, method=method, seed=0, progress=False, **SETTINGS[method]
            )
        return _TRAINED[method]

    return get


# ------------------------------------------------------------------------------------------------
# registry and the end-to-end behaviour of each method
def test_all_six_methods_are_registered_as_training_defenses() -> None:
    assert set(METHODS) <= set(list_defenses("training"))
    for m in METHODS:
        cls = get_defense_class(m)
        assert cls.kind == "training" and issubclass(cls, Trainer)
        t = create(m)
        assert create(m, **t.get_params()).get_params() == t.get_params()  # params round-trip


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_well_above_chance(method: str, trained, digits_test: gt.data.Dataset) -> None:
    res = trained(method)
    acc = accuracy(res.module, digits_test.x, digits_test.y)
    assert acc >= 0.85, f"{method}: clean test accuracy {acc:.3f}"
    assert len(res.history) == res.params["epochs"]
    assert res.history[-1].loss < res.history[0].loss
    assert not res.module.training  # left in eval mode, ready to deploy


@pytest.mark.parametrize("method", ["fast_at", "pgd_at", "trades"])
def test_adversarial_training_raises_pgd_robust_accuracy_over_standard(
    method: str, trained, digits_test: gt.data.Dataset
) -> None:
    x, y = digits_test.x, digits_test.y
    base = robust_accuracy(trained("standard").module, x, y)
    robust = robust_accuracy(trained(method).module, x, y)
    # measured: standard 0.52, fast_at 0.80, pgd_at 0.81, trades 0.84 (PGD-20, ε = 0.1, 450 test digits)
    assert base < 0.6
    assert robust >= base + 0.2, f"{method}: robust {robust:.3f} vs standard {base:.3f}"


def test_distillation_student_follows_teacher_and_only_masks_gradients(trained, digits_test: gt.data.Dataset) -> None:
    res = trained("distillation")
    student, teacher = res.module, res.info["teacher"]
    x, y = digits_test.x, digits_test.y
    with torch.no_grad():
        agree = float((student(x).argmax(1) == teacher(x).argmax(1)).float().mean())
    assert agree >= 0.9
    # Papernot et al.: at T = 1 the softmax saturates, so cross-entropy gradients vanish and
    # CE-based attacks stall; Carlini & Wagner: a logit-margin loss ignores the softmax and breaks it.
    ce = robust_accuracy(student, x, y, loss="ce")
    margin = robust_accuracy(student, x, y, loss="margin")
    undefended = robust_accuracy(trained("standard").module, x, y, loss="margin")
    assert ce >= margin + 0.25, f"CE-PGD {ce:.3f} vs margin-PGD {margin:.3f}"
    assert margin <= undefended + 0.1


def test_carlini_wagner_breaks_defensive_distillation(trained, digits_test: gt.data.Dataset) -> None:
    # Carlini & Wagner (2017): their L2 attack finds adversarials on a distilled network as close as
    # on an undefended one, while gradient-sign attacks on the cross-entropy are masked.
    x, y = digits_test.x[:64], digits_test.y[:64]
    out = {}
    for method in ("standard", "distillation"):
        model = gt.models.TorchModel(trained(method).module, bounds=(0.0, 1.0), num_classes=10)
        cw = gt.attacks.create(  # the authors' algorithm (no final annealed round), short schedule
            "cw_l2", steps=50, binary_search_steps=5, learning_rate=0.1, abort_early=True, final_steps=0
        ).run(model, x, y, seed=0)
        fgsm = gt.attacks.create("fgsm", norm="l2", eps=1.0).run(model, x, y, seed=0)
        hit = cw.clean_correct & cw.success
        out[method] = (float(cw.success.float().mean()), float(cw.norms[hit].median()), float(fgsm.success.float().mean()))
    # measured (C&W success, median L2, FGSM-L2 success): standard (1.0, 0.73, 0.88), distillation (1.0, 0.74, 0.13)
    (cw_std, l2_std, fgsm_std), (cw_dist, l2_dist, fgsm_dist) = out["standard"], out["distillation"]
    assert cw_dist >= 0.95 and cw_std >= 0.95
    assert l2_dist <= 1.25 * l2_std
    assert fgsm_dist <= fgsm_std - 0.4


# ------------------------------------------------------------------------------------------------
# losses against closed forms
def _ctx(seed: int = 0, epochs: int = 1) -> TrainContext:
    return TrainContext(torch.Generator().manual_seed(seed), (0.0, 1.0), 10, epochs, 1)


def test_trades_with_beta_zero_is_clean_cross_entropy(digits_batch) -> None:
    x, y = digits_batch
    net = fresh_cnn().train()
    t = create("trades", beta=0.0, eps=EPS, steps=3, step_size=0.04)
    loss = t.loss(net, x, y, _ctx())
    assert torch.allclose(loss, F.cross_entropy(net(x), y), rtol=0, atol=1e-6)


def test_trades_loss_is_ce_plus_beta_times_kl_at_its_adversarial_point(digits_batch) -> None:
    x, y = digits_batch
    net = fresh_cnn().train()
    t = create("trades", beta=6.0, eps=EPS, steps=3, step_size=0.04)
    loss = t.loss(net, x, y, _ctx(seed=5))
    x_adv = t.adversarial(net, x, _ctx(seed=5))  # same generator state → same inner point
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    p = F.softmax(net(x), 1)
    kl = (p * (p.log() - F.log_softmax(net(x_adv), 1))).sum(1).mean()
    assert float(kl.detach()) > 0
    assert torch.allclose(loss, F.cross_entropy(net(x), y) + 6.0 * kl, rtol=1e-5, atol=1e-6)
    assert net.training  # TRADES runs its inner attack in eval mode and restores the mode


def test_label_smoothing_loss_matches_its_closed_form(digits_batch) -> None:
    x, y = digits_batch
    net = fresh_cnn().train()
    eps = 0.2
    loss = create("label_smoothing", smoothing=eps).loss(net, x, y, _ctx())
    logp = F.log_softmax(net(x), 1)
    target = (1 - eps) * F.one_hot(y, 10).float() + eps / 10
    closed = -(target * logp).sum(1).mean()
    assert torch.allclose(loss, closed, rtol=1e-6, atol=1e-6)
    assert torch.allclose(closed, (1 - eps) * F.nll_loss(logp, y) + eps * (-logp.mean(1)).mean(), atol=1e-6)


def test_fast_at_takes_one_fgsm_step_from_a_random_start() -> None:
    # For a 2-class linear model and label 0 the CE gradient has sign s = sign(W1 - W0) at every
    # point, so with α = 2ε every coordinate ends at exactly x + ε·s whatever the random start.
    net = TwoClassLinear()
    x = 0.3 + 0.4 * torch.rand(16, 12, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(16, dtype=torch.int64)
    s = torch.sign(net.fc.weight[1] - net.fc.weight[0]).detach()
    t = create("fast_at", eps=0.05, alpha=0.1)
    x_adv = t.adversarial(net, x, y, _ctx())
    assert torch.allclose(x_adv, x + 0.05 * s, atol=1e-6)
    # a small step cannot reach the boundary from every start: the random start is really there
    x_small = create("fast_at", eps=0.05, alpha=0.01).adversarial(net, x, y, _ctx())
    assert float((x_small - x).abs().max()) <= 0.05 + 1e-6
    assert float(((x_small - x).abs() < 0.049).float().mean()) > 0.3


@pytest.mark.parametrize("clip_start", [False, True])
def test_fast_at_start_is_clipped_only_when_asked(clip_start: bool) -> None:
    # At x = 0 (an MNIST background pixel) with gradient sign s and start u ~ U[-ε, ε]:
    # unclipped (Wong et al.'s MNIST code) x_adv = clip_[0,1](clip_ε(u + α s)),
    # clipped (their CIFAR-10 code)        x_adv = clip_[0,1](clip_ε(max(u, 0) + α s)).
    net = TwoClassLinear()
    x = torch.zeros(64, 12)
    y = torch.zeros(64, dtype=torch.int64)
    s = torch.sign(net.fc.weight[1] - net.fc.weight[0]).detach()
    eps, alpha = 0.05, 0.01
    u = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(9)) - 1) * eps
    start = u.clamp_min(0) if clip_start else u
    expected = (start + alpha * s).clamp(-eps, eps).clamp(0, 1)
    got = create("fast_at", eps=eps, alpha=alpha, clip_start=clip_start).adversarial(net, x, y, _ctx(seed=9))
    assert torch.allclose(got, expected, atol=1e-7)
    other = (u if clip_start else u.clamp_min(0)) + alpha * s
    assert not torch.allclose(got, other.clamp(-eps, eps).clamp(0, 1), atol=1e-7)


def test_fast_at_default_step_is_1_25_eps_as_in_wong_et_al() -> None:
    net = TwoClassLinear()
    x = torch.full((4, 12), 0.5)
    y = torch.zeros(4, dtype=torch.int64)
    t = create("fast_at", eps=0.04)
    assert t.alpha is None
    a = t.adversarial(net, x, y, _ctx(seed=2))
    b = create("fast_at", eps=0.04, alpha=0.05).adversarial(net, x, y, _ctx(seed=2))
    assert torch.equal(a, b)


def test_fast_at_eps_ramp_scales_eps_and_alpha_linearly_then_holds() -> None:
    # eps_ramp_epochs = 2 with 4 steps per epoch: the factor is (epoch + batch / 4) / 2, capped at 1;
    # ε and α are both scaled by it, so a ramped step equals an unramped one at (f·ε, f·α).
    net = TwoClassLinear()
    x = 0.3 + 0.4 * torch.rand(16, 12, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(16, dtype=torch.int64)
    eps, alpha = 0.2, 0.25
    ramped = create("fast_at", eps=eps, alpha=alpha, eps_ramp_epochs=2.0)

    def ctx(epoch: int, batch: int) -> TrainContext:
        return TrainContext(torch.Generator().manual_seed(7), (0.0, 1.0), 10, 4, 4, epoch=epoch, batch=batch)

    assert torch.equal(ramped.adversarial(net, x, y, ctx(0, 0)), x)  # ε = 0 at the first step: clean inputs
    for (epoch, batch), f in {(0, 1): 0.125, (1, 0): 0.5, (1, 2): 0.75}.items():
        got = ramped.adversarial(net, x, y, ctx(epoch, batch))
        want = create("fast_at", eps=f * eps, alpha=f * alpha).adversarial(net, x, y, ctx(epoch, batch))
        assert torch.allclose(got, want, atol=1e-7), (epoch, batch)
        assert float((got - x).abs().max()) <= f * eps + 1e-6
    plain = create("fast_at", eps=eps, alpha=alpha)
    for epoch, batch in ((2, 0), (3, 3)):  # after the ramp: exactly the unramped step
        after = ramped.adversarial(net, x, y, ctx(epoch, batch))
        assert torch.equal(after, plain.adversarial(net, x, y, ctx(epoch, batch)))
    # no ramp (the default, the paper's setting) is full ε from the first step
    assert create("fast_at", eps=eps).eps_ramp_epochs == 0.0
    assert float((plain.adversarial(net, x, y, ctx(0, 0)) - x).abs().max()) > 0.9 * eps


def test_fast_at_n_fgsm_start_scale_and_no_projection() -> None:
    # N-FGSM (de Jorge et al. 2022): start u ~ U[-kε, kε], one signed step of α, no projection to
    # the ε-ball; for the 2-class linear model (gradient sign s everywhere) x_adv = clip(x + u + α s).
    net = TwoClassLinear()
    x = 0.3 + 0.4 * torch.rand(32, 12, generator=torch.Generator().manual_seed(6))
    y = torch.zeros(32, dtype=torch.int64)
    s = torch.sign(net.fc.weight[1] - net.fc.weight[0]).detach()
    eps, k = 0.05, 2.0
    u = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) - 1) * (k * eps)
    got = create("fast_at", eps=eps, alpha=eps, start_scale=k, project=False).adversarial(net, x, y, _ctx(seed=4))
    assert torch.allclose(got, (x + u + eps * s).clamp(0, 1), atol=1e-6)
    assert float((got - x).abs().max()) > 1.5 * eps  # really outside the ε-ball
    # with projection the same start and step end inside the ball: clip_ε(u + α s)
    proj = create("fast_at", eps=eps, alpha=eps, start_scale=k).adversarial(net, x, y, _ctx(seed=4))
    assert torch.allclose(proj, (x + (u + eps * s).clamp(-eps, eps)).clamp(0, 1), atol=1e-6)


def test_perturb_is_projected_sign_ascent_on_a_linear_model() -> None:
    net = TwoClassLinear()
    x = 0.3 + 0.4 * torch.rand(8, 12, generator=torch.Generator().manual_seed(4))
    y = torch.zeros(8, dtype=torch.int64)
    s = torch.sign(net.fc.weight[1] - net.fc.weight[0]).detach()
    g = torch.Generator().manual_seed(0)
    one = perturb(net, x, y, eps=0.05, steps=1, step_size=0.02, generator=g, bounds=(0.0, 1.0), random_start=False)
    assert torch.allclose(one, x + 0.02 * s, atol=1e-6)
    many = perturb(net, x, y, eps=0.05, steps=10, step_size=0.02, generator=g, bounds=(0.0, 1.0))
    assert torch.allclose(many, x + 0.05 * s, atol=1e-6)  # projected onto the ε-ball corner
    assert all(p.grad is None for p in net.parameters())  # only the input gradient is computed


# ------------------------------------------------------------------------------------------------
# schedules and the extension point
def test_lr_schedules_follow_their_closed_forms() -> None:
    assert lr_at("constant", 0.1, 3.3, 10) == 0.1
    assert lr_at("cyclic", 0.1, 0.0, 10) == 0.0
    assert lr_at("cyclic", 0.1, 2.0, 10) == pytest.approx(0.05)
    assert lr_at("cyclic", 0.1, 4.0, 10) == pytest.approx(0.1)  # peak at 2/5 of training
    assert lr_at("cyclic", 0.1, 7.0, 10) == pytest.approx(0.05)
    assert lr_at("cyclic", 0.1, 10.0, 10) == pytest.approx(0.0)
    assert lr_at("step", 0.1, 5.0, 10) == pytest.approx(0.1)
    assert lr_at("step", 0.1, 6.0, 10) == pytest.approx(0.01)
    assert lr_at("step", 0.1, 8.0, 10) == pytest.approx(0.001)
    assert lr_at("cosine", 0.1, 5.0, 10) == pytest.approx(0.05)
    assert lr_at("cosine", 0.1, 10.0, 10) == pytest.approx(0.0, abs=1e-12)


class _Recorder(Trainer):
    """A minimal subclass, as another method would write one: records what the loop hands it."""

    name = "recorder"

    def __init__(self, *, scale: float = 1.0, **common: Any) -> None:
        super().__init__(**common)
        self.scale = scale
        self._validate()
        self.seen: list[tuple[int, int, int, float, float]] = []

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        noise = torch.rand((), generator=ctx.generator)
        self.seen.append((ctx.epoch, ctx.batch, ctx.step, ctx.progress, ctx.lr))
        assert module.training and ctx.index is not None and ctx.index.shape[0] == xb.shape[0]
        return F.cross_entropy(module(xb) * self.scale, yb) + 0 * noise


def test_subclasses_get_progress_lr_and_params_from_the_base(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x[:100], digits_train.y[:100]
    t = _Recorder(scale=2.0, epochs=2, batch_size=40, lr=0.01, lr_schedule="cyclic")
    assert t.get_params()["scale"] == 2.0 and t.get_params()["epochs"] == 2
    res = t.fit(DropoutMLP(), x, y, progress=False)
    assert [(e, b, s) for e, b, s, _, _ in t.seen] == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5)]
    assert [p for *_, p, _ in t.seen] == pytest.approx([i / 6 for i in range(6)])
    assert [lr for *_, lr in t.seen] == pytest.approx([lr_at("cyclic", 0.01, e + (b + 1) / 3, 2) for e, b, *_ in t.seen])
    assert res.history[-1].lr == pytest.approx(0.0)
    assert res.history[0].train_acc is None  # this method records no logits


def test_a_non_finite_loss_stops_training_with_a_config_error(digits_train: gt.data.Dataset) -> None:
    class Boom(_Recorder):
        def loss(self, module, xb, yb, ctx):  # type: ignore[no-untyped-def]
            return super().loss(module, xb, yb, ctx) * float("nan")

    with pytest.raises(ConfigError, match="loss became nan at epoch 1, batch 1; lower lr"):
        Boom(epochs=1).fit(DropoutMLP(), digits_train.x[:50], digits_train.y[:50], progress=False)


# ------------------------------------------------------------------------------------------------
# determinism, checkpoints, resume
def _fit(method: str, x: Tensor, y: Tensor, seed: int = 0, **kw: Any) -> Any:
    params: dict[str, Any] = dict(epochs=3, batch_size=128, lr=3e-3, lr_schedule="cyclic")
    if method in ("fast_at", "pgd_at", "trades"):
        params["eps"] = EPS
    if method in ("pgd_at", "trades"):
        params.update(steps=2, step_size=0.05)
    fit_kw = {k: kw.pop(k) for k in list(kw) if k in ("checkpoint", "resume", "callback", "x_val", "y_val")}
    params.update(kw)
    net = DropoutMLP()
    return create(method, **params).fit(net, x, y, seed=seed, progress=False, **fit_kw)


def test_same_seed_gives_identical_weights_and_leaves_the_global_rng_alone(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x, digits_train.y
    before = torch.get_rng_state()
    a = _fit("pgd_at", x, y, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = _fit("pgd_at", x, y, seed=7)
    c = _fit("pgd_at", x, y, seed=8)
    assert same_weights(a.module, b.module)
    assert [r.loss for r in a.history] == [r.loss for r in b.history]
    assert not same_weights(a.module, c.module)


def _stop_after(epoch: int):
    class Stop(Exception):
        pass

    def cb(record: Any) -> None:
        if record.epoch == epoch:
            raise Stop

    return Stop, cb


@pytest.mark.parametrize("method", ["pgd_at", "fast_at"])
def test_an_interrupted_run_resumes_bitwise_identically(method: str, digits_train: gt.data.Dataset, tmp_path: Path) -> None:
    x, y = digits_train.x, digits_train.y
    whole = _fit(method, x, y, seed=3)
    ckpt = tmp_path / "run.ckpt"
    Stop, cb = _stop_after(1)
    with pytest.raises(Stop):
        _fit(method, x, y, seed=3, checkpoint=ckpt, callback=cb)
    assert load_checkpoint(ckpt)["epoch"] == 1
    resumed = _fit(method, x, y, seed=3, checkpoint=ckpt)
    assert resumed.resumed_from == 1
    assert same_weights(whole.module, resumed.module)
    assert [r.loss for r in resumed.history] == [r.loss for r in whole.history]
    # a finished checkpoint resumes to the same weights without training
    again = _fit(method, x, y, seed=3, checkpoint=ckpt)
    assert again.resumed_from == 3 and same_weights(whole.module, again.module)


def test_distillation_resumes_its_student_and_reuses_its_teacher(digits_train: gt.data.Dataset, tmp_path: Path) -> None:
    x, y = digits_train.x[:400], digits_train.y[:400]
    kw = dict(temperature=10.0, epochs=2, lr=1e-2, batch_size=100)
    whole = _fit("distillation", x, y, seed=1, **kw)
    ckpt = tmp_path / "d.ckpt"
    Stop, cb = _stop_after(1)
    with pytest.raises(Stop):
        _fit("distillation", x, y, seed=1, checkpoint=ckpt, callback=cb, **kw)
    assert load_checkpoint(tmp_path / "d.ckpt.teacher")["epoch"] == 2
    resumed = _fit("distillation", x, y, seed=1, checkpoint=ckpt, **kw)
    assert resumed.resumed_from == 1 and same_weights(whole.module, resumed.module)
    assert same_weights(whole.info["teacher"], resumed.info["teacher"])


def test_checkpoint_is_plain_tensors_that_load_with_weights_only(digits_train: gt.data.Dataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    res = _fit("standard", digits_train.x[:200], digits_train.y[:200], checkpoint=ckpt, epochs=2)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 2 and state["method"] == "standard"
    assert state["generator"].dtype == torch.uint8 and state["global_rng"].dtype == torch.uint8
    assert state["model"].keys() == res.module.state_dict().keys()
    assert [h["loss"] for h in state["history"]] == [r.loss for r in res.history]
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no leftovers


@pytest.mark.parametrize(
    "change",
    [
        dict(lr=1e-2),
        dict(epochs=4),
        dict(seed=4),
        dict(data="other"),
    ],
)
def test_resuming_with_other_data_params_or_seed_is_refused(
    change: dict[str, Any], digits_train: gt.data.Dataset, tmp_path: Path
) -> None:
    x, y = digits_train.x[:200], digits_train.y[:200]
    ckpt = tmp_path / "c.pt"
    _fit("standard", x, y, checkpoint=ckpt, epochs=2, seed=3)
    kw = {k: v for k, v in change.items() if k not in ("data", "seed")}
    if change.get("data"):
        x, y = digits_train.x[200:400], digits_train.y[200:400]
    with pytest.raises(ConfigError, match="different data, hyperparameters, seed or architecture"):
        _fit("standard", x, y, checkpoint=ckpt, seed=change.get("seed", 3), **{"epochs": 2, **kw})


def test_a_checkpoint_of_another_method_is_refused_and_resume_false_overwrites(
    digits_train: gt.data.Dataset, tmp_path: Path
) -> None:
    x, y = digits_train.x[:200], digits_train.y[:200]
    ckpt = tmp_path / "c.pt"
    _fit("standard", x, y, checkpoint=ckpt, epochs=2)
    with pytest.raises(ConfigError, match="written by method 'standard', not 'label_smoothing'"):
        _fit("label_smoothing", x, y, checkpoint=ckpt, epochs=2)
    res = _fit("label_smoothing", x, y, checkpoint=ckpt, epochs=2, resume=False)
    assert res.resumed_from == 0 and load_checkpoint(ckpt)["method"] == "label_smoothing"


def test_history_records_validation_accuracy_when_given(digits_train, digits_test) -> None:
    res = _fit("standard", digits_train.x, digits_train.y, epochs=2, x_val=digits_test.x, y_val=digits_test.y)
    assert [r.epoch for r in res.history] == [1, 2]
    assert all(r.val_acc is not None and 0 <= r.val_acc <= 1 and r.seconds > 0 for r in res.history)
    assert res.history[-1].val_acc == pytest.approx(accuracy(res.module, digits_test.x, digits_test.y))
    assert res.history[-1].train_acc is not None


def test_progress_false_prints_nothing(digits_train: gt.data.Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    _fit("standard", digits_train.x[:100], digits_train.y[:100], epochs=1)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ------------------------------------------------------------------------------------------------
# refusals
def _bad_data(digits_train: gt.data.Dataset, kind: str) -> tuple[Any, Any, dict[str, Any]]:
    x, y = digits_train.x[:64].clone(), digits_train.y[:64].clone()
    extra: dict[str, Any] = {}
    if kind == "above_bounds":
        x[3, 0, 0, 0] = 1.5
    elif kind == "nan":
        x[2, 0, 1, 1] = float("nan")
    elif kind == "inf":
        x[5, 0, 1, 1] = float("inf")
    elif kind == "float64":
        x = x.double()
    elif kind == "int_x":
        x = (x * 16).to(torch.int64)
    elif kind == "numpy":
        x = x.numpy()
    elif kind == "label_range":
        y[0] = 10
    elif kind == "negative_label":
        y[0] = -1
    elif kind == "float_labels":
        y = y.float()
    elif kind == "y_length":
        y = y[:10]
    elif kind == "arch_shape":
        x = torch.rand(64, 1, 5, 5)
    elif kind == "val_without_y":
        extra["x_val"] = x
    elif kind == "val_out_of_bounds":
        extra = {"x_val": x - 0.5, "y_val": y}
    return x, y, extra


@pytest.mark.parametrize(
    "kind, message",
    [
        ("above_bounds", r"x has values in \[0, 1.5\] outside the declared bounds \[0, 1\]"),
        ("nan", "x contains NaN or inf in 1 sample"),
        ("inf", "x contains NaN or inf in 1 sample"),
        ("float64", r"x has dtype torch.float64 but the module's parameters are torch.float32; convert with x.to"),
        ("int_x", "x must be a float tensor, got torch.int64"),
        ("numpy", r"x must be a torch.Tensor, got ndarray \(convert with torch.from_numpy"),
        ("label_range", r"y holds labels in \[0, 10\] but the module outputs 10 classes"),
        ("negative_label", r"y holds labels in \[-1, 9\]"),
        ("float_labels", "y must hold integer class labels, got dtype torch.float32"),
        ("y_length", r"y must have shape \(64,\) to match x, got \(10,\)"),
        ("arch_shape", r"the module cannot take x of per-sample shape \(1, 5, 5\)"),
        ("val_without_y", "pass both x_val and y_val, or neither"),
        ("val_out_of_bounds", "x_val has values in"),
    ],
)
def test_bad_training_data_is_refused_with_a_one_line_data_error(
    kind: str, message: str, digits_train: gt.data.Dataset
) -> None:
    x, y, extra = _bad_data(digits_train, kind)
    with pytest.raises(DataError, match=message) as err:
        create("standard", epochs=1).fit(fresh_cnn(), x, y, progress=False, **extra)
    assert "\n" not in str(err.value) and str(err.value).startswith("standard.fit: ")


def test_declared_bounds_are_enforced(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x[:64], digits_train.y[:64]
    with pytest.raises(DataError, match=r"outside the declared bounds \[0, 0.5\]"):
        create("standard", epochs=1, bounds=(0.0, 0.5)).fit(fresh_cnn(), x, y, progress=False)
    create("standard", epochs=1, bounds=(-1.0, 1.0)).fit(fresh_cnn(), x, y, progress=False)


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("standard", dict(epochs=0), "parameter 'epochs' must be an int >= 1, got 0"),
        ("standard", dict(epochs=2.5), "parameter 'epochs' must be an int >= 1"),
        ("standard", dict(batch_size=0), "parameter 'batch_size' must be an int >= 1"),
        ("standard", dict(lr=-0.1), "parameter 'lr' must be a finite number > 0"),
        ("standard", dict(optimizer="rmsprop"), "parameter 'optimizer' must be one of 'adam', 'sgd'"),
        ("standard", dict(momentum=1.0), "parameter 'momentum' must be a finite number >= 0 and < 1"),
        ("standard", dict(weight_decay=-1.0), "parameter 'weight_decay' must be a finite number >= 0"),
        ("standard", dict(lr_schedule="linear"), "parameter 'lr_schedule' must be one of 'constant', 'cosine', 'cyclic', 'step'"),
        ("standard", dict(bounds=(1.0, 0.0)), "parameter 'bounds' must be a pair"),
        ("standard", dict(epoch=3), "unknown parameter 'epoch'; did you mean 'epochs'?"),
        ("fast_at", dict(eps=0.0), "fast_at: parameter 'eps' must be a finite number > 0"),
        ("fast_at", dict(alpha=-1.0), "parameter 'alpha' must be a finite number > 0 or None"),
        ("fast_at", dict(clip_start="no"), "parameter 'clip_start' must be a bool"),
        ("fast_at", dict(eps_ramp_epochs=-1.0), "parameter 'eps_ramp_epochs' must be a finite number >= 0"),
        ("fast_at", dict(start_scale=0.0), "parameter 'start_scale' must be a finite number > 0"),
        ("fast_at", dict(project=1), "parameter 'project' must be a bool"),
        ("pgd_at", dict(steps=0), "pgd_at: parameter 'steps' must be an int >= 1"),
        ("pgd_at", dict(norm="l1"), "parameter 'norm' must be one of 'l2', 'linf'"),
        ("pgd_at", dict(random_start="yes"), "parameter 'random_start' must be a bool"),
        ("trades", dict(beta=-1.0), "trades: parameter 'beta' must be a finite number >= 0"),
        ("trades", dict(step_size=0), "parameter 'step_size' must be a finite number > 0"),
        ("distillation", dict(temperature=0.0), "parameter 'temperature' must be a finite number > 0"),
        ("distillation", dict(teacher_epochs=0), "parameter 'teacher_epochs' must be an int >= 1 or None"),
        ("label_smoothing", dict(smoothing=1.0), "parameter 'smoothing' must be a finite number >= 0 and < 1"),
    ],
)
def test_bad_hyperparameters_raise_config_error(method: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create(method, **params)


def test_fit_revalidates_mutated_hyperparameters_and_its_own_arguments(digits_train: gt.data.Dataset) -> None:
    x, y = digits_train.x[:64], digits_train.y[:64]
    t = create("standard", epochs=1)
    t.epochs = 0
    with pytest.raises(ConfigError, match="parameter 'epochs'"):
        t.fit(fresh_cnn(), x, y, progress=False)
    t = create("standard", epochs=1)
    with pytest.raises(ConfigError, match="seed must be an int >= 0"):
        t.fit(fresh_cnn(), x, y, seed=-1, progress=False)
    with pytest.raises(ConfigError, match="module must be a torch.nn.Module"):
        t.fit(lambda z: z, x, y, progress=False)  # type: ignore[arg-type]


def test_train_helper_rejects_unknown_methods(digits_train: gt.data.Dataset) -> None:
    with pytest.raises(UnknownNameError, match="unknown defense 'pgd'"):
        train(fresh_cnn(), digits_train.x[:10], digits_train.y[:10], method="pgd", progress=False)
