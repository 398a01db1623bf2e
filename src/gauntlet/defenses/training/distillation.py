"""Defensive distillation (Papernot, McDaniel, Wu, Jha & Swami, IEEE S&P 2016)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval, IsNone
from gauntlet.defenses.registry import register
from gauntlet.defenses.training._base import TrainContext, Trainer, module_mode


class _TemperatureCE(Trainer):
    """The teacher's training: cross-entropy on hard labels of ``softmax(f(x) / T)`` (not registered)."""

    name: ClassVar[str] = "distillation_teacher"

    def __init__(self, *, temperature: float = 1.0, **common: Any) -> None:
        super().__init__(**common)
        self.temperature = temperature
        self._validate()

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        logits = module(xb)
        ctx.logits = logits
        return F.cross_entropy(logits / float(self.temperature), yb)


@register
class DefensiveDistillation(Trainer):
    """Defensive distillation (Papernot et al. 2016).

    1. A *teacher* (a copy of the given module, same initial weights) is trained on the hard
       labels with the softmax at temperature ``T``: ``CE(f(x) / T, y)``.
    2. Its soft labels ``softmax(teacher(x) / T)`` (eval mode) become the targets of the
       *student* — the module passed in — trained with the same loss at the same ``T``:
       ``−Σ_k p_k log softmax(f(x) / T)_k``.
    3. The student is deployed at ``T = 1``: the module's raw logits, ``T`` times larger than the
       ones it was trained on, saturate the softmax and make its gradients vanish.

    It stopped FGSM/JSMA-style attacks in the paper, but it is **gradient masking, not
    robustness**: Carlini & Wagner (2017, "Towards Evaluating the Robustness of Neural Networks")
    broke it with logit-space (margin) losses; Gauntlet's ``cw_l2`` (or PGD with the margin/DLR
    loss, as in AutoAttack) should reduce a distilled model to near its undefended robustness.

    Papernot et al. used ``T = 100`` on MNIST (the default).  With ``T`` that large the
    student needs a larger learning rate or more epochs than standard training.

    Args:
        temperature: softmax temperature ``T > 0`` for teacher and student.
        teacher_epochs: epochs of teacher training (``None``: the same as ``epochs``).
        **common: the :class:`Trainer` hyperparameters, shared by teacher and student.

    :attr:`TrainingResult.info` holds ``"teacher"`` (the trained teacher module).  With a
    checkpoint, the teacher's own checkpoint is kept beside it as ``<checkpoint>.teacher`` so a
    resumed run reuses it.
    """

    name: ClassVar[str] = "distillation"
    description: ClassVar[str] = "defensive distillation at temperature T (Papernot et al. 2016; broken by C&W 2017)"
    reference: ClassVar[str] = (
        'Papernot et al., "Distillation as a Defense to Adversarial Perturbations against Deep Neural Networks", '
        "IEEE S&P 2016, https://arxiv.org/abs/1511.04508"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "temperature": [Interval(float, 0, None, closed="neither")],
        "teacher_epochs": [Interval(int, 1, None), IsNone()],
    }

    def __init__(self, *, temperature: float = 100.0, teacher_epochs: int | None = None, **common: Any) -> None:
        super().__init__(**common)
        self.temperature = temperature
        self.teacher_epochs = teacher_epochs
        self._validate()

    def _teacher_trainer(self) -> _TemperatureCE:
        common = {k: getattr(self, k) for k in Trainer._param_names()}
        if self.teacher_epochs is not None:
            common["epochs"] = self.teacher_epochs
        return _TemperatureCE(temperature=self.temperature, **common)

    def prepare(
        self,
        module: nn.Module,
        x: Tensor,
        y: Tensor,
        ctx: TrainContext,
        *,
        checkpoint: Path | None,
        resume: bool,
        progress: bool,
    ) -> None:
        teacher_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator, device=ctx.generator.device))
        teacher = copy.deepcopy(module)
        teacher_ckpt = checkpoint.with_name(checkpoint.name + ".teacher") if checkpoint is not None else None
        self._teacher_trainer().fit(
            teacher, x, y, seed=teacher_seed, checkpoint=teacher_ckpt, resume=resume, progress=progress
        )
        soft = []
        T = float(self.temperature)
        with torch.no_grad(), module_mode(teacher, False):
            for s in range(0, x.shape[0], 512):
                soft.append(F.softmax(teacher(x[s : s + 512]) / T, dim=1))
        ctx.state["teacher"] = teacher
        ctx.state["soft_labels"] = torch.cat(soft)

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        assert ctx.index is not None
        p = ctx.state["soft_labels"][ctx.index]
        logits = module(xb)
        ctx.logits = logits
        return -(p * F.log_softmax(logits / float(self.temperature), dim=1)).sum(dim=1).mean()

    def _result_info(self, ctx: TrainContext) -> dict[str, Any]:
        return {"teacher": ctx.state.get("teacher")}
