"""``gauntlet data``: hash a dataset into a manifest, verify data against one, list stored versions.

Exit codes: ``hash`` and ``history`` 0, or 2 on bad input; ``verify`` 0 when the data are the same
as the manifest, 1 when they differ (every changed, added or removed file and row is listed), 2 on
bad input (a missing path, a malformed or mismatched manifest, a store error).  Everything heavy is
imported inside the commands, so ``gauntlet --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    no_args_is_help=True,
    help="Data provenance: hash a dataset's files and rows, verify data against a manifest, list versions.",
    rich_markup_mode=None,
)

_STORE_HELP = "Results store (SQLAlchemy URL) that keeps manifests per dataset name and version."
_DEFAULT_STORE = "sqlite:///gauntlet.db"


@app.callback()
def _data() -> None:
    """Data provenance: hash a dataset's files and rows, verify data against a manifest, list versions."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


@app.command("hash")
def hash_(
    path: Path = typer.Argument(..., help="A data file or folder (walked recursively; links are recorded, not followed)."),  # noqa: B008 - typer declares arguments as defaults
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the manifest (JSON) to this file."),  # noqa: B008 - typer declares arguments as defaults
    name: str | None = typer.Option(None, "--name", help="Keep the manifest in the store under this dataset name."),
    version: str | None = typer.Option(None, "--version", help="The version to keep it as (default: the next integer, or the newest when the data are unchanged)."),
    store: str | None = typer.Option(None, "--store", help=_STORE_HELP + f" Default with --name: {_DEFAULT_STORE}."),
    rows: bool = typer.Option(True, "--rows/--no-rows", help="Hash every row of array files (.npy, .npz, .pt, IDX, CIFAR), or files only."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout (the one-line summary goes to stderr)."),
) -> None:
    """Hash PATH: each file's size and SHA-256, each array row's SHA-256, and the dataset hash."""
    from gauntlet.cli import _fail, _unexpected
    from gauntlet.errors import ConfigError, GauntletError

    try:
        from gauntlet.data.provenance import build_manifest, write_manifest

        if (version is not None or store is not None) and name is None:
            raise ConfigError("--version and --store keep the manifest in a store: pass --name too")
        start = time.perf_counter()
        exclude = [out] if out is not None and path.is_dir() and _inside(out, path) else []
        manifest = build_manifest(path, rows=rows, exclude=exclude)
        seconds = time.perf_counter() - start
        if out is not None:
            write_manifest(manifest, out)
        stored = None
        if name is not None:
            from gauntlet.audit.store import open_store

            with open_store(store or _DEFAULT_STORE) as st:
                stored = st.save_manifest(name, version, manifest)
    except GauntletError as err:
        _fail(err, as_json)
    except Exception as exc:  # noqa: BLE001 - never a traceback: one line, exit 2
        _unexpected(exc, as_json)
    files = manifest["files"]
    n_rows = sum(len(a["rows"]) for f in files for a in f.get("arrays", []))
    line = (
        f"{path}: {len(files)} file{'s' if len(files) != 1 else ''}, {n_rows} rows hashed in {seconds:.2f}s; "
        f"dataset sha256 {manifest['dataset_sha256']}"
        + (f"; manifest in {out}" if out is not None else "")
    )
    if stored is not None:
        line += f"; {'stored' if stored['new'] else 'already stored'} as {name} version {stored['version']}"
    if as_json:
        typer.echo(json.dumps({
            "path": str(path),
            "dataset_sha256": manifest["dataset_sha256"],
            "files": len(files),
            "bytes": sum(int(f.get("size") or 0) for f in files),
            "rows": n_rows,
            "out": str(out) if out is not None else None,
            "stored": stored,
            "seconds": seconds,
            "summary": line,
        }, indent=2))
        typer.echo(line, err=True)
        return
    typer.echo(line)


@app.command()
def verify(
    path: Path = typer.Argument(..., help="The data file or folder to check."),  # noqa: B008 - typer declares arguments as defaults
    manifest: Path | None = typer.Argument(None, help="The manifest from gauntlet data hash --out (or use --name)."),  # noqa: B008 - typer declares arguments as defaults
    name: str | None = typer.Option(None, "--name", help="Check against the manifest stored under this dataset name instead."),
    version: str | None = typer.Option(None, "--version", help="With --name: that version (default: the newest)."),
    store: str = typer.Option(_DEFAULT_STORE, "--store", help=_STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout (the one-line summary goes to stderr)."),
) -> None:
    """Compare PATH with a manifest; list every changed, added and removed file and row.

    Exit 0: the same; 1: different; 2: bad input (missing path, malformed or mismatched manifest).
    """
    from gauntlet.cli import _fail, _unexpected
    from gauntlet.errors import ConfigError, GauntletError

    try:
        from gauntlet.data.provenance import load_manifest, verify_manifest

        if (manifest is None) == (name is None):
            raise ConfigError("give the manifest file or --name (a manifest kept in the store), one of them")
        if version is not None and name is None:
            raise ConfigError("--version picks a stored manifest: pass --name too")
        if manifest is not None:
            expected = load_manifest(manifest)
        else:
            from gauntlet.audit.store import open_store

            with open_store(store, create=False) as st:
                expected = st.get_manifest(str(name), version)
        exclude = [manifest] if manifest is not None and path.is_dir() and _inside(manifest, path) else []
        result = verify_manifest(path, expected, exclude=exclude)
    except GauntletError as err:
        _fail(err, as_json)
    except Exception as exc:  # noqa: BLE001 - never a traceback: one line, exit 2
        _unexpected(exc, as_json)
    code = 0 if result.same else 1
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "exit_code": code}, indent=2))
        typer.echo(result.summary(), err=True)
    else:
        for line in result.lines():
            typer.echo(line)
        typer.echo(result.summary())
    raise typer.Exit(code=code)


@app.command()
def history(
    name: str = typer.Argument(..., help="The dataset name the manifests were kept under (gauntlet data hash --name)."),
    store: str = typer.Option(_DEFAULT_STORE, "--store", help=_STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the stored manifests of a dataset, newest first: version, time, dataset hash, files."""
    from gauntlet.cli import _fail, _unexpected
    from gauntlet.errors import GauntletError

    rows: list[dict[str, Any]] = []
    try:
        from gauntlet.audit.store import open_store

        with open_store(store, create=False) as st:
            rows = st.manifests(name)
    except GauntletError as err:
        _fail(err, as_json)
    except Exception as exc:  # noqa: BLE001 - never a traceback: one line, exit 2
        _unexpected(exc, as_json)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no manifests of dataset {name!r} in the store")
        return
    width = max(len("version"), *(len(r["version"]) for r in rows))
    typer.echo(f"{'version':<{width}}  {'created (UTC)':<25}  {'sha256':<12}  {'files':>6}  {'bytes':>12}")
    for r in rows:
        typer.echo(f"{r['version']:<{width}}  {r['created_at']:<25}  {r['sha256'][:12]:<12}  {r['files']:>6}  {r['bytes']:>12}")
