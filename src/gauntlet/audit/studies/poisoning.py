"""Poisoning: how far an attacker who controls a share of the training data gets (``poisoning``).

The audited model stands for an architecture and a training recipe: the study retrains that
architecture on a poisoned copy of a training set and measures what the attacker achieved, then
what each training-data defense removes and what is left after retraining on the cleaned data.
The block::

    poisoning:
      train: {name: digits, split: train}      # the victim's training set (like data:)
      training: {method: standard, epochs: 10, batch_size: 128, lr: 0.001}   # a registered training method
      init: scratch                           # or finetune_last (transfer setting: frozen features, new last layer)
      attacks:
        - {name: badnets, fraction: 0.01, target_class: 0, patch_size: 3}
        - {name: label_flip, strategy: random, fraction: 0.05}
      targets: 10                             # targeted attacks: one run per target input
      defenses: [spectral_signatures, activation_clustering]

Units, each resumable (stored when finished, and training checkpointed per epoch under
``cache_dir``): the clean baseline (the recipe on the clean training set), one unit per attack
(per target input for targeted attacks: the first ``targets`` audited samples whose label is not
the target class), and one per attack × defense (detect on the poisoned model, retrain on what is
left).  Poisoning is deterministic given the unit's seed, so a unit on another worker recomputes
the poison and reloads the finished training from its checkpoint (or retrains it identically).

Attacks that need a model (clean-label, gradient-based) craft on the *audited* model's weights:
the attacker is assumed to hold a pretrained copy of the architecture.  Test-time metrics are
measured on the audit's data (``data:``), which the attack never sees (targeted attacks only see
their target inputs).  The section ``poisoning`` reports, per attack, the poisoned model's clean
accuracy beside the clean baseline's, the attack's success (ASR for backdoors, targeted success,
or the test error for availability attacks) beside the clean model's, and per defense its
precision and recall against the poison mask, the rows it removed and the clean accuracy and
success after retraining.  Gate: ``{poisoning: badnets, max_success_rate: 0.1}`` (optionally
``defense: spectral_signatures``, the success after that defense), or ``--fail-under
poisoning:badnets=10%`` / ``poisoning:badnets:spectral_signatures=10%`` (a maximum, like
``detect:...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from gauntlet.audit.html import e, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STRING, array_of
from gauntlet.audit.spec import AuditSpec, DataSpec, Fraction, LabelledItem, RegistryItem, Strict, Text, unique_labels
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import (
    AuditEnv,
    LabelledChoice,
    Metric,
    Study,
    StudyOutput,
    Threshold,
    load_block_data,
    split_rule,
    study_cache_dir,
    work_key,
    work_seed,
)
from gauntlet.errors import ConfigError, DataError, GauntletError

__all__ = ["PoisoningStudy", "PoisoningThreshold", "default_cache_dir"]

FLAG = "poisoning_clean_accuracy_drop"


def default_cache_dir() -> Path:
    """Where poisoning studies keep their training checkpoints (:func:`study_cache_dir`)."""
    return study_cache_dir("poisoning")


# ------------------------------------------------------------------------------------------------
# spec
class PoisonAttackSpec(LabelledItem):
    """A poisoning attack item (``{name: badnets, fraction: 0.01}``); ``label`` names it in the report."""


class TrainingSpec(RegistryItem):
    """The training recipe: a registered training method (``gauntlet defenses --kind training``)
    and its parameters."""

    name: Text = "standard"


class PoisoningSpec(Strict):
    """The ``poisoning`` block."""

    train: DataSpec
    attacks: Annotated[list[PoisonAttackSpec], Field(min_length=1)]
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    init: Literal["scratch", "finetune_last"] = "scratch"
    targets: Annotated[int, Field(strict=True, ge=1)] = 10
    defenses: list[RegistryItem] = Field(default_factory=list)
    cache_dir: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _training_name(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and isinstance(v.get("training"), Mapping) and "method" in v["training"]:
            t = dict(v["training"])
            t["name"] = t.pop("method")
            v = {**v, "training": t}
        return v

    @model_validator(mode="after")
    def _labels_unique(self) -> PoisoningSpec:
        unique_labels(self.attacks)
        names = [d.name for d in self.defenses]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ValueError(f"defense {dup[0]!r} is listed twice")
        return self


class PoisoningBlock(Strict):
    """The poisoning study's spec key."""

    poisoning: PoisoningSpec | None = None


