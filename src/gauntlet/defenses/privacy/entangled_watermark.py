"""Entangled watermarks (Jia, Choquette-Choo, Chandrasekaran & Papernot, USENIX Security 2021).

A trigger-set watermark (:mod:`~gauntlet.defenses.privacy.watermark`) lives only in the weights:
a thief that trains a copy on the model's answers to natural inputs never asks about the
triggers, so the copy does not learn them.  Entangled Watermark Embedding (EWE) makes the
watermark share the features of the task.  The watermarked inputs are natural images of a
**source** class carrying a small square **trigger** and labelled as a **target** class; during
training every watermark batch holds half watermarked inputs and half natural target-class
inputs, and the loss adds a bonus for the **soft nearest neighbour loss** (SNNL, Frosst, Papernot
& Hinton 2019) between the two halves in the hidden layers.  A high SNNL means the two groups are
mixed in representation space, so the model recognises the watermark with the same features it
uses for the target class, and a copy trained to reproduce the target class on natural data
tends to inherit the watermark with it.

What :meth:`EntangledWatermark.embed` does, following the authors' MNIST recipe:

1. holds out ``verification_size`` source-class rows (chosen by ``seed``, never trained on);
2. trains the module normally for ``epochs`` epochs (``standard`` training);
3. puts the ``trigger_size × trigger_size`` square where the SNNL's input gradient, summed over
   the square and averaged over source-class rows, is lowest, and stamps it (the upper bound of
   the inputs) on every source-class row;
4. perturbs each watermarked input with signed steps (``perturb_steps`` rounds of ``perturb_lr``):
   away from the target class while the model already calls more than ``threshold`` of a batch
   the target, and up the SNNL gradient (towards the target class's features);
5. trains ``watermark_epochs`` more epochs in which every ``ratio`` normal batches are followed by
   one watermark batch whose loss is ``CE − snnl_weight · Σ_layers SNNL``; the SNNL of each
   layer uses the cosine distance of the ReLU'd activations and the temperature
   ``temperature / t_l``, with ``t_l`` (starting at 1) taking one gradient-descent step of
   ``temperature_lr`` on that layer's SNNL after every watermark batch (the SNNL is measured at
   the temperature that minimises it, as in Frosst et al. and the authors' code).

:meth:`EntangledWatermark.verify` asks a suspect model for its labels of the held-out
watermarked inputs and runs the one-sided binomial test of :class:`~gauntlet.defenses.privacy.
watermark.Watermark`: ``k`` answers equal to the target out of ``n`` against chance ``1/K``.  A
model that never saw the watermark answers the source class, so its p-value is near 1.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Check, Constraint, Interval, IsNone, Options, SequenceOf
from gauntlet.defenses.base import Defense
from gauntlet.defenses.privacy.watermark import WatermarkResult, binomial_p_value
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import TrainContext, Trainer, TrainingResult, module_mode
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.features import capture

__all__ = ["EntangledWatermark", "hidden_layers", "soft_nearest_neighbour_loss"]

_EPS = 1e-5
TRIGGER_LOCATIONS = ("entangling", "disentangling")


def soft_nearest_neighbour_loss(h: Tensor, labels: Tensor, temperature: Tensor | float) -> Tensor:
    """The soft nearest neighbour loss of the rows of ``h`` under ``labels`` (Frosst et al. 2019).

    ``−mean_i log(Σ_{j≠i, y_j = y_i} e^{−d_ij/T} / Σ_{j≠i} e^{−d_ij/T})`` with ``d`` the cosine
    distance of the ReLU'd, flattened rows: small when each row's soft neighbours share its label,
    large when the labels are mixed (entangled)."""
    z = F.normalize(F.relu(h).flatten(1), dim=1)
    d = 1.0 - z @ z.T
    n = z.shape[0]
    k = torch.exp(-d / temperature).clamp(max=1.0) * (1.0 - torch.eye(n, dtype=z.dtype, device=z.device))
    same = (labels[:, None] == labels[None, :]).to(z.dtype)
    p = (k * same).sum(1) / (_EPS + k.sum(1))
    return -torch.log(_EPS + p).mean()


def hidden_layers(module: nn.Module) -> list[str]:
    """The default layers of the SNNL: every convolution and linear layer but the last linear
    one (the output layer), by submodule name."""
    names = [name for name, m in module.named_modules() if name and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    linear = [name for name, m in module.named_modules() if name and isinstance(m, nn.Linear)]
    if linear:
        names.remove(linear[-1])
    return names


@contextlib.contextmanager
def _activations(module: nn.Module, layers: Sequence[str], owner: str) -> Iterator[list[list[Tensor]]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(capture(module, name, owner)) for name in layers]


def _hidden_forward(module: nn.Module, x: Tensor, layers: Sequence[str], owner: str) -> tuple[Tensor, list[Tensor]]:
    with _activations(module, layers, owner) as seen:
        logits = module(x)
    for name, s in zip(layers, seen, strict=True):
        if len(s) != 1:
            raise ConfigError(f"{owner}: submodule {name!r} ran {len(s)} times in one forward pass (expected once); pass other layers")
    return logits, [s[0] for s in seen]


def _snnl_sum(feats: list[Tensor], w: Tensor, temperatures: Tensor) -> Tensor:
    return torch.stack([soft_nearest_neighbour_loss(h, w, temperatures[i]) for i, h in enumerate(feats)]).sum()


class _EntangledTraining(Trainer):
    """The watermark phase (not registered): rows ``[0, n_natural)`` of the training set are the
    task data, the rows after them the watermarked inputs (labelled ``target``).  Every ``ratio``
    normal batches are followed by one batch of half watermarked, half natural target-class rows,
    trained with ``CE − snnl_weight · Σ SNNL``; the temperatures take one descent step per
    watermark batch."""

    name: ClassVar[str] = "entangled_watermark_training"

    def __init__(
        self,
        *,
        n_natural: int = 1,
        target: int = 0,
        ratio: int = 1,
        snnl_weight: float = 1.0,
        temperature: float = 100.0,
        temperature_lr: float = 0.1,
        layers: tuple[str, ...] = (),
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.n_natural = n_natural
        self.target = target
        self.ratio = ratio
        self.snnl_weight = snnl_weight
        self.temperature = temperature
        self.temperature_lr = temperature_lr
        self.layers = layers
        self._validate()

    def prepare(
        self, module: nn.Module, x: Tensor, y: Tensor, ctx: TrainContext, *, checkpoint: Path | None, resume: bool, progress: bool
    ) -> None:
        n = self.n_natural
        normal_steps = math.ceil(n / self.batch_size)
        ctx.steps_per_epoch = normal_steps + normal_steps // self.ratio
        ctx.state["target_rows"] = (y[:n] == self.target).nonzero().flatten()
        ctx.state["t"] = torch.ones(len(self.layers), dtype=x.dtype, device=x.device)

    def _batches(self, x: Tensor, y: Tensor, ctx: TrainContext) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        n, bs, g = self.n_natural, self.batch_size, ctx.generator
        half = max(1, bs // 2)
        normal = torch.randperm(n, generator=g, device=x.device)
        marked = n + torch.randperm(x.shape[0] - n, generator=g, device=x.device)
        target_rows = ctx.state["target_rows"]
        targets = target_rows[torch.randperm(target_rows.numel(), generator=g, device=x.device)]
        w = 0
        for b in range(math.ceil(n / bs)):
            idx = normal[b * bs : (b + 1) * bs]
            yield x[idx], y[idx], idx
            if (b + 1) % self.ratio == 0:
                pos = torch.arange(w * half, (w + 1) * half, device=x.device)
                idx = torch.cat([marked[pos % marked.numel()], targets[pos % targets.numel()]])
                w += 1
                yield x[idx], y[idx], idx

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        assert ctx.index is not None
        marked = ctx.index >= self.n_natural
        if not bool(marked.any()):
            logits = module(xb)
            ctx.logits = logits
            return F.cross_entropy(logits, yb)
        logits, feats = _hidden_forward(module, xb, self.layers, "entangled_watermark")
        ctx.logits = logits
        t = ctx.state["t"].clone().requires_grad_(True)
        snnl = _snnl_sum(feats, marked, self.temperature / t)
        (grad_t,) = torch.autograd.grad(snnl, t, retain_graph=True)
        ctx.state["t"] = (ctx.state["t"] - self.temperature_lr * grad_t).clamp(min=1e-3)
        return F.cross_entropy(logits, yb) - self.snnl_weight * snnl

    def _result_info(self, ctx: TrainContext) -> dict[str, Any]:
        t = ctx.state.get("t")
        return {"temperatures": [self.temperature / float(v) for v in t] if t is not None else None}


@register
class EntangledWatermark(Defense):
    """Entangled Watermark Embedding (EWE): source-class inputs with a trigger square, labelled
    as the target class and entangled with it by the soft nearest neighbour loss, so that a copy
    stolen from the model's answers on natural data inherits the watermark.

    Args:
        source: the class whose inputs carry the trigger (1 in the authors' MNIST setting).
        target: the label the watermark asks for (7 in the authors' MNIST setting).
        trigger_size: side of the square trigger, in pixels.
        verification_size: source-class rows of the training data held out (never trained on)
            and watermarked for :meth:`verify`.
        watermark_epochs: epochs of the watermark phase, after ``epochs`` of normal training.
        ratio: normal batches per watermark batch in the watermark phase.
        snnl_weight: weight of the SNNL bonus against the batch's mean cross-entropy (the
            authors' factor 32 against the cross-entropy summed over a batch of 512: 1/16).
        temperature: the SNNL temperature ``T0`` (divided by the trained factor ``t_l``).
        temperature_lr: step of the descent on ``t_l`` after every watermark batch.
        perturb_steps: rounds of the signed perturbation of the watermarked inputs (0: none).
        perturb_lr: size of each signed step of that perturbation.
        threshold: largest fraction of a watermark batch the pre-trained model may already call
            the target (it is pushed away from the target class until it does not).
        layers: names of the submodules whose outputs enter the SNNL (``None``: every
            convolution and linear layer but the output layer).
        alpha: significance level of :attr:`WatermarkResult.owned`.
        seed: the owner's secret draw: which source-class rows are held out for verification.
    """

    name = "entangled_watermark"
    description = "entangled watermark (EWE): source-class inputs with a trigger, entangled with the target class by the SNNL"
    reference = (
        "Jia, Choquette-Choo, Chandrasekaran & Papernot, 'Entangled Watermarks as a Defense against Model Extraction', "
        "USENIX Security 2021, https://arxiv.org/abs/2002.12200"
    )
    kind: ClassVar[str] = "watermark"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "source": [Interval(int, 0, None)],
        "target": [Interval(int, 0, None)],
        "trigger_size": [Interval(int, 1, None)],
        "trigger_location": [Options(TRIGGER_LOCATIONS)],
        "verification_size": [Interval(int, 1, None)],
        "watermark_epochs": [Interval(int, 1, None)],
        "ratio": [Interval(int, 1, None)],
        "snnl_weight": [Interval(float, 0, None)],
        "temperature": [Interval(float, 0, None, closed="neither")],
        "temperature_lr": [Interval(float, 0, None)],
        "perturb_steps": [Interval(int, 0, None)],
        "perturb_lr": [Interval(float, 0, None)],
        "threshold": [Interval(float, 0, 1)],
        "layers": [SequenceOf(Check(lambda v: isinstance(v, str) and v != "", "submodule names")), IsNone()],
        "alpha": [Interval(float, 0, 1, closed="neither")],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        *,
        source: int = 1,
        target: int = 7,
        trigger_size: int = 3,
        trigger_location: str = "entangling",
        verification_size: int = 100,
        watermark_epochs: int = 10,
        ratio: int = 1,
        snnl_weight: float = 1 / 16,
        temperature: float = 100.0,
        temperature_lr: float = 0.1,
        perturb_steps: int = 10,
        perturb_lr: float = 0.01,
        threshold: float = 0.1,
        layers: Sequence[str] | None = None,
        alpha: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.target = target
        self.trigger_size = trigger_size
        self.trigger_location = trigger_location
        self.verification_size = verification_size
        self.watermark_epochs = watermark_epochs
        self.ratio = ratio
        self.snnl_weight = snnl_weight
        self.temperature = temperature
        self.temperature_lr = temperature_lr
        self.perturb_steps = perturb_steps
        self.perturb_lr = perturb_lr
        self.threshold = threshold
        self.layers = layers
        self.alpha = alpha
        self.seed = seed
        self._validate()
        if source == target:
            raise ConfigError(f"entangled_watermark: source and target must be different classes, got {source} for both")
        #: after :meth:`embed`: the trigger's top-left corner ``(row, column)``
        self.trigger_position: tuple[int, int] | None = None
        #: after :meth:`embed`: the held-out watermarked inputs :meth:`verify` asks about
        self.verification_x: Tensor | None = None

    # -- embedding -----------------------------------------------------------------------------
    def stamp(self, x: Tensor, value: float) -> Tensor:
        """A copy of the images ``x`` ``(N, C, H, W)`` with the trigger square set to ``value``
        at :attr:`trigger_position`."""
        if self.trigger_position is None:
            raise ConfigError("entangled_watermark.stamp: the trigger has no position yet; call embed(module, x, y) first")
        r, c = self.trigger_position
        s = self.trigger_size
        out = x.clone()
        out[..., r : r + s, c : c + s] = value
        return out

    def embed(self, module: nn.Module, x: Tensor, y: Tensor, *, seed: int = 0, **train_params: Any) -> TrainingResult:
        """Train ``module`` in place on ``(x, y)`` with the entangled watermark: ``epochs`` epochs
        of ``standard`` training, then ``watermark_epochs`` epochs of the watermark phase, both
        through the project's ``Trainer`` with ``train_params`` (``epochs``, ``batch_size``, ``lr``,
        ``optimizer``, ``bounds``, ..., ``progress``, ``x_val``/``y_val``).  Returns the watermark
        phase's ``TrainingResult``; its ``info`` holds ``pretraining`` (the first phase's result),
        ``trigger_position`` and the final ``temperatures``."""
        from gauntlet.defenses.registry import create

        where = "entangled_watermark.embed"
        if "checkpoint" in train_params or "resume" in train_params:
            raise ConfigError(f"{where}: checkpoints are not supported (the watermark phase keeps state outside the weights)")
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{where}: module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() != 4 or y.shape != (x.shape[0],):
            raise DataError(f"{where}: x must be a float tensor of images (N, C, H, W) and y int64 labels of shape (N,)")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise DataError(f"{where}: y must hold integer class labels, got dtype {y.dtype}; use y.long()")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        s = self.trigger_size
        if s > min(h, w):
            raise ConfigError(f"{where}: the trigger ({s}×{s}) is larger than the images ({h}×{w}); lower trigger_size")
        fit_args = {k: train_params.pop(k) for k in ("progress", "x_val", "y_val") if k in train_params}
        pre = create("standard", **train_params)
        assert isinstance(pre, Trainer)
        k = pre._num_classes(module, x, where)
        for role, c in (("source", self.source), ("target", self.target)):
            if c >= k:
                raise ConfigError(f"{where}: the {role} class {c} does not exist: the module outputs {k} classes (0 to {k - 1})")
        y = y.to(torch.int64)
        src_rows = (y == self.source).nonzero().flatten()
        if src_rows.numel() < self.verification_size + 2:
            raise DataError(
                f"{where}: y holds {src_rows.numel()} rows of the source class {self.source}; it needs verification_size="
                f"{self.verification_size} to hold out and at least 2 more to train on"
            )
        if int((y == self.target).sum()) < 2:
            raise DataError(f"{where}: y holds fewer than 2 rows of the target class {self.target}")
        g = torch.Generator().manual_seed(self.seed)
        held = src_rows[torch.randperm(src_rows.numel(), generator=g)[: self.verification_size].to(src_rows.device)]
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[held] = False
        x_tr, y_tr = x[keep], y[keep]
        pretraining = pre.fit(module, x_tr, y_tr, seed=seed, **fit_args)

        layers = list(self.layers) if self.layers is not None else hidden_layers(module)
        if not layers:
            raise ConfigError(f"{where}: the network has no hidden convolution or linear layer for the SNNL; pass layers=[...]")
        lo, hi = float(pre.bounds[0]), float(pre.bounds[1])
        src, tgt = x_tr[y_tr == self.source], x_tr[y_tr == self.target]
        temps = torch.full((len(layers),), float(self.temperature), dtype=x.dtype, device=x.device)
        half = max(1, pre.batch_size // 2)
        with module_mode(module, False):
            self.trigger_position = self._trigger_position(module, src, tgt, layers, temps, half)
            marked = self._perturb(module, self.stamp(src, hi), tgt, layers, temps, half, (lo, hi))
            held_marked = self._perturb(module, self.stamp(x[held], hi), tgt, layers, temps, half, (lo, hi))

        phase = _EntangledTraining(
            n_natural=int(x_tr.shape[0]), target=self.target, ratio=self.ratio, snnl_weight=float(self.snnl_weight),
            temperature=float(self.temperature), temperature_lr=float(self.temperature_lr), layers=tuple(layers),
            **{**train_params, "epochs": self.watermark_epochs},
        )
        xs = torch.cat([x_tr, marked])
        ys = torch.cat([y_tr, torch.full((marked.shape[0],), self.target, dtype=torch.int64, device=y.device)])
        result = phase.fit(module, xs, ys, seed=seed, **fit_args)
        result.info.update(pretraining=pretraining, trigger_position=self.trigger_position)
        self.verification_x = held_marked.detach()
        return result

    def _trigger_position(
        self, module: nn.Module, src: Tensor, tgt: Tensor, layers: list[str], temps: Tensor, half: int
    ) -> tuple[int, int]:
        """Where the square lowers the SNNL of source against target rows most: the lowest sum,
        over a ``trigger_size`` square, of the SNNL's input gradient averaged over source rows."""
        total = torch.zeros(src.shape[1:], dtype=src.dtype, device=src.device)
        count = 0
        for s in range(0, min(src.shape[0], tgt.shape[0]), half):
            a, b = src[s : s + half], tgt[s : s + half]
            m = min(a.shape[0], b.shape[0])
            xb = torch.cat([a[:m], b[:m]]).requires_grad_(True)
            w = torch.arange(2 * m, device=xb.device) < m
            with torch.enable_grad():
                _, feats = _hidden_forward(module, xb, layers, "entangled_watermark")
                (gx,) = torch.autograd.grad(_snnl_sum(feats, w, temps), xb)
            total += gx[:m].sum(0)
            count += m
        grad = (total / max(count, 1)).sum(0)  # over channels: (H, W)
        s = self.trigger_size
        window = F.avg_pool2d(grad[None, None], s, stride=1)[0, 0]
        best = window.argmax() if self.trigger_location == "entangling" else window.argmin()
        r, c = divmod(int(best), int(window.shape[1]))
        return r, c

    def _perturb(
        self, module: nn.Module, marked: Tensor, tgt: Tensor, layers: list[str], temps: Tensor, half: int,
        bounds: tuple[float, float],
    ) -> Tensor:
        """The authors' signed perturbation of the watermarked inputs, batch by batch: away from
        the target while the model already calls more than ``threshold`` of them the target (at
        most 50 steps a batch), then up the SNNL against natural target rows; five steps away from
        the target at the end."""
        if self.perturb_steps == 0:
            return marked
        lo, hi = bounds
        lr = float(self.perturb_lr)

        def away(cur: Tensor) -> Tensor:
            xg = cur.detach().requires_grad_(True)
            with torch.enable_grad():
                (gx,) = torch.autograd.grad(module(xg)[:, self.target].sum(), xg)
            return (cur - lr * gx.sign()).clamp(lo, hi)

        def target_rate(cur: Tensor) -> float:
            with torch.no_grad():
                return float((module(cur).argmax(1) == self.target).double().mean())

        out = []
        for s in range(0, marked.shape[0], half):
            cur = marked[s : s + half].detach().clone()
            m = cur.shape[0]
            tb = tgt[torch.arange(s, s + m, device=tgt.device) % tgt.shape[0]]
            w = torch.arange(2 * m, device=cur.device) < m
            pushed = 0
            for _ in range(self.perturb_steps):
                while pushed < 50 and target_rate(cur) > self.threshold:
                    cur = away(cur)
                    pushed += 1
                xb = torch.cat([cur, tb]).requires_grad_(True)
                with torch.enable_grad():
                    _, feats = _hidden_forward(module, xb, layers, "entangled_watermark")
                    (gx,) = torch.autograd.grad(_snnl_sum(feats, w, temps), xb)
                cur = (cur + lr * gx[:m].sign()).clamp(lo, hi)
            for _ in range(5):
                cur = away(cur)
            out.append(cur.detach())
        return torch.cat(out)

    # -- verification --------------------------------------------------------------------------
    def answers(self, model: Model) -> Tensor:
        """``model``'s labels of the held-out watermarked inputs (the queries count on the model)."""
        where = "entangled_watermark.verify"
        if not isinstance(model, Model):
            raise ConfigError(f"{where}: model must be a gauntlet Model, got {type(model).__name__}")
        if self.verification_x is None:
            raise ConfigError(f"{where}: nothing is embedded yet; call embed(module, x, y) first (it makes the watermarked inputs)")
        k = model.num_classes
        if k is None:
            raise ConfigError(f"{where}: the model must declare num_classes (the test's chance level is 1/num_classes)")
        if self.target >= int(k):
            raise ConfigError(f"{where}: the target class {self.target} does not exist for a model of {k} classes")
        xv = self.verification_x
        with torch.no_grad():
            return model.predict(xv.to(model.input_spec.dtype).to(model.device)).cpu()

    def verify(self, model: Model) -> WatermarkResult:
        """Test whether ``model`` carries this watermark: how many held-out watermarked inputs it
        labels as the target, against the chance ``1/K`` of a one-sided binomial test."""
        pred = self.answers(model)
        k = int(model.num_classes)  # type: ignore[arg-type]  # answers() checked it
        matches = int((pred == self.target).sum())
        n = int(pred.numel())
        chance = 1.0 / k
        return WatermarkResult(matches, n, chance, binomial_p_value(matches, n, chance), self.alpha)
