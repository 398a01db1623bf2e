"""Poison Frogs (Shafahi et al. 2018): targeted clean-label poisoning by feature collision.

Each poison starts from a correctly labelled training image of ``target_class`` (the "base") and
is moved, by forward-backward splitting, until the network's penultimate features match those of
the attacker's target image while the image itself stays close to the base.  A victim that
retrains its last layer on the poisoned set then sees a point labelled ``target_class`` at the
target's place in feature space, and classifies the target as ``target_class``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet._validation import Check, Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import PoisoningAttack
from gauntlet.attacks.registry import register
from gauntlet.errors import CapabilityError, DataError

__all__ = ["FeatureCollision", "pick_bases", "place_poisons", "poison_budget", "torch_model"]


def torch_model(model: Any, owner: str) -> Any:
    """``model`` if it is a gauntlet ``TorchModel`` (these attacks read its internals), else a
    one-line :class:`CapabilityError`."""
    from gauntlet.models.torch_model import TorchModel

    if not isinstance(model, TorchModel):
        raise CapabilityError(
            f"{owner}: needs the network's gradients and internal features, so model must be a gauntlet TorchModel, "
            f"got {type(model).__name__}; wrap the network with gauntlet.models.TorchModel(net, ...)"
        )
    return model


def poison_budget(attack: PoisoningAttack, n_train: int, n_targets: int) -> int:
    """Poisons per target image: ``n_poisons`` when given, else the ``fraction`` budget of the
    training set split evenly over the targets (at least one each)."""
    n = getattr(attack, "n_poisons", None)
    if n is not None:
        return int(n)
    return max(1, attack.n_poison(n_train) // n_targets)


def place_poisons(x: Tensor, y: Tensor, rows: Tensor, poisons: Tensor, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """The training set with the clean-label ``poisons`` made from base ``rows``: in place of their
    bases (``mode="replace"``) or appended with the bases' (correct) labels (``"add"``), and the
    poison mask."""
    if mode == "replace":
        px, py = x.clone(), y.clone()
        px[rows] = poisons
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        mask[rows] = True
        return px, py, mask
    mask = torch.cat([torch.zeros(x.shape[0], dtype=torch.bool), torch.ones(rows.numel(), dtype=torch.bool)]).to(x.device)
    return torch.cat([x, poisons]), torch.cat([y, y[rows]]), mask


def pick_bases(
    attack: PoisoningAttack,
    y: Tensor,
    n_targets: int,
    k: int,
    generator: torch.Generator,
    distance: Tensor | None = None,
) -> Tensor:
    """Base rows ``(n_targets, k)``: distinct training rows labelled ``target_class``, drawn at
    random with ``generator`` or, given ``distance (n_targets, N)``, the ``k`` closest to each
    target (targets served in order, no row used twice)."""
    target = int(attack.target_class)  # type: ignore[attr-defined]
    eligible = (y == target).nonzero().flatten()
    need = n_targets * k
    if need > eligible.numel():
        raise DataError(
            f"{attack.name}: {n_targets} target(s) x {k} poison(s) need {need} training images of target_class {target} "
            f"as bases but only {eligible.numel()} exist; lower n_poisons/fraction or pass fewer targets"
        )
    if distance is None:
        pick = attack.choose(eligible, need, generator)
        perm = torch.randperm(need, generator=generator, device=pick.device)
        return pick[perm].view(n_targets, k)
    rows = []
    free = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    for t in range(n_targets):
        cand = eligible[free[eligible]]
        order = distance[t, cand].argsort()[:k]
        chosen = cand[order]
        free[chosen] = False
        rows.append(chosen)
    return torch.stack(rows)


def _features(model: Any, x: Tensor, layer: str | None, owner: str) -> Tensor:
    """Penultimate (or ``layer``) features of ``x``, differentiable with respect to ``x``."""
    from gauntlet.models.features import capture

    with capture(model.module, layer, owner) as seen:
        model.scores(x, count=False)
    if len(seen) != 1:
        raise DataError(f"{owner}: the feature layer ran {len(seen)} times in one forward pass (expected once); pass layer='<name>'")
    return seen[0].flatten(1)


@register
class FeatureCollision(PoisoningAttack):
    """Poison Frogs feature collision (Shafahi et al. 2018), clean-label and targeted.

    For every target image ``t`` in ``poison(..., x_target=...)`` it takes ``n_poisons`` base
    images ``b`` of ``target_class`` from the training set and solves, per poison,

        ``min_x ||f(x) - f(t)||² + β ||x - b||²``

    with the paper's forward-backward splitting (Algorithm 1): a gradient step of size
    ``learning_rate`` on the feature loss, then the proximal step of the β term,
    ``x = (x̂ + λβ b) / (1 + λβ)``, then clipping to ``bounds``.  A step whose whole objective
    is not below the mean of the last ``window`` iterates' objectives is undone and that poison's
    step size multiplied by ``decay`` (the paper code's step-size rule, checked every step).  ``f`` is the surrogate's penultimate layer (the input of its last
    ``nn.Linear``) or the submodule ``layer``.  Labels stay those of the bases (clean-label).

    Args:
        fraction: the poison budget as a share of the training set, split evenly over the targets,
            when ``n_poisons`` is ``None``.
        n_poisons: poisons per target image (``1`` is the paper's one-shot kill); overrides ``fraction``.
        target_class: the class the target should be classified as; the bases are of this class.
        max_iter: forward-backward iterations.
        learning_rate: the initial step size λ of the forward (gradient) step.
        beta0: β = ``beta0 · 2048² / dim_b²`` as in the paper (``dim_b`` the number of input
            values, 2048 the paper's InceptionV3 feature width; β0 = 0.25).  The right β depends on
            the pixel scale and feature norms, so check ``info["feature_distance"]`` and the
            distance to the base and pass ``beta`` when the default pulls too hard or too little.
        beta: β itself, overriding the scaled ``beta0``.
        opacity: watermark the target onto each base before optimising,
            ``b' = (1 - opacity) · b + opacity · t`` (the paper uses 0.3 end-to-end; 0 = off).
        decay: step-size factor after a rejected step.
        window: how many recent objectives a step is compared with.
        layer: submodule whose output is the feature space (``None``: the penultimate layer).
        base_selection: ``"random"`` bases of ``target_class`` (the paper) or the ``"closest"``
            to the target in feature space.
        mode: ``"replace"`` the base rows by their poisons (the set keeps its size) or ``"add"``
            the poisons as new rows (the bases stay).
        bounds: the inputs' value range.

    ``info`` holds the base ``rows (T, n_poisons)``, ``target_index`` per poison, the feature
    distances ``||f(x) - f(t)||`` before and after, ``beta`` and the final step sizes.
    """

    name = "feature_collision"
    description = "Poison Frogs targeted clean-label poisoning by feature collision (Shafahi et al. 2018)"
    reference = (
        'Shafahi, Huang, Najibi, Suciu, Studer, Dumitras and Goldstein, "Poison Frogs! Targeted Clean-Label '
        'Poisoning Attacks on Neural Networks", NeurIPS 2018, https://arxiv.org/abs/1804.00792'
    )
    goal = "targeted"
    needs_target = True
    needs_model = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "n_poisons": [Interval(int, 1, None), IsNone()],
        "target_class": [Interval(int, 0, None)],
        "max_iter": [Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "beta0": [Interval(float, 0, None)],
        "beta": [Interval(float, 0, None), IsNone()],
        "opacity": [Interval(float, 0, 1, closed="left")],
        "decay": [Interval(float, 0, 1, closed="neither")],
        "window": [Interval(int, 1, None)],
        "layer": [Check(lambda v: isinstance(v, str) and bool(v), "a submodule name"), IsNone()],
        "base_selection": [Options(("random", "closest"))],
        "mode": [Options(("replace", "add"))],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.01,
        n_poisons: int | None = None,
        target_class: int = 0,
        max_iter: int = 500,
        learning_rate: float = 0.01,
        beta0: float = 0.25,
        beta: float | None = None,
        opacity: float = 0.0,
        decay: float = 0.5,
        window: int = 10,
        layer: str | None = None,
        base_selection: str = "random",
        mode: str = "replace",
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.n_poisons = n_poisons
        self.target_class = target_class
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.beta0 = beta0
        self.beta = beta
        self.opacity = opacity
        self.decay = decay
        self.window = window
        self.layer = layer
        self.base_selection = base_selection
        self.mode = mode
        self.bounds = bounds
        self._validate()

    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        from gauntlet.models.features import features

        model = torch_model(model, self.name)
        xt = self._x_target
        assert xt is not None
        owner = self.name
        n_t = int(xt.shape[0])
        k = poison_budget(self, int(x.shape[0]), n_t)
        ft = features(model, xt, layer=self.layer, owner=owner)
        if self.base_selection == "closest":
            rows = pick_bases(self, y, n_t, k, generator, torch.cdist(ft, features(model, x, layer=self.layer, owner=owner)))
        else:
            rows = pick_bases(self, y, n_t, k, generator)
        flat = rows.flatten()
        tidx = torch.arange(n_t, device=x.device).repeat_interleave(k)
        lo, hi = self._bounds()
        base = x[flat].clone()
        if self.opacity > 0:
            base = ((1 - self.opacity) * base + self.opacity * xt[tidx]).clamp(lo, hi)
        beta = float(self.beta) if self.beta is not None else float(self.beta0) * (2048 / x[0].numel()) ** 2
        poisons, lr, d0, d1 = self._collide(model, base, ft[tidx].to(x.dtype), beta, owner)
        px, py, mask = place_poisons(x, y, flat, poisons, str(self.mode))
        info = {
            "rows": rows.cpu(), "target_index": tidx.cpu(), "beta": beta, "learning_rate_final": lr.cpu(),
            "feature_distance_initial": d0.cpu(), "feature_distance": d1.cpu(),
        }
        return px, py, mask, info

    def _collide(self, model: Any, base: Tensor, ft: Tensor, beta: float, owner: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Forward-backward splitting for every poison at once (one step size per poison)."""
        lo, hi = self._bounds()
        dims = tuple(range(1, base.dim()))
        shape = (-1,) + (1,) * (base.dim() - 1)
        lr = torch.full((base.shape[0],), float(self.learning_rate), dtype=base.dtype, device=base.device)

        def evaluate(xx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """The feature distance, the objective and the feature distance's input gradient of
            every iterate, from one forward and backward pass."""
            xg = xx.detach().requires_grad_(True)
            feat = ((_features(model, xg, self.layer, owner) - ft) ** 2).sum(1)
            (grad,) = torch.autograd.grad(feat.sum(), xg)
            feat = feat.detach()
            return feat, feat + beta * ((xx - base) ** 2).sum(dims), grad

        with model.attack_mode():
            cur = base.clone()
            feat, obj, grad = evaluate(cur)
            feat0 = feat
            # the objectives of the last `window` iterates (newest last; a rejected step repeats the current one)
            history = obj.unsqueeze(0).repeat(int(self.window), 1)
            filled = 1
            for _ in range(int(self.max_iter)):
                step = lr.view(shape)
                fwd = cur - step * grad  # forward step on ||f(x) - f(t)||²
                new = ((fwd + step * beta * base) / (1 + step * beta)).clamp(lo, hi)  # proximal step on β||x - b||²
                new_feat, new_obj, new_grad = evaluate(new)  # an accepted iterate's gradient is the next step's
                with torch.no_grad():
                    ok = new_obj < history[-filled:].mean(0)
                    cur = torch.where(ok.view(shape), new, cur)
                    grad = torch.where(ok.view(shape), new_grad, grad)
                    feat = torch.where(ok, new_feat, feat)
                    lr = torch.where(ok, lr, lr * float(self.decay))
                    history = torch.cat([history[1:], torch.where(ok, new_obj, history[-1]).unsqueeze(0)])
                    filled = min(filled + 1, history.shape[0])
        return cur.detach(), lr, feat0.sqrt(), feat.sqrt()

