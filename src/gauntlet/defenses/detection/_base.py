"""Adversarial-input detectors, their calibration, and their evaluation against plain and
detector-aware (adaptive) attacks.

A :class:`Detector` assigns every input a score (higher = more suspicious).  :meth:`Detector.fit`
learns whatever statistics the detector needs and calibrates a ``threshold`` so that a chosen
false-positive rate (FPR) holds on clean data; :meth:`Detector.detect` flags ``score > threshold``.

:meth:`Detector.evaluate` measures what matters against an attacker: the share of correctly
classified points where an attack fools the classifier *and* slips past the detector (the
"undetected success rate").  Each attack is run twice: once *plain* (it ignores the detector, as
in most papers that propose detectors) and once *detector-aware* (Carlini & Wagner 2017,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods"), on a
:class:`DetectorAwareModel` whose extra class means "detected", so the ordinary gradient attacks
of :mod:`gauntlet.attacks` have to fool classifier and detector at once.
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gauntlet import norms as N
from gauntlet.attacks.base import Attack, check_batch
from gauntlet.defenses.base import Defense, check_labels
from gauntlet.errors import CapabilityError, ConfigError, DataError
from gauntlet.models.base import Model
from gauntlet.models.wrapped import WrappedModel

#: default scale of the detector term in :class:`DetectorAwareModel` (see there)
DEFAULT_ADAPTIVE_SCALE = 0.1


# ------------------------------------------------------------------------------------------------
# small helpers
def calibrated_threshold(scores: Tensor, fpr: float) -> float:
    """The ``(1 − fpr)`` empirical quantile of ``scores`` by the *inverted CDF* rule.

    With the scores sorted ascending, ``s_(1) ≤ … ≤ s_(n)``, the threshold is ``s_(k)`` with
    ``k = ⌈n (1 − fpr)⌉``: the smallest score whose empirical CDF reaches ``1 − fpr`` (NumPy's
    ``np.quantile(scores, 1 − fpr, method="inverted_cdf")``, no interpolation; ``k`` is computed
    as ``n − ⌊n · fpr⌋`` so that float rounding of ``1 − fpr`` cannot shift it by one).  Flagging
    ``score > threshold`` then flags at most ``n − k = ⌊n · fpr⌋`` of the calibration scores
    (fewer when scores tie at the threshold), so the calibration FPR is ``≤ fpr`` and as close to
    it as ``n`` allows.
    """
    s = torch.sort(scores.detach().flatten().to(torch.float64)).values
    n = int(s.numel())
    # ⌈n(1 − fpr)⌉ computed as n − ⌊n·fpr⌋ with a guard against 1000·0.05 = 50.000000000000004
    k = n - math.floor(n * fpr + 1e-9)
    k = min(max(k, 1), n)
    return float(s[k - 1])


def roc_auc(negatives: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of a score separating ``positives`` (should score higher) from
    ``negatives``: ``P(s_pos > s_neg) + ½ P(s_pos = s_neg)`` over all pairs (Mann–Whitney U / n₊n₋);
    NaN when either side is empty."""
    neg = negatives.detach().flatten().to(torch.float64)
    pos = positives.detach().flatten().to(torch.float64)
    if neg.numel() == 0 or pos.numel() == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).to(torch.float64).sum()
    equal = (pos[:, None] == neg[None, :]).to(torch.float64).sum()
    return float((greater + 0.5 * equal) / (pos.numel() * neg.numel()))


def _rate(mask: Tensor, within: Tensor) -> float:
    """Share of ``within`` where ``mask`` holds (NaN when ``within`` is empty)."""
    n = int(within.sum())
    return float((mask & within).sum()) / n if n else float("nan")


def _plain(v: Any) -> Any:
    """JSON-safe value: NaN/inf floats become ``None``."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def probabilities(out: Tensor, output: str) -> Tensor:
    """Class probabilities from a model's scores (softmax of logits; probabilities as they are)."""
    return out if output == "probabilities" else F.softmax(out, dim=-1)


def as_logits(out: Tensor, output: str) -> Tensor:
    """Logits from a model's scores (the floored log of probabilities; logits as they are)."""
    if output == "probabilities":
        return out.clamp_min(torch.finfo(out.dtype).tiny).log()
    return out


