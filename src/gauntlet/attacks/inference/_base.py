"""The membership-inference base class, its result, and the reference models it trains.

A membership-inference attack decides, for each candidate example, whether it was in the
target model's training set.  ``run(model, members=(x_in, y_in), nonmembers=(x_out, y_out),
seed=...)`` scores every candidate (higher: more likely a member) and returns a
:class:`MembershipResult` that knows the truth, so its figures are one attribute away: ROC AUC,
balanced accuracy, TPR at a fixed low FPR (the metric Carlini et al. 2022 argue for) and the ROC
curve for log-log plots.

Attacks that calibrate per example (LiRA, RMIA) train **reference models** like the target on
random halves of a data pool (:class:`ReferenceModels`): through the project's ``Trainer``,
seeded, each finished model saved in a cache directory, so an interrupted run resumes from the
models it finished and a rerun with the same data, recipe and seed trains nothing.
"""

from __future__ import annotations

import abc
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gauntlet._validation import Check, Constraint, Hyperparameters, validate_params
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model

__all__ = [
    "REFERENCE_CONSTRAINTS",
    "MembershipAttack",
    "MembershipResult",
    "ReferenceAttack",
    "ReferenceModels",
    "default_cache_dir",
    "logit_confidence",
    "true_class_probability",
]


def default_cache_dir() -> Path:
    """Where reference and shadow models are kept: ``$GAUNTLET_CACHE/membership``, else
    ``$XDG_CACHE_HOME/gauntlet/membership`` or ``~/.cache/gauntlet/membership``."""
    root = os.environ.get("GAUNTLET_CACHE")
    if root:
        return Path(root) / "membership"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gauntlet" / "membership"


def _logits_or_log_probs(model: Model, scores: Tensor) -> Tensor:
    if model.output == "probabilities":
        return scores.clamp_min(torch.finfo(scores.dtype).tiny).log()
    return scores


def logit_confidence(model: Model, scores: Tensor, y: Tensor) -> Tensor:
    """LiRA's statistic: ``log p_y - log(1 - p_y)`` computed stably from logits as
    ``z_y - logsumexp_{j≠y} z_j`` (float64)."""
    z = _logits_or_log_probs(model, scores).double()
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return zy - torch.logsumexp(others, dim=1)


def true_class_probability(model: Model, scores: Tensor, y: Tensor) -> Tensor:
    """``p_θ(y | x)`` (float64), the quantity RMIA compares across models."""
    return torch.softmax(_logits_or_log_probs(model, scores).double(), dim=1).gather(1, y[:, None]).squeeze(1)


def _roc(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve  # type: ignore[import-untyped]  # scikit-learn ships no type information

    fpr, tpr, _ = roc_curve(truth, scores)
    return np.asarray(fpr), np.asarray(tpr)


@dataclass(frozen=True)
class MembershipResult:
    """Membership scores of the candidates and what they reveal.

    Attributes:
        scores: float64 ``(N,)``, higher means "more likely a member"; the members come first,
            then the non-members, in the order given.
        is_member: bool ``(N,)``, the truth.
        attack: the attack's registry name; ``params`` its hyperparameters.
        queries: queries the attack sent to the target model.
        info: attack-specific extras (reference models used, thresholds, ...).
        seconds: wall time of ``run``.
    """

    scores: Tensor
    is_member: Tensor
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    queries: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.scores.double().cpu().numpy(), self.is_member.cpu().numpy().astype(bool)

    @property
    def auc(self) -> float:
        """Area under the ROC curve (0.5: no better than chance)."""
        from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]  # scikit-learn ships no type information

        s, t = self._arrays()
        return float(roc_auc_score(t, s))

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """The ROC curve ``(fpr, tpr)`` (plot it log-log, as Carlini et al. do)."""
        return _roc(*self._arrays())

    def tpr_at(self, fpr: float) -> float:
        """The highest true-positive rate at a false-positive rate of at most ``fpr``."""
        if not isinstance(fpr, (int, float)) or isinstance(fpr, bool) or not 0 <= fpr <= 1:
            raise ConfigError(f"tpr_at: fpr must be a number in [0, 1], got {fpr!r}")
        f, t = self.roc()
        ok = f <= fpr + 1e-12
        return float(t[ok].max()) if ok.any() else 0.0

    @property
    def balanced_accuracy(self) -> float:
        """The best balanced accuracy ``(TPR + TNR) / 2`` over all thresholds (the attack's
        accuracy with an oracle threshold; a deployed attacker must pick one)."""
        f, t = self.roc()
        return float(((t + 1 - f) / 2).max())

    def summary(self) -> dict[str, float]:
        return {
            "auc": self.auc,
            "balanced_accuracy": self.balanced_accuracy,
            "tpr_at_0.1%_fpr": self.tpr_at(0.001),
            "tpr_at_1%_fpr": self.tpr_at(0.01),
        }


