"""Transfer attacks: craft on white-box surrogates, replay on the target (no target queries).

The adversary trains or downloads models of its own (the *surrogates*), runs a white-box
attack on them (one model, or an ensemble whose logits are averaged, Liu et al. 2017), and
sends the result to the target once.  Two input-side tricks make the examples transfer better
and apply to any registered gradient attack run on the surrogate:

* **input diversity** (DI, Xie et al. 2019): with probability ``diversity`` each gradient step
  sees the input randomly resized (by a factor down to / up to ``resize_rate``) and randomly
  padded back to its size, so the perturbation does not overfit the surrogate's exact pixel grid;
* **translation invariance** (TI, Dong et al. 2019): the input gradient is convolved with a
  ``ti_kernel`` × ``ti_kernel`` Gaussian before the step, the gradient of an ensemble of
  translated images, so the perturbation survives the target's different receptive fields.

MI-FGSM (``attack="mifgsm"``, Dong et al. 2018) with DI and TI is the M-DI²-TI-FGSM family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet import norms as N
from gauntlet._validation import Check, Constraint, Interval, IsNone, Options
from gauntlet.attacks.base import STEPS, Attack, Context
from gauntlet.attacks.registry import create, get_attack_class, register
from gauntlet.errors import CapabilityError, ConfigError
from gauntlet.models.base import InputSpec, Model
from gauntlet.models.wrapped import WrappedModel


def gaussian_kernel(size: int, nsig: float = 3.0) -> Tensor:
    """The TI smoothing kernel: a normalised ``size × size`` Gaussian over ``[-nsig, nsig]²``
    (Dong et al. 2019's ``gkern``)."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * t**2)
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).float()


