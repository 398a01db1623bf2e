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
from typing import Any, NoReturn, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Attack, harden and audit ML models.")

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


# ------------------------------------------------------------------------------------------------
class _Bar:
    """A rich progress bar on a terminal (stderr); nothing at all otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.last: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
    rows = report.get("results", [])
    worst = report.get("worst_case", [])
    width = max([len(str(r["attack"])) for r in rows] + [len("worst_case")])
    typer.echo(f"{report['model'].get('name')}: clean accuracy {_pct(report.get('clean_accuracy')).strip()} "
               f"on {report['data'].get('n')} samples of {report['data'].get('name')}")
    typer.echo(f"{'attack':<{width}}  norm  {'ε':>7}  robust  success  median δ  queries  seconds")
    for r in rows + [{**w, "attack": "worst_case"} for w in worst]:
        med = r.get("median_perturbation")
        med_s = f"{med:8.4g}" if med is not None else "       -"
        sec = r.get("seconds")
        typer.echo(
            f"{r['attack']:<{width}}  {r['norm']:<4}  {float(r['eps']):>7g}  {_pct(r.get('robust_accuracy'))}  "
            f"{_pct(r.get('success_rate'))}   {med_s}  {r.get('queries', ''):>7}  "
            + (f"{sec:7.2f}" if isinstance(sec, (int, float)) else "")
        )
    for f in report.get("flags", []):
        typer.echo(f"flag [{f.get('severity')}] {f.get('id')}: {f.get('title')}")
    for v in (report.get("gate") or {}).get("violations", []):
        typer.echo(f"gate violation: {v}")


def _run(
    spec_obj: Any,
    *,
    out: Path,
    store: str,
    fail_under: list[str],
    max_regression: Optional[str],
    trust: bool,
    as_json: bool,
    command: str,
) -> None:
    from gauntlet.audit.gate import parse_regression, parse_threshold, summary_line
    from gauntlet.audit.runner import run_audit
    from gauntlet.errors import GauntletError

    bar = _Bar(sys.stderr.isatty())
    try:
        thresholds = [parse_threshold(t) for t in fail_under]
        regression = parse_regression(max_regression)
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
            )
    except GauntletError as err:
        _fail(err, as_json)
    except KeyboardInterrupt:
        ev = bar.last
        saved = f" ({ev.done} of {ev.total} units done)" if ev is not None and ev.phase == "units" else ""
        typer.secho(f"interrupted{saved}; run the same command again to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None
    except Exception as exc:  # never exit 1 (= gate failed) on a crash
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
                    "results": report.get("results"),
                    "worst_case": report.get("worst_case"),
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
    out: Path = typer.Option(Path("gauntlet-report"), "--out", "-o", help="Folder for report.json and report.html."),
    store: str = typer.Option(DEFAULT_STORE, "--store", help=STORE_HELP),
    fail_under: list[str] = typer.Option(
        [], "--fail-under", help="Gate threshold attack:norm:eps=min_robust_accuracy, e.g. 'pgd:linf:0.1=0.5' (repeatable)."
    ),
    max_regression: Optional[str] = typer.Option(
        None, "--max-regression", help="Fail when a robust accuracy fell more than this (e.g. 2pp) since the last audit of the same model name."
    ),
    trust: bool = typer.Option(False, "--trust", help="Allow pickle model files (runs code from the file: trusted files only)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
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
    except Exception as exc:
        _unexpected(exc, as_json)
    args = ["gauntlet", "audit", spec, "--out", str(out), "--store", _safe(store)]
    for t in fail_under:
        args += ["--fail-under", t]
    if max_regression:
        args += ["--max-regression", max_regression]
    if trust:
        args.append("--trust")
    _run(spec_obj, out=out, store=store, fail_under=fail_under, max_regression=max_regression, trust=trust,
         as_json=as_json, command=shlex.join(args))


def _threads(n: Optional[int]) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _safe(url: str) -> str:
    from gauntlet.audit.store import safe_url

    return safe_url(url) if "://" in url else url


@app.command()
def demo(
    out: Path = typer.Option(Path("gauntlet-report"), "--out", "-o", help="Folder for report.json and report.html."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP + " Default: OUT/gauntlet.db."),
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
    model: Optional[str] = typer.Option(None, "--model", help="Only audits of this model name."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Show at most this many (newest first)."),
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
    """Per (attack, norm, ε) robust accuracy of audit B against audit A, regressions marked."""
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
    width = max([len(r["attack"]) for r in cmp["rows"]] + [len("attack")])
    typer.echo(f"{'attack':<{width}}  norm  {'ε':>7}  {'#' + str(a):>6}  {'#' + str(b):>6}   delta")
    c = cmp["clean_accuracy"]
    rows = [{"attack": "clean", "norm": "-", "eps": None, **c}] + cmp["rows"]
    for r in rows:
        delta = "     -" if r["delta"] is None else f"{100 * r['delta']:+6.1f} pp"
        eps = "-" if r["eps"] is None else f"{r['eps']:g}"
        mark = "  REGRESSION" if r["regression"] else ""
        typer.echo(f"{r['attack']:<{width}}  {r['norm']:<4}  {eps:>7}  {_pct(r['a'])}  {_pct(r['b'])}  {delta}{mark}")
    typer.echo(line)


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
