"""The ``gauntlet`` command line: a thin, lazily importing layer over the library.

Exit codes: 0 success (gate passed), 1 the audit gate failed, 2 a usage, spec, model, data or
store error (one line on stderr, ``error: ...``), 130 interrupted.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from typer.core import TyperCommand

from gauntlet import cli_data

if TYPE_CHECKING:
    from typing_extensions import Self

# Plain (click-style) help: a boolean option shows as the flag it is (--json, --trust), never
# with a <bool>/BOOLEAN value column, whatever the installed Typer's rich layout does.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Attack, harden and audit ML models.",
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from gauntlet import __version__

        typer.echo(f"gauntlet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Attack, harden and audit ML models."""

DEFAULT_STORE = "sqlite:///gauntlet.db"
STORE_HELP = "Results store: an SQLAlchemy URL (sqlite:///path.db, postgresql://user@host/db)."
JSON_HELP = "Print JSON on stdout (the one-line summary goes to stderr)."


def _fail(err: BaseException, as_json: bool = False, code: int = 2) -> NoReturn:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if as_json:
        typer.echo(json.dumps({"error": msg, "exit_code": code}))
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _unexpected(exc: Exception, as_json: bool) -> NoReturn:
    if os.environ.get("GAUNTLET_DEBUG"):
        raise exc
    _fail(RuntimeError(f"unexpected {type(exc).__name__}: {exc} (set GAUNTLET_DEBUG=1 for the traceback)"), as_json)


def _pct(v: Any) -> str:
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


# ------------------------------------------------------------------------------------------------
# one attack or defense in detail: parameters (type, default, allowed values, docstring), norms, needs
_NEEDS = {
    "gradients": "gradients (white box: a differentiable model such as TorchModel)",
    "scores": "class scores only (black box: no gradients)",
    "labels": "predicted labels only",
}
_KIND_USE = {
    "training": "fit(module, x, y) trains a torch.nn.Module; CLI: gauntlet train --method NAME",
    "preprocessing": "wrap(model) puts it in front of a model (attacked through BPDA/EOT); spec: model.defense",
    "detector": "fit(model, x_clean, fpr=...) calibrates, detect(x) flags inputs; spec: detect",
    "ensemble": "wrap(models) combines several models into one attackable model",
    "certification": "certify(model, x, y) certifies a radius per sample; spec: certify",
    "output": "wrap(model, seed=...) returns the model as a black box whose released outputs are hardened",
    "monitor": "wrap(model) watches the queries the model receives; alarm / fired_at report an extraction-like stream",
    "watermark": "embed(module, x, y) trains the secret trigger set into a model; verify(model) gives the ownership p-value",
    "aggregation": "aggregate(updates) combines a (n_clients, d) stack of federated updates; gauntlet federated --strategy NAME",
    "staleness": "bounds or down-weights stale updates of asynchronous SGD workers (gauntlet.learning.async_sgd)",
    "online": "checks an online learner's updates before they are applied (gauntlet.learning.spam)",
    "profiles": "scores a recommender's user profiles for being fake (gauntlet.learning.recommender)",
}

#: how the attacks on learning systems (gauntlet.learning) are used, by kind
_SYSTEM_USE = {
    "federated": "federated: craft(honest_updates, n_malicious=...) returns the malicious clients' updates; "
                 "gauntlet federated --attack NAME",
    "scheduling": "scheduling: reorders and delays honest asynchronous SGD updates (gauntlet.learning.async_sgd)",
    "online": "online: the attacker's share of an online learner's stream (gauntlet.learning.spam)",
    "shilling": "shilling: fake profiles injected into a recommender's ratings (gauntlet.learning.recommender)",
}


