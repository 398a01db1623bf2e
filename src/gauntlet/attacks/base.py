"""The attack base class: it owns every invariant, subclasses implement only the search.

``Attack.run`` validates the model and the data, checks capabilities, seeds an explicit
``torch.Generator``, puts the model in attack mode (eval, frozen weights) and restores it,
splits into batches, projects the result into the ε-ball and the input bounds, recomputes
success with the model, counts queries and gradient evaluations, and times the call.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gauntlet import norms as N
from gauntlet._batch import check_input_batch
from gauntlet._validation import Constraint, Hyperparameters, Interval, IsNone, Options, validate_params
from gauntlet.attacks.result import AttackResult
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model, predict_batched
from gauntlet.threat import as_eps_tuple

STEPS: list[Constraint] = [Interval(int, 1, None)]
POSITIVE: list[Constraint] = [Interval(float, 0, None, closed="neither")]
OPTIONAL_POSITIVE: list[Constraint] = [Interval(float, 0, None, closed="neither"), IsNone()]
BATCH_SIZE: list[Constraint] = [Interval(int, 1, None), IsNone()]
#: ``search_precision`` of the attacks that offer it: ``"full"`` or ``"bfloat16"`` (the search's
#: queries in reduced precision where the model offers it, every success re-verified in full)
SEARCH_PRECISION: list[Constraint] = [Options(("full", "bfloat16"))]


#: how far from a decision (relative to the logit scale) a reduced-precision search still checks a
#: row in full precision: bfloat16 logits of the zoo's networks differ from float32 by ≤ 0.5% of
#: that scale here, so 2% leaves a factor 4
REDUCED_SLACK = 2e-2


@dataclass
class Context:
    """What an attack's search may use during one ``run`` call."""

    model: Model
    generator: torch.Generator
    targeted: bool
    num_classes: int
    bounds: tuple[float, float]
    target: Tensor | None = None  # per batch, set by the base class when targeted
    info: dict[str, Any] = field(default_factory=dict)  # extras the attack reports in AttackResult.info
    #: the search queries in reduced precision (``search_precision="bfloat16"`` in effect): every
    #: success it claims must pass :meth:`confirm`
    reduced: bool = False

    def goal_labels(self, y: Tensor) -> Tensor:
        """Labels the loss is computed against (the target class when targeted)."""
        return self.target if self.targeted and self.target is not None else y

    def is_adversarial(self, logits: Tensor, y: Tensor) -> Tensor:
        pred = logits.argmax(dim=1)
        return pred == self.target if self.targeted and self.target is not None else pred != y

    def clip(self, x: Tensor) -> Tensor:
        return x.clamp(self.bounds[0], self.bounds[1])

    def claims(self, logits: Tensor, label: Tensor, *, hit: bool = False) -> Tensor:
        """Rows the search should count as adversarial: predicted ``label`` (``hit=True``, a target)
        or not (``hit=False``, the true class).  In a reduced-precision search, also the rows
        within ``REDUCED_SLACK × max(1, max |logit|)`` of that decision, which reduced precision may
        have on the wrong side: :meth:`confirm` then settles every claim in full precision, so
        neither a false success nor (within the slack) a missed one gets through."""
        if not self.reduced:  # the decision itself, as every attack takes it
            pred = logits.argmax(dim=1)
            return pred == label if hit else pred != label
        z = logits.float()
        own = z.gather(1, label[:, None]).squeeze(1)
        other = z.scatter(1, label[:, None], float("-inf")).amax(dim=1)
        lead = own - other  # > 0: the model predicts label
        slack = REDUCED_SLACK * z.abs().amax(dim=1).clamp_min(1.0)
        return lead > -slack if hit else lead < slack

    def exact(self) -> contextlib.AbstractContextManager[bool]:
        """Full-precision queries inside a reduced-precision search (clean passes, checks)."""
        return self.model.search_precision(None)

    def confirm(self, x: Tensor, claimed: Tensor, is_adversarial: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``claimed`` (bool ``(n,)``: rows of ``x`` the search found adversarial) where a
        full-precision forward pass agrees.  Outside a reduced-precision search it returns
        ``claimed`` unchanged at no cost; inside, it queries the claimed rows only (counted) and
        calls ``is_adversarial(logits, rows)`` with their full-precision logits and their
        positions in ``x``.  ``info["precision"]`` counts the checks and the rejections."""
        if not self.reduced or not bool(claimed.any()):
            return claimed
        rows = claimed.nonzero().squeeze(1)
        with self.exact(), torch.no_grad():
            logits = self.model.scores(x[rows])
        ok = is_adversarial(logits, rows)
        out = torch.zeros_like(claimed)
        out[rows[ok]] = True
        stats = self.info.setdefault("precision", {"search": "bfloat16", "checked": 0, "rejected": 0})
        stats["checked"] += int(rows.numel())
        stats["rejected"] += int((~ok).sum())
        return out


def loss_and_grad(
    model: Model, x: Tensor, loss_fn: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward+backward pass: per-sample loss ``(N,)``, its input gradient, and the logits.

    Counts ``N`` queries and ``N`` gradient evaluations on the model.
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.scores(xg)
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), xg)
    model.grad_evals += int(x.shape[0])
    return loss.detach(), grad, logits.detach()


def record_queries(ctx: Context, used: Tensor, fooled: Tensor | None = None) -> None:
    """Append one batch's per-sample query counts to ``ctx.info["queries_per_sample"]``.

    Black-box attacks call it once per ``_attack`` call; :meth:`Attack.run` shapes the result
    ``(E, N)`` for a list of ε (see ``per_sample_info``).  With ``fooled`` (bool, per sample) the
    counts of the points fooled are kept in ``queries_successful`` with their mean and median.
    """
    used = used.detach().cpu().clone()
    prev = ctx.info.get("queries_per_sample")
    ctx.info["queries_per_sample"] = used if prev is None else torch.cat([prev, used])
    if fooled is not None:
        ok = torch.cat([ctx.info.get("queries_successful", torch.zeros(0, dtype=torch.int64)), used[fooled.detach().cpu()]])
        ctx.info["queries_successful"] = ok
        ctx.info["mean_queries_successful"] = float(ok.double().mean()) if ok.numel() else float("nan")
        ctx.info["median_queries_successful"] = float(ok.double().median()) if ok.numel() else float("nan")


class Attack(Hyperparameters, abc.ABC):
    """Base class of every attack.

    Subclasses set the class attributes below, take their hyperparameters as keyword-only
    ``__init__`` arguments stored unchanged on ``self`` (so ``get_params`` can rebuild them),
    and implement :meth:`_attack`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the paper it follows: authors, "title", venue year, URL
    kind: ClassVar[str] = "evasion"  # the registry's kind (poisoning attacks have their own base)
    requires: ClassVar[frozenset[str]] = frozenset({"gradients"})
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")
    minimal: ClassVar[bool] = False  # minimal-norm attack: eps is optional
    #: ``info`` entries an attack appends per sample, ``_attack`` call after call (ε by ε, batch by
    #: batch); for a list of ε, ``run`` reshapes each from ``(E·N,)`` to ``(E, N)`` like ``success``
    per_sample_info: ClassVar[tuple[str, ...]] = ("queries_per_sample",)
    #: an ensemble that passes ``search_precision`` on to its sub-attacks (which each enter and
    #: verify the reduced-precision search themselves) rather than searching in it itself
    delegates_precision: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    # ---------------------------------------------------------------------------------------
    # hyperparameters

    def _validate(self) -> None:
        """Check hyperparameters; called at the end of every subclass ``__init__``."""
        params = self.get_params()
        constraints = dict(self._parameter_constraints)
        if "norm" in params:
            constraints["norm"] = [Options(self.norms)]
        if "targeted" in params:
            constraints["targeted"] = [Options((True, False))]
        if "batch_size" in params:
            constraints.setdefault("batch_size", BATCH_SIZE)
        validate_params(self.name, params, constraints)
        if "eps" in params:
            if params["eps"] is None:
                if not self.minimal:
                    raise ConfigError(f"{self.name}: eps is required (a number > 0 or a list of them)")
            else:
                as_eps_tuple(params["eps"], owner=self.name)

    # ---------------------------------------------------------------------------------------
    # the front door
    def run(
        self,
        model: Model,
        x: Tensor,
        y: Tensor,
        *,
        seed: int = 0,
        target: Tensor | None = None,
        clean_pred: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` on inputs ``x`` with true labels ``y``.

        Args:
            model: a :class:`gauntlet.models.Model` (e.g. ``TorchModel(net, bounds=(0, 1))``).
            x: float tensor ``(N, ...)`` inside the model's bounds.
            y: int64 labels ``(N,)``.
            seed: seeds the attack's own ``torch.Generator`` (the global RNG is never used).
            target: for targeted attacks, the class to reach per sample; drawn at random
                (≠ y, from ``seed``) when omitted.
            clean_pred: the model's labels on ``x`` when the caller already has them (an audit
                computes them once and shares them across attacks); saves one forward pass.
                Omitted, they are computed here.
        """
        x, y = self._check_inputs(model, x, y)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be an int >= 0, got {seed!r}")
        params = self.get_params()
        targeted = bool(params.get("targeted", False))
        num_classes = model.infer_num_classes(x)
        self._check_labels(y, num_classes, "y")
        generator = torch.Generator(device=x.device).manual_seed(seed)
        if targeted:
            if target is None:
                offset = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
                target = (y + offset) % num_classes
            else:
                target = self._check_target(target, y, num_classes)
        elif target is not None:
            if "targeted" in params:
                raise ConfigError(f"{self.name}: target was given but the attack is untargeted; pass targeted=True")
            raise ConfigError(
                f"{self.name}: target was given but {self.name} chooses its own target classes and takes none; "
                "use an attack with a targeted=True option (e.g. apgd_ce or pgd) to aim at given classes"
            )
        if clean_pred is not None:
            if not isinstance(clean_pred, Tensor) or clean_pred.dtype.is_floating_point or clean_pred.shape != y.shape:
                raise DataError(f"{self.name}: clean_pred must be an integer tensor of labels with shape {tuple(y.shape)}")
            clean_pred = clean_pred.to(device=y.device, dtype=torch.int64)
            self._check_labels(clean_pred, num_classes, "clean_pred")

        eps_given = params.get("eps")
        multi = isinstance(eps_given, (list, tuple))
        eps_values: tuple[float | None, ...] = as_eps_tuple(eps_given, self.name) if eps_given is not None else (None,)
        norm = params.get("norm", self.norms[0])
        batch_size = params.get("batch_size") or x.shape[0]
        lo, hi = model.bounds

        q0, g0 = model.queries, model.grad_evals
        t0 = time.perf_counter()
        with model.attack_mode():
            ctx = Context(model, generator, targeted, num_classes, (lo, hi))
            if clean_pred is None:
                with ctx.exact():  # full precision, also inside an ensemble's reduced search
                    clean_pred = self._predict(model, x, batch_size)
            advs: list[Tensor] = []
            reduce = params.get("search_precision", "full") == "bfloat16" and not self.delegates_precision
            search: contextlib.AbstractContextManager[bool] = (
                model.search_precision(torch.bfloat16) if reduce else contextlib.nullcontext(False)
            )
            with search as reduced:
                ctx.reduced = reduced
                if reduce:
                    note = "bfloat16" if reduced else getattr(model, "search_note", "full precision: not offered by this model")
                    ctx.info["precision"] = {"search": note, "checked": 0, "rejected": 0}
                for eps in (eps_values if not self.minimal else (None,)):
                    parts = []
                    for s in range(0, x.shape[0], batch_size):
                        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
                        ctx.target = target[s : s + batch_size] if target is not None else None
                        out = self._attack(ctx, xb, yb, eps)
                        parts.append(out.detach().to(x.dtype))
                    advs.append(torch.cat(parts))
            if self.minimal:
                advs = advs * len(eps_values)
            xs, succ, nrm = [], [], []
            for eps, adv in zip(eps_values, advs):
                delta = adv - x
                if eps is not None:
                    delta = N.project(delta, norm, eps)
                adv = (x + delta).clamp(lo, hi)
                with ctx.exact():  # success is always decided in full precision
                    pred = self._predict(model, adv, batch_size)
                xs.append(adv)
                succ.append(pred == target if targeted else pred != y)  # type: ignore[operator]
                nrm.append(N.norm(adv - x, norm))
        seconds = time.perf_counter() - t0
        if multi:
            for key in self.per_sample_info:
                v = ctx.info.get(key)
                if isinstance(v, Tensor) and v.dim() == 1 and v.numel() == len(eps_values) * x.shape[0]:
                    ctx.info[key] = v.view(len(eps_values), -1)
        stack = (lambda t: torch.stack(t)) if multi else (lambda t: t[0])
        return AttackResult(
            attack=self.name,
            x_adv=stack(xs),
            success=stack(succ),
            norms=stack(nrm),
            norm=norm,
            eps=tuple(eps_values) if multi else eps_values[0],  # type: ignore[arg-type]
            targeted=targeted,
            y=y,
            target=target,
            clean_correct=clean_pred == y,
            queries=model.queries - q0,
            grad_evals=model.grad_evals - g0,
            seed=seed,
            params=params,
            seconds=seconds,
            info=ctx.info,
        )

    @abc.abstractmethod
    def _attack(self, ctx: Context, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        """Search for adversarial inputs for one batch and one ε; return ``x_adv`` like ``x``.

        The base class projects the return value into the ε-ball and the bounds and decides
        success itself, so the search need not be exact about either.
        """

    # ---------------------------------------------------------------------------------------
    # validation helpers
    @staticmethod
    def _predict(model: Model, x: Tensor, batch_size: int) -> Tensor:
        return predict_batched(model, x, batch_size)

    def _check_inputs(self, model: Model, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        from gauntlet.attacks.registry import get_attack_class, list_attacks

        if not isinstance(model, Model):
            hint = " wrap it: gauntlet.models.TorchModel(module, bounds=(0, 1))" if isinstance(model, torch.nn.Module) else ""
            raise ConfigError(f"{self.name}: model must be a gauntlet Model, got {type(model).__name__};{hint}".rstrip(";"))
        missing = self.requires - model.capabilities
        if missing:
            alternatives = [
                n for n in list_attacks("evasion") if get_attack_class(n).requires <= model.capabilities
            ]
            alt = f"; use {' or '.join(repr(a) for a in alternatives)} instead" if alternatives else ""
            if "scores" in missing and "hopskipjump" not in alternatives:
                alt += "; a labels-only model needs a decision-based attack such as HopSkipJump"
            raise CapabilityError(
                f"{self.name} needs {', '.join(sorted(missing))} but {type(model).__name__} offers only "
                f"{', '.join(sorted(model.capabilities))}{alt}"
            )
        check_batch(x, model, where=self.name)
        if not isinstance(y, Tensor):
            raise DataError(f"{self.name}: y must be a torch.Tensor of int64 labels, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise DataError(f"{self.name}: y must hold integer class labels, got dtype {y.dtype}; use y.long()")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{self.name}: y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}"
            )
        if y.device != x.device:
            raise DataError(f"{self.name}: x is on {x.device} but y on {y.device}; put both on one device")
        return x.detach(), y.to(torch.int64)

    def _check_labels(self, y: Tensor, num_classes: int, what: str) -> None:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(
                f"{self.name}: {what} holds labels in [{int(y.min())}, {int(y.max())}] but the model has "
                f"{num_classes} classes (labels must be in [0, {num_classes - 1}])"
            )

    def _check_target(self, target: Tensor, y: Tensor, num_classes: int) -> Tensor:
        if not isinstance(target, Tensor) or target.dtype.is_floating_point or target.shape != y.shape:
            raise DataError(f"{self.name}: target must be an integer tensor of shape {tuple(y.shape)}")
        target = target.to(device=y.device, dtype=torch.int64)
        self._check_labels(target, num_classes, "target")
        return target


def check_batch(x: Tensor, model: Model, where: str) -> None:
    """Validate a batch of inputs against a model's input spec (raises :class:`DataError`)."""
    spec = model.input_spec
    check_input_batch(
        x, where=where, dtype=spec.dtype, shape=spec.shape, device=model.device, bounds=spec.bounds
    )

