"""Federated: the audited architecture trained by federated learning with malicious clients (``federated``).

The audited model stands for an architecture: the study trains it by federated learning on Flower
(:class:`gauntlet.learning.federated.Federation`) across ``clients`` nodes, a share of which the
attacker controls, under each aggregation rule, and measures the global model on the audit's data
after every round.  The block::

    federated:
      train: {name: digits, split: train}        # the data spread across the clients
      clients: 10
      rounds: 10
      malicious: 0.2                             # share of clients the attacker controls
      alpha: 0.5                                 # Dirichlet non-IID split (omit: IID)
      strategies: [mean, {name: krum, f: 2}, median, centered_clipping]
      attacks: [alie, {name: scaling, flip: true, label: scaling}]
      backdoor: {name: badnets, fraction: 0.5, target_class: 0}   # optional, carried by the malicious clients
      local: {epochs: 1, batch_size: 32, lr: 0.05}

Units: one per strategy × (the no-attack baseline and each attack), each checkpointed after every
round under ``cache_dir`` (so an interrupted audit resumes mid-federation).  The section
``federated`` reports, per strategy and attack, the final accuracy beside the same strategy's
no-attack run, the backdoor's success, how many malicious clients the rule rejected, and the
per-round curves (an SVG per attack in the HTML).  Gate: ``{federated: krum, attack: alie,
min_accuracy: 0.9}`` or ``--fail-under federated:krum:alie=90%`` (a minimum final accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import Tensor

from gauntlet.audit.html import e, line_chart_svg, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STRING, array_of
from gauntlet.audit.spec import AuditSpec, DataSpec, Fraction, LabelledItem, Strict, Text, unique_labels
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import (
    AuditEnv,
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

__all__ = ["FederatedStudy", "FederatedThreshold"]

NO_ATTACK = "none"


class LocalSpec(Strict):
    """Each client's local training per round."""

    epochs: Annotated[int, Field(strict=True, ge=1)] = 1
    batch_size: Annotated[int, Field(strict=True, ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0


class FederatedSpec(Strict):
    """The ``federated`` block."""

    train: DataSpec
    strategies: Annotated[list[LabelledItem], Field(min_length=1)]
    attacks: list[LabelledItem] = Field(default_factory=list)
    clients: Annotated[int, Field(strict=True, ge=2)] = 10
    rounds: Annotated[int, Field(strict=True, ge=1)] = 10
    malicious: Annotated[float, Field(ge=0, lt=1)] = 0.2
    knowledge: Literal["omniscient", "own"] = "omniscient"
    alpha: Annotated[float, Field(gt=0)] | None = None
    backdoor: LabelledItem | None = None
    local: LocalSpec = Field(default_factory=LocalSpec)
    init: Literal["scratch", "audited"] = "scratch"
    num_cpus: Annotated[int, Field(strict=True, ge=1)] | None = None
    cache_dir: Text | None = None

    @model_validator(mode="after")
    def _unique(self) -> FederatedSpec:
        unique_labels(self.attacks)
        labels = [s.display for s in self.strategies]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"strategies: two strategies are labelled {dup[0]!r}; give one of them a label:")
        if any(a.display == NO_ATTACK for a in self.attacks):
            raise ValueError(f"attacks: {NO_ATTACK!r} is the no-attack baseline every strategy runs; label the attack otherwise")
        return self


class FederatedBlock(Strict):
    """The federated study's spec key."""

    federated: FederatedSpec | None = None


class FederatedThreshold(Threshold):
    """Gate: the global model's final accuracy under a strategy and an attack must be at least the minimum."""

    metric_name = "federated_accuracy"
    label_fields: ClassVar[dict[str, str]] = {"strategy": "federated", "attack": "attack"}
    bound_field = "min_accuracy"
    prefix = "federated"

    federated: Text
    attack: Text = NO_ATTACK
    min_accuracy: Fraction


@dataclass(frozen=True)
class FederatedUnit:
    key: str
    seed: int
    strategy: int
    attack: int | None  # index into the block's attacks; None: the no-attack baseline

    def describe(self) -> str:
        return f"federated strategy #{self.strategy} attack #{'-' if self.attack is None else self.attack}"

    cost: float = 10.0


_ROUND = {
    "type": "object", "required": ["round", "accuracy"],
    "properties": {"round": COUNT, "accuracy": SHARE, "backdoor_success": {"type": ["number", "null"]},
                   "rejected": {"type": ["array", "null"]}, "malicious_rejected": {"type": ["integer", "null"]}},
}
_FEDERATED = array_of(
    ["strategy", "attack", "accuracy", "rounds"],
    {
        "strategy": STRING, "attack": STRING, "accuracy": SHARE, "baseline_accuracy": {"type": ["number", "null"]},
        "backdoor_success": {"type": ["number", "null"]}, "initial_accuracy": SHARE,
        "malicious": {"type": "array"}, "malicious_rejected_share": {"type": ["number", "null"]},
        "rounds": {"type": "array", "items": _ROUND}, "seconds": NON_NEGATIVE, "clients": COUNT,
    },
)

def _entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("federated") or [] if isinstance(t, Mapping)]


