"""Knockoff Nets: steal a network's function by training a copy on its answers to the attacker's queries.

The attacker holds a pool of inputs (natural images, possibly from another distribution), asks
the target for its output on at most ``max_queries`` of them, and trains a surrogate network
(the "knockoff") on the resulting *transfer set* (Orekondy, Schiele & Fritz, CVPR 2019).  With
the target's probability vectors as soft labels (``soft_labels=True``) the copy is trained by
knowledge distillation (cross-entropy against the target's distribution); with hard labels it is
plain cross-entropy training, which is also what :mod:`~gauntlet.attacks.extraction.copycat`
does from a labels-only target (Correia-Silva et al. 2018).

Where the queries come from (``query_strategy``):

* ``"natural"``: rows of ``query_set`` drawn without replacement (at most ``len(query_set)``
  queries are made, even when the budget allows more);
* ``"random"``: inputs drawn uniformly within the target's (finite) bounds;
* ``"jacobian"``: Jacobian-based dataset augmentation (Papernot et al., AsiaCCS 2017): round 1
  queries a seed set (rows of ``query_set``, or uniform noise without one) of
  ``ceil(max_queries / 2 ** (rounds - 1))`` inputs; every later round trains the copy, then
  adds ``clip(x + jacobian_step · sign(∇_x copy(x)[target's label of x]))`` for every input
  collected so far (the gradient of the copy's *logit* of the target's label, which does not
  vanish where the copy's softmax saturates), so the set doubles each round until the budget is
  spent.  The paper's periodic sign flip of λ and its reservoir sampling are not implemented; when
  the budget cannot pay for every new point, ``selection`` picks which are queried.

Which candidates are queried (``selection``):

* ``"random"``: uniformly, from the generator;
* ``"adaptive"``: an uncertainty-sampling stand-in for the paper's adaptive policy.  Orekondy et
  al. learn a gradient-bandit policy over a *label hierarchy* of the query pool (it needs the
  pool's class taxonomy, which a bare tensor of inputs does not have); here, from round 2 on,
  the candidates on which the current copy's softmax has the highest entropy are queried (the
  copy is least sure there, so the target's answer teaches it the most).  Round 1 has no copy
  yet and is drawn at random.  Needs a pool of candidates: ``"natural"`` (the unused rows of
  ``query_set``) or ``"jacobian"`` (the new augmented points).

The budget is spent in ``rounds`` rounds (``"natural"``/``"random"``: an even split; the
copy is trained further on everything collected so far after each round, ``epochs`` epochs per
round, so ``rounds=1`` is the paper's one-shot transfer set).  Training reuses the project's
:class:`~gauntlet.defenses.training.Trainer` loop (Adam, seeded shuffling from the attack's
generator, no checkpoint) with a loss that takes the target's probability vectors.

``info`` holds ``history`` (one record per round: queries used so far, new queries, transfer
set size, the copy's agreement with the target's labels on the transfer set, its final
training loss), ``pool_indices`` (``"natural"``: the rows of ``query_set`` queried, in query
order), the strategy, selection and surrogate architecture.
"""

from __future__ import annotations

import copy as copy_module
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Boolean, Constraint, Interval, Options
from gauntlet.attacks.extraction._base import ExtractionAttack, QueryBudget
from gauntlet.attacks.registry import register
from gauntlet.defenses.training._base import TrainContext, Trainer, module_mode
from gauntlet.errors import ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.torch_model import TorchModel, reinitialise
from gauntlet.models.zoo import DigitsCNN, LeNet5

__all__ = ["Knockoff", "SurrogateExtraction", "default_surrogate"]

QUERY_STRATEGIES = ("natural", "random", "jacobian")
SELECTIONS = ("random", "adaptive")
_QUERY_BATCH = 512  # rows per call to the target (memory only; every row counts one query)


