"""Transfer: robust accuracy against examples crafted on the adversary's own models (``transfer``).

The adversary has no access to the audited model's gradients or scores: it attacks *surrogate*
models it holds (white-box; two or more form one ensemble whose logits are averaged) and sends
the result to the deployed system once.  The block::

    transfer:
      surrogates:                 # model files, loaded like model: (arch, trust, mean/std, ...)
        - {path: lenet5_clean.pt, arch: lenet5}
      norm: linf
      eps: [0.1, 0.2, 0.3]
      attacks: [pgd, mifgsm, {name: mifgsm, diversity: 0.5}]   # default: pgd, mifgsm, mifgsm+di
      steps: 10

Each attack item is the ``transfer`` attack (:class:`gauntlet.attacks.evasion.transfer.Transfer`)
with the surrogate attack ``name`` and its options (``diversity``, ``resize_rate``, ``ti_kernel``,
``steps``, ``attack_params``, ``targeted``, ``label``); it runs against the audited model (the
defended system when the spec has ``model.defense``) in units of ``batch_size`` samples.  The
section ``transfer`` reports, per attack and ε, the audited model's robust accuracy, the transfer
success rate and, beside it, the white-box success on the surrogates — separately from the
evasion study's white-box numbers.  Gate: ``{transfer: mifgsm+di, eps: 0.3, min_robust_accuracy:
0.5}`` or ``--fail-under transfer:mifgsm+di:0.3=50%``.  The flag ``transfer_beats_white_box``
(blocking) says a transfer attack left the model *less* accurate than the evasion study's
white-box worst case at the same threat: the white-box evaluation is then not trustworthy.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field, model_validator

from gauntlet._validation import check_param_names
from gauntlet.audit.html import e, eps_text, pct
from gauntlet.audit.report import COUNT, NON_NEGATIVE, SHARE, STRING, array_of
from gauntlet.audit.spec import (
    AuditSpec,
    Bool,
    Fraction,
    PositiveFloat,
    RegistryItem,
    Strict,
    Text,
    as_list,
)
from gauntlet.audit.studies import register_study
from gauntlet.audit.studies.base import (
    AuditEnv,
    ChoiceUnit,
    Metric,
    Study,
    StudyOutput,
    Threshold,
)
from gauntlet.errors import ConfigError, GauntletError, ModelLoadError
from gauntlet.models.base import InputSpec, Model

__all__ = ["DEFAULT_ATTACKS", "TransferStudy", "TransferThreshold"]

#: what a ``transfer`` block without ``attacks`` runs: plain PGD, MI-FGSM and MI-FGSM with input
#: diversity (the comparison Dong et al. 2018 and Xie et al. 2019 report)
DEFAULT_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "pgd"},
    {"name": "mifgsm"},
    {"name": "mifgsm", "diversity": 0.5},
)
FLAG = "transfer_beats_white_box"


class SurrogateSpec(Strict):
    """One surrogate: a model file the adversary holds, loaded like ``model:`` (its bounds are the
    audited model's)."""

    path: Text
    name: Text | None = None
    arch: Text | None = None
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    trust: Bool = False
    num_classes: Annotated[int, Field(strict=True, ge=2)] | None = None
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    input_shape: list[Annotated[int, Field(strict=True, ge=1)]] | None = None


class TransferAttackSpec(RegistryItem):
    """An attack item: the surrogate attack ``name`` (``pgd``, ``mifgsm``, ...) and the transfer
    attack's options; ``label`` names it in the report (default: the name, ``+di`` / ``+ti`` when
    input diversity / translation invariance are on)."""

    own_keys = ("label",)

    label: Text | None = None

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        tags = ["di"] if float(self.params.get("diversity", 0) or 0) > 0 else []
        tags += ["ti"] if int(self.params.get("ti_kernel", 1) or 1) > 1 else []
        return "+".join([self.name, *tags])


class TransferSpec(Strict):
    """The ``transfer`` block."""

    surrogates: Annotated[list[SurrogateSpec], BeforeValidator(lambda v: [v] if isinstance(v, (Mapping, str)) else v), Field(min_length=1)]
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: Annotated[list[PositiveFloat], BeforeValidator(as_list), Field(min_length=1)]
    attacks: list[TransferAttackSpec] = Field(default_factory=lambda: [TransferAttackSpec.model_validate(a) for a in DEFAULT_ATTACKS])
    steps: Annotated[int, Field(strict=True, ge=1)] = 10

    @model_validator(mode="before")
    @classmethod
    def _surrogate_paths(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and "surrogates" in v:
            s = v["surrogates"]
            items = [s] if isinstance(s, (str, Mapping)) else s
            if isinstance(items, list):
                v = {**v, "surrogates": [{"path": i} if isinstance(i, str) else i for i in items]}
        return v

    @model_validator(mode="after")
    def _labels_unique(self) -> TransferSpec:
        labels = [a.display for a in self.attacks]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"two attacks are labelled {dup[0]!r}; give one of them a label:")
        return self


class TransferBlock(Strict):
    """The transfer study's spec key."""

    transfer: TransferSpec | None = None


class TransferThreshold(Threshold):
    """Gate: the audited model's accuracy under transfer attack ``transfer`` at ``eps`` must be ≥ the minimum."""

    metric_name = "transfer_robust_accuracy"
    label_fields: ClassVar[dict[str, str]] = {"attack": "transfer", "eps": "eps"}
    bound_field = "min_robust_accuracy"
    prefix = "transfer"

    transfer: Text
    eps: PositiveFloat
    min_robust_accuracy: Fraction


@dataclass(frozen=True)
class TransferChoice:
    """One attack item resolved: its report label and the ``transfer`` attack's parameters
    (without the surrogates, which are loaded at check time)."""

    index: int
    label: str
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return self.label

    @property
    def place(self) -> str:
        return f"transfer.attacks[{self.index}]"


@dataclass(frozen=True)
class TransferChunk(ChoiceUnit):
    """``transfer.attacks[i]`` on samples ``start:stop``."""

    kind = "transfer"

    @property
    def cost(self) -> float:
        return float((self.stop - self.start) * int(self.choice.params.get("steps", 10)) * len(self.choice.params["eps"]))


class _Placeholder(Model):
    """A surrogate stand-in used only to validate an attack item's parameters before loading."""

    capabilities = frozenset({"gradients", "scores", "labels"})
    output = "logits"

    def __init__(self) -> None:
        super().__init__()
        self.input_spec = InputSpec(None)
        self._num_classes = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called
        raise NotImplementedError


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# report
_ROW = {
    "type": "object",
    "required": ["eps", "robust_accuracy", "transfer_success_rate", "surrogate_success_rate", "n", "survived"],
    "properties": {
        "eps": NON_NEGATIVE, "robust_accuracy": SHARE, "transfer_success_rate": SHARE,
        "surrogate_success_rate": SHARE, "n": COUNT, "survived": COUNT, "attacked": COUNT,
    },
}
_TRANSFER = array_of(
    ["attack", "name", "norm", "params", "surrogates", "rows", "seconds"],
    {
        "attack": STRING, "name": STRING, "norm": STRING, "params": {"type": "object"},
        "surrogates": {"type": "array", "items": STRING}, "rows": {"type": "array", "items": _ROW},
        "seconds": NON_NEGATIVE, "chunks": COUNT,
    },
)


def _entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("transfer") or [] if isinstance(t, Mapping)]