def _check_pair(pair: Any, name: str, model: Model) -> tuple[Tensor, Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"membership: {name} must be a pair (x, y) of tensors")
    x, y = pair
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"membership: {name}[0] must be a non-empty float tensor (N, ...) of inputs")
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (x.shape[0],):
        raise DataError(
            f"membership: {name}[1] must be int64 labels of shape ({x.shape[0]},) to match {name}[0], "
            f"got {getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}"
        )
    shape = model.input_spec.shape
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"membership: {name} has per-sample shape {tuple(x.shape[1:])} but the model takes {tuple(shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"membership: {name} holds NaN or inf values")
    lo, hi = model.bounds
    if float(x.min()) < lo or float(x.max()) > hi:
        raise DataError(f"membership: {name} has values outside the model's bounds [{lo}, {hi}]")
    k = model.num_classes
    if k is not None and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(f"membership: {name} has labels outside [0, {k - 1}]")
    return x, y.to(torch.int64)


class MembershipAttack(Hyperparameters, abc.ABC):
    """Base class of membership-inference attacks (registry ``kind`` ``"inference"``).

    Subclasses set ``name``/``description``/``reference`` and ``needs`` (``"scores"`` or
    ``"labels"``), take keyword-only hyperparameters stored unchanged, list constraints in
    ``_parameter_constraints``, call :meth:`_validate` at the end of ``__init__`` and implement
    :meth:`_scores`.  ``needs_population``: the attack needs attacker data disjoint from the
    candidates (``run(..., population=(x, y))``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    kind: ClassVar[str] = "inference"
    needs: ClassVar[str] = "scores"
    needs_population: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def run(
        self,
        model: Model,
        *,
        members: tuple[Tensor, Tensor],
        nonmembers: tuple[Tensor, Tensor],
        population: tuple[Tensor, Tensor] | None = None,
        seed: int = 0,
    ) -> MembershipResult:
        """Score every candidate: ``members`` (in the target's training set) then ``nonmembers``.

        Args:
            model: the target.
            members, nonmembers: ``(x, y)`` candidates whose truth is known (the evaluation).
            population: attacker data disjoint from the candidates (reference points for RMIA,
                training data for shadow models).
            seed: seeds the attack's ``torch.Generator`` and its reference models' training.
        """
        if not isinstance(model, Model):
            raise ConfigError(f"{self.name}: the target must be a gauntlet Model, got {type(model).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{self.name}: seed must be an int >= 0, got {seed!r}")
        if self.needs == "scores" and not model.has("scores"):
            raise CapabilityError(
                f"{self.name} needs the target's scores but this target returns labels only; use 'label_only'"
            )
        x_in, y_in = _check_pair(members, "members", model)
        x_out, y_out = _check_pair(nonmembers, "nonmembers", model)
        if tuple(x_in.shape[1:]) != tuple(x_out.shape[1:]):
            raise DataError(
                f"membership: members have per-sample shape {tuple(x_in.shape[1:])} but nonmembers {tuple(x_out.shape[1:])}"
            )
        pop = _check_pair(population, "population", model) if population is not None else None
        if self.needs_population and pop is None:
            raise ConfigError(
                f"{self.name} needs attacker data disjoint from the candidates: run(..., population=(x, y))"
            )
        x = torch.cat([x_in, x_out])
        y = torch.cat([y_in, y_out])
        truth = torch.cat([torch.ones(len(y_in), dtype=torch.bool), torch.zeros(len(y_out), dtype=torch.bool)])
        generator = torch.Generator().manual_seed(seed)
        before = model.queries
        t0 = time.perf_counter()
        with model.attack_mode(), torch.no_grad():
            scores, info = self._scores(model, x, y, pop, generator, seed)
        scores = scores.detach().double().cpu()
        if scores.shape != (x.shape[0],):  # pragma: no cover - a bug in a subclass
            raise AssertionError(f"{self.name}: _scores returned shape {tuple(scores.shape)}, expected ({x.shape[0]},)")
        scores = torch.nan_to_num(scores, nan=float("-inf"))
        return MembershipResult(
            scores=scores, is_member=truth, attack=self.name, params=self.get_params(),
            queries=model.queries - before, info=info, seconds=time.perf_counter() - t0,
        )

    @abc.abstractmethod
    def _scores(
        self,
        model: Model,
        x: Tensor,
        y: Tensor,
        population: tuple[Tensor, Tensor] | None,
        generator: torch.Generator,
        seed: int,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Membership scores ``(N,)`` of the candidates ``(x, y)`` (higher: member) and extras."""


def query_scores(model: Model, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The model's scores on ``x`` in batches (counted queries)."""
    return torch.cat([model.scores(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


class ReferenceModels:
    """Models trained like the target on random halves of a pool, each candidate IN exactly half.

    ``masks[r, i]`` says whether pool point ``i`` was in reference model ``r``'s training set;
    the design is balanced (every point is IN for exactly ``R/2`` models, as in LiRA's online
    setting), seeded, and the models are trained with a registered training method through
    ``Trainer.fit`` with an epoch checkpoint each in ``cache_dir``: interrupted training resumes,
    and a finished model is loaded, not retrained.

    Args:
        architecture: the network to train (deep-copied and re-initialised per model).
        count: number of reference models ``R`` (even).
        train: training-method name and its hyperparameters, e.g. ``{"method": "standard",
            "epochs": 30, "lr": 1e-3}``.
        bounds, mean, std, num_classes: how the trained networks are wrapped as
            :class:`~gauntlet.models.TorchModel` (the target's, normally).
    """

    def __init__(
        self,
        architecture: nn.Module,
        count: int,
        train: dict[str, Any],
        *,
        bounds: tuple[float, float],
        num_classes: int,
        cache_dir: Path,
        progress: bool = False,
    ) -> None:
        self.architecture = architecture
        self.count = count
        self.train = dict(train)
        self.bounds = bounds
        self.num_classes = num_classes
        self.cache_dir = cache_dir
        self.progress = progress

    def design(self, n: int, generator: torch.Generator) -> Tensor:
        """A balanced ``(R, n)`` IN/OUT mask: per point a random half of the models."""
        ranks = torch.argsort(torch.rand((n, self.count), generator=generator), dim=1)
        return (ranks < self.count // 2).T.contiguous()

    def _key(self, x: Tensor, y: Tensor, masks: Tensor, seed: int) -> str:
        h = hashlib.sha256()
        for t in (x.detach().cpu().contiguous(), y.cpu().contiguous(), masks.cpu().contiguous()):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes())
        h.update(repr(sorted(self.train.items())).encode())
        h.update(repr(self.architecture).encode())
        h.update(str(seed).encode())
        return h.hexdigest()[:16]

    def fit(self, x: Tensor, y: Tensor, masks: Tensor, seed: int) -> list[Model]:
        """Train (or load) the ``R`` reference models on ``x[masks[r]]`` and return them as models."""
        import copy

        from gauntlet.defenses.training import train as train_fn
        from gauntlet.defenses.training._base import save_atomic
        from gauntlet.models.torch_model import TorchModel, reinitialise

        params = dict(self.train)
        method = params.pop("method", "standard")
        params.setdefault("bounds", self.bounds)
        folder = self.cache_dir / self._key(x, y, masks, seed)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"membership: cannot create the reference-model cache {str(folder)!r} ({exc.strerror}); pass cache_dir=") from None
        models: list[Model] = []
        for r in range(self.count):
            net = reinitialise(copy.deepcopy(self.architecture), seed * 1000 + r)
            path = folder / f"ref_{r}.pt"
            if path.exists():
                try:
                    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                except (RuntimeError, OSError, EOFError, ValueError) as exc:  # a corrupt or foreign file
                    raise ConfigError(
                        f"membership: the cached reference model {str(path)!r} cannot be loaded ({type(exc).__name__}); "
                        "delete it to retrain it"
                    ) from None
            else:
                keep = masks[r]
                train_fn(net, x[keep], y[keep], method=method, seed=seed * 1000 + r, progress=self.progress, **params)
                save_atomic(net.state_dict(), path)
            net.eval()
            models.append(TorchModel(net, bounds=self.bounds, num_classes=self.num_classes))
        return models


def reference_architecture(model: Model, architecture: nn.Module | None, owner: str) -> nn.Module:
    """The network reference models are trained as: the given one, else the target's own
    (a :class:`~gauntlet.models.TorchModel`, normalisation included)."""
    if architecture is not None:
        return architecture
    from gauntlet.models.torch_model import TorchModel

    if isinstance(model, TorchModel):
        return model.trainable_copy()
    raise ConfigError(
        f"{owner}: reference models are trained like the target, but the target is a {type(model).__name__}; "
        "pass architecture=<an untrained torch.nn.Module like the target's>"
    )


REFERENCE_CONSTRAINTS: dict[str, list[Constraint]] = {
    "reference_models": [
        Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2 and v % 2 == 0, "an even int >= 2 (half IN, half OUT per candidate)")
    ],
    "architecture": [Check(lambda v: v is None or isinstance(v, nn.Module), "a torch.nn.Module or None")],
    "train": [Check(lambda v: isinstance(v, dict), "a dict such as {'method': 'standard', 'epochs': 30}")],
    "cache_dir": [Check(lambda v: v is None or isinstance(v, (str, Path)), "a path or None")],
}


class ReferenceAttack(MembershipAttack):
    """A membership attack calibrated on reference models trained like the target on random
    halves of the candidates (LiRA, RMIA): the hyperparameters ``reference_models``,
    ``architecture``, ``train`` and ``cache_dir`` and the shared training.  Two attacks with the
    same candidates, recipe, count and seed train the same models and share the cache."""

    reference_models: int
    architecture: nn.Module | None
    train: dict[str, Any]
    cache_dir: str | Path | None

    def _references(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator, seed: int
    ) -> tuple[list[Model], Tensor]:
        """The reference models and the ``(R, N)`` design mask over the candidates."""
        arch = reference_architecture(model, self.architecture, self.name)
        k = model.num_classes or model.infer_num_classes(x)
        refs = ReferenceModels(
            arch, self.reference_models, self.train, bounds=model.bounds, num_classes=k,
            cache_dir=Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir(),
        )
        masks = refs.design(x.shape[0], generator)
        dtype = next(arch.parameters()).dtype
        with torch.enable_grad():
            models = refs.fit(x.to(dtype), y, masks, seed)
        return models, masks


def cross_entropy_scores(model: Model, scores: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy loss from a model's scores (float64)."""
    return F.cross_entropy(_logits_or_log_probs(model, scores).double(), y, reduction="none")
