"""Trigger-set watermarking and ownership verification (Adi et al. 2018).

The owner trains its model to answer a secret **trigger set** — inputs no natural data looks like
(seeded uniform noise, or noise over a faint pattern), each with a random label — with the
labels it chose, beside its normal task.  A model that was not trained on the trigger set agrees
with those labels only by chance, about ``1/K`` of the time for ``K`` classes; the owner's model
agrees on nearly all of them.  Ownership of a suspect model is tested with a one-sided binomial
test: under the null hypothesis "this model never saw the trigger set", the number of matches
``k`` out of ``n`` is ``Binomial(n, 1/K)`` and the p-value is ``P(X ≥ k)``.

:class:`Watermark` (registry ``kind`` ``"watermark"``) makes the trigger set from its seed
(``trigger_set(input_shape, num_classes)``, so the secret is the seed), embeds it
(``embed(module, x, y, ...)``: training through the project's ``Trainer`` on the task data with
the trigger set mixed in, ``repeats`` copies of it) and verifies (``verify(model)`` →
:class:`WatermarkResult` with ``matches``, ``n``, ``p_value`` and ``owned`` at ``alpha``).

What it does not survive, measured in BENCHMARKS.md: a thief that trains a copy from the
model's answers on natural inputs (Knockoff) never queries the trigger set, so the copy carries
no watermark; that needs a watermark in the answers themselves (DAWN, Szyller et al. 2021) or an
entangled one (Jia et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval, Options
from gauntlet.defenses.base import Defense
from gauntlet.defenses.registry import register
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model

__all__ = ["Watermark", "WatermarkResult", "binomial_p_value"]


def binomial_p_value(matches: int, n: int, chance: float) -> float:
    """``P(X ≥ matches)`` for ``X ~ Binomial(n, chance)`` (the one-sided test's p-value)."""
    from scipy import stats  # type: ignore[import-untyped]  # SciPy ships partial type information

    if matches <= 0:
        return 1.0
    return float(stats.binom.sf(matches - 1, n, chance))


@dataclass(frozen=True)
class WatermarkResult:
    """Ownership verification of one model.

    Attributes:
        matches: trigger inputs the model labels as the owner chose.
        n: size of the trigger set.
        chance: the per-input match probability of a model that never saw it (``1/K``).
        p_value: one-sided binomial p-value of ``matches`` under that null hypothesis.
        alpha: the significance level ``owned`` is judged at.
    """

    matches: int
    n: int
    chance: float
    p_value: float
    alpha: float

    @property
    def match_rate(self) -> float:
        return self.matches / self.n if self.n else 0.0

    @property
    def owned(self) -> bool:
        """The model carries the watermark: ``p_value < alpha``."""
        return self.p_value < self.alpha


@register
class Watermark(Defense):
    """A trigger-set watermark: seeded secret inputs with chosen labels, learned in training and
    checked on a suspect model with a binomial test.

    Args:
        trigger_size: number of trigger inputs ``n`` (100 in Adi et al.).
        pattern: ``"noise"`` (uniform noise in the bounds) or ``"blocks"`` (random coarse 4×4
            blocks, a more image-like abstract pattern).
        repeats: copies of the trigger set mixed into the training data by :meth:`embed`.
        alpha: significance level of :attr:`WatermarkResult.owned`.
        seed: the owner's secret: it fixes the trigger inputs and their labels.
    """

    name = "watermark"
    description = "trigger-set watermark embedded in training, ownership verified by a one-sided binomial test"
    reference = (
        "Adi et al., 'Turning Your Weakness Into a Strength: Watermarking Deep Neural Networks by Backdooring', "
        "USENIX Security 2018, https://arxiv.org/abs/1802.04633"
    )
    kind: ClassVar[str] = "watermark"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "trigger_size": [Interval(int, 1, None)],
        "pattern": [Options(("noise", "blocks"))],
        "repeats": [Interval(int, 1, None)],
        "alpha": [Interval(float, 0, 1, closed="neither")],
        "seed": [Interval(int, 0, None)],
    }

    def __init__(
        self, *, trigger_size: int = 100, pattern: str = "noise", repeats: int = 10, alpha: float = 1e-3, seed: int = 0
    ) -> None:
        self.trigger_size = trigger_size
        self.pattern = pattern
        self.repeats = repeats
        self.alpha = alpha
        self.seed = seed
        self._validate()

    def trigger_set(
        self, input_shape: tuple[int, ...], num_classes: int, bounds: tuple[float, float] = (0.0, 1.0)
    ) -> tuple[Tensor, Tensor]:
        """The secret trigger inputs ``(n, *input_shape)`` and their labels, from ``seed``."""
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"watermark: num_classes must be an int >= 2, got {num_classes!r}")
        shape = tuple(int(s) for s in input_shape)
        g = torch.Generator().manual_seed(self.seed)
        lo, hi = float(bounds[0]), float(bounds[1])
        n = self.trigger_size
        if self.pattern == "noise" or len(shape) < 3:
            u = torch.rand((n, *shape), generator=g)
        else:
            c, h, w = shape[-3], shape[-2], shape[-1]
            coarse = torch.rand((n, c, (h + 3) // 4, (w + 3) // 4), generator=g)
            u = coarse.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)[..., :h, :w].reshape(n, *shape)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        return lo + (hi - lo) * u, labels

    def embed(
        self, module: nn.Module, x: Tensor, y: Tensor, *, method: str = "standard", seed: int = 0, **train_params: Any
    ) -> Any:
        """Train ``module`` in place on ``(x, y)`` with the trigger set mixed in (``repeats``
        copies) through a registered training method; returns its ``TrainingResult``."""
        from gauntlet.defenses.training import train

        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() < 2 or y.shape != (x.shape[0],):
            raise DataError("watermark.embed: x must be a float tensor (N, ...) and y int64 labels of shape (N,)")
        k = int(y.max()) + 1
        num_classes = max(k, int(train_params.pop("num_classes", k)))
        bounds = train_params.get("bounds", (0.0, 1.0))
        xt, yt = self.trigger_set(tuple(x.shape[1:]), num_classes, bounds)
        xs = torch.cat([x, xt.to(x.dtype).repeat(self.repeats, *([1] * (x.dim() - 1)))])
        ys = torch.cat([y.to(torch.int64), yt.repeat(self.repeats)])
        return train(module, xs, ys, method=method, seed=seed, **train_params)

    def verify(self, model: Model) -> WatermarkResult:
        """Test whether ``model`` carries this watermark (its trigger inputs answered with the
        owner's labels); the queries count on the model like any other."""
        if not isinstance(model, Model):
            raise ConfigError(f"watermark.verify: model must be a gauntlet Model, got {type(model).__name__}")
        shape = model.input_spec.shape
        k = model.num_classes
        if shape is None or k is None:
            raise ConfigError("watermark.verify: the model must declare input_shape and num_classes (the trigger set is made for them)")
        xt, yt = self.trigger_set(tuple(shape), int(k), model.bounds)
        with torch.no_grad():
            pred = model.predict(xt.to(model.input_spec.dtype).to(model.device)).cpu()
        matches = int((pred == yt).sum())
        chance = 1.0 / int(k)
        return WatermarkResult(matches, self.trigger_size, chance, binomial_p_value(matches, self.trigger_size, chance), self.alpha)
