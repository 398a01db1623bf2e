"""Loss-monitoring sanitizer: train a fresh copy of the victim's architecture on the (possibly
poisoned) data for a few epochs, record every row's loss after each epoch, and flag the rows
whose early losses are abnormal: too low (backdoor poison is learned first, Li et al. 2021,
"Anti-Backdoor Learning") or too high (mislabelled rows resist being learned)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.defenses.registry import register
from gauntlet.defenses.sanitize._base import EXPECTED_FRACTION, REMOVAL_FACTOR, Sanitizer, check_removal, flag_top
from gauntlet.errors import CapabilityError, ConfigError

__all__ = ["LossMonitorSanitizer", "per_sample_loss"]

MODES = ("low", "high")


def per_sample_loss(module: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> Tensor:
    """Cross-entropy of every row ``(N,)`` with ``module`` in eval mode, without gradients (the
    module's train/eval flags are restored)."""
    from gauntlet.defenses.training._base import module_mode

    out = []
    with torch.no_grad(), module_mode(module, False):
        for s in range(0, x.shape[0], batch_size):
            out.append(F.cross_entropy(module(x[s : s + batch_size]), y[s : s + batch_size], reduction="none"))
    return torch.cat(out).detach().float().cpu()


@register
class LossMonitorSanitizer(Sanitizer):
    """Per-sample training-loss monitoring.

    ``detect(model, x, y)`` takes the architecture from ``model`` (a gauntlet ``TorchModel``; its
    weights are **not** used): the module is deep-copied, every submodule with
    ``reset_parameters`` is re-initialised from the seed, and the copy is trained from scratch on
    ``(x, y)`` with the ``"standard"`` trainer (cross-entropy; ``epochs``, ``lr``,
    ``batch_size``, ``optimizer``), seeded from ``detect``'s seed.  After each epoch (through the
    trainer's per-epoch ``callback``) every row's cross-entropy is measured with the copy in eval
    mode, giving a loss trajectory ``(epochs, N)``, kept in ``info["losses"]``.

    A row's statistic is its mean loss over the epochs; ``mode`` says which tail is poison:

    * ``"low"`` (default): backdoor poison (BadNets and other dirty-label triggers) is a shortcut
      the network learns within the first epochs, before the clean task, so poison rows have the
      *lowest* early losses (Li et al. 2021, Anti-Backdoor Learning, isolate the lowest-loss rows
      this way).  Score = ``-mean loss``.  Keep ``epochs`` small (1-3): later the clean rows are
      learned too and the gap closes.
    * ``"high"``: flipped labels (label-flipping, random-label noise) contradict what the rest of
      the class teaches, so they keep the *highest* loss until the network memorises them.
      Score = ``mean loss``.

    The removal set is the top ``expected_fraction × removal_factor`` of the scores.

    Args:
        epochs: training epochs monitored (the first ones; the copy is trained no further).
        lr, batch_size, optimizer: the standard trainer's hyperparameters for the copy.
        mode: ``"low"`` (backdoors) or ``"high"`` (flipped labels).
        expected_fraction: the share of poison the defender expects, in (0, 1).
        removal_factor: how many times ``expected_fraction`` is flagged.
    """

    name: ClassVar[str] = "loss_monitor"
    description: ClassVar[str] = "per-sample loss trajectories of a fresh model; flags early low-loss (backdoor) or high-loss (flipped) rows"
    reference: ClassVar[str] = (
        'Li, Lyu, Koren, Lyu, Li and Ma, "Anti-Backdoor Learning: Training Clean Models on Poisoned Data", '
        "NeurIPS 2021, https://arxiv.org/abs/2110.11571"
    )
    needs_model: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "epochs": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "optimizer": [Options(("adam", "sgd"))],
        "mode": [Options(MODES)],
        "expected_fraction": EXPECTED_FRACTION,
        "removal_factor": REMOVAL_FACTOR,
    }

    def __init__(
        self,
        *,
        epochs: int = 2,
        lr: float = 1e-3,
        batch_size: int = 64,
        optimizer: str = "adam",
        mode: str = "low",
        expected_fraction: float = 0.05,
        removal_factor: float = 1.5,
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.mode = mode
        self.expected_fraction = expected_fraction
        self.removal_factor = removal_factor
        self._validate()
        check_removal(self.name, expected_fraction, removal_factor)

    def _fresh_copy(self, model: Any, generator: torch.Generator) -> nn.Module:
        """The model's architecture, deep-copied and re-initialised from ``generator`` (the
        caller's global RNG state is left untouched)."""
        from gauntlet.models.torch_model import reinitialise

        return reinitialise(model.trainable_copy(), int(torch.randint(0, 2**62, (1,), generator=generator)))

    def _detect(self, model: Any, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        from gauntlet.defenses.registry import create
        from gauntlet.defenses.training._base import EpochRecord, Trainer
        from gauntlet.models.torch_model import TorchModel

        where = f"{self.name}.detect"
        if not isinstance(model, TorchModel):
            raise CapabilityError(
                f"{where}: trains a fresh copy of the model's architecture, so it needs a gauntlet TorchModel, got {type(model).__name__}"
            )
        lo, hi = (float(b) for b in model.input_spec.bounds)
        if not (torch.isfinite(torch.tensor([lo, hi])).all()):
            lo, hi = float(x.min()), float(x.max())
            hi = hi if hi > lo else lo + 1.0
        module = self._fresh_copy(model, generator)
        trainer = create(
            "standard", epochs=int(self.epochs), lr=float(self.lr), batch_size=int(self.batch_size),
            optimizer=self.optimizer, bounds=(lo, hi),
        )
        assert isinstance(trainer, Trainer)
        p0 = next(iter(module.parameters()))
        xd, yd = x.to(p0.device, p0.dtype), y.to(p0.device)
        trajectory: list[Tensor] = []

        def record(_epoch: EpochRecord) -> None:
            trajectory.append(per_sample_loss(module, xd, yd, batch_size=max(int(self.batch_size), 512)))

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        result = trainer.fit(module, xd, yd, seed=seed, progress=False, callback=record)
        losses = torch.stack(trajectory)  # (epochs, N)
        mean = losses.mean(0)
        if not bool(torch.isfinite(mean).all()):
            raise ConfigError(f"{where}: some per-sample losses are not finite; lower lr")
        scores = -mean if self.mode == "low" else mean
        flagged, k = flag_top(scores, self.expected_fraction, self.removal_factor)
        info = {"losses": losses, "mode": self.mode, "n_flagged": k, "train_history": [r.to_dict() for r in result.history]}
        return scores, flagged, info
