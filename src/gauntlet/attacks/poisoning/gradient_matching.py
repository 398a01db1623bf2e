"""Witches' Brew (Geiping et al. 2021): targeted clean-label poisoning by gradient matching.

The poisons are training images of ``target_class`` with a small L∞ perturbation δ, chosen so
that the gradient of the training loss on the poisons (with their correct labels) points the same
way as the gradient of the *adversarial* loss on the target (the target labelled
``target_class``).  Training on the poisons then takes, in effect, steps that move the target
towards ``target_class``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import PoisoningAttack
from gauntlet.attacks.poisoning.feature_collision import pick_bases, place_poisons, poison_budget, torch_model
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError

__all__ = ["GradientMatching", "alignment"]


def _parameters(module: nn.Module, scope: str, owner: str) -> list[nn.Parameter]:
    if scope == "all":
        params = [p for p in module.parameters() if p.is_floating_point()]
    else:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{owner}: the network has no nn.Linear layer for params='last'; use params='all'")
        params = list(linears[-1].parameters())
    if not params:
        raise ConfigError(f"{owner}: the network has no parameters to match gradients on")
    return params


@contextlib.contextmanager
def _differentiable(model: Any, params: list[nn.Parameter]) -> Iterator[None]:
    """Eval mode with gradients enabled on ``params`` (flags and modes restored on exit)."""
    modes = [(m, m.training) for m in model.module.modules()]
    flags = [(p, p.requires_grad) for p in model.module.parameters()]
    try:
        model.module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for m, t in modes:
            m.training = t
        for p, f in flags:
            p.requires_grad_(f)


def _grad(model: Any, params: list[nn.Parameter], x: Tensor, y: Tensor, create_graph: bool) -> list[Tensor]:
    loss = F.cross_entropy(model.scores(x, count=False), y, reduction="sum")
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def _cosine_loss(g_target: list[Tensor], g_poison: list[Tensor], target_norm: Tensor) -> Tensor:
    """``1 - cos(g_target, g_poison)`` over all parameters together (the paper's alignment loss)."""
    dot = sum((a * b).sum() for a, b in zip(g_target, g_poison))
    norm = torch.sqrt(sum((b * b).sum() for b in g_poison))  # type: ignore[arg-type]
    return 1 - dot / (target_norm * norm + 1e-12)  # type: ignore[operator]


def alignment(model: Any, x_target: Tensor, target_class: int, x_poison: Tensor, y_poison: Tensor, *, params: str = "all") -> float:
    """``cos(∇θ L(x_target, target_class), ∇θ Σ L(x_poison, y_poison))`` on ``model`` (a
    ``TorchModel``): how well the poisons' training gradient points where the attacker wants."""
    model = torch_model(model, "alignment")
    ps = _parameters(model.module, params, "alignment")
    yt = torch.full((x_target.shape[0],), int(target_class), dtype=torch.int64, device=x_target.device)
    with _differentiable(model, ps):
        gt_ = _grad(model, ps, x_target, yt, False)
        gp = _grad(model, ps, x_poison, y_poison, False)
    tn = torch.sqrt(sum((a * a).sum() for a in gt_))  # type: ignore[arg-type]
    return float(1 - _cosine_loss(gt_, gp, tn))


@register
class GradientMatching(PoisoningAttack):
    """Witches' Brew gradient matching (Geiping et al. 2021), clean-label and targeted.

    For every target image ``t`` in ``poison(..., x_target=...)`` it takes ``n_poisons`` training
    images of ``target_class`` (drawn at random, as in the paper) and finds perturbations
    ``‖δ‖∞ <= eps`` that minimise

        ``1 - cos(∇θ L(f(t), target_class), ∇θ Σ_i L(f(x_i + δ_i), y_i))``

    on the surrogate ``model`` with signed Adam (the gradient's sign fed to Adam, step
    ``learning_rate · eps``, divided by 10 at 3/8, 5/8 and 7/8 of ``steps``), projecting onto the
    ε-ball and ``bounds`` after every step; of ``restarts`` random starts the one with the lowest
    final loss is kept.  ``params="last"`` matches only the gradient of the last ``nn.Linear``
    (what a victim that retrains only its last layer updates).  The paper's differentiable
    data augmentation (flips and crops, for CIFAR) is not implemented.  Labels stay those of
    the base images (clean-label).

    Args:
        fraction: the poison budget as a share of the training set, split evenly over the targets,
            when ``n_poisons`` is ``None`` (the paper uses 1%).
        n_poisons: poisons per target image; overrides ``fraction``.
        target_class: the class the target should be classified as; the poisons are of this class.
        eps: the L∞ bound of each perturbation (the paper's 16/255 by default).
        steps: signed-Adam steps per restart (the paper: 240).
        restarts: random restarts R (the paper: 8).
        learning_rate: Adam's step as a share of ``eps`` (the paper's τ = 0.1).
        params: ``"all"`` parameters of the surrogate or the ``"last"`` nn.Linear only.
        mode: ``"replace"`` the base rows by their poisons or ``"add"`` the poisons as new rows.
        bounds: the inputs' value range.

    ``info`` holds the base ``rows (T, n_poisons)``, ``target_index`` per poison and the
    alignment loss per target before (δ = 0) and after.
    """

    name = "gradient_matching"
    description = "Witches' Brew targeted clean-label poisoning by gradient matching (Geiping et al. 2021)"
    reference = (
        'Geiping, Fowl, Huang, Czaja, Taylor, Moeller and Goldstein, "Witches\' Brew: Industrial Scale Data '
        'Poisoning via Gradient Matching", ICLR 2021, https://arxiv.org/abs/2009.02276'
    )
    goal = "targeted"
    needs_target = True
    needs_model = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "n_poisons": [Interval(int, 1, None), IsNone()],
        "target_class": [Interval(int, 0, None)],
        "eps": [Interval(float, 0, None, closed="neither")],
        "steps": [Interval(int, 1, None)],
        "restarts": [Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "params": [Options(("all", "last"))],
        "mode": [Options(("replace", "add"))],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.01,
        n_poisons: int | None = None,
        target_class: int = 0,
        eps: float = 16 / 255,
        steps: int = 240,
        restarts: int = 8,
        learning_rate: float = 0.1,
        params: str = "all",
        mode: str = "replace",
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.n_poisons = n_poisons
        self.target_class = target_class
        self.eps = eps
        self.steps = steps
        self.restarts = restarts
        self.learning_rate = learning_rate
        self.params = params
        self.mode = mode
        self.bounds = bounds
        self._validate()

    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        model = torch_model(model, self.name)
        xt = self._x_target
        assert xt is not None
        n_t = int(xt.shape[0])
        k = poison_budget(self, int(x.shape[0]), n_t)
        rows = pick_bases(self, y, n_t, k, generator)
        ps = _parameters(model.module, str(self.params), self.name)
        poisons, before, after = [], [], []
        for t in range(n_t):
            p, b0, b1 = self._brew(model, ps, xt[t : t + 1], x[rows[t]], y[rows[t]], generator)
            poisons.append(p)
            before.append(b0)
            after.append(b1)
        flat = rows.flatten()
        px, py, mask = place_poisons(x, y, flat, torch.cat(poisons), str(self.mode))
        info = {
            "rows": rows.cpu(),
            "target_index": torch.arange(n_t).repeat_interleave(k),
            "alignment_loss_initial": torch.tensor(before),
            "alignment_loss": torch.tensor(after),
        }
        return px, py, mask, info

    def _brew(
        self, model: Any, ps: list[nn.Parameter], xt: Tensor, base: Tensor, yb: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, float, float]:
        """Poisons for one target: the best of ``restarts`` signed-Adam runs."""
        lo, hi = self._bounds()
        eps = float(self.eps)
        yt = torch.full((1,), int(self.target_class), dtype=torch.int64, device=xt.device)
        steps = int(self.steps)
        milestones = [steps * 3 // 8, steps * 5 // 8, steps * 7 // 8]
        with _differentiable(model, ps):
            g_t = [g.detach() for g in _grad(model, ps, xt, yt, False)]
            t_norm = torch.sqrt(sum((g * g).sum() for g in g_t))  # type: ignore[arg-type]

            def loss_of(delta: Tensor, create_graph: bool = True) -> Tensor:
                return _cosine_loss(g_t, _grad(model, ps, base + delta, yb, create_graph), t_norm)

            before = float(loss_of(torch.zeros_like(base), False))
            best_loss, best = float("inf"), torch.zeros_like(base)
            for _ in range(int(self.restarts)):
                u = torch.rand(base.shape, generator=generator, device=base.device, dtype=base.dtype)
                delta = ((2 * u - 1) * eps).add(base).clamp(lo, hi).sub(base).requires_grad_(True)
                opt = torch.optim.Adam([delta], lr=float(self.learning_rate) * eps)
                sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    loss = loss_of(delta)
                    (g,) = torch.autograd.grad(loss, delta)
                    delta.grad = g.sign()
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        delta.clamp_(-eps, eps)
                        delta.copy_((base + delta).clamp(lo, hi) - base)
                final = float(loss_of(delta.detach(), False))
                if final < best_loss:
                    best_loss, best = final, delta.detach().clone()
        return (base + best).clamp(lo, hi), before, best_loss