def _federated_html(report: Mapping[str, Any]) -> str:
    entries = _entries(report)
    if not entries:
        return ""
    bd = any(t.get("backdoor_success") is not None for t in entries)
    head = ("<tr><th>attack</th><th>strategy</th><th class='num'>accuracy</th><th class='num'>without attack</th>"
            + ("<th class='num'>backdoor success</th>" if bd else "") + "<th class='num'>malicious rejected</th></tr>")
    rows = []
    for t in entries:
        rej = t.get("malicious_rejected_share")
        rows.append(
            f"<tr class='federated'><td>{e(t.get('attack'))}</td><td>{e(t.get('strategy'))}</td>"
            f"<td class='num'><b>{pct(t.get('accuracy'))}</b></td><td class='num'>{pct(t.get('baseline_accuracy'))}</td>"
            + (f"<td class='num'>{pct(t.get('backdoor_success'))}</td>" if bd else "")
            + f"<td class='num'>{pct(rej) if rej is not None else '–'}</td></tr>"
        )
    charts = []
    for attack in dict.fromkeys(str(t.get("attack")) for t in entries):
        same = [t for t in entries if str(t.get("attack")) == attack]
        series = [(str(t.get("strategy")), [r.get("accuracy") for r in t.get("rounds") or []]) for t in same]
        charts.append(line_chart_svg(series, title=f"accuracy per round, attack: {attack}", ylabel="test accuracy"))
        if any(t.get("backdoor_success") is not None for t in same):
            series = [(str(t.get("strategy")), [r.get("backdoor_success") for r in t.get("rounds") or []]) for t in same]
            charts.append(line_chart_svg(series, title=f"backdoor success per round, attack: {attack}", ylabel="backdoor success"))
    first = entries[0]
    note = (
        f"<p class='note'>Federated learning on Flower: {e(first.get('clients'))} clients, "
        f"{len(first.get('malicious') or [])} of them malicious in the attacked runs; accuracy of the global model on the audited "
        "data after the last round. Malicious rejected: the share of the malicious clients' updates the rule left out of the "
        "aggregate, over all rounds (coordinate-wise rules use every client and reject none).</p>"
    )
    return (f"<section id='federated'><h2>Federated learning under malicious clients</h2><div class='scroll'>"
            f"<table class='federated'>{head}{''.join(rows)}</table></div><div>{''.join(charts)}</div>{note}</section>")