# ------------------------------------------------------------------------------------------------
# the report
@dataclass(frozen=True)
class DetectionRow:
    """One attack (plain or detector-aware) at one ε against one fitted detector.

    Rates over ``n_correct`` (the points the classifier gets right on clean inputs):

    ``success_rate``             the attack fools the classifier;
    ``undetected_success_rate``  it fools the classifier **and** the detector does not flag it —
                                 the number that matters to a defender;
    ``tpr``                      share of the successful adversarial examples that are flagged
                                 (true-positive rate at the calibrated threshold; NaN if none);
    ``auroc``                    threshold-free separation of the scores of successful adversarial
                                 examples from those of the clean correct points (NaN if none);
    ``union_undetected_success_rate``  (detector-aware rows only, else ``None``) share where the
                                 plain *or* the detector-aware run gives an undetected success:
                                 the attacker's best of both, per point.

    ``median_norm`` is the median perturbation size (in ``norm``) of the undetected successes
    (NaN if none): for minimal-norm attacks run without ε it says what evading cost.

    ``clean_fpr`` is the share of all ``n`` clean inputs flagged, measured on the data passed to
    ``evaluate``.
    """

    attack: str
    adaptive: bool
    eps: float | None
    norm: str | None
    n: int
    n_correct: int
    clean_fpr: float
    success_rate: float
    tpr: float
    undetected_success_rate: float
    auroc: float
    median_norm: float
    union_undetected_success_rate: float | None
    threshold: float
    target_fpr: float
    seconds: float
    queries: int

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass(frozen=True)
class DetectionReport:
    """What :meth:`Detector.evaluate` measured: clean accuracy and FPR, one :class:`DetectionRow`
    per attack, ε and mode (plain, detector-aware), and notes on anything left out.

    The clean FPR is measured on the inputs passed to ``evaluate``; it estimates the deployed FPR
    only when those inputs are held out from the data used in :meth:`Detector.fit` (keeping them
    apart is the caller's job).
    """

    detector: str
    params: dict[str, Any]
    threshold: float
    target_fpr: float
    n: int
    clean_accuracy: float
    clean_fpr: float
    rows: list[DetectionRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, attack: str, *, adaptive: bool, eps: float | None = None) -> DetectionRow:
        """The row of ``attack`` in one mode (and at ``eps`` when it ran at several)."""
        hits = [r for r in self.rows if r.attack == attack and r.adaptive is adaptive and (eps is None or r.eps == eps)]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} rows for attack={attack!r}, adaptive={adaptive}, eps={eps}")
        return hits[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN becomes ``None``)."""
        out = {
            "detector": self.detector,
            "params": _plain(dict(self.params)),
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "clean_fpr": self.clean_fpr,
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
        }
        return _plain(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ------------------------------------------------------------------------------------------------
class Detector(Defense, abc.ABC):
    """Base class of adversarial-input detectors (kind ``"detector"``).

    Subclasses implement :meth:`_score_logits` (per-sample scores, higher = more adversarial,
    together with the model's scores on ``x`` so a detector-aware attack needs no extra forward
    pass) and may override :meth:`_fit_statistics` (learn from clean data) and
    :meth:`_check_model` (refuse models they cannot read).

    Fitted state (``None`` before :meth:`fit`): ``model_`` (the classifier the detector reads),
    ``threshold`` (flag ``score > threshold``), ``target_fpr``, ``calibration_scores_`` (sorted
    clean scores of the calibration set), ``score_unit_`` (``threshold`` minus the median clean
    score: the scale of "how far past the threshold" a detector-aware attack works in).
    """

    kind: ClassVar[str] = "detector"
    #: the detector needs class labels in :meth:`fit`
    needs_labels: ClassVar[bool] = False

    model_: Model | None = None
    threshold: float | None = None
    target_fpr: float | None = None
    calibration_scores_: Tensor | None = None
    score_unit_: float | None = None
    batch_size_: int = 256

    # -- what subclasses implement -------------------------------------------------------------
    @abc.abstractmethod
    def _score_logits(self, x: Tensor, adaptive: bool) -> tuple[Tensor, Tensor]:
        """``(score (N,), model scores on x (N, C))`` for one valid batch, keeping autograd's graph.

        ``adaptive=True`` asks for the gradient an adaptive attack should see: non-differentiable
        steps are replaced on the backward pass by a differentiable stand-in (BPDA); the values
        are the same either way.
        """

    def _fit_statistics(self, model: Model, x: Tensor, y: Tensor | None) -> None:
        """Learn what the detector needs from clean ``x`` (and labels ``y``); nothing by default."""

    def _check_model(self, model: Model) -> None:
        """Raise :class:`CapabilityError`/:class:`ConfigError` for a model the detector cannot read."""

    # -- fitting ---------------------------------------------------------------------------------
    def fit(
        self,
        model: Model,
        x_clean: Tensor,
        y_clean: Tensor | None = None,
        *,
        fpr: float = 0.05,
        batch_size: int = 256,
        x_calibration: Tensor | None = None,
    ) -> Detector:
        """Learn the detector's statistics on clean data and calibrate its threshold.

        Args:
            model: the classifier to protect (a :class:`~gauntlet.models.Model` with scores).
            x_clean: clean inputs inside the model's bounds.
            y_clean: their labels; required by detectors with class-conditional statistics
                (``mahalanobis``), checked when given.
            fpr: target false-positive rate in (0, 1): ``threshold`` is the ``(1 − fpr)`` quantile
                of the clean calibration scores by the inverted-CDF rule (see
                :func:`calibrated_threshold`), so at most ``⌊n · fpr⌋`` calibration points are flagged.
            batch_size: inputs per forward pass when scoring.
            x_calibration: clean inputs to calibrate the threshold on; default ``x_clean``.  Pass a
                separate set for detectors that learn statistics (the Mahalanobis distance of a
                point the Gaussians were fitted on is biased low, so an in-sample threshold
                under-states the FPR on new data).

        Returns ``self``.
        """
        where = f"{self.name}.fit"
        self._check_fpr(fpr, where)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
        self._check_model_type(model, where)
        self._check_model(model)
        check_batch(x_clean, model, where=where)
        num_classes = model.infer_num_classes(x_clean)
        if y_clean is None:
            if self.needs_labels:
                raise DataError(
                    f"{where}: needs y_clean (the class labels of x_clean) to fit class-conditional statistics; "
                    "call fit(model, x_clean, y_clean)"
                )
        else:
            y_clean = check_labels(y_clean, x_clean.shape[0], num_classes, x_clean.device, where)
        if x_calibration is not None:
            check_batch(x_calibration, model, where=f"{where} (x_calibration)")
        self.batch_size_ = batch_size
        with model.attack_mode(), torch.no_grad():
            self._fit_statistics(model, x_clean.detach(), y_clean)
        self.model_ = model
        self.threshold = 0.0  # marks the statistics as fitted for calibrate()
        self.calibrate(x_clean if x_calibration is None else x_calibration, fpr=fpr)
        return self

    def calibrate(self, x_clean: Tensor, *, fpr: float = 0.05) -> Detector:
        """Re-set ``threshold`` to the ``(1 − fpr)`` quantile of the scores of clean ``x_clean``
        (inverted-CDF rule, see :func:`calibrated_threshold`), keeping the learned statistics."""
        where = f"{self.name}.calibrate"
        self._check_fitted(where)
        self._check_fpr(fpr, where)
        scores = self.score(x_clean)
        self.threshold = calibrated_threshold(scores, fpr)
        self.target_fpr = float(fpr)
        srt = torch.sort(scores.to(torch.float64)).values
        self.calibration_scores_ = srt
        unit = self.threshold - float(srt[(srt.numel() - 1) // 2])
        self.score_unit_ = unit if unit > 0 and math.isfinite(unit) else 1.0
        return self

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, x: Tensor, *, adaptive: bool = False) -> Tensor:
        """Per-sample detection score ``(N,)``, higher = more adversarial.

        Differentiable w.r.t. ``x`` where the method allows (call it on an ``x`` that requires
        grad); ``adaptive=True`` replaces non-differentiable steps by their BPDA stand-in on the
        backward pass (same values).  Runs the model in attack mode (eval, frozen weights).
        """
        where = f"{self.name}.score"
        self._check_fitted(where)
        assert self.model_ is not None
        check_batch(x.detach() if isinstance(x, Tensor) else x, self.model_, where=where)
        return self._scores_and_logits(x, adaptive)[0]

    def detect(self, x: Tensor) -> Tensor:
        """``score(x) > threshold``: a bool tensor ``(N,)``, True = flagged as adversarial."""
        self._check_fitted(f"{self.name}.detect")
        assert self.threshold is not None
        with torch.no_grad():
            return self.score(x) > self.threshold

    def _scores_and_logits(self, x: Tensor, adaptive: bool) -> tuple[Tensor, Tensor]:
        """Scores and model outputs of an already validated batch, in batches of ``batch_size_``
        (the public entry points check ``x`` once; this runs on every step of an adaptive attack)."""
        assert self.model_ is not None
        bs = self.batch_size_
        with self.model_.attack_mode():
            if x.shape[0] <= bs:
                return self._score_logits(x, adaptive)
            parts = [self._score_logits(x[s : s + bs], adaptive) for s in range(0, x.shape[0], bs)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # -- checks ----------------------------------------------------------------------------------
    @staticmethod
    def _check_fpr(fpr: object, where: str) -> None:
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not (0.0 < float(fpr) < 1.0):
            raise ConfigError(f"{where}: fpr must be a number in (0, 1), e.g. 0.05, got {fpr!r}")

    def _check_model_type(self, model: object, where: str) -> None:
        if not isinstance(model, Model):
            hint = (
                "; wrap it first: gauntlet.models.TorchModel(module, bounds=(0, 1))"
                if isinstance(model, torch.nn.Module)
                else ""
            )
            raise ConfigError(f"{where}: model must be a gauntlet Model, got {type(model).__name__}{hint}")
        if not model.has("scores"):
            raise CapabilityError(f"{where}: {self.name} reads the model's scores but {type(model).__name__} returns labels only")

    def _check_fitted(self, where: str) -> None:
        if self.model_ is None or self.threshold is None:
            raise ConfigError(f"{where}: the detector is not fitted; call fit(model, x_clean, ...) first")

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(
        self,
        model: Model,
        x: Tensor,
        y: Tensor,
        attacks: Mapping[str, Attack],
        *,
        seed: int = 0,
        adaptive: bool = True,
        adaptive_scale: float = DEFAULT_ADAPTIVE_SCALE,
        adaptive_targets: int = 1,
    ) -> DetectionReport:
        """Run every attack against the classifier and measure the detector on the result.

        For each named (untargeted) attack and each of its ε, a *plain* row: the attack as given,
        blind to the detector.  With ``adaptive=True`` also a *detector-aware* row (Carlini &
        Wagner 2017): the same attack, made targeted, runs on ``DetectorAwareModel(model, self,
        scale=adaptive_scale)``, whose extra class K means "detected", so reaching a target class
        ``t < K`` means the classifier says ``t`` and the detector stays quiet.  The targets are the
        ``adaptive_targets`` most likely wrong classes of each clean input, tried in order on the
        points not yet broken (a targeted attack is needed because no label-free model can make
        "detected" count as failure for every true label).  Success is then recomputed with the
        real classifier and the real detector (no BPDA) as "classifier wrong and not flagged".

        Rates are over the points the classifier gets right; see :class:`DetectionRow`.  The
        clean FPR is measured on ``x``; keep ``x`` apart from the data passed to :meth:`fit`.
        Attacks without a ``targeted`` option get no detector-aware row (noted in the report).
        """
        where = f"{self.name}.evaluate"
        self._check_fitted(where)
        assert self.model_ is not None and self.threshold is not None and self.target_fpr is not None
        threshold, target_fpr = self.threshold, self.target_fpr
        self._check_model_type(model, where)
        if not _same_model(model, self.model_):
            raise ConfigError(f"{where}: model is not the model the detector was fitted on; fit it on this model first")
        check_batch(x, model, where=where)
        num_classes = model.infer_num_classes(x)
        y = check_labels(y, x.shape[0], num_classes, x.device, where)
        if not isinstance(attacks, Mapping) or not attacks:
            raise ConfigError(f"{where}: attacks must be a non-empty mapping name -> Attack, e.g. {{'pgd': create('pgd', eps=0.3)}}")
        for name, atk in attacks.items():
            if not isinstance(name, str) or not isinstance(atk, Attack):
                raise ConfigError(f"{where}: attacks must map names (str) to gauntlet Attack objects; got {name!r}: {type(atk).__name__}")
            if atk.get_params().get("targeted", False):
                raise ConfigError(f"{where}: attack {name!r} is targeted; detection is evaluated with untargeted attacks (targeted=False)")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{where}: seed must be an int >= 0, got {seed!r}")
        if not isinstance(adaptive, bool):
            raise ConfigError(f"{where}: adaptive must be True or False, got {adaptive!r}")
        if isinstance(adaptive_scale, bool) or not isinstance(adaptive_scale, (int, float)) or not (
            math.isfinite(adaptive_scale) and adaptive_scale > 0
        ):
            raise ConfigError(f"{where}: adaptive_scale must be a finite number > 0, got {adaptive_scale!r}")
        if isinstance(adaptive_targets, bool) or not isinstance(adaptive_targets, int) or not (
            1 <= adaptive_targets <= num_classes - 1
        ):
            raise ConfigError(f"{where}: adaptive_targets must be an int in [1, {num_classes - 1}], got {adaptive_targets!r}")

        x = x.detach()
        bs = self.batch_size_
        with torch.no_grad():
            clean_scores, clean_out = self._scores_and_logits(x, False)
        clean_pred = clean_out.argmax(dim=1)
        correct = clean_pred == y
        clean_flag = clean_scores > self.threshold
        clean_fpr = float(clean_flag.float().mean())
        notes: list[str] = []
        rows: list[DetectionRow] = []

        def measure(
            name: str, adaptive_row: bool, eps: float | None, norm: str | None, x_adv: Tensor, t: float, q: int,
            plain_evaded: Tensor | None,
        ) -> Tensor:
            with torch.no_grad():
                s_adv, out = self._scores_and_logits(x_adv, False)
            fooled = out.argmax(dim=1) != y
            flagged = s_adv > threshold
            succ = fooled & correct
            evaded = succ & ~flagged
            sizes = N.norm(x_adv - x, norm if norm in ("linf", "l2", "l1") else "l2")[evaded]
            rows.append(
                DetectionRow(
                    attack=name,
                    adaptive=adaptive_row,
                    eps=eps,
                    norm=norm,
                    n=int(x.shape[0]),
                    n_correct=int(correct.sum()),
                    clean_fpr=clean_fpr,
                    success_rate=_rate(fooled, correct),
                    tpr=_rate(flagged, succ),
                    undetected_success_rate=_rate(evaded, correct),
                    auroc=roc_auc(clean_scores[correct], s_adv[succ]),
                    median_norm=float(sizes.median()) if sizes.numel() else float("nan"),
                    union_undetected_success_rate=None if plain_evaded is None else _rate(evaded | plain_evaded, correct),
                    threshold=float(threshold),
                    target_fpr=float(target_fpr),
                    seconds=round(t, 3),
                    queries=q,
                )
            )
            return evaded

        # the wrong classes of each clean input, most likely first (targets of the adaptive runs)
        ranked = clean_out.detach().scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)

        for name, attack in attacks.items():
            params = attack.get_params()
            eps_given = params.get("eps")
            eps_list: list[float | None] = list(eps_given) if isinstance(eps_given, (list, tuple)) else [eps_given]
            norm = params.get("norm")
            for eps in eps_list:
                single = type(attack)(**{**params, "eps": eps}) if "eps" in params else attack
                t0 = time.perf_counter()
                res = single.run(model, x, y, seed=seed, clean_pred=clean_pred)
                plain_evaded = measure(name, False, eps, norm, res.x_adv, time.perf_counter() - t0, res.queries, None)
                if not adaptive:
                    continue
                if "targeted" not in params:
                    if eps == eps_list[0]:
                        notes.append(f"{name}: no targeted mode, so no detector-aware run")
                    continue
                aware = DetectorAwareModel(model, self, scale=float(adaptive_scale))
                targeted = type(attack)(**{**params, "eps": eps, "targeted": True})
                t0 = time.perf_counter()
                x_best, queries = self._adaptive_run(targeted, aware, x, y, correct, ranked, adaptive_targets, seed, bs)
                measure(name, True, eps, norm, x_best, time.perf_counter() - t0, queries, plain_evaded)

        return DetectionReport(
            detector=self.name,
            params=self.get_params(),
            threshold=float(self.threshold),
            target_fpr=float(self.target_fpr),
            n=int(x.shape[0]),
            clean_accuracy=float(correct.float().mean()),
            clean_fpr=clean_fpr,
            rows=rows,
            notes=notes,
        )

    def _adaptive_run(
        self,
        attack: Attack,
        aware: DetectorAwareModel,
        x: Tensor,
        y: Tensor,
        correct: Tensor,
        ranked: Tensor,
        n_targets: int,
        seed: int,
        bs: int,
    ) -> tuple[Tensor, int]:
        """Targeted runs on the detector-aware model, one target rank at a time, each on the
        correctly classified points not yet fooled-and-undetected; keeps per point an undetected
        success if found, else a (detected) success, else the first run's output."""
        assert self.threshold is not None
        x_best = x.clone()
        state = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)  # 0 none, 1 detected success, 2 undetected
        queries = 0
        for r in range(n_targets):
            todo = (correct & (state < 2)).nonzero().flatten()
            if todo.numel() == 0:
                break
            res = attack.run(aware, x[todo], y[todo], seed=seed + r, target=ranked[todo, r])
            queries += res.queries
            xa = res.x_adv
            with torch.no_grad():
                s, out = self._scores_and_logits(xa, False)
            fooled = out.argmax(dim=1) != y[todo]
            new = torch.where(fooled & ~(s > self.threshold), 2, torch.where(fooled, 1, 0))
            better = torch.ones_like(fooled) if r == 0 else new > state[todo]
            x_best[todo[better]] = xa[better]
            state[todo[better]] = new[better]
        return x_best, queries


