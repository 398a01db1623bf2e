"""The ``gauntlet`` command line: a thin, lazily importing layer over the library."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Attack, harden and audit ML models.")


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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
def demo(
    eps: str = typer.Option("0.05,0.1,0.2", help="Comma-separated L∞ budgets."),
    steps: int = typer.Option(20, help="PGD steps."),
    seed: int = typer.Option(0, help="Seed for training and the attack."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train a small CNN on sklearn's bundled digits (cached) and report its robust accuracy under PGD."""
    from gauntlet.demo import run_demo
    from gauntlet.errors import GauntletError

    try:
        eps_list = [float(e) for e in eps.split(",") if e.strip()]
        report = run_demo(eps=eps_list, steps=steps, seed=seed)
    except ValueError as err:
        _fail(err if isinstance(err, GauntletError) else ValueError(f"--eps must be comma-separated numbers: {err}"))
        return
    except GauntletError as err:
        _fail(err)
        return
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"model: {report['model']}  (clean accuracy {report['clean_accuracy']:.1%} on {report['n']} test digits)")
    for e, ra, sec in zip(report["eps"], report["robust_accuracy"], report["seconds"]):
        typer.echo(f"  PGD-{steps} L∞ ε={e:<5g} robust accuracy {ra:6.1%}   ({sec:.2f} s)")


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