def _white_box_worst(report: Mapping[str, Any], norm: str, eps: float) -> float | None:
    """The evasion study's worst-case robust accuracy at (``norm``, ``eps``), if it has one."""
    for w in report.get("worst_case") or []:
        if not isinstance(w, Mapping) or w.get("norm") != norm:
            continue
        if isinstance(w.get("eps"), (int, float)) and math.isclose(float(w["eps"]), eps, rel_tol=1e-9, abs_tol=1e-12):
            v = w.get("robust_accuracy")
            return float(v) if isinstance(v, (int, float)) else None
    return None


def _transfer_html(report: Mapping[str, Any]) -> str:
    entries = _entries(report)
    if not entries:
        return ""
    eps_all = sorted({float(r["eps"]) for t in entries for r in t.get("rows") or []})
    norm = str(entries[0].get("norm"))
    head = "<tr><th>attack (on the surrogates)</th>" + "".join(
        f"<th class='num'>{e(norm)} ε={eps_text(v)}</th>" for v in eps_all
    ) + "</tr>"
    rows = []
    for t in entries:
        by = {float(r["eps"]): r for r in t.get("rows") or []}
        cells = []
        for v in eps_all:
            r = by.get(v)
            if r is None:
                cells.append("<td class='num'>–</td>")
                continue
            cells.append(
                f"<td class='num'><b>{pct(r.get('robust_accuracy'))}</b><br><span class='sub'>transfer "
                f"{pct(r.get('transfer_success_rate'))} · surrogate {pct(r.get('surrogate_success_rate'))}</span></td>"
            )
        rows.append(f"<tr class='transfer'><td>{e(t.get('name'))}</td>{''.join(cells)}</tr>")
    wb = []
    for v in eps_all:
        w = _white_box_worst(report, norm, v)
        wb.append(f"<td class='num'>{pct(w)}</td>" if w is not None else "<td class='num'>–</td>")
    if any("–" not in c for c in wb):
        rows.append(f"<tr class='white-box'><td><i>white-box worst case (evasion)</i></td>{''.join(wb)}</tr>")
    surr = ", ".join(e(s) for s in entries[0].get("surrogates") or [])
    note = (
        "<p class='note'>Each cell: the audited model's accuracy on examples crafted on the surrogates "
        "(bold), the share of its correctly classified samples the transfer fooled, and the white-box success "
        "on the surrogates themselves; the gap between the last two is the transfer gap. The audited model was "
        "never queried while crafting.</p>"
    )
    table = f"<div class='scroll'><table class='transfer'>{head}{''.join(rows)}</table></div>"
    return f"<section id='transfer'><h2>Transfer <span class='sub'>from {surr}</span></h2>{table}{note}</section>"