def _describe(v: Any) -> str:
    """A value in one line: tensors by dtype and shape (their repr spans many lines)."""
    if isinstance(v, Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    return f"a {type(v).__name__}" if isinstance(v, nn.Module) else repr(v).splitlines()[0][:80]


class MLP(nn.Module):
    """The default surrogate for inputs that are not 1×8×8 or 1×28×28 images: flatten, one hidden
    ReLU layer, logits."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))  # type: ignore[no-any-return]


def default_surrogate(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The copy's architecture when none is given: :class:`~gauntlet.models.zoo.DigitsCNN` for
    1×8×8 inputs, :class:`~gauntlet.models.zoo.LeNet5` for 1×28×28 (MNIST-sized), else an
    :class:`MLP` on the flattened input."""
    if tuple(input_shape) == (1, 8, 8):
        return DigitsCNN(num_classes)
    if tuple(input_shape) == (1, 28, 28):
        return LeNet5(num_classes)
    return MLP(math.prod(input_shape), num_classes)


class _TransferSetTraining(Trainer):
    """Training on the transfer set (not registered): soft cross-entropy against the target's
    probability vectors when :attr:`soft_targets` is set, else cross-entropy on the labels."""

    name: ClassVar[str] = "knockoff_surrogate"

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        self._validate()
        self.soft_targets: Tensor | None = None  # data, not a hyperparameter

    def loss(self, module: nn.Module, xb: Tensor, yb: Tensor, ctx: TrainContext) -> Tensor:
        logits = module(xb)
        ctx.logits = logits
        if self.soft_targets is None:
            return F.cross_entropy(logits, yb)
        assert ctx.index is not None
        p = self.soft_targets[ctx.index]
        return -(p * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _entropy(module: nn.Module, x: Tensor) -> Tensor:
    out = []
    with torch.no_grad(), module_mode(module, False):
        for s in range(0, x.shape[0], 1024):
            logp = F.log_softmax(module(x[s : s + 1024]), dim=1)
            out.append(-(logp.exp() * logp).sum(dim=1))
    return torch.cat(out)


def _labels(module: nn.Module, x: Tensor) -> Tensor:
    out = []
    with torch.no_grad(), module_mode(module, False):
        for s in range(0, x.shape[0], 1024):
            out.append(module(x[s : s + 1024]).argmax(dim=1))
    return torch.cat(out)


def _jacobian_step(module: nn.Module, x: Tensor, y: Tensor, step: float, bounds: tuple[float, float]) -> Tensor:
    """``clip(x + step · sign(∇_x module(x)[y]))``, the copy in eval mode."""
    out = []
    with module_mode(module, False):
        for s in range(0, x.shape[0], 512):
            xb = x[s : s + 512].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = module(xb)
                (g,) = torch.autograd.grad(logits.gather(1, y[s : s + 512, None]).sum(), xb)
            out.append((xb.detach() + step * g.sign()).clamp(bounds[0], bounds[1]))
    return torch.cat(out)


class SurrogateExtraction(ExtractionAttack):
    """Surrogate training under a query budget: the machinery :class:`Knockoff` and
    :class:`~gauntlet.attacks.extraction.copycat.Copycat` share (see the module docstring).

    Subclasses set ``needs`` and override :meth:`_soft` (train on the target's probabilities
    rather than its labels).  Not registered.

    Args:
        max_queries: the query budget (inputs sent to the target).
        query_set: the attacker's pool of natural inputs ``(N, ...)`` (needed by ``"natural"``;
            the seed set of ``"jacobian"`` when given).
        query_strategy: ``"natural"``, ``"random"`` or ``"jacobian"`` (see the module docstring).
        selection: ``"random"`` or ``"adaptive"`` (entropy of the current copy).
        surrogate: the copy's architecture, a ``torch.nn.Module`` returning logits; it is deep-copied
            and re-initialised from the attack's generator (the module passed in is untouched).
            ``None``: :func:`default_surrogate`.
        epochs: training epochs over the transfer set, per round.
        batch_size: training batch size.
        lr: Adam's learning rate.
        rounds: query rounds (training between them); ``"jacobian"`` needs at least 2.
        jacobian_step: λ of the Jacobian augmentation (Papernot et al. used 0.1 on MNIST).
    """

    reference: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "max_queries": [Interval(int, 1, None)],
        "query_strategy": [Options(QUERY_STRATEGIES)],
        "selection": [Options(SELECTIONS)],
        "epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "rounds": [Interval(int, 1, None)],
        "jacobian_step": [Interval(float, 0, None, closed="neither")],
        "soft_labels": [Boolean()],
    }

    def __init__(
        self,
        *,
        max_queries: int = 10_000,
        query_set: Tensor | None = None,
        query_strategy: str = "natural",
        selection: str = "random",
        surrogate: nn.Module | None = None,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        rounds: int = 1,
        jacobian_step: float = 0.1,
    ) -> None:
        self.max_queries = max_queries
        self.query_set = query_set
        self.query_strategy = query_strategy
        self.selection = selection
        self.surrogate = surrogate
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.rounds = rounds
        self.jacobian_step = jacobian_step
        self._validate()
        self._check_combination()

    def _validate(self) -> None:
        # query_set and surrogate are checked here: the declarative message would repr the value,
        # and a tensor's repr spans many lines
        q = self.query_set
        if q is not None and not (
            isinstance(q, Tensor) and q.dtype.is_floating_point and q.dim() >= 2 and q.shape[0] > 0
        ):
            raise ConfigError(
                f"{self.name}: parameter 'query_set' must be a non-empty float tensor (N, ...) of inputs or None, "
                f"got {_describe(q)}"
            )
        if q is not None and not bool(torch.isfinite(q).all()):
            raise ConfigError(f"{self.name}: parameter 'query_set' holds NaN or inf values; clean the inputs first")
        if self.surrogate is not None and not isinstance(self.surrogate, nn.Module):
            raise ConfigError(
                f"{self.name}: parameter 'surrogate' must be a torch.nn.Module returning logits or None, "
                f"got {_describe(self.surrogate)}"
            )
        super()._validate()

    def _check_combination(self) -> None:
        if self.query_strategy == "natural" and self.query_set is None:
            raise ConfigError(
                f"{self.name}: query_strategy 'natural' samples from query_set, which is None; "
                "pass query_set=<tensor of inputs> or use query_strategy 'random' or 'jacobian'"
            )
        if self.query_strategy == "jacobian" and self.rounds < 2:
            raise ConfigError(
                f"{self.name}: query_strategy 'jacobian' grows the seed set between rounds, so rounds must be >= 2 "
                f"(got {self.rounds}); Papernot et al. used 6"
            )
        if self.selection == "adaptive" and self.query_strategy == "random":
            raise ConfigError(
                f"{self.name}: selection 'adaptive' picks from a pool of candidates; use query_strategy "
                "'natural' or 'jacobian', or selection 'random'"
            )

    # -- the attack ------------------------------------------------------------------------------
    def _soft(self) -> bool:
        """Whether the copy learns the target's probability vectors (``False``: its labels)."""
        return False

    def _answers(self, target: QueryBudget, x: Tensor, k: int | None) -> tuple[Tensor, int]:
        """The target's answers on ``x`` (every row one query): probability vectors ``(n, C)``
        when training on soft labels, else labels ``(n,)``; and the number of classes ``C`` (read
        from the scores' width when ``k`` is ``None``, which only a scores target leaves undeclared)."""
        out = []
        with torch.no_grad():
            for s in range(0, x.shape[0], _QUERY_BATCH):
                xb = x[s : s + _QUERY_BATCH].to(target.device, target.input_spec.dtype)
                if self._soft() or k is None:
                    z = target.scores(xb).detach().float().cpu()
                    k = int(z.shape[1])
                    if self._soft():
                        out.append(z if target.output == "probabilities" else F.softmax(z, dim=1))
                    else:
                        out.append(z.argmax(dim=1))
                else:
                    out.append(target.predict(xb).detach().cpu().to(torch.int64))
        assert k is not None
        return torch.cat(out), k

    def _input_shape(self, target: QueryBudget) -> tuple[int, ...]:
        shape = target.input_spec.shape
        if self.query_set is not None:
            qs = tuple(self.query_set.shape[1:])
            if shape is not None and qs != tuple(shape):
                raise DataError(
                    f"{self.name}: query_set has per-sample shape {qs} but the target takes {tuple(shape)}; "
                    "reshape or resize the query set"
                )
            return qs
        if shape is None:
            raise ConfigError(
                f"{self.name}: the target declares no input_shape and there is no query_set to read it from; "
                "pass input_shape= to the target's adapter or a query_set"
            )
        return tuple(shape)

    def _declared_classes(self, target: QueryBudget) -> int | None:
        """The target's declared number of classes; ``None`` for a scores target that declares none
        (the width of its first answers is used: no uncounted probe query is made)."""
        k = target.num_classes
        if k is None and not target.has("scores"):
            raise ConfigError(
                f"{self.name}: the labels-only target does not declare num_classes, which the copy needs; "
                "pass num_classes= to the target's adapter"
            )
        return None if k is None else int(k)

    def _make_copy(self, shape: tuple[int, ...], k: int, generator: torch.Generator) -> nn.Module:
        base = self.surrogate if self.surrogate is not None else default_surrogate(shape, k)
        module = copy_module.deepcopy(base).cpu().float()
        reinitialise(module, int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        for p in module.parameters():
            p.requires_grad_(True)
        try:
            with torch.no_grad(), module_mode(module, False):
                out = module(torch.zeros((2, *shape)))
        except Exception as exc:  # noqa: BLE001 - whatever the surrogate raises on a wrong shape
            line = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ConfigError(
                f"{self.name}: the surrogate fails on inputs of per-sample shape {shape} ({type(exc).__name__}: {line}); "
                "give a surrogate for that shape"
            ) from None
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, k):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"{self.name}: the surrogate must return logits of shape (N, {k}), got {got}")
        return module

    def _extract(self, target: QueryBudget, generator: torch.Generator) -> tuple[Model, dict[str, Any]]:
        shape = self._input_shape(target)
        lo, hi = target.bounds
        finite = math.isfinite(lo) and math.isfinite(hi)
        pool: Tensor | None = None
        if self.query_set is not None:
            pool = self.query_set.detach().cpu().float()
            if finite and (float(pool.min()) < lo or float(pool.max()) > hi):
                raise DataError(
                    f"{self.name}: query_set holds values in [{float(pool.min()):.4g}, {float(pool.max()):.4g}] "
                    f"outside the target's bounds ({lo}, {hi}); rescale it"
                )
        draws_noise = self.query_strategy == "random" or (self.query_strategy == "jacobian" and pool is None)
        if draws_noise and not finite:
            raise ConfigError(
                f"{self.name}: query_strategy {self.query_strategy!r} without a query_set draws inputs uniformly within "
                f"the target's bounds, which are infinite ({lo}, {hi}); pass a query_set"
            )

        def noise(n: int) -> Tensor:
            return lo + (hi - lo) * torch.rand((n, *shape), generator=generator)

        k = self._declared_classes(target)
        # the copy is built before any query when the number of classes is known (a surrogate
        # that does not fit fails for free), else after the first answers give it
        module = self._make_copy(shape, k, generator) if k is not None else None

        xs: list[Tensor] = []  # the transfer set: inputs and the target's answers
        answers: list[Tensor] = []
        used_rows = torch.zeros(pool.shape[0] if pool is not None else 0, dtype=torch.bool)
        pool_indices: list[Tensor] = []
        history: list[dict[str, Any]] = []
        for r in range(self.rounds):
            assert target.left is not None  # max_queries is always set
            left = int(target.left)
            if left <= 0:
                break
            trained = module is not None and len(xs) > 0
            if self.query_strategy == "jacobian":
                if r == 0:
                    n = min(left, -(-self.max_queries // 2 ** (self.rounds - 1)))
                    if pool is not None:
                        idx = torch.randperm(pool.shape[0], generator=generator)[:n]
                        used_rows[idx] = True
                        pool_indices.append(idx)
                        x_new = pool[idx]
                    else:
                        x_new = noise(n)
                else:
                    assert module is not None
                    x_all = torch.cat(xs)
                    y_all = torch.cat(answers)
                    y_lab = y_all.argmax(dim=1) if y_all.dim() == 2 else y_all
                    cand = _jacobian_step(module, x_all, y_lab, float(self.jacobian_step), (lo, hi) if finite else (-math.inf, math.inf))
                    x_new = cand[self._select(module, cand, min(left, cand.shape[0]), generator, trained)]
            elif self.query_strategy == "random":
                n = left // (self.rounds - r)
                if n == 0:
                    continue
                x_new = noise(n)
            else:
                assert pool is not None
                free = (~used_rows).nonzero().flatten()
                if free.numel() == 0:
                    break
                n = min(left // (self.rounds - r), int(free.numel()))
                if n == 0:
                    continue
                idx = free[self._select(module, pool, n, generator, trained, rows=free)]
                used_rows[idx] = True
                pool_indices.append(idx)
                x_new = pool[idx]
            if x_new.shape[0] == 0:
                continue
            y_new, k = self._answers(target, x_new, k)
            answers.append(y_new)
            xs.append(x_new)
            if module is None:
                module = self._make_copy(shape, k, generator)
            record = self._train(module, torch.cat(xs), torch.cat(answers), (lo, hi), generator)
            record.update(round=r + 1, new_queries=int(x_new.shape[0]), queries=int(target.used))
            history.append(record)

        assert module is not None and k is not None  # max_queries >= 1 and a non-empty pool: one round queried
        copy = TorchModel(module, bounds=(lo, hi), num_classes=k, input_shape=shape)
        info: dict[str, Any] = {
            "query_strategy": self.query_strategy,
            "selection": self.selection,
            "soft_labels": self._soft(),
            "surrogate": type(module).__name__,
            "transfer_set_size": int(sum(int(x.shape[0]) for x in xs)),
            "history": history,
            "pool_indices": torch.cat(pool_indices) if pool_indices else None,
        }
        return copy, info

    def _select(
        self, module: nn.Module | None, cand: Tensor, n: int, generator: torch.Generator, trained: bool,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Positions of ``n`` of the candidates (``cand[rows]``, or all of ``cand``; the pool is not
        copied): at random, or (``"adaptive"``, once the copy has been trained) the ``n`` on which
        the copy's softmax has the highest entropy."""
        m = int(rows.numel()) if rows is not None else int(cand.shape[0])
        if n >= m:
            return torch.randperm(m, generator=generator)
        if self.selection == "adaptive" and trained and module is not None:
            if rows is None:
                h = _entropy(module, cand)
            else:
                h = torch.cat([_entropy(module, cand[rows[s : s + 4096]]) for s in range(0, m, 4096)])
            return torch.topk(h, n).indices
        return torch.randperm(m, generator=generator)[:n]

    def _train(
        self, module: nn.Module, x: Tensor, answers: Tensor, bounds: tuple[float, float], generator: torch.Generator,
    ) -> dict[str, Any]:
        """Train ``module`` (further) on the transfer set ``(x, answers)`` with the project's
        :class:`~gauntlet.defenses.training.Trainer` loop, seeded from ``generator``."""
        y = answers.argmax(dim=1) if answers.dim() == 2 else answers
        lo, hi = bounds
        if not (math.isfinite(lo) and math.isfinite(hi)):  # the Trainer checks data against finite bounds
            lo, hi = float(x.min()), float(x.max())
            hi = hi if hi > lo else lo + 1.0
        trainer = _TransferSetTraining(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer="adam", bounds=(lo, hi)
        )
        trainer.soft_targets = answers if answers.dim() == 2 else None
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        result = trainer.fit(module, x, y, seed=seed, progress=False)
        agree = float((_labels(module, x) == y).double().mean())
        return {"transfer_set_size": int(x.shape[0]), "train_agreement": agree, "loss": result.final.loss}


@register
class Knockoff(SurrogateExtraction):
    """Knockoff Nets (Orekondy et al. 2019): a surrogate trained on the target's probability
    vectors (or labels, ``soft_labels=False``) for the attacker's queries; see the module
    docstring for the query strategies, the ``"adaptive"`` selection and ``info``.

    Args:
        soft_labels: train on the target's probability vectors (softmax of its logits, or its
            probabilities as they are) with soft cross-entropy; ``False``: on its argmax labels.
        max_queries, query_set, query_strategy, selection, surrogate, epochs, batch_size, lr,
        rounds, jacobian_step: see :class:`SurrogateExtraction`.
    """

    name: ClassVar[str] = "knockoff"
    description: ClassVar[str] = (
        "Knockoff Nets: a surrogate trained on the target's probability vectors for natural, random or "
        "Jacobian-augmented queries under a query budget (Orekondy et al. 2019)"
    )
    reference: ClassVar[str] = (
        'Orekondy, Schiele and Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models", CVPR 2019, '
        "https://arxiv.org/abs/1812.02766; Jacobian augmentation: Papernot et al., \"Practical Black-Box Attacks "
        'against Machine Learning", AsiaCCS 2017, https://arxiv.org/abs/1602.02697'
    )
    needs: ClassVar[str] = "scores"
    labels_alternative: ClassVar[str] = "copycat"

    def __init__(
        self,
        *,
        max_queries: int = 10_000,
        query_set: Tensor | None = None,
        query_strategy: str = "natural",
        selection: str = "random",
        surrogate: nn.Module | None = None,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        soft_labels: bool = True,
        rounds: int = 1,
        jacobian_step: float = 0.1,
    ) -> None:
        self.soft_labels = soft_labels
        super().__init__(
            max_queries=max_queries, query_set=query_set, query_strategy=query_strategy, selection=selection,
            surrogate=surrogate, epochs=epochs, batch_size=batch_size, lr=lr, rounds=rounds, jacobian_step=jacobian_step,
        )

    def _soft(self) -> bool:
        return bool(self.soft_labels)