class _SmoothGrad(torch.autograd.Function):
    """Identity forward; the backward convolves the incoming gradient with a kernel per channel."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: Tensor) -> Tensor:
        ctx.save_for_backward(kernel)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (kernel,) = ctx.saved_tensors
        c = grad.shape[1]
        w = kernel.to(grad.dtype).expand(c, 1, *kernel.shape)
        pad = kernel.shape[-1] // 2
        return F.conv2d(grad, w, padding=pad, groups=c), None


class TransferSurrogate(WrappedModel):
    """The adversary's white-box stand-in: one surrogate or the logit average of several, with
    optional input diversity and translation-invariant gradients.

    Its queries are the adversary's own (local) computation; they never reach the target.
    """

    def __init__(
        self,
        surrogates: Sequence[Model],
        *,
        generator: torch.Generator,
        diversity: float = 0.0,
        resize_rate: float = 0.9,
        ti_kernel: int = 1,
        interpolation: str = "nearest",
    ) -> None:
        super().__init__(*surrogates)
        self.capabilities = frozenset({"gradients", "scores", "labels"})
        self.output = "logits"
        self.generator = generator
        self.diversity = diversity
        self.resize_rate = resize_rate
        self.interpolation = interpolation
        self.kernel = gaussian_kernel(ti_kernel) if ti_kernel > 1 else None
        first = surrogates[0]
        self.input_spec = InputSpec(first.input_spec.shape, first.input_spec.dtype, first.bounds)

    def _diverse(self, x: Tensor) -> Tensor:
        """Xie et al.'s random resize-and-pad (one draw per call), back at the input size.

        ``resize_rate < 1`` shrinks to a random size in ``[rate·H, H)`` and pads back to ``H × W``
        at a random offset (for models with a fixed input size, as torchattacks' DI² does);
        ``resize_rate > 1`` enlarges to ``[H, rate·H)``, pads to ``rate·H`` (the paper's 299 → 330)
        and resizes the result back to ``H × W``.
        """
        g = self.generator
        if self.diversity <= 0 or float(torch.rand((), generator=g, device=g.device)) >= self.diversity:
            return x
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self.resize_rate < 1:
            lo_h, lo_w = min(h - 1, max(1, round(h * self.resize_rate))), min(w - 1, max(1, round(w * self.resize_rate)))
            out_h, out_w = h, w
            rh = int(torch.randint(lo_h, h, (), generator=g, device=g.device))
            rw = int(torch.randint(lo_w, w, (), generator=g, device=g.device))
        else:
            out_h, out_w = max(h + 1, round(h * self.resize_rate)), max(w + 1, round(w * self.resize_rate))
            rh = int(torch.randint(h, out_h, (), generator=g, device=g.device))
            rw = int(torch.randint(w, out_w, (), generator=g, device=g.device))
        resized = self._resize(x, (rh, rw))
        top = int(torch.randint(0, out_h - rh + 1, (), generator=g, device=g.device))
        left = int(torch.randint(0, out_w - rw + 1, (), generator=g, device=g.device))
        padded = F.pad(resized, (left, out_w - rw - left, top, out_h - rh - top), value=0.0)
        return padded if (out_h, out_w) == (h, w) else self._resize(padded, (h, w))

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.interpolation == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _forward(self, x: Tensor) -> Tensor:
        if self.kernel is not None and x.requires_grad:
            x = _SmoothGrad.apply(x, self.kernel.to(x.device))
        if self.diversity > 0 and x.dim() == 4:
            x = self._diverse(x)
        logits = [_logits(m, x) for m in self.inner_models]
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(dim=0)


def _logits(model: Model, x: Tensor) -> Tensor:
    """A surrogate's scores as logits (log of probabilities when it outputs probabilities), so an
    ensemble averages like quantities (Dong et al. 2018 fuse ensemble members in logit space)."""
    s = model.scores(x)
    return s.clamp_min(1e-12).log() if model.output == "probabilities" else s


def _surrogate_list(value: Any) -> list[Model] | None:
    if isinstance(value, Model):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and value and all(isinstance(m, Model) for m in value):
        return list(value)
    return None


@register
class Transfer(Attack):
    """Transfer attack: a white-box attack on surrogate models, replayed on the target.

    The target is never queried while crafting (``AttackResult.queries`` is 0; the base class's
    final check of the adversarial inputs is the measurement, not a query), so any target works,
    a labels-only API included.  Success on the target (``result.success``) is reported apart
    from the white-box success on the surrogates (``result.info["surrogate_success"]``, shaped
    like ``success``) — their gap is the transfer gap.

    Args:
        surrogate: a gauntlet ``Model`` with gradients, or a list of them (an ensemble whose
            logits are averaged); same input shape, bounds and classes as the target.
        attack: the registered gradient attack run on the surrogate (``"mifgsm"``, ``"pgd"``,
            ``"bim"``, ``"fgsm"``, ``"apgd_ce"``, ...).
        norm, eps, targeted, batch_size: as for ``pgd``.
        steps: iterations of the surrogate attack (ignored by single-step ones).
        diversity: input-diversity probability (0 = off; Xie et al. use 0.5 with MI-FGSM).
        resize_rate: DI's resize bound: < 1 shrinks to ``[rate·H, H)`` and pads back (fixed-size
            models; default 0.9), > 1 enlarges to ``[H, rate·H)``, pads and resizes back (the
            paper's 299 → 330 is 1.1).
        interpolation: how DI resizes: ``"nearest"`` (default; Xie et al.'s reference) or
            ``"bilinear"`` (torchattacks' DIFGSM, smoother; it can transfer better on small images).
        ti_kernel: side of TI's Gaussian gradient kernel (1 = off; odd; 15 on ImageNet, ~5 on 28×28).
        attack_params: other hyperparameters of the surrogate attack (e.g. ``{"decay": 1.0}``).
    """

    name = "transfer"
    description = "Transfer from white-box surrogates (ensembles, MI-FGSM, input diversity, TI)"
    reference = (
        'Dong et al., "Evading Defenses to Transferable Adversarial Examples by Translation-Invariant '
        'Attacks", CVPR 2019, https://arxiv.org/abs/1904.02884; Xie et al., "Improving Transferability '
        'of Adversarial Examples with Input Diversity", CVPR 2019, https://arxiv.org/abs/1803.06978'
    )
    requires: ClassVar[frozenset[str]] = frozenset()
    norms = ("linf", "l2", "l1")
    per_sample_info: ClassVar[tuple[str, ...]] = ("surrogate_success",)
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "surrogate": [Check(lambda v: _surrogate_list(v) is not None, "a gauntlet Model or a non-empty list of them")],
        "attack": [Check(lambda v: isinstance(v, str) and bool(v), "the name of a registered gradient attack")],
        "steps": STEPS,
        "diversity": [Interval(float, 0, 1)],
        "resize_rate": [Check(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 2 and v != 1, "a number in (0, 2) other than 1")],
        "ti_kernel": [Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 2 == 1, "an odd int >= 1")],
        "interpolation": [Options(("nearest", "bilinear"))],
        "attack_params": [Check(lambda v: isinstance(v, dict), "a dict of the surrogate attack's hyperparameters"), IsNone()],
    }

    def __init__(
        self,
        *,
        surrogate: Model | Sequence[Model],
        attack: str = "mifgsm",
        norm: str = "linf",
        eps: float | list[float] | None = None,
        steps: int = 10,
        diversity: float = 0.0,
        resize_rate: float = 0.9,
        ti_kernel: int = 1,
        interpolation: str = "nearest",
        attack_params: dict[str, Any] | None = None,
        targeted: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.surrogate = surrogate
        self.attack = attack
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.diversity = diversity
        self.resize_rate = resize_rate
        self.ti_kernel = ti_kernel
        self.interpolation = interpolation
        self.attack_params = attack_params
        self.targeted = targeted
        self.batch_size = batch_size
        self._validate()
        self._surrogates = _surrogate_list(surrogate) or []
        for i, m in enumerate(self._surrogates):
            if "gradients" not in m.capabilities:
                raise CapabilityError(
                    f"transfer: surrogate {i} ({type(m).__name__}) offers no gradients; a surrogate is the "
                    "adversary's own white-box model (e.g. gauntlet.models.TorchModel)"
                )
        self._inner = self._inner_attack()

    def _inner_attack(self) -> Attack:
        try:
            klass = get_attack_class(self.attack, kind="evasion")
        except ConfigError as exc:
            raise ConfigError(f"transfer: attack: {exc}") from None
        if klass is Transfer or "gradients" not in klass.requires or klass.minimal:
            raise ConfigError(
                f"transfer: attack {self.attack!r} is not an eps-bounded gradient attack; use mifgsm, pgd, bim, fgsm or apgd_ce"
            )
        if self.norm not in klass.norms:
            raise ConfigError(f"transfer: {self.attack} does not support norm {self.norm!r} (it takes {', '.join(klass.norms)})")
        names = klass._param_names()
        params: dict[str, Any] = {"norm": self.norm, "eps": self.eps if self.eps is not None else 1.0}
        if "steps" in names:
            params["steps"] = self.steps
        if "targeted" in names:
            params["targeted"] = self.targeted
        elif self.targeted:
            raise ConfigError(f"transfer: {self.attack} cannot be targeted; use mifgsm or pgd")
        if "early_stop" in names:
            params["early_stop"] = False  # success on the surrogate is not success on the target
        extra = dict(self.attack_params or {})
        clash = sorted(set(extra) & {"norm", "eps", "targeted", "batch_size"})
        if clash:
            raise ConfigError(f"transfer: set {', '.join(clash)} on transfer itself, not in attack_params")
        params.update(extra)
        return create(self.attack, **params)

    def _check_surrogates(self, ctx: Context, x: Tensor) -> None:
        target = ctx.model
        for i, m in enumerate(self._surrogates):
            shape = m.input_spec.shape
            if shape is not None and tuple(shape) != tuple(x.shape[1:]):
                raise ConfigError(
                    f"transfer: surrogate {i} takes inputs of shape {tuple(shape)} but the target's inputs have "
                    f"shape {tuple(x.shape[1:])}; a surrogate must see what the target sees"
                )
            if tuple(map(float, m.bounds)) != tuple(map(float, target.bounds)):
                raise ConfigError(f"transfer: surrogate {i} has bounds {m.bounds} but the target has {target.bounds}")
            k = m.num_classes if m.num_classes is not None else m.infer_num_classes(x)
            if k != ctx.num_classes:
                raise ConfigError(f"transfer: surrogate {i} has {k} classes but the target has {ctx.num_classes}")
        if (self.diversity > 0 or self.ti_kernel > 1) and x.dim() != 4:
            raise ConfigError(
                f"transfer: input diversity and TI need image batches (N, C, H, W), got inputs of shape {tuple(x.shape)}"
            )

    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        assert eps is not None
        if "surrogate_success" not in ctx.info:
            self._check_surrogates(ctx, x)
        surrogate = TransferSurrogate(
            self._surrogates,
            generator=ctx.generator,
            diversity=float(self.diversity),
            resize_rate=float(self.resize_rate),
            ti_kernel=int(self.ti_kernel),
            interpolation=str(self.interpolation),
        )
        sctx = Context(surrogate, ctx.generator, ctx.targeted, ctx.num_classes, ctx.bounds, target=ctx.target)
        with surrogate.attack_mode():
            x_adv = self._inner._attack(sctx, x, y, eps).detach()
            # white-box success on the surrogate (without DI's randomness), projected as the base class will
            x_adv = (x + N.project(x_adv - x, self.norm, eps)).clamp(*ctx.bounds)
            with torch.no_grad():
                plain = TransferSurrogate(self._surrogates, generator=ctx.generator)
                pred = plain.predict(x_adv, count=False)
        fooled = pred == ctx.target if ctx.targeted and ctx.target is not None else pred != y
        prev = ctx.info.get("surrogate_success")
        ctx.info["surrogate_success"] = fooled.cpu() if prev is None else torch.cat([prev, fooled.cpu()])
        ctx.info["surrogate_queries"] = ctx.info.get("surrogate_queries", 0) + surrogate.queries
        ctx.info["surrogate_grad_evals"] = ctx.info.get("surrogate_grad_evals", 0) + surrogate.grad_evals
        return x_adv