# ------------------------------------------------------------------------------------------------
# the study
@register_study
class TransferStudy(Study):
    """Robust accuracy of the audited model against transfer attacks from surrogate models."""

    name = "transfer"
    title = "transfer attacks: examples crafted on the adversary's own models, replayed on the audited model"
    Block = TransferBlock
    Threshold = TransferThreshold
    sections: ClassVar[dict[str, dict[str, Any]]] = {"transfer": _TRANSFER}
    blocking_flags: ClassVar[frozenset[str]] = frozenset({FLAG})

    def __init__(self, block: TransferSpec, choices: list[TransferChoice], paths: list[Path], batch_size: int, seed: int) -> None:
        self.block = block
        self.choices = choices
        self.paths = paths
        self.batch_size = batch_size
        self.seed = seed
        self.surrogates: list[Model] = []
        self._digests: list[str | None] | None = None

    @classmethod
    def resolve(cls, spec: AuditSpec, resolved: Mapping[str, Study]) -> TransferStudy:
        from gauntlet.attacks.evasion.transfer import Transfer

        block: TransferSpec = spec.transfer
        choices = []
        for i, a in enumerate(block.attacks):
            place = f"transfer.attacks[{i}]"
            params = dict(a.params)
            for k in ("surrogate", "attack", "norm", "eps"):
                if k in params:
                    raise ConfigError(f"{place}: {k!r} is set by the transfer block, not per attack")
            params = {"attack": a.name, "steps": block.steps, **params, "norm": block.norm, "eps": list(block.eps)}
            try:
                check_param_names("transfer", params, [*Transfer._param_names()])
                Transfer(surrogate=_Placeholder(), **params)
            except GauntletError as err:
                raise ConfigError(f"{place}: {str(err).removeprefix('transfer: ')}") from None
            choices.append(TransferChoice(i, a.display, params))
        return cls(block, choices, [spec.resolve_path(s.path) for s in block.surrogates], spec.batch_size, spec.seed)

    def hash_payload(self) -> dict[str, Any]:
        if self._digests is None:  # read each surrogate file once per audit, however often the spec is hashed
            self._digests = [_file_digest(p) for p in self.paths]
        block = self.block.model_dump(mode="json")
        block["surrogates"] = [
            {**s, "path": str(p), "sha256": d} for s, p, d in zip(block["surrogates"], self.paths, self._digests)
        ]
        return {"transfer": block}

    def check_threshold(self, th: Any, place: str) -> None:
        labels = [c.label for c in self.choices]
        if th.transfer not in labels:
            raise ConfigError(f"{place}.transfer: no transfer attack is labelled {th.transfer!r}; the spec has {', '.join(map(repr, labels))}")
        if not any(math.isclose(th.eps, v, rel_tol=1e-9, abs_tol=1e-12) for v in self.block.eps):
            raise ConfigError(
                f"{place}.eps: the transfer block evaluates eps {', '.join(f'{v:g}' for v in self.block.eps)}; add {th.eps:g} to transfer.eps"
            )

    @classmethod
    def parse_threshold(cls, text: str) -> TransferThreshold | None:
        m = re.fullmatch(r"\s*transfer\s*:\s*([^:=\s]+)\s*:\s*([^=\s]+)\s*=\s*([^\s%]+)\s*(%?)\s*", text or "")
        if not m:
            return None
        label, eps_s, min_s, percent = m.groups()
        try:
            eps, minimum = float(eps_s), float(min_s)
        except ValueError:
            raise ConfigError(f"--fail-under {text!r}: eps and the minimum must be numbers") from None
        return TransferThreshold.from_text(  # type: ignore[no-any-return]
            text, transfer=label, eps=eps, min_robust_accuracy=minimum / (100.0 if percent else 1.0)
        )

    # -- run ------------------------------------------------------------------------------------
    def _load(self, env: AuditEnv) -> list[Model]:
        from gauntlet.models import load as load_model

        target = env.model
        out = []
        for i, (s, path) in enumerate(zip(self.block.surrogates, self.paths)):
            place = f"transfer.surrogates[{i}]"
            try:
                m = load_model(
                    path, arch=s.arch, trust=s.trust, bounds=target.bounds, num_classes=s.num_classes or target.num_classes,
                    mean=s.mean, std=s.std, input_shape=s.input_shape or target.input_spec.shape, **s.arch_kwargs,
                )
            except GauntletError as err:
                raise type(err)(f"{place}: {err}") from None
            except Exception as exc:  # noqa: BLE001 - a loader's own failure on a strange file is one line
                line = (str(exc).strip().splitlines() or [""])[0][:200]
                raise ModelLoadError(f"{place}: cannot load {str(path)!r} ({type(exc).__name__}: {line})") from None
            if "gradients" not in m.capabilities:
                raise ConfigError(f"{place}: {path.name} offers no gradients; a surrogate must be a differentiable model (torch, TorchScript, ONNX is not)")
            out.append(m)
        return out

    def _attack(self, choice: TransferChoice) -> Any:
        from gauntlet.attacks import create

        return create("transfer", surrogate=self.surrogates, **choice.params)

    def check(self, env: AuditEnv) -> None:
        """Load the surrogates and run every attack item on one sample (a surrogate of another
        shape, bounds or class count fails here, before anything is stored)."""
        self.surrogates = self._load(env)
        for c in self.choices:
            try:
                self._attack(c).run(env.model, env.x[:1], env.y[:1], seed=0)
            except GauntletError as err:
                msg = str(err).removeprefix("transfer: ")
                raise type(err)(f"{c.place}: {msg}") from None

    def plan(self, env: AuditEnv, spec_digest: str) -> list[TransferChunk]:
        return TransferChunk.chunks(self.choices, int(env.x.shape[0]), self.batch_size, spec_digest, self.seed)

    def run(self, env: AuditEnv, unit: TransferChunk) -> dict[str, Any]:
        sl = slice(unit.start, unit.stop)
        if not self.surrogates:  # a fresh worker process: load them here
            self.surrogates = self._load(env)
        clean = env.clean_pred[sl] if env.clean_pred is not None else None
        res = self._attack(unit.choice).run(env.model, env.x[sl], env.y[sl], seed=unit.seed, clean_pred=clean)
        succ = res.success.view(len(unit.choice.params["eps"]), -1)
        surr = res.info["surrogate_success"].view(succ.shape)
        return {
            "index": unit.choice.index,
            "attack": unit.choice.label,
            "eps": [float(v) for v in unit.choice.params["eps"]],
            "start": unit.start,
            "stop": unit.stop,
            "success": [[bool(v) for v in row] for row in succ.tolist()],
            "surrogate_success": [[bool(v) for v in row] for row in surr.tolist()],
            "queries": int(res.queries),
            "seconds": float(res.seconds),
        }

    def merge(self, env: AuditEnv | None, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> StudyOutput:
        clean = [bool(c) for c in clean_correct]
        names = [s.name or p.stem for s, p in zip(self.block.surrogates, self.paths)]
        entries = []
        for c in self.choices:
            recs = sorted((r for r in records if r["index"] == c.index), key=lambda r: r["start"])
            if not recs:
                continue
            rows = []
            for k, eps in enumerate(c.params["eps"]):
                succ = [bool(v) for r in recs for v in r["success"][k]]
                surr = [bool(v) for r in recs for v in r["surrogate_success"][k]]
                n = len(succ)
                cc = clean[:n]
                attacked = sum(cc)
                survived = sum(1 for ok, s in zip(cc, succ) if ok and not s)
                fooled = sum(1 for ok, s in zip(cc, succ) if ok and s)
                surr_fooled = sum(1 for ok, s in zip(cc, surr) if ok and s)
                rows.append({
                    "eps": float(eps),
                    "robust_accuracy": survived / n if n else None,
                    "transfer_success_rate": fooled / attacked if attacked else None,
                    "surrogate_success_rate": surr_fooled / attacked if attacked else None,
                    "n": n,
                    "survived": survived,
                    "attacked": attacked,
                })
            entries.append({
                "attack": c.label,
                "name": c.label,
                "norm": self.block.norm,
                "params": {k: v for k, v in c.params.items() if k not in ("eps", "norm")},
                "surrogates": names,
                "rows": rows,
                "seconds": sum(float(r["seconds"]) for r in recs),
                "chunks": len(recs),
            })
        return StudyOutput(sections={"transfer": entries})

    def cross_flags(self, sections: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``transfer_beats_white_box``: a transfer attack beat the evasion study's white-box worst
        case at the same threat by more than sampling noise (two points or 2 pp, whichever is more)."""
        report = sections
        worse: list[dict[str, Any]] = []
        for t in _entries(report):
            for r in t.get("rows") or []:
                wb = _white_box_worst(report, str(t.get("norm")), float(r["eps"]))
                ra = r.get("robust_accuracy")
                n = int(r.get("n") or 0)
                if wb is None or not isinstance(ra, (int, float)) or not n:
                    continue
                if wb - float(ra) > max(0.02, 2.0 / n):
                    worse.append({"attack": t.get("name"), "norm": t.get("norm"), "eps": float(r["eps"]), "transfer": float(ra), "white_box": wb})
        if not worse:
            return []
        w = worse[0]
        return [{
            "id": FLAG,
            "severity": "warning",
            "title": "A transfer attack beats the white-box attacks",
            "explanation": (
                f"Examples crafted on the surrogates without touching the model leave it at {100 * w['transfer']:.1f}% at "
                f"{w['norm']} ε={w['eps']:g} ({w['attack']}), below the white-box worst case of {100 * w['white_box']:.1f}%: a white-box "
                "attack should be at least as strong, so the white-box evaluation is failing (gradient masking, too few "
                "steps, or a loss the model saturates). Add stronger or adaptive attacks before trusting its numbers."
            ),
            "evidence": {"cases": worse},
        }]

    # -- report ---------------------------------------------------------------------------------
    @classmethod
    def metrics(cls, report: Mapping[str, Any]) -> list[Metric]:
        out = []
        for t in _entries(report):
            for r in t.get("rows") or []:
                n = int(r.get("n") or 0)
                out.append(Metric(
                    study="transfer", name="transfer_robust_accuracy",
                    labels={"attack": str(t["name"]), "eps": float(r["eps"])},
                    value=r.get("robust_accuracy"), what=f"transfer {t['name']} {t.get('norm')} ε={float(r['eps']):g}",
                    title="robust accuracy under transfer", count=r.get("survived"), n=n or None,
                ))
        return out

    @classmethod
    def outcomes(cls, records: Sequence[Mapping[str, Any]], clean_correct: Sequence[bool]) -> dict[tuple[str, Any], list[bool | None]]:
        """Per sample: still classified correctly under each transfer attack and ε (for McNemar)."""
        out: dict[tuple[str, Any], list[bool | None]] = {}
        by_attack: dict[str, list[Mapping[str, Any]]] = {}
        for r in records:
            by_attack.setdefault(str(r.get("attack")), []).append(r)
        for label, recs in by_attack.items():
            recs = sorted(recs, key=lambda r: r["start"])
            for k, eps in enumerate(recs[0].get("eps") or []):
                succ = [bool(v) for r in recs for v in r["success"][k]]
                cc = [bool(c) for c in clean_correct[: len(succ)]]
                if len(cc) == len(succ):
                    out[("transfer_robust_accuracy", (("attack", label), ("eps", float(eps))))] = [
                        ok and not s for ok, s in zip(cc, succ)
                    ]
        return out

    @classmethod
    def html(cls, report: Mapping[str, Any]) -> str:
        return _transfer_html(report)

    @classmethod
    def text(cls, report: Mapping[str, Any]) -> list[str]:
        lines = []
        for t in _entries(report):
            cells = ", ".join(
                f"ε={float(r['eps']):g}: {100 * float(r['robust_accuracy']):.1f}% "
                f"(transfer {100 * float(r['transfer_success_rate'] or 0):.1f}%, surrogate {100 * float(r['surrogate_success_rate'] or 0):.1f}%)"
                for r in t.get("rows") or [] if isinstance(r.get("robust_accuracy"), (int, float))
            )
            lines.append(f"transfer {t['name']} ({t.get('norm')}) from {', '.join(t.get('surrogates') or [])}: {cells}")
        return lines

    @classmethod
    def summary(cls, report: Mapping[str, Any]) -> list[str]:
        best: tuple[float, str, float] | None = None
        for t in _entries(report):
            for r in t.get("rows") or []:
                ra = r.get("robust_accuracy")
                if isinstance(ra, (int, float)) and (best is None or float(r["eps"]) > best[2] or (float(r["eps"]) == best[2] and ra < best[0])):
                    best = (float(ra), str(t["name"]), float(r["eps"]))
        return [f"transfer {best[1]} ε={best[2]:g} {100 * best[0]:.1f}%"] if best else []

