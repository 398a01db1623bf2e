"""The ``gauntlet`` command line: a thin, lazily importing layer over the library.

Exit codes: 0 success (gate passed), 1 the audit gate failed, 2 a usage, spec, model, data or
store error (one line on stderr, ``error: ...``), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from typing_extensions import Self

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Attack, harden and audit ML models.",
    context_settings={"help_option_names": ["-h", "--help"]},
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
@app.command()
def attacks(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered attacks with one-line descriptions."""
    from gauntlet.attacks import describe_attacks

    table = describe_attacks()
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    width = max(map(len, table))
    for name, desc in table.items():
        typer.echo(f"{name:<{width}}  {desc}")


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
    kind: str | None = typer.Option(None, "--kind", help="Only one kind: training, preprocessing, detector, ensemble, certification."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the registered defenses with their kind and a one-line description."""
    from gauntlet.defenses import KINDS, describe_defenses
    from gauntlet.errors import ConfigError

    if kind is not None and kind not in KINDS:
        _fail(ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}"), as_json)
    table = {n: {"kind": k, "description": d} for n, (k, d) in describe_defenses().items() if kind in (None, k)}
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    width = max(map(len, table))
    for name, row in table.items():
        typer.echo(f"{name:<{width}}  {row['kind']:<13}  {row['description']}")


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
        runner = make_executor(executor, address=ray_address, workers=workers)
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
    executor: str = typer.Option("local", "--executor", help="Where units run: local (this process) or ray (Ray tasks, one thread each)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster to run on (with --executor ray); default: start a local cluster."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="CPUs of the local Ray cluster (default: all)."),
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
         baseline=baseline, alpha=alpha)


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


def _save_weights(module: Any, out: Path) -> None:
    """The module's state dict as safetensors (``.safetensors``) or ``torch.save`` (``.pt``/``.pth``), atomically."""
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
            save_file(sd, str(tmp))
        else:
            torch.save(sd, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


@app.command()
def train(
    data: str = typer.Option("digits", "--data", help="Training data: 'digits' or a path gauntlet.data.load accepts (its train split)."),
    arch: str = typer.Option("digits_cnn", "--arch", help="Architecture: a zoo name (digits_cnn, smallcnn, lenet5, wong_kolter_small, wong_kolter_wide) or 'module.path:Class'."),
    method: str = typer.Option("pgd_at", "--method", "-m", help="Training method: standard, fast_at, pgd_at, trades, distillation, label_smoothing."),
    param: list[str] = typer.Option([], "--param", "-p", help="A method hyperparameter key=value (YAML scalar), e.g. eps=0.3 (repeatable)."),  # noqa: B008 - typer declares options as defaults
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default: the method's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the initial weights, shuffling and random starts."),
    out: Path = typer.Option(Path("model.safetensors"), "--out", "-o", help="Trained weights (.safetensors or .pt); load with gauntlet.models.load(out, arch=...)."),  # noqa: B008 - typer declares options as defaults
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint file written after every epoch; rerunning the same command resumes from it."),  # noqa: B008 - typer declares options as defaults
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
        _save_weights(module, out)
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
        + f" on {n_eval} test samples; weights in {out}"
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