class PoisoningThreshold(Threshold):
    """Gate: the success of poisoning attack ``poisoning`` (after ``defense``, default none) must be
    at most the maximum."""

    metric_name = "poisoning_success_rate"
    label_fields: ClassVar[dict[str, str]] = {"attack": "poisoning", "defense": "defense"}
    bound_field = "max_success_rate"
    prefix = "poisoning"

    poisoning: Text
    defense: Text = "none"
    max_success_rate: Fraction


# ------------------------------------------------------------------------------------------------
# units
@dataclass(frozen=True)
class AttackChoice(LabelledChoice):
    goal: str

    block = "poisoning"


@dataclass(frozen=True)
class PoisonUnit:
    """One stage: ``stage`` is ``"clean"`` (the baseline), ``"attack"`` (poison and train) or
    ``"defense"`` (detect with ``defense`` on the poisoned model, then retrain)."""

    key: str
    stage: str
    seed: int
    choice: AttackChoice | None = None
    target: int | None = None  # index of the target input in the audited data
    defense: str | None = None
    defense_params: dict[str, Any] | None = None
    # the keys of the stages whose checkpoints this one reuses
    attack_key: str = ""

    def describe(self) -> str:
        if self.stage == "clean":
            return "poisoning clean baseline"
        assert self.choice is not None
        t = f" target #{self.target}" if self.target is not None else ""
        d = f" + {self.defense}" if self.defense else ""
        return f"poisoning {self.choice.label}{t}{d}"

    @property
    def cost(self) -> float:
        return 2.0 if self.stage == "defense" else 1.0


def _last_linear(module: nn.Module) -> nn.Linear | None:
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


# ------------------------------------------------------------------------------------------------
# report
_DEFENSE_ROW = {
    "type": "object",
    "required": ["defense", "precision", "recall", "removed", "clean_accuracy", "success_rate"],
    "properties": {
        "defense": STRING, "params": {"type": "object"}, "precision": SHARE, "recall": SHARE, "f1": SHARE,
        "removed": {"type": ["number", "null"], "minimum": 0}, "clean_accuracy": SHARE, "success_rate": SHARE,
        "removed_per_poison": {"type": ["number", "null"], "minimum": 0}, "seconds": NON_NEGATIVE,
    },
}
_POISONING = array_of(
    ["attack", "name", "goal", "params", "n_poison", "fraction", "clean_accuracy", "success_rate", "defenses"],
    {
        "attack": STRING, "name": STRING, "goal": STRING, "params": {"type": "object"},
        "n_poison": {"type": "number", "minimum": 0}, "fraction": SHARE, "clean_accuracy": SHARE,
        "baseline_clean_accuracy": SHARE, "success_rate": SHARE, "baseline_success_rate": SHARE,
        "targets": COUNT, "n": COUNT, "training": {"type": "object"}, "init": STRING,
        "defenses": {"type": "array", "items": _DEFENSE_ROW}, "seconds": NON_NEGATIVE,
    },
)