def _rst(text: str) -> str:
    """Docstring markup as plain text: ``x`` → x, :class:`~a.B` → B."""
    text = re.sub(r":\w+:`~[\w.]*?(\w+)`", r"\1", text)
    text = re.sub(r":\w+:`([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def _arg_docs(cls: type) -> dict[str, str]:
    """Parameter name → its text in the ``Args:`` sections of the class docstrings (own class first)."""
    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        doc = klass.__dict__.get("__doc__")
        if not isinstance(doc, str):
            continue
        found: dict[str, list[str]] = {}
        in_args, indent = False, 0
        current: list[str] = []
        for line in inspect.cleandoc(doc).splitlines():
            text = line.strip()
            depth = len(line) - len(line.lstrip())
            if text in ("Args:", "Arguments:", "Parameters:"):
                in_args, indent, current = True, 0, []
            elif not in_args or not text:
                current = []
            elif depth == 0:
                in_args = False
            elif (not indent or depth == indent) and (m := re.match(r"([A-Za-z_][\w, ]*):\s*(.*)", text)):
                indent = depth
                current = [n.strip() for n in m.group(1).split(",")]
                for n in current:
                    found.setdefault(n, []).append(m.group(2))
            elif current and depth > indent:
                for n in current:
                    found[n].append(text)
        for n, parts in found.items():
            docs.setdefault(n, _rst(" ".join(parts)))
    return docs


def _parameters(cls: Any) -> list[dict[str, Any]]:
    """The keyword-only hyperparameters of an attack or defense class, over its class hierarchy."""
    from gauntlet._validation import Boolean, Options

    found: dict[str, inspect.Parameter] = {}
    constraints: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                found.setdefault(p.name, p)
    for klass in reversed(cls.__mro__):
        constraints.update(klass.__dict__.get("_parameter_constraints") or {})
    if "norm" in found and isinstance(getattr(cls, "norms", None), tuple):
        constraints["norm"] = [Options(cls.norms)]
    docs = _arg_docs(cls)
    rows = []
    for name in cls._param_names():
        param = found.get(name)
        default = None if param is None or param.default is inspect.Parameter.empty else param.default
        required = param is not None and param.default is inspect.Parameter.empty
        if name == "eps" and getattr(cls, "minimal", True) is False:
            required = True  # None means "not given": a budget is required
        annotation = None if param is None or param.annotation is inspect.Parameter.empty else param.annotation
        allowed = [c for c in constraints.get(name, []) if not isinstance(c, Boolean)]
        rows.append({
            "name": name,
            "type": annotation if isinstance(annotation, str) or annotation is None else inspect.formatannotation(annotation),
            "default": default,
            "required": required,
            "allowed": " or ".join(c.describe() for c in allowed) or None,
            "help": docs.get(name, ""),
        })
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _echo_detail(head: str, fields: list[tuple[str, str]], params: list[dict[str, Any]]) -> None:
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    typer.echo(head)
    key_width = max((len(k) for k, _ in fields), default=0)
    for key, value in fields:
        typer.echo(textwrap.fill(value, width, initial_indent=f"{key:<{key_width}}  ",
                                 subsequent_indent=" " * (key_width + 2), break_on_hyphens=False))
    typer.echo("\nparameters:" if params else "\nparameters: none")
    for row in params:
        default = "(required)" if row["required"] else f"= {row['default']!r}"
        kind = f": {row['type']}" if row["type"] else ""
        allowed = f"  [{row['allowed']}]" if row["allowed"] else ""
        typer.echo(f"  {row['name']}{kind} {default}{allowed}")
        if row["help"]:
            typer.echo(textwrap.fill(row["help"], width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                     break_on_hyphens=False))


def _attack_detail(name: str, as_json: bool) -> None:
    from gauntlet.attacks import get_attack_class
    from gauntlet.errors import GauntletError

    try:
        cls = get_attack_class(name)
    except GauntletError as err:
        _fail(err, as_json)
    params = _parameters(cls)
    names = {row["name"] for row in params}
    if cls.kind == "poisoning":
        _poisoning_detail(cls, params, as_json)
        return
    if cls.kind in ("extraction", "inference"):
        _privacy_detail(cls, params, as_json)
        return
    if cls.kind in _SYSTEM_USE:
        _system_detail(cls, params, as_json)
        return
    info = {
        "name": cls.name,
        "description": cls.description,
        "reference": cls.reference or None,
        "kind": cls.kind,
        "norms": list(cls.norms),
        "requires": sorted(cls.requires),
        "minimal": cls.minimal,
        "targeted": "targeted" in names,
        "parameters": [{**row, "default": _jsonable(row["default"])} for row in params],
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    fields = [("reference", cls.reference)] if cls.reference else []
    fields += [
        ("norms", ", ".join(cls.norms)),
        ("needs", "; ".join(_NEEDS.get(c, c) for c in sorted(cls.requires))),
        ("eps", "optional: a minimal-norm attack (without eps: the smallest perturbation it finds)" if cls.minimal
         else "required: one budget or a list (one result per ε); in an audit the threats give it"),
        ("targeted", "yes (targeted=True)" if info["targeted"] else "no"),
    ]
    _echo_detail(f"{cls.name}: {cls.description}", fields, params)


def _poisoning_detail(cls: Any, params: list[dict[str, Any]], as_json: bool) -> None:
    from gauntlet.attacks.poisoning import BackdoorAttack

    backdoor = issubclass(cls, BackdoorAttack)
    info = {
        "name": cls.name,
        "description": cls.description,
        "reference": cls.reference or None,
        "kind": cls.kind,
        "backdoor": backdoor,
        "goal": cls.goal,
        "needs_model": cls.needs_model,
        "needs_target": cls.needs_target,
        "parameters": [{**row, "default": _jsonable(row["default"])} for row in params],
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    fields = [("reference", cls.reference)] if cls.reference else []
    fields += [
        ("kind", "poisoning: poison(x_train, y_train, seed=...) returns a PoisonedDataset"
         + ("; apply_trigger(x) stamps the backdoor's trigger" if backdoor else "")),
        ("goal", {
            "backdoor": "backdoor: triggered inputs of other classes go to target_class (success = attack success rate)",
            "targeted": "targeted: the attacker's target inputs go to target_class (success = share of them)",
        }.get(cls.goal, "availability: overall test accuracy falls (success = test error)")),
        ("needs", "; ".join(
            (["the victim's or a surrogate model: poison(..., model=...)"] if cls.needs_model else [])
            + (["the attacker's target inputs: poison(..., x_target=...)"] if cls.needs_target else [])
        ) or "the training data only"),
    ]
    _echo_detail(f"{cls.name}: {cls.description}", fields, params)


def _system_detail(cls: Any, params: list[dict[str, Any]], as_json: bool) -> None:
    """Detail of an attack on a learning system (federated, scheduling, online, shilling)."""
    info = {
        "name": cls.name, "description": cls.description, "reference": cls.reference or None, "kind": cls.kind,
        "parameters": [{**row, "default": _jsonable(row["default"])} for row in params],
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    fields = [("reference", cls.reference)] if cls.reference else []
    fields.append(("kind", _SYSTEM_USE[cls.kind]))
    _echo_detail(f"{cls.name}: {cls.description}", fields, params)


def _privacy_detail(cls: Any, params: list[dict[str, Any]], as_json: bool) -> None:
    """Detail of an extraction or inference attack (membership, inversion, attribute inference)."""
    from gauntlet.attacks.inference import MembershipAttack

    membership = issubclass(cls, MembershipAttack)
    population = bool(getattr(cls, "needs_population", False))
    info = {
        "name": cls.name,
        "description": cls.description,
        "reference": cls.reference or None,
        "kind": cls.kind,
        "needs": cls.needs,
        "parameters": [{**row, "default": _jsonable(row["default"])} for row in params],
    }
    if membership:
        info["needs_population"] = population
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    fields = [("reference", cls.reference)] if cls.reference else []
    if cls.kind == "extraction":
        use = "extraction: run(target, seed=...) returns an ExtractionResult (the stolen copy, queries, fidelity(x))"
    elif membership:
        use = (
            "inference: run(model, members=(x, y), nonmembers=(x, y), seed=...) returns a MembershipResult "
            "(scores, auc, tpr_at(fpr), roc())"
        )
    else:
        first = (_rst(cls.__doc__ or "").strip().split("\n\n") or [""])[0]
        use = "inference: " + " ".join(first.split()) + " (see docs/privacy.md)"
    needs = {
        "scores": "the target's scores (probabilities or logits)",
        "labels": "the target's labels only",
        "gradients": "the target's gradients (a white-box model)",
    }.get(cls.needs, str(cls.needs))
    if population:
        needs += "; attacker data disjoint from the candidates: run(..., population=(x, y))"
    fields += [("kind", use), ("needs", needs)]
    _echo_detail(f"{cls.name}: {cls.description}", fields, params)


def _defense_detail(name: str, kind: str | None, as_json: bool) -> None:
    from gauntlet.defenses import get_defense_class
    from gauntlet.defenses.certify import Certifier
    from gauntlet.defenses.detection._base import Detector
    from gauntlet.defenses.preprocessing import Preprocessor
    from gauntlet.errors import ConfigError, GauntletError

    try:
        cls = get_defense_class(name)
        if kind is not None and cls.kind != kind:
            raise ConfigError(f"{name!r} is a {cls.kind} defense, not {kind} (drop --kind or pick another name)")
    except GauntletError as err:
        _fail(err, as_json)
    props: dict[str, Any] = {}  # what the kind's class attributes say
    fields = [("reference", cls.reference)] if cls.reference else []
    fields.append(("use", _KIND_USE.get(cls.kind, "").replace("NAME", cls.name)))
    if issubclass(cls, Preprocessor):
        props = {"randomized": cls.randomized, "differentiable": cls.differentiable,
                 "image_only": cls.image_only, "channels": list(cls.channels) if cls.channels else None}
        how = ("differentiable: attacks backpropagate through it" if cls.differentiable
               else "not differentiable: adaptive attacks use BPDA (an identity backward pass)")
        if cls.randomized:
            how += "; randomized: adaptive attacks average gradients over several draws (EOT)"
        fields.append(("attacked", how))
        if cls.image_only:
            chans = f" with {' or '.join(map(str, cls.channels))} channels" if cls.channels else ""
            fields.append(("needs", f"image inputs (N, C, H, W){chans}"))
    elif issubclass(cls, Detector):
        props = {"needs_labels": cls.needs_labels}
        fields.append(("needs", "clean inputs and their labels to fit" if cls.needs_labels else "clean inputs to fit"))
    elif issubclass(cls, Certifier):
        props = {"norm": cls.norm}
        fields.append(("norm", f"certifies {cls.norm} radii"))
    params = _parameters(cls)
    info = {
        "name": cls.name,
        "kind": cls.kind,
        "description": cls.description,
        "reference": cls.reference or None,
        "use": _KIND_USE.get(cls.kind, "").replace("NAME", cls.name),
        **props,
        "parameters": [{**row, "default": _jsonable(row["default"])} for row in params],
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _echo_detail(f"{cls.name} ({cls.kind}): {cls.description}", fields, params)


# ------------------------------------------------------------------------------------------------
@app.command()
def attacks(
    name: str | None = typer.Argument(None, metavar="NAME", help="Show one attack in detail: parameters, defaults, norms, needs, paper."),
    kind: str | None = typer.Option(None, "--kind", help="Only attacks of this kind: evasion, poisoning, extraction or inference."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the registered attacks with one-line descriptions, or show one in detail."""
    from gauntlet.attacks import describe_attacks
    from gauntlet.errors import GauntletError

    if name is not None:
        _attack_detail(name, as_json)
        return
    try:
        table = describe_attacks(kind)
    except GauntletError as err:
        _fail(err, as_json)
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    width = max(map(len, table))
    for key, desc in table.items():
        typer.echo(f"{key:<{width}}  {desc}")


@app.command()
def studies(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered audit studies: the spec keys each owns and what it measures."""
    from gauntlet.audit.studies import studies as registered

    table = {s.name: {"keys": list(s.Block.model_fields), "sections": list(s.sections), "description": s.title}
             for s in registered()}
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    width = max(map(len, table))
    for name, row in table.items():
        typer.echo(f"{name:<{width}}  {', '.join(row['keys']):<18}  {row['description']}")


@app.command()
def defenses(
    name: str | None = typer.Argument(None, metavar="NAME", help="Show one defense in detail: parameters, defaults, how it is used, paper."),
    kind: str | None = typer.Option(None, "--kind", help="Only one kind: training, preprocessing, detector, ensemble, certification, sanitizer, output, monitor, watermark."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the registered defenses with their kind and a one-line description, or show one in detail."""
    from gauntlet.defenses import KINDS, describe_defenses
    from gauntlet.errors import ConfigError

    if kind is not None and kind not in KINDS:
        _fail(ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}"), as_json)
    if name is not None:
        _defense_detail(name, kind, as_json)
        return
    table = {n: {"kind": k, "description": d} for n, (k, d) in describe_defenses().items() if kind in (None, k)}
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    width = max(map(len, table))
    for key, row in table.items():
        typer.echo(f"{key:<{width}}  {row['kind']:<13}  {row['description']}")


app.add_typer(cli_data.app, name="data")  # gauntlet data hash | verify | history


# ------------------------------------------------------------------------------------------------
class _Bar:
    """A rich progress bar on a terminal (stderr); nothing at all otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.last: Any = None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description:<28}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("units"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("loading model and data", total=None)
        return self

    def __call__(self, event: Any) -> None:
        self.last = event
        if self.progress is None:
            return
        desc = event.message if event.phase == "units" else event.phase
        self.progress.update(self.task, total=event.total, completed=event.done, description=desc[:28])

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


def _print_report(report: dict[str, Any]) -> None:
    from gauntlet.audit.studies import studies_in

    typer.echo(f"{report['model'].get('name')}: clean accuracy {_pct(report.get('clean_accuracy')).strip()} "
               f"on {report['data'].get('n')} samples of {report['data'].get('name')}")
    for study in studies_in(report):
        for line in study.text(report):
            typer.echo(line)
    for f in report.get("flags", []):
        typer.echo(f"flag [{f.get('severity')}] {f.get('id')}: {f.get('title')}")
    for v in (report.get("gate") or {}).get("violations", []):
        typer.echo(f"gate violation: {v}")
    verdict = report.get("verdict")
    if isinstance(verdict, dict) and verdict.get("sentence"):
        typer.echo(verdict["sentence"])


def _json_sections(report: dict[str, Any]) -> list[str]:
    """The headline sections ``--json`` repeats (evasion's results and worst case, ...)."""
    from gauntlet.audit.studies import studies_in

    return [k for s in studies_in(report) for k in s.required() if k in report and k != "gallery"]


def _run(
    spec_obj: Any,
    *,
    out: Path,
    store: str,
    fail_under: list[str],
    max_regression: str | None,
    trust: bool,
    as_json: bool,
    command: str,
    executor: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    baseline: int | None = None,
    alpha: str = "0.05",
    threads: int | None = None,
) -> None:
    from gauntlet.audit.executors import make_executor
    from gauntlet.audit.gate import parse_alpha, parse_regression, parse_threshold, summary_line
    from gauntlet.audit.runner import run_audit
    from gauntlet.errors import GauntletError

    bar = _Bar(sys.stderr.isatty())
    try:
        thresholds = [parse_threshold(t) for t in fail_under]
        regression = parse_regression(max_regression)
        level = parse_alpha(alpha)
        # --executor auto lays out --workers cores, else the --threads the user allowed torch
        cores = workers if workers is not None or executor != "auto" else threads
        runner = make_executor(executor, address=ray_address, workers=cores)
        with bar:
            run = run_audit(
                spec_obj,
                out_dir=out,
                store=store,
                fail_under=thresholds,
                max_regression=regression,
                trust=True if trust else None,
                progress=bar,
                command=command,
                executor=runner,
                baseline=baseline,
                alpha=level,
            )
    except GauntletError as err:
        _fail(err, as_json)
    except KeyboardInterrupt:
        ev = bar.last
        saved = f" ({ev.done} of {ev.total} units done)" if ev is not None and ev.phase == "units" else ""
        typer.secho(f"interrupted{saved}; run the same command again to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None
    except Exception as exc:  # noqa: BLE001 - never exit 1 (= gate failed) on a crash: one line, exit 2
        _unexpected(exc, as_json)
    report = run.report
    html = run.paths.get("html")
    line = summary_line(report, str(html) if html else None)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "audit_id": run.audit_id,
                    "resumed": run.resumed,
                    "units_reused": run.reused_units,
                    "report_json": str(run.paths.get("json")) if run.paths else None,
                    "report_html": str(html) if html else None,
                    "model": report.get("model"),
                    "clean_accuracy": report.get("clean_accuracy"),
                    **{k: report[k] for k in _json_sections(report)},
                    "flags": [{"id": f.get("id"), "severity": f.get("severity")} for f in report.get("flags", [])],
                    "gate": report.get("gate"),
                    "verdict": report.get("verdict"),
                    "exit_code": run.exit_code,
                    "summary": line,
                },
                indent=2,
            )
        )
        typer.echo(line, err=True)
    else:
        if run.resumed:
            typer.echo(f"resumed audit #{run.audit_id}: {run.reused_units} finished unit(s) reused")
        _print_report(report)
        typer.echo(line)
    raise typer.Exit(code=run.exit_code)


@app.command()
def audit(
    spec: str = typer.Argument(..., help="The audit spec, a YAML file (see docs/audit.md)."),
    out: Path = typer.Option(Path("gauntlet-report"), "--out", "-o", help="Folder for report.json and report.html."),  # noqa: B008 - typer declares options as defaults
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    fail_under: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [], "--fail-under", help="Gate threshold attack:norm:eps=min_robust_accuracy, e.g. 'pgd:linf:0.1=0.5' (repeatable)."
    ),
    max_regression: str | None = typer.Option(
        None, "--max-regression",
        help="Fail when a metric moved the wrong way by more than this (e.g. 2pp) since the baseline: the last audit "
        "of the same model name on the same data that did not fail its gate.",
    ),
    baseline: int | None = typer.Option(
        None, "--baseline", min=1, help="Audit id to compare against with --max-regression (any data; gauntlet history lists ids)."
    ),
    alpha: str = typer.Option(
        "0.05", "--alpha", help="A drop beyond --max-regression fails only when also significant at this level (paired per sample on the same data)."
    ),
    trust: bool = typer.Option(False, "--trust", help="Allow pickle model files (runs code from the file: trusted files only)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    executor: str = typer.Option(
        "local", "--executor",
        help="Where units run: local (this process), ray (Ray tasks, one thread each) or auto (whichever of the two this machine runs faster, decided after the first unit).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster to run on (with --executor ray); default: start a local cluster."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="CPUs of the local Ray cluster, or the cores --executor auto lays out (default: all; for auto, --threads when given)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Audit a model against a threat spec: report.json + report.html, history in the store, exit code 0/1/2.

    Running the same command again after a crash or Ctrl-C resumes from the finished units.
    """
    from gauntlet.audit.spec import load_spec
    from gauntlet.errors import GauntletError

    _threads(threads)
    try:
        spec_obj = load_spec(spec)
    except GauntletError as err:
        _fail(err, as_json)
    except Exception as exc:  # noqa: BLE001 - an unexpected crash is one line and exit 2 (GAUNTLET_DEBUG=1 re-raises)
        _unexpected(exc, as_json)
    args = ["gauntlet", "audit", spec, "--out", str(out), "--store", _safe(store)]
    for t in fail_under:
        args += ["--fail-under", t]
    if max_regression:
        args += ["--max-regression", max_regression]
    if baseline is not None:
        args += ["--baseline", str(baseline)]
    if alpha != "0.05":
        args += ["--alpha", alpha]
    if trust:
        args.append("--trust")
    if executor != "local":
        args += ["--executor", executor] + (["--ray-address", "<given>"] if ray_address else [])
        args += ["--workers", str(workers)] if workers else []
    _run(spec_obj, out=out, store=store, fail_under=fail_under, max_regression=max_regression, trust=trust,
         as_json=as_json, command=shlex.join(args), executor=executor, ray_address=ray_address, workers=workers,
         baseline=baseline, alpha=alpha, threads=threads)


@app.command()
def poison(
    model: str = typer.Argument(..., help="The model file whose architecture is retrained (loaded like an audit's model: --arch, --trust)."),
    attack: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        ..., "--attack", "-a", help="A poisoning attack (gauntlet attacks --kind poisoning), repeatable; its --param options follow it."
    ),
    param: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [], "--param", "-p", help="An attack hyperparameter key=value (YAML scalar) for every --attack, e.g. fraction=0.01 (repeatable)."
    ),
    defense: list[str] = typer.Option([], "--defense", "-d", help="A training-data defense (gauntlet defenses --kind sanitizer), repeatable."),  # noqa: B008 - typer declares options as defaults
    arch: str | None = typer.Option(None, "--arch", help="Architecture of the model file (a zoo name or 'module.path:Class')."),
    train_data: str = typer.Option("digits", "--train", help="The victim's training set: 'digits' or a path (its train split)."),
    data: str = typer.Option("digits", "--data", help="Test data the attack success and clean accuracy are measured on (its test split)."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a random subset of n test samples."),
    method: str = typer.Option("standard", "--method", "-m", help="Training recipe: a training method (gauntlet defenses --kind training)."),
    train_param: list[str] = typer.Option([], "--train-param", help="A training hyperparameter key=value, e.g. epochs=10 (repeatable)."),  # noqa: B008 - typer declares options as defaults
    init: str = typer.Option("scratch", "--init", help="scratch (re-initialise the architecture) or finetune_last (retrain only the last layer)."),
    targets: int = typer.Option(10, "--targets", min=1, help="Targeted attacks: how many target inputs (one poisoning and training each)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the audit (poison rows, initial weights, shuffling)."),
    fail_under: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [], "--fail-under", help="Gate: poisoning:ATTACK[:DEFENSE]=MAX, the most attack success allowed, e.g. 'poisoning:badnets=10%' (repeatable; exit 1 when exceeded)."
    ),
    out: Path = typer.Option(Path("gauntlet-report"), "--out", "-o", help="Folder for report.json and report.html."),  # noqa: B008 - typer declares options as defaults
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    trust: bool = typer.Option(False, "--trust", help="Allow pickle model files (runs code from the file: trusted files only)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Poison a training set, retrain the model's architecture on it and report what the attack achieved
    and what each training-data defense removes: the same as an audit spec with a poisoning block.

    Running the same command again after a crash or Ctrl-C resumes from the finished stages.
    """
    from gauntlet.audit.spec import load_spec
    from gauntlet.errors import GauntletError

    _threads(threads)
    try:
        params = _parse_train_params(param)
        train_params = _parse_train_params(train_param)
        source = _data_source
        block: dict[str, Any] = {
            "train": {**source(train_data), "split": "train"},
            "attacks": [{"name": a, **params} for a in attack],
            "training": {"method": method, **train_params},
            "init": init,
            "targets": targets,
            "defenses": list(defense),
        }
        spec_dict: dict[str, Any] = {
            "model": {"path": str(Path(model).expanduser().resolve()), **({"arch": arch} if arch else {})},
            "data": {**source(data), **({"n": n} if n else {})},
            "poisoning": block,
            "seed": seed,
        }
        spec_obj = load_spec(spec_dict)
    except GauntletError as err:
        _fail(err, as_json)
    except Exception as exc:  # noqa: BLE001 - an unexpected crash is one line and exit 2
        _unexpected(exc, as_json)
    args = ["gauntlet", "poison", model, *[w for a in attack for w in ("--attack", a)], *[w for p in param for w in ("--param", p)]]
    args += [w for d in defense for w in ("--defense", d)] + ["--train", train_data, "--data", data, "--method", method]
    args += [w for p in train_param for w in ("--train-param", p)] + ["--init", init, "--seed", str(seed), "--out", str(out)]
    args += ["--store", _safe(store)] + (["--arch", arch] if arch else []) + (["--n", str(n)] if n else []) + (["--trust"] if trust else [])
    args += [w for t in fail_under for w in ("--fail-under", t)]
    _run(spec_obj, out=out, store=store, fail_under=fail_under, max_regression=None, trust=trust, as_json=as_json, command=shlex.join(args))


def _data_source(v: str) -> dict[str, str]:
    """A ``--train``/``--data`` value as a spec data source: a builtin dataset by name, anything else a path."""
    from gauntlet.data.loader import BUILTIN

    return {"name": v} if v.strip().lower() in BUILTIN else {"path": str(Path(v).expanduser().resolve())}


def _named(text: str, flag: str) -> dict[str, Any]:
    """``NAME[:key=value,...]`` (values YAML scalars) as a spec item ``{name: NAME, key: value}``."""
    from gauntlet.errors import ConfigError

    prefix = "flower:" if text.startswith("flower:") else ""  # Flower's own strategies: flower:krum:f=2
    name, _, rest = text[len(prefix):].partition(":")
    name = prefix + name
    if not name.strip() or name == prefix:
        raise ConfigError(f"{flag} {text!r}: give a name, optionally followed by :key=value,... (e.g. krum:f=2)")
    return {"name": name.strip(), **_parse_train_params([p for p in rest.split(",") if p.strip()])}


@app.command()
def federated(
    model: str = typer.Argument(..., help="The model file whose architecture is trained by federated learning (--arch, --trust as for an audit)."),
    strategy: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        ["mean"], "--strategy", "-s", help="An aggregation rule NAME[:key=value,...] (gauntlet defenses --kind aggregation; "
        "flower:NAME for Flower's own), e.g. krum:f=2 (repeatable)."
    ),
    attack: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [], "--attack", "-a", help="A malicious-client attack NAME[:key=value,...] (gauntlet attacks --kind federated), e.g. "
        "scaling:flip=true (repeatable; every strategy also runs without attack)."
    ),
    malicious: float = typer.Option(0.2, "--malicious", help="Share of the clients the attacker controls, in [0, 1)."),
    clients: int = typer.Option(10, "--clients", min=2, help="Flower client nodes; the training data are split across them."),
    rounds: int = typer.Option(10, "--rounds", min=1, help="Federated rounds."),
    alpha: float | None = typer.Option(None, "--alpha", help="Dirichlet concentration of a non-IID split (default: IID)."),
    knowledge: str = typer.Option("omniscient", "--knowledge", help="What the attacker knows of honest updates: omniscient or own."),
    backdoor: str | None = typer.Option(None, "--backdoor", help="A backdoor the malicious clients train on, NAME[:key=value,...], "
                                        "e.g. badnets:fraction=0.5,target_class=0."),
    lr: float = typer.Option(0.05, "--lr", help="Clients' local SGD learning rate."),
    local_epochs: int = typer.Option(1, "--local-epochs", min=1, help="Clients' local epochs per round."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Clients' local batch size."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture of the model file (a zoo name or 'module.path:Class')."),
    train_data: str = typer.Option("digits", "--train", help="The federation's training data: 'digits' or a path (its train split)."),
    data: str = typer.Option("digits", "--data", help="Test data the global model is measured on (its test split)."),
    n: int | None = typer.Option(None, "--n", min=1, help="Use a random subset of n test samples."),
    init: str = typer.Option("scratch", "--init", help="scratch (re-initialise the architecture) or audited (start from the file's weights)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the audit (split, malicious clients, initial weights, local shuffling)."),
    fail_under: list[str] = typer.Option(  # noqa: B008 - typer declares options as defaults
        [], "--fail-under", help="Gate: federated:STRATEGY[:ATTACK]=MIN, the least final accuracy allowed, e.g. "
        "'federated:krum:alie=90%' (repeatable; exit 1 when below)."
    ),
    out: Path = typer.Option(Path("gauntlet-report"), "--out", "-o", help="Folder for report.json and report.html."),  # noqa: B008 - typer declares options as defaults
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    trust: bool = typer.Option(False, "--trust", help="Allow pickle model files (runs code from the file: trusted files only)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train the model's architecture by federated learning on Flower with malicious clients, under each
    aggregation rule, and report the global model's accuracy per round: the same as an audit spec with a
    federated block.

    Running the same command again after a crash or Ctrl-C resumes from the last finished round.
    """
    from gauntlet.audit.spec import load_spec
    from gauntlet.errors import GauntletError

    _threads(threads)
    try:
        source = _data_source
        block: dict[str, Any] = {
            "train": {**source(train_data), "split": "train"},
            "strategies": [_named(s, "--strategy") for s in strategy],
            "attacks": [_named(a, "--attack") for a in attack],
            "clients": clients, "rounds": rounds, "malicious": malicious, "knowledge": knowledge, "init": init,
            "local": {"epochs": local_epochs, "batch_size": batch_size, "lr": lr},
            **({"alpha": alpha} if alpha is not None else {}),
            **({"backdoor": _named(backdoor, "--backdoor")} if backdoor else {}),
        }
        spec_dict: dict[str, Any] = {
            "model": {"path": str(Path(model).expanduser().resolve()), **({"arch": arch} if arch else {})},
            "data": {**source(data), **({"n": n} if n else {})},
            "federated": block,
            "seed": seed,
        }
        spec_obj = load_spec(spec_dict)
    except GauntletError as err:
        _fail(err, as_json)
    except Exception as exc:  # noqa: BLE001 - an unexpected crash is one line and exit 2
        _unexpected(exc, as_json)
    args = ["gauntlet", "federated", model, *[w for s in strategy for w in ("--strategy", s)]]
    args += [w for a in attack for w in ("--attack", a)] + ["--malicious", str(malicious), "--clients", str(clients)]
    args += ["--rounds", str(rounds), "--knowledge", knowledge, "--lr", str(lr), "--local-epochs", str(local_epochs)]
    args += ["--batch-size", str(batch_size), "--train", train_data, "--data", data, "--init", init, "--seed", str(seed)]
    args += (["--alpha", str(alpha)] if alpha is not None else []) + (["--backdoor", backdoor] if backdoor else [])
    args += ["--out", str(out), "--store", _safe(store)] + (["--arch", arch] if arch else []) + (["--n", str(n)] if n else [])
    args += (["--trust"] if trust else []) + [w for t in fail_under for w in ("--fail-under", t)]
    _run(spec_obj, out=out, store=store, fail_under=fail_under, max_regression=None, trust=trust, as_json=as_json, command=shlex.join(args))


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _safe(url: str) -> str:
    from gauntlet.audit.store import safe_url

    return safe_url(url) if "://" in url else url


@app.command()
def demo(
    out: Path = typer.Option(Path("gauntlet-report"), "--out", "-o", help="Folder for report.json and report.html."),  # noqa: B008 - typer declares options as defaults
    store: str | None = typer.Option(None, "--store", help=STORE_HELP + " Default: OUT/gauntlet.db."),
    seed: int = typer.Option(0, help="Seed for training and the attacks."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="CPU threads for torch; the demo's model is tiny, so one thread is fastest."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train (once, cached) a small CNN on sklearn's bundled digits and audit it with the quick preset."""
    from gauntlet.demo import demo_spec
    from gauntlet.errors import GauntletError

    _threads(threads)

    try:
        spec_obj = demo_spec(seed)
        out.mkdir(parents=True, exist_ok=True)
    except GauntletError as err:
        _fail(err, as_json)
    except OSError as exc:
        _fail(OSError(f"--out {str(out)!r}: cannot create the folder ({exc.strerror or exc})"), as_json)
    store_url = store or f"sqlite:///{(out / 'gauntlet.db').resolve()}"
    args = ["gauntlet", "demo", "--out", str(out), "--seed", str(seed)] + (["--store", _safe(store)] if store else [])
    _run(spec_obj, out=out, store=store_url, fail_under=[], max_regression=None, trust=False, as_json=as_json,
         command=shlex.join(args))


# ------------------------------------------------------------------------------------------------
def _open(store: str, as_json: bool) -> Any:
    from gauntlet.audit.store import open_store
    from gauntlet.errors import GauntletError

    try:
        return open_store(store, create=False)
    except GauntletError as err:
        _fail(err, as_json)


@app.command()
def history(
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    model: str | None = typer.Option(None, "--model", help="Only audits of this model name."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Show at most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the audits in the store, newest first."""
    from gauntlet.errors import GauntletError

    st = _open(store, as_json)
    try:
        rows = st.list_audits(model=model, limit=limit)
    except GauntletError as err:
        _fail(err, as_json)
    finally:
        st.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no audits" + (f" of model {model!r}" if model else "") + " in the store")
        return
    typer.echo(f"{'id':>4}  {'created (UTC)':<25}  {'model':<24}  {'sha256':<12}  {'status':<7}  units    clean  gate")
    for r in rows:
        m = r["model"]
        name = m["name"] + (f" v{m['version']}" if m.get("version") else "")
        gate = r.get("gate") or {}
        verdict = "-" if gate.get("passed") is None else ("pass" if gate["passed"] else "FAIL")
        units = f"{r['units']['done']}/{r['units']['total']}"
        typer.echo(
            f"{r['id']:>4}  {r['created_at']:<25}  {name[:24]:<24}  {m['sha256'][:12]:<12}  {r['status']:<7}  "
            f"{units:<7} {_pct(r.get('clean_accuracy'))}  {verdict}"
        )


@app.command()
def compare(
    a: int = typer.Argument(..., help="Audit id of the baseline (see gauntlet history)."),
    b: int = typer.Argument(..., help="Audit id to compare against the baseline."),
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    max_regression: str = typer.Option("0pp", "--max-regression", help="Drops larger than this are marked as regressions."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every metric of audit B against audit A (robust accuracy per attack, norm and ε, certified accuracy, ...), regressions marked."""
    from gauntlet.audit.gate import compare_reports, parse_regression
    from gauntlet.errors import GauntletError

    st = _open(store, as_json)
    try:
        tol = parse_regression(max_regression) or 0.0
        ra, rb = st.get_report(a), st.get_report(b)
    except GauntletError as err:
        _fail(err, as_json)
    finally:
        st.close()
    cmp = compare_reports(ra, rb, tol)
    line = (
        f"audit #{b} vs #{a}: {cmp['regressions']} regression{'s' if cmp['regressions'] != 1 else ''} "
        f"(drops beyond {100 * tol:g} pp)" + ("" if cmp["same_data"] else "; note: the two audits used different data")
    )
    if as_json:
        typer.echo(json.dumps({"a": a, "b": b, **cmp, "summary": line}, indent=2))
        return
    width = max([len(r["what"]) for r in cmp["rows"]] + [len("metric")])
    typer.echo(f"{'metric':<{width}}  {'#' + str(a):>6}  {'#' + str(b):>6}   delta")
    c = cmp["clean_accuracy"]
    rows = [{"what": "clean accuracy", **c}] + cmp["rows"]
    for r in rows:
        delta = "     -" if r["delta"] is None else f"{100 * r['delta']:+6.1f} pp"
        mark = "  REGRESSION" if r["regression"] else ""
        typer.echo(f"{r['what']:<{width}}  {_pct(r['a'])}  {_pct(r['b'])}  {delta}{mark}")
    typer.echo(line)


# ------------------------------------------------------------------------------------------------
def _parse_train_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, each value read as a YAML scalar (``0.3`` → float, ``true`` → bool, ``[0, 1]`` → list)."""
    import yaml  # type: ignore[import-untyped]  # stubs are the separate types-PyYAML package

    from gauntlet.errors import ConfigError

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--param {item!r}: expected key=value, e.g. --param eps=0.3")
        if key in params:
            raise ConfigError(f"--param {key} is given twice")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--param {item!r}: the value is not a valid YAML scalar") from None
        if isinstance(value, dict):
            raise ConfigError(f"--param {item!r}: the value must be a number, string, bool or list")
        if isinstance(value, list):
            value = tuple(value) if key == "bounds" else value
        params[key] = value
    return params


def _save_weights(module: Any, out: Path, metadata: dict[str, str] | None = None) -> None:
    """The module's state dict as safetensors (``.safetensors``) or ``torch.save`` (``.pt``/``.pth``), atomically.

    ``metadata`` (e.g. the ε a DP model spent) goes into the safetensors header; a ``.pt`` file
    holds only the state dict, so it is written beside it as ``<out>.json``."""
    import torch

    from gauntlet.errors import ConfigError

    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    suffix = out.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ConfigError(f"--out {str(out)!r}: use a .safetensors (or .pt) file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise ConfigError("--out *.safetensors needs the safetensors package (pip install gauntlet[safetensors]); or use a .pt name") from None
            save_file(sd, str(tmp), metadata=metadata)
        else:
            torch.save(sd, tmp)
            if metadata:
                out.with_name(out.name + ".json").write_text(json.dumps(metadata, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


class _TrainCommand(TyperCommand):
    """``gauntlet train``: the help of --method and --arch lists the registries, read (with PyTorch)
    only when the help is shown, so the list cannot drift from the code."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from gauntlet.defenses import list_defenses
        from gauntlet.models.zoo import ARCHITECTURES

        listed = {
            "method": f"Training method: {', '.join(list_defenses('training'))} "
            "(gauntlet defenses NAME shows one's parameters).",
            "arch": f"Architecture: a zoo name ({', '.join(ARCHITECTURES)}) or 'module.path:Class'.",
        }
        for param in self.params:
            if param.name in listed:
                param.help = listed[param.name]  # type: ignore[attr-defined]  # options have help; arguments do not
        super().format_help(ctx, formatter)


@app.command(cls=_TrainCommand)
def train(
    data: str = typer.Option("digits", "--data", help="Training data: 'digits' or a path gauntlet.data.load accepts (its train split)."),
    arch: str = typer.Option("digits_cnn", "--arch", help="Architecture: a zoo name (gauntlet train --help lists them) or 'module.path:Class'."),
    method: str = typer.Option("pgd_at", "--method", "-m", help="Training method: a training defense (gauntlet defenses --kind training)."),
    param: list[str] = typer.Option([], "--param", "-p", help="A method hyperparameter key=value (YAML scalar), e.g. eps=0.3 (repeatable)."),  # noqa: B008 - typer declares options as defaults
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default: the method's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the initial weights, shuffling and random starts."),
    out: Path = typer.Option(Path("model.safetensors"), "--out", "-o", help="Trained weights (.safetensors or .pt); load with gauntlet.models.load(out, arch=...)."),  # noqa: B008 - typer declares options as defaults
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint file written after every epoch; rerunning the same command resumes from it."),  # noqa: B008 - typer declares options as defaults
    target_epsilon: float | None = typer.Option(None, "--target-epsilon", help="dp_sgd only: the ε to reach after the epochs (Opacus computes the noise); same as --param target_epsilon=."),
    delta: float | None = typer.Option(None, "--delta", help="dp_sgd only: the δ of the (ε, δ) guarantee (default 1e-5); same as --param delta=."),
    eval_eps: float | None = typer.Option(None, "--eval-eps", min=0.0, help="ε of the quick PGD-20 check, in the method's norm (default: the method's eps, none if it has none; 0 skips)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train a model robustly (adversarial training, TRADES, distillation, ...) and save its weights.

    Prints the clean accuracy on the data's test split and the robust accuracy under a quick PGD-20 at --eval-eps on up to 1000 test samples.
    """
    from gauntlet.errors import GauntletError

    _threads(threads)
    ckpt_note = ""
    try:
        import torch

        from gauntlet.data import load as load_data
        from gauntlet.defenses.registry import create
        from gauntlet.defenses.training._base import Trainer, accuracy
        from gauntlet.errors import ConfigError
        from gauntlet.models.loading import build_arch

        if out.suffix.lower() not in (".safetensors", ".pt", ".pth"):
            raise ConfigError(f"--out {str(out)!r}: use a .safetensors (or .pt) file name")
        params = _parse_train_params(param)
        if epochs is not None:
            if "epochs" in params:
                raise ConfigError("give the number of epochs once: --epochs or --param epochs=, not both")
            params["epochs"] = epochs
        for flag, key, value in (("--target-epsilon", "target_epsilon", target_epsilon), ("--delta", "delta", delta)):
            if value is None:
                continue
            if method != "dp_sgd":
                raise ConfigError(f"{flag} is only for --method dp_sgd (differentially private training), not {method!r}")
            if key in params:
                raise ConfigError(f"give {key} once: {flag} or --param {key}=, not both")
            params[key] = value
        trainer = create(method, **params)  # bad names and hyperparameters fail before any data is read
        if not isinstance(trainer, Trainer):
            raise ConfigError(f"--method {method!r} is a {trainer.kind} defense, not a training method")
        train_set = load_data(data, split="train")
        test_set = load_data(data, split="test")
        if "bounds" not in params:  # the data's declared range
            lo, hi = train_set.spec.bounds
            trainer = type(trainer)(**params, bounds=(float(lo), float(hi)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, arch_label = build_arch(arch, {}, train_set.num_classes)
        if checkpoint is not None and checkpoint.exists():
            ckpt_note = f"resuming from {checkpoint}"
        result = trainer.fit(
            module, train_set.x, train_set.y, seed=seed, checkpoint=checkpoint, resume=True,
            progress=sys.stderr.isatty() and not as_json,
        )
        privacy = {k: result.info[k] for k in ("epsilon", "delta", "noise_multiplier", "accountant") if k in result.info}
        meta = {"gauntlet.method": method, "gauntlet.privacy": json.dumps(privacy)} if privacy else None
        _save_weights(module, out, meta)
        n_eval = min(1000, len(test_set))
        x_te, y_te = test_set.x[:n_eval], test_set.y[:n_eval]
        clean = accuracy(module, x_te, y_te)
        eps_eval = eval_eps if eval_eps is not None else trainer.get_params().get("eps")
        eval_norm = str(trainer.get_params().get("norm", "linf"))
        robust = None
        if eps_eval:
            from gauntlet.attacks import create as create_attack
            from gauntlet.models import TorchModel

            model = TorchModel(module, bounds=trainer.bounds, num_classes=train_set.num_classes)
            pgd = create_attack("pgd", norm=eval_norm, eps=float(eps_eval), steps=20, step_size=2.5 * float(eps_eval) / 20)
            robust = 1.0 - float(pgd.run(model, x_te, y_te, seed=seed).success.float().mean())
    except GauntletError as err:
        _fail(err, as_json)
    except KeyboardInterrupt:
        where = f"; run the same command again to resume from {checkpoint}" if checkpoint is not None else " (no --checkpoint, nothing kept)"
        typer.secho(f"interrupted{where}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None
    except Exception as exc:  # noqa: BLE001 - an unexpected crash is one line and exit 2 (GAUNTLET_DEBUG=1 re-raises)
        _unexpected(exc, as_json)
    line = (
        f"{method} on {train_set.name} ({len(train_set)} samples, {result.params['epochs']} epochs, "
        f"{result.seconds:.1f}s): clean accuracy {_pct(clean).strip()}"
        + (f", PGD-20 {eval_norm} ε={eps_eval:g} robust accuracy {_pct(robust).strip()}" if robust is not None else "")
        + f" on {n_eval} test samples"
        + (f"; DP ε={privacy['epsilon']:.3f} spent at δ={privacy['delta']:g} ({privacy['accountant']} accountant)" if privacy else "")
        + f"; weights in {out}"
    )
    if as_json:
        typer.echo(json.dumps({
            "method": method,
            "params": result.to_dict()["params"],
            "arch": arch_label,
            "data": {"name": train_set.name, "n_train": len(train_set), "n_eval": n_eval},
            "seed": seed,
            "out": str(out),
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "resumed_from": result.resumed_from,
            "history": [r.to_dict() for r in result.history],
            "clean_accuracy": clean,
            "robust_accuracy": robust,
            "eval_eps": eps_eval if robust is not None else None,
            "eval_norm": eval_norm if robust is not None else None,
            "privacy": privacy or None,
            "seconds": result.seconds,
            "summary": line,
        }, indent=2))
        typer.echo(line, err=True)
        return
    if ckpt_note:
        typer.echo(f"{ckpt_note}: {result.resumed_from} finished epoch(s) reused")
    typer.echo(f"{'epoch':>5}  {'loss':>8}  {'train':>6}  {'seconds':>7}")
    for r in result.history:
        typer.echo(f"{r.epoch:>5}  {r.loss:8.4f}  {_pct(r.train_acc)}  {r.seconds:7.1f}")
    typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