@register_study
class FederatedStudy(Study):
    """Federated training of the audited architecture under malicious clients and robust aggregation."""

    name = "federated"
    title = "federated: the architecture trained on Flower with malicious clients, per aggregation rule; accuracy per round"
    Block = FederatedBlock
    Threshold = FederatedThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"federated": _FEDERATED}

    def __init__(self, block: FederatedSpec, spec: AuditSpec) -> None:
        self.block = block
        self.spec = spec
        self.seed = spec.seed
        self.cache = spec.resolve_path(block.cache_dir) if block.cache_dir else study_cache_dir("federated")
        self._train: tuple[Tensor, Tensor] | None = None

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> FederatedStudy:
        block: FederatedSpec = spec.federated
        study = cls(block, spec)
        for i in range(len(block.strategies)):
            for j in [None, *range(len(block.attacks))]:
                try:
                    study._federation(i, j)
                except GauntletError as err:
                    place = f"federated.strategies[{i}]" if j is None else f"federated.attacks[{j}]"
                    raise ConfigError(f"{place}: {err}") from None
        return study

    def _federation(self, strategy: int, attack: int | None, checkpoint_dir: Path | None = None) -> Any:
        from gauntlet.learning.federated import Federation

        b = self.block
        s = b.strategies[strategy]
        a = None if attack is None else b.attacks[attack]
        backdoor = b.backdoor if a is not None else None
        return Federation(
            clients=b.clients, rounds=b.rounds, local_epochs=b.local.epochs, batch_size=b.local.batch_size, lr=b.local.lr,
            momentum=b.local.momentum, alpha=b.alpha, strategy=s.name, strategy_params=dict(s.params) or None,
            attack=a.name if a is not None else None, attack_params=(dict(a.params) or None) if a is not None else None,
            malicious=b.malicious if a is not None else 0.0, knowledge=b.knowledge,
            backdoor=backdoor.name if backdoor is not None else None,
            backdoor_params=(dict(backdoor.params) or None) if backdoor is not None else None,
            num_cpus=b.num_cpus, checkpoint_dir=checkpoint_dir,
        )

    def hash_payload(self) -> dict[str, Any]:
        block = self.block.model_dump(mode="json", exclude={"cache_dir", "num_cpus"})
        if self.block.train.path:
            block["train"]["path"] = str(self.spec.resolve_path(self.block.train.path))
        return {"federated": block}

    def check_threshold(self, th: Any, place: str) -> None:
        strategies = [s.display for s in self.block.strategies]
        attacks = [NO_ATTACK, *(a.display for a in self.block.attacks)]
        if th.federated not in strategies:
            raise ConfigError(f"{place}.federated: no strategy is labelled {th.federated!r}; the spec has {', '.join(map(repr, strategies))}")
        if th.attack not in attacks:
            raise ConfigError(f"{place}.attack: no attack is labelled {th.attack!r}; the spec has {', '.join(map(repr, attacks))}")

    @classmethod
    def parse_threshold(cls, text: str) -> FederatedThreshold | None:
        """``federated:STRATEGY[:ATTACK]=MIN`` (a minimum final accuracy; ``90%`` or ``0.9``)."""
        rule = split_rule(text, "federated", 1, optional=1, what="minimum accuracy")
        if rule is None:
            return None
        (strategy, attack), minimum = rule
        return FederatedThreshold.from_text(text, federated=strategy, attack=attack or NO_ATTACK, min_accuracy=minimum)  # type: ignore[no-any-return]

    # -- run ------------------------------------------------------------------------------------
    def _train_data(self, env: AuditEnv) -> tuple[Tensor, Tensor]:
        if self._train is None:
            x, y = load_block_data(self.spec, self.block.train, "federated.train", env.x)
            lo, hi = env.base_model.bounds
            if float(x.min()) < lo or float(x.max()) > hi:
                raise DataError(f"federated.train: values outside the model's bounds ({lo:g}, {hi:g}); scale it like the audited data")
            self._train = (x, y)
        return self._train

    def check(self, env: AuditEnv) -> None:
        """The audited model is a torch module (the architecture to train), the training data load
        and match it, and split across the clients without leaving one empty."""
        from gauntlet.learning.federated import split_clients
        from gauntlet.models import TorchModel

        base = env.base_model
        if not isinstance(base, TorchModel):
            raise ConfigError(f"federated: the study trains the audited architecture, so the model must be a torch module; "
                              f"{type(base).__name__} cannot be trained")
        _, y = self._train_data(env)
        if int(y.max()) >= int(base.num_classes or 0):
            raise DataError(f"federated.train: labels go up to {int(y.max())} but the model has {base.num_classes} classes")
        try:
            split_clients(y, self.block.clients, alpha=self.block.alpha, seed=self.seed)
        except GauntletError as err:
            raise type(err)(f"federated.train: {err}") from None
        bd = self.block.backdoor
        if bd is not None:
            tc = bd.params.get("target_class")
            if isinstance(tc, int) and tc >= int(base.num_classes or 0):
                raise ConfigError(f"federated.backdoor: target_class {tc} does not exist; the model has {base.num_classes} classes")

    def plan(self, env: AuditEnv, spec_digest: str) -> list[FederatedUnit]:
        units = []
        for i in range(len(self.block.strategies)):
            for j in [None, *range(len(self.block.attacks))]:
                key = work_key(spec_digest, "federated", i, NO_ATTACK if j is None else j)
                units.append(FederatedUnit(key=key, seed=work_seed(self.seed, key), strategy=i, attack=j,
                                           cost=float(self.block.rounds * self.block.clients)))
        return units

    def run(self, env: AuditEnv, unit: FederatedUnit) -> dict[str, Any]:
        from gauntlet.models.torch_model import reinitialise

        x, y = self._train_data(env)
        module = env.base_model.trainable_copy()
        # one initial model for every unit, so the strategies and attacks are compared from the same start
        if self.block.init == "scratch":
            reinitialise(module, self.seed)
        fed = self._federation(unit.strategy, unit.attack, self.cache / unit.key)
        try:
            res = fed.run(module, (x, y), (env.x.cpu(), env.y.cpu()), seed=self.seed)
        except GauntletError as err:
            place = f"federated.strategies[{unit.strategy}]" if unit.attack is None else f"federated.attacks[{unit.attack}]"
            raise type(err)(f"{place}: {err}") from None
        return {
            "strategy": unit.strategy, "attack": unit.attack, "accuracy": res.accuracy,
            "initial_accuracy": res.initial_accuracy, "backdoor_success": res.backdoor_success,
            "malicious": res.malicious, "clients": self.block.clients,
            "rounds": [{"round": r.round, "accuracy": r.accuracy, "backdoor_success": r.backdoor_success,
                        "rejected": r.rejected, "malicious_rejected": r.malicious_rejected} for r in res.rounds],
            "seconds": res.seconds,
        }

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        b = self.block
        by = {(r.get("strategy"), r.get("attack")): r for r in records}
        entries = []
        for j in [None, *range(len(b.attacks))]:
            for i, s in enumerate(b.strategies):
                r = by.get((i, j))
                if r is None:
                    continue
                base = by.get((i, None))
                rounds = list(r.get("rounds") or [])
                mal = list(r.get("malicious") or [])
                counted = [x.get("malicious_rejected") for x in rounds]
                share = (sum(counted) / (len(mal) * len(counted))
                         if mal and counted and all(isinstance(c, int) for c in counted) else None)
                entries.append({
                    "strategy": s.display, "attack": NO_ATTACK if j is None else b.attacks[j].display,
                    "accuracy": r.get("accuracy"), "baseline_accuracy": base.get("accuracy") if base else None,
                    "backdoor_success": r.get("backdoor_success"), "initial_accuracy": r.get("initial_accuracy"),
                    "malicious": mal, "malicious_rejected_share": share, "rounds": rounds,
                    "seconds": r.get("seconds") or 0.0, "clients": r.get("clients") or b.clients,
                })
        return StudyOutput(sections={"federated": entries})

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for t in _entries(report):
            out.append(Metric(
                study="federated", name="federated_accuracy",
                labels={"strategy": str(t["strategy"]), "attack": str(t["attack"])}, value=t.get("accuracy"),
                what=f"federated {t['strategy']} under {t['attack']}", title="global model accuracy", higher_is_better=True,
            ))
            if t.get("backdoor_success") is not None:
                out.append(Metric(
                    study="federated", name="federated_backdoor_success",
                    labels={"strategy": str(t["strategy"]), "attack": str(t["attack"])}, value=t.get("backdoor_success"),
                    what=f"federated {t['strategy']} under {t['attack']}", title="backdoor success", higher_is_better=False,
                ))
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _federated_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        lines = []
        for t in _entries(report):
            bd = t.get("backdoor_success")
            base = t.get("baseline_accuracy")
            lines.append(
                f"federated {t['strategy']} under {t['attack']}: accuracy {100 * float(t.get('accuracy') or 0):.1f}%"
                + (f" (without attack {100 * float(base):.1f}%)" if isinstance(base, (int, float)) and t["attack"] != NO_ATTACK else "")
                + (f", backdoor success {100 * float(bd):.1f}%" if isinstance(bd, (int, float)) else "")
            )
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        attacked = [t for t in _entries(report) if t.get("attack") != NO_ATTACK and isinstance(t.get("accuracy"), (int, float))]
        worst = min(attacked, key=lambda t: float(t["accuracy"]), default=None)
        return [f"federated worst: {worst['strategy']} under {worst['attack']} {100 * float(worst['accuracy']):.1f}%"] if worst else []