def _entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("poisoning") or [] if isinstance(t, Mapping)]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def _poisoning_html(report: Mapping[str, Any]) -> str:
    entries = _entries(report)
    if not entries:
        return ""
    head = (
        "<tr><th>attack</th><th>goal</th><th class='num'>poison</th><th class='num'>clean accuracy</th>"
        "<th class='num'>attack success</th><th>defense</th><th class='num'>precision · recall</th>"
        "<th class='num'>removed</th><th class='num'>after retraining</th></tr>"
    )
    rows = []
    for t in entries:
        defs = list(t.get("defenses") or [])
        span = max(1, len(defs))
        first = (
            f"<td rowspan='{span}'>{e(t.get('name'))}</td><td rowspan='{span}'>{e(t.get('goal'))}</td>"
            f"<td rowspan='{span}' class='num'>{int(t.get('n_poison') or 0)} ({pct(t.get('fraction'))})</td>"
            f"<td rowspan='{span}' class='num'><b>{pct(t.get('clean_accuracy'))}</b><br><span class='sub'>clean model "
            f"{pct(t.get('baseline_clean_accuracy'))}</span></td>"
            f"<td rowspan='{span}' class='num'><b>{pct(t.get('success_rate'))}</b><br><span class='sub'>clean model "
            f"{pct(t.get('baseline_success_rate'))}</span></td>"
        )
        if not defs:
            rows.append(f"<tr class='poisoning'>{first}<td>–</td><td class='num'>–</td><td class='num'>–</td><td class='num'>–</td></tr>")
            continue
        for i, d in enumerate(defs):
            cells = (
                f"<td>{e(d.get('defense'))}</td><td class='num'>{pct(d.get('precision'))} · {pct(d.get('recall'))}</td>"
                f"<td class='num'>{d.get('removed') if d.get('removed') is not None else '–'}</td>"
                f"<td class='num'>success <b>{pct(d.get('success_rate'))}</b><br><span class='sub'>clean accuracy "
                f"{pct(d.get('clean_accuracy'))}</span></td>"
            )
            rows.append(f"<tr class='poisoning'>{first if i == 0 else ''}{cells}</tr>")
    note = (
        "<p class='note'>The audited architecture retrained with the spec's recipe on a poisoned copy of the training set. "
        "Attack success: the backdoor's attack success rate on triggered test inputs of other classes, the share of target "
        "inputs sent to the attacker's class, or the test error (availability attacks). Each defense flags training rows "
        "on the poisoned model; the model is then retrained without them.</p>"
    )
    return (
        f"<section id='poisoning'><h2>Poisoning</h2><div class='scroll'><table class='poisoning'>{head}{''.join(rows)}"
        f"</table></div>{note}</section>"
    )