def _same_model(a: Model, b: Model) -> bool:
    if a is b:
        return True
    am, bm = getattr(a, "module", None), getattr(b, "module", None)
    return (
        am is not None
        and am is bm
        and type(a) is type(b)
        and a.input_spec == b.input_spec
        and all(_same_stat(getattr(a, k, None), getattr(b, k, None)) for k in ("mean", "std"))
    )


def _same_stat(u: Tensor | None, v: Tensor | None) -> bool:
    if u is None or v is None:
        return u is None and v is None
    return u.shape == v.shape and bool(torch.equal(u, v))


# ------------------------------------------------------------------------------------------------
class DetectorAwareModel(WrappedModel):
    """The classifier and a fitted detector as one model with an extra "detected" class
    (Carlini & Wagner 2017, "Adversarial Examples Are Not Easily Detected", §3).

    With ``Z`` the classifier's logits (K classes) and ``s`` the detector's score, the scores are
    ``K + 1`` logits::

        G(x)_j = Z(x)_j                                            j < K
        G(x)_K = max_j Z(x)_j + scale · (s(x) − threshold) / unit

    where ``unit`` is the detector's ``score_unit_`` (its threshold minus the median clean score),
    which makes ``scale`` comparable across detectors whose scores live on different scales.
    ``argmax G = K`` exactly when ``s(x) > threshold``, i.e. when the detector flags ``x``, and
    otherwise ``argmax G = argmax Z``; so a targeted attack on ``G`` towards a class ``t < K``
    succeeds exactly when the classifier says ``t`` and the detector stays quiet, and its loss
    trades the classifier's margin against the detector's score in logit units.  C&W write the
    extra logit as ``(Z_D(x) + 1) · max_j Z_j`` with the detector's own logit ``Z_D``; the
    additive form used here has the same decision rule for *any* sign of ``max_j Z_j`` (the
    multiplicative one flips when the largest logit is negative) and needs no detector logit,
    only a score and a threshold.

    Under a gradient request the detector is seen through its adaptive (BPDA) view, so
    non-differentiable squeezers pass gradients straight through; predictions use the real
    detector.  Scores are logits (probabilities of the inner model are turned into log-probabilities).
    One query per sample and call; capabilities, input spec, device and ``attack_mode`` are the
    inner model's (:class:`~gauntlet.models.WrappedModel`).
    """

    def __init__(self, model: Model, detector: Detector, *, scale: float = DEFAULT_ADAPTIVE_SCALE) -> None:
        if not isinstance(detector, Detector):
            raise ConfigError(f"DetectorAwareModel: detector must be a fitted gauntlet Detector, got {type(detector).__name__}")
        detector._check_fitted("DetectorAwareModel")
        detector._check_model_type(model, "DetectorAwareModel")
        assert detector.model_ is not None
        if not _same_model(model, detector.model_):
            raise ConfigError("DetectorAwareModel: model is not the model the detector was fitted on; fit it on this model first")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"DetectorAwareModel: scale must be a finite number > 0, got {scale!r}")
        if model.num_classes is None:
            raise ConfigError("DetectorAwareModel: the model's num_classes is unknown; pass num_classes= to its adapter")
        super().__init__(model)
        self.model = model
        self.detector = detector
        self.scale = float(scale)
        self.output = "logits"
        self._num_classes = int(model.num_classes) + 1

    def _forward(self, x: Tensor) -> Tensor:
        d = self.detector
        adaptive = torch.is_grad_enabled() and x.requires_grad
        s, out = d._scores_and_logits(x, adaptive)
        z = as_logits(out, self.model.output)
        assert d.threshold is not None and d.score_unit_ is not None
        u = (s.to(z.dtype) - d.threshold) / d.score_unit_
        extra = z.amax(dim=1) + self.scale * u
        return torch.cat([z, extra[:, None]], dim=1)

    def __repr__(self) -> str:
        return f"DetectorAwareModel({self.detector!r}, scale={self.scale}, model={self.model!r})"