# ------------------------------------------------------------------------------------------------
# the study
@register_study
class PoisoningStudy(Study):
    """What training-data poisoning achieves against the audited architecture and recipe, and what
    training-data defenses recover."""

    name = "poisoning"
    title = "poisoning: retrain the audited architecture on poisoned data; attack success and training-data defenses"
    Block = PoisoningBlock
    Threshold = PoisoningThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"poisoning": _POISONING}

    def __init__(self, block: PoisoningSpec, choices: list[AttackChoice], spec: AuditSpec) -> None:
        self.block = block
        self.choices = choices
        self.seed = spec.seed
        self.batch_size = spec.batch_size
        self.spec = spec
        self.data_source: str | Path = spec.resolve_path(block.train.path) if block.train.path else str(block.train.name)
        self.cache = spec.resolve_path(block.cache_dir) if block.cache_dir else default_cache_dir()
        self.defenses = [(d.name, dict(d.params)) for d in block.defenses]
        self._train: tuple[Tensor, Tensor] | None = None

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> PoisoningStudy:
        from gauntlet.attacks import create as create_attack
        from gauntlet.defenses import create as create_defense
        from gauntlet.defenses.training import Trainer

        block: PoisoningSpec = spec.poisoning
        choices = []
        for i, a in enumerate(block.attacks):
            place = f"poisoning.attacks[{i}]"
            try:
                from gauntlet.attacks.registry import get_attack_class

                get_attack_class(a.name, kind="poisoning")
                atk = create_attack(a.name, **a.params)
            except GauntletError as err:
                raise ConfigError(f"{place}: {err}") from None
            choices.append(AttackChoice(i, a.display, a.name, dict(a.params), str(atk.goal)))
        try:
            trainer = create_defense(block.training.name, **block.training.params)
        except GauntletError as err:
            raise ConfigError(f"poisoning.training: {err}") from None
        if not isinstance(trainer, Trainer):
            raise ConfigError(f"poisoning.training: {block.training.name!r} is a {trainer.kind} defense, not a training method; see gauntlet defenses --kind training")
        for j, d in enumerate(block.defenses):
            try:
                san = create_defense(d.name, **d.params)
            except GauntletError as err:
                raise ConfigError(f"poisoning.defenses[{j}]: {err}") from None
            if san.kind != "sanitizer":
                raise ConfigError(f"poisoning.defenses[{j}]: {d.name!r} is a {san.kind} defense, not a training-data defense; see gauntlet defenses --kind sanitizer")
        return cls(block, choices, spec)

    def hash_payload(self) -> dict[str, Any]:
        block = self.block.model_dump(mode="json", exclude={"cache_dir"})
        if self.block.train.path:
            block["train"]["path"] = str(self.data_source)
        return {"poisoning": block}

    def check_threshold(self, th: Any, place: str) -> None:
        labels = [c.label for c in self.choices]
        if th.poisoning not in labels:
            raise ConfigError(f"{place}.poisoning: no poisoning attack is labelled {th.poisoning!r}; the spec has {', '.join(map(repr, labels))}")
        names = [d for d, _ in self.defenses]
        if th.defense != "none" and th.defense not in names:
            raise ConfigError(f"{place}.defense: the poisoning block has no defense {th.defense!r}; it has {', '.join(map(repr, ['none', *names]))}")

    @classmethod
    def parse_threshold(cls, text: str) -> PoisoningThreshold | None:
        """``poisoning:LABEL=MAX`` or ``poisoning:LABEL:DEFENSE=MAX`` (a maximum attack success, as
        ``detect:...=max`` is; ``10%`` or ``0.1``)."""
        rule = split_rule(text, "poisoning", 1, 1, "maximum attack success")
        if rule is None:
            return None
        (label, defense), maximum = rule
        return PoisoningThreshold.from_text(  # type: ignore[no-any-return]
            text, poisoning=label, defense=defense or "none", max_success_rate=maximum
        )

    # -- data and models ---------------------------------------------------------------------------
    def _train_data(self, env: AuditEnv) -> tuple[Tensor, Tensor]:
        if self._train is None:
            x, y = load_block_data(self.spec, self.block.train, "poisoning.train", env.x)
            lo, hi = env.base_model.bounds
            if float(x.min()) < lo or float(x.max()) > hi:
                raise DataError(f"poisoning.train: values outside the model's bounds ({lo:g}, {hi:g}); scale the training data like the audited data")
            self._train = (x, y)
        return self._train

    def _fresh(self, env: AuditEnv, seed: int) -> nn.Module:
        """A copy of the audited module to train: re-initialised (``scratch``) or with a fresh last
        layer and everything else frozen (``finetune_last``), seeded."""
        from gauntlet.models.torch_model import reinitialise

        module = env.base_model.trainable_copy()
        if self.block.init == "scratch":
            reinitialise(module, seed)
        else:
            last = _last_linear(module)
            assert last is not None  # checked in check()
            for p in module.parameters():
                p.requires_grad_(False)
            reinitialise(last, seed)
            for p in last.parameters():
                p.requires_grad_(True)
        return module

    def _wrap(self, env: AuditEnv, module: nn.Module) -> Any:
        from gauntlet.models import TorchModel

        base = env.base_model
        return TorchModel(module, bounds=base.bounds, num_classes=base.num_classes, input_shape=base.input_spec.shape)

    def _fit(self, env: AuditEnv, x: Tensor, y: Tensor, key: str, seed: int) -> Any:
        """Train a fresh copy on ``(x, y)``, checkpointed per epoch under ``cache_dir/<key>.pt`` (a
        finished checkpoint is loaded, not retrained)."""
        from gauntlet.defenses import create as create_defense

        trainer: Any = create_defense(self.block.training.name, **self.block.training.params)
        module = self._fresh(env, seed)
        self.cache.mkdir(parents=True, exist_ok=True)
        trainer.fit(module, x, y, seed=seed, checkpoint=self.cache / f"{key}.pt", resume=True, progress=False)
        module.eval()
        return self._wrap(env, module)

    def _attack(self, choice: AttackChoice) -> Any:
        from gauntlet.attacks import create

        return create(choice.name, **choice.params)

    def _poison(self, env: AuditEnv, unit: PoisonUnit) -> tuple[Any, Any]:
        assert unit.choice is not None
        x, y = self._train_data(env)
        atk = self._attack(unit.choice)
        # the attack stage's seed, so a defense stage recomputes exactly the poison it trained on
        # every attack may read the audited weights (the adversary's pretrained copy): those with
        # needs_model must, others use it only in some modes (greedy label flipping)
        kwargs: dict[str, Any] = {"seed": work_seed(self.seed, unit.attack_key), "model": env.base_model}
        if atk.needs_target:
            assert unit.target is not None
            kwargs["x_target"] = env.x[unit.target : unit.target + 1]
        try:
            return atk, atk.poison(x, y, **kwargs)
        except GauntletError as err:
            raise type(err)(f"{unit.choice.place}: {err}") from None

    def _accuracy(self, model: Any, env: AuditEnv) -> float:
        pred = model.predict(env.x, count=False)
        return float((pred == env.y).double().mean())

    def _success(self, atk: Any, model: Any, env: AuditEnv, pd: Any) -> float:
        return float(atk.success_rate(model, env.x, env.y, pd))

    # -- run ------------------------------------------------------------------------------------
    def check(self, env: AuditEnv) -> None:
        """The audited model is a torch module (the architecture to retrain), the training set loads
        and matches it, targeted attacks have target inputs, triggers fit the inputs."""
        from gauntlet.models import TorchModel

        base = env.base_model
        if not isinstance(base, TorchModel):
            raise ConfigError(
                f"poisoning: the study retrains the audited architecture, so the model must be a torch module; {type(base).__name__} cannot be retrained"
            )
        if self.block.init == "finetune_last" and _last_linear(base.module) is None:
            raise ConfigError("poisoning.init: finetune_last retrains the last nn.Linear layer, and the model has none; use init: scratch")
        _, y = self._train_data(env)
        if int(y.max()) >= int(base.num_classes or 0):
            raise DataError(f"poisoning.train: labels go up to {int(y.max())} but the model has {base.num_classes} classes")
        for c in self.choices:
            atk = self._attack(c)
            tc = getattr(atk, "target_class", None)
            if tc is not None and tc >= int(base.num_classes or 0):
                raise ConfigError(f"{c.place}: target_class {tc} does not exist; the model has {base.num_classes} classes")
            if hasattr(atk, "apply_trigger"):
                try:
                    atk.apply_trigger(env.x[:1])
                except GauntletError as err:
                    raise type(err)(f"{c.place}: {err}") from None
            if atk.needs_target and not self._targets(env, c):
                raise DataError(f"{c.place}: every audited sample is of the target class {tc}; a targeted attack needs inputs of other classes")

    def _targets(self, env: AuditEnv, choice: AttackChoice) -> list[int]:
        tc = choice.params.get("target_class")
        idx = [i for i in range(int(env.y.shape[0])) if tc is None or int(env.y[i]) != int(tc)]
        return idx[: self.block.targets]

    def plan(self, env: AuditEnv, spec_digest: str) -> list[PoisonUnit]:
        units = []
        ck = work_key(spec_digest, "poisoning", "clean")
        units.append(PoisonUnit(key=ck, stage="clean", seed=work_seed(self.seed, ck)))
        for c in self.choices:
            atk = self._attack(c)
            targets: list[int | None] = list(self._targets(env, c)) if atk.needs_target else [None]
            for t in targets:
                ak = work_key(spec_digest, "poisoning", "attack", c.index, t)
                units.append(PoisonUnit(key=ak, stage="attack", seed=work_seed(self.seed, ak), choice=c, target=t, attack_key=ak))
                for j, (dname, dparams) in enumerate(self.defenses):
                    dk = work_key(spec_digest, "poisoning", "defense", c.index, t, j)
                    units.append(PoisonUnit(
                        key=dk, stage="defense", seed=work_seed(self.seed, dk), choice=c, target=t,
                        defense=dname, defense_params=dparams, attack_key=ak,
                    ))
        return units

    def run(self, env: AuditEnv, unit: PoisonUnit) -> dict[str, Any]:
        import time

        t0 = time.perf_counter()
        if unit.stage == "clean":
            x, y = self._train_data(env)
            model = self._fit(env, x, y, unit.key, unit.seed)
            rec: dict[str, Any] = {"stage": "clean", "clean_accuracy": self._accuracy(model, env), "baseline_success": {}}
            # what each attack's success measure gives on the clean model (a trigger a clean model ignores, ...)
            from gauntlet.attacks.poisoning import PoisonedDataset

            for c in self.choices:
                atk = self._attack(c)
                if atk.goal == "targeted":
                    tc = int(c.params.get("target_class", 0))
                    idx = self._targets(env, c)
                    pred = model.predict(env.x[idx], count=False)
                    value: float | None = float((pred == tc).double().mean()) if idx else None
                else:  # backdoor ASR or the test error: measured on the audited data, no poison needed
                    empty = PoisonedDataset(
                        x=x[:1], y=y[:1], is_poison=torch.zeros(1, dtype=torch.bool), attack=c.name, target_class=c.params.get("target_class"),
                    )
                    value = self._success(atk, model, env, empty)
                rec["baseline_success"][str(c.index)] = value
            rec["seconds"] = time.perf_counter() - t0
            return rec
        assert unit.choice is not None
        atk, pd = self._poison(env, unit)
        model = self._fit(env, pd.x, pd.y, unit.attack_key, work_seed(self.seed, unit.attack_key))
        base = {"stage": unit.stage, "index": unit.choice.index, "target": unit.target, "n_poison": pd.n_poison, "fraction": pd.fraction}
        if unit.stage == "attack":
            return {
                **base, "clean_accuracy": self._accuracy(model, env), "success_rate": self._success(atk, model, env, pd),
                "poison_seconds": pd.seconds, "seconds": time.perf_counter() - t0,
            }
        from gauntlet.defenses import create as create_defense

        san: Any = create_defense(str(unit.defense), **(unit.defense_params or {}))
        try:
            found = san.detect(model, pd.x, pd.y, seed=unit.seed)
        except GauntletError as err:
            raise type(err)(f"poisoning.defenses {unit.defense}: {err}") from None
        pr = found.precision_recall(pd.is_poison)
        xs, ys = pd.without(found.flagged)
        retrained = self._fit(env, xs, ys, unit.key, unit.seed)
        return {
            **base, "defense": unit.defense, "precision": pr["precision"], "recall": pr["recall"], "f1": pr["f1"],
            "removed": int(found.n_flagged), "clean_accuracy": self._accuracy(retrained, env),
            "success_rate": self._success(atk, retrained, env, pd), "seconds": time.perf_counter() - t0,
        }

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        clean = next((r for r in records if r.get("stage") == "clean"), None)
        entries = []
        for c in self.choices:
            att = [r for r in records if r.get("stage") == "attack" and r.get("index") == c.index]
            if not att:
                continue
            defs = []
            for dname, dparams in self.defenses:
                dr = [r for r in records if r.get("stage") == "defense" and r.get("index") == c.index and r.get("defense") == dname]
                if not dr:
                    continue
                n_poison = _mean([r.get("n_poison") for r in dr])
                removed = _mean([r.get("removed") for r in dr])
                defs.append({
                    "defense": dname, "params": dparams,
                    "precision": _mean([r.get("precision") for r in dr]), "recall": _mean([r.get("recall") for r in dr]),
                    "f1": _mean([r.get("f1") for r in dr]), "removed": removed,
                    "removed_per_poison": (removed / n_poison) if removed is not None and n_poison else None,
                    "clean_accuracy": _mean([r.get("clean_accuracy") for r in dr]),
                    "success_rate": _mean([r.get("success_rate") for r in dr]),
                    "seconds": sum(float(r.get("seconds") or 0) for r in dr),
                })
            baseline = (clean or {}).get("baseline_success", {}).get(str(c.index))
            entries.append({
                "attack": c.label, "name": c.label, "goal": c.goal, "params": c.params,
                "n_poison": _mean([r.get("n_poison") for r in att]) or 0, "fraction": _mean([r.get("fraction") for r in att]),
                "clean_accuracy": _mean([r.get("clean_accuracy") for r in att]),
                "baseline_clean_accuracy": (clean or {}).get("clean_accuracy"),
                "success_rate": _mean([r.get("success_rate") for r in att]),
                "baseline_success_rate": baseline,
                "targets": len(att) if c.goal == "targeted" else 0,
                "n": int(env.y.shape[0]) if env is not None else len(clean_correct),
                "training": {"method": self.block.training.name, **self.block.training.params}, "init": self.block.init,
                "defenses": defs, "seconds": sum(float(r.get("seconds") or 0) for r in att),
            })
        return StudyOutput(sections={"poisoning": entries})

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for t in _entries(report):
            rows = [("none", t)] + [(str(d.get("defense")), d) for d in t.get("defenses") or []]
            for dname, r in rows:
                after = "" if dname == "none" else f" after {dname}"
                out.append(Metric(
                    study="poisoning", name="poisoning_success_rate", labels={"attack": str(t["name"]), "defense": dname},
                    value=r.get("success_rate"), what=f"poisoning {t['name']}{after}", title="poisoning attack success",
                    higher_is_better=False,
                ))
                out.append(Metric(
                    study="poisoning", name="poisoning_clean_accuracy", labels={"attack": str(t["name"]), "defense": dname},
                    value=r.get("clean_accuracy"), what=f"poisoning {t['name']}{after}", title="clean accuracy of the poisoned model",
                ))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _poisoning_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        lines = []
        for t in _entries(report):
            def p(v: Any) -> str:
                return f"{100 * float(v):.1f}%" if isinstance(v, (int, float)) else "–"

            line = (
                f"poisoning {t['name']} ({t['goal']}, {int(t.get('n_poison') or 0)} poison rows): success {p(t.get('success_rate'))} "
                f"(clean model {p(t.get('baseline_success_rate'))}), clean accuracy {p(t.get('clean_accuracy'))} "
                f"(clean model {p(t.get('baseline_clean_accuracy'))})"
            )
            for d in t.get("defenses") or []:
                line += (
                    f"; {d['defense']}: precision {p(d.get('precision'))} recall {p(d.get('recall'))}, "
                    f"success after retraining {p(d.get('success_rate'))}"
                )
            lines.append(line)
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        worst = max(
            ((float(t["success_rate"]), str(t["name"])) for t in _entries(report) if isinstance(t.get("success_rate"), (int, float))),
            default=None,
        )
        return [f"poisoning {worst[1]} success {100 * worst[0]:.1f}%"] if worst else []
