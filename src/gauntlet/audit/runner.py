"""The runner: spec → studies → units → executor → store → report → gate.

:func:`run_audit` is the whole ``gauntlet audit`` command as a library call.  It walks forward
only:

1. :func:`prepare` loads and checks the model (wrapped in ``model.defense`` when the spec has
   one) and the data, lets every study of the spec check the model and plan its units — nothing is
   written anywhere before all of that passed;
2. :func:`execute` opens (or resumes) the audit in the store, hands the units not finished yet to
   the executor (in this process, or on Ray: :mod:`gauntlet.audit.executors`) cheapest first, and
   commits each record the moment it comes back — the driver is the store's only writer;
3. every study merges its records (in plan order) into its report sections and hygiene flags;
4. :func:`gauntlet.audit.report.build_report` assembles ``report.json``,
   :func:`gauntlet.audit.gate.evaluate_gate` decides the exit code, and both reports are written.

It is resumable: each finished unit is committed to the store at once, and running the same audit
again (same model file, data and spec) continues the unfinished audit from its finished units;
since every unit's seed derives from the spec and the unit key, the final report is the one an
uninterrupted run would have written.  The runner knows nothing of attacks, certification or
detection: those are studies (:mod:`gauntlet.audit.studies`).  The library never prints: progress
goes to an optional callback (the CLI draws a bar with it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gauntlet.audit.executors import Executor, LocalExecutor, Task, run_task
from gauntlet.audit.records import AuditOutcome
from gauntlet.audit.spec import AuditSpec, DefenseChoice, check_thresholds, resolve_defense, spec_hash
from gauntlet.audit.store import CORE_STUDY, DEFAULT_STORE_URL, Store, open_store, safe_url
from gauntlet.audit.studies import AuditEnv
from gauntlet.errors import ConfigError, DataError, GauntletError, ModelLoadError, first_line
from gauntlet.models.base import predict_batched

__all__ = [
    "AuditOutcome",
    "AuditRun",
    "Prepared",
    "ProgressEvent",
    "execute",
    "prepare",
    "run_audit",
    "run_task",
    "write_reports",
]


@dataclass(frozen=True)
class ProgressEvent:
    """What the runner reports to a progress callback.

    ``phase`` is ``"units"`` while units run (``done`` of ``total`` units of every study,
    ``reused`` of them read back from the store; ``study`` names the study of the unit just
    finished), then ``"merge"`` per study (``study`` set), ``"report"`` and ``"done"``.
    """

    phase: str
    done: int
    total: int
    reused: int = 0
    message: str = ""
    study: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class Prepared:
    """A checked spec with its model, data, studies and plan; nothing written anywhere yet."""

    spec: AuditSpec
    env: AuditEnv
    studies: list[Any]
    tasks: list[Task]
    model_info: dict[str, Any]
    data_info: dict[str, Any]
    spec_hash: str

    @property
    def model(self) -> Any:
        return self.env.model

    @property
    def base_model(self) -> Any:
        return self.env.base_model

    @property
    def naive_model(self) -> Any:
        return self.env.naive_model

    @property
    def defense_info(self) -> dict[str, Any] | None:
        return self.env.defense_info

    @property
    def x(self) -> Tensor:
        return self.env.x

    @property
    def y(self) -> Tensor:
        return self.env.y

    @property
    def units(self) -> list[Any]:
        """Every study's units, in plan order."""
        return [t.unit for t in self.tasks]


@dataclass
class AuditRun:
    """The result of :func:`run_audit`."""

    outcome: AuditOutcome
    report: dict[str, Any]
    audit_id: int | None
    resumed: bool
    reused_units: int
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """The gate did not fail (it passed, or no gate was configured)."""
        return self.report.get("gate", {}).get("passed") is not False

    @property
    def exit_code(self) -> int:
        """1 when the gate failed; 0 when it passed or no gate was configured."""
        return 0 if self.passed else 1




def _prefixed(err: GauntletError, place: str) -> GauntletError:
    msg = str(err)
    try:
        return type(err)(msg if msg.startswith(place) else f"{place}: {msg}")
    except Exception:  # noqa: BLE001  # pragma: no cover - exotic subclasses keep their own message
        return err


def _safe_url(url: str) -> str:
    """A URL without its password and query string (where API keys hide), for reports and logs."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    host = p.hostname or ""
    netloc = (f"{p.username}:***@" if p.password else (f"{p.username}@" if p.username else "")) + host + (f":{p.port}" if p.port else "")
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_sha256(x: Tensor, y: Tensor) -> str:
    """Hash of the audited inputs and labels (dtype, shape and bytes)."""
    h = hashlib.sha256()
    for t in (x, y):
        a = t.detach().cpu().contiguous()
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.numpy())  # type: ignore[arg-type]  # an ndarray is a buffer: no copy of the data
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# prepare: everything that can fail on user input, before the store is touched
def prepare(spec: AuditSpec, *, trust: bool | None = None, fail_under: Sequence[Any] = ()) -> Prepared:
    """Load and check the model and the data for ``spec``, check every study against them and
    plan the units.

    Raises a :class:`~gauntlet.errors.GauntletError` (message prefixed ``model:`` / ``data:`` /
    ``model.defense:`` or the study block's place, e.g. ``attacks[i]:`` / ``certify[i]:``) for an
    unreadable model, data the model cannot take, or a study that cannot use the model.  Writes
    nothing.
    """
    from gauntlet.data import load as load_data
    from gauntlet.data.provenance import manifest_sha256
    from gauntlet.models import load as load_model

    studies = spec.studies
    defense = resolve_defense(spec)
    check_thresholds(spec, fail_under, lambda i, th: f"--fail-under {th.describe()!r}")
    m = spec.model
    path = spec.model_path()
    model: Any
    try:
        if path is None:  # a model served over HTTP: a black box, whatever the server answers
            from gauntlet.models import RemoteModel

            model = RemoteModel(
                str(m.url), output=m.output, num_classes=int(m.num_classes or 0), input_shape=list(m.input_shape or []),
                bounds=m.bounds, **m.remote,
            )
        else:
            model = load_model(
                path,
                arch=m.arch,
                trust=bool(m.trust if trust is None else trust),
                bounds=m.bounds,
                num_classes=m.num_classes,
                mean=m.mean,
                std=m.std,
                input_shape=m.input_shape,
                **m.arch_kwargs,
            )
    except GauntletError as err:
        raise _prefixed(err, "model") from None
    except TypeError as exc:  # an unknown RemoteModel option in model.remote
        raise ConfigError(f"model.remote: {first_line(exc)}; see docs/remote.md for the options") from None
    except Exception as exc:  # noqa: BLE001 - a loader's own failure on a strange file is one line
        raise ModelLoadError(f"model: cannot load {str(path)!r} ({type(exc).__name__}: {first_line(exc)})") from None
    base_model = model
    naive_model = None
    defense_info = None
    if defense is not None:
        model, naive_model, defense_info = _wrap_defense(defense, base_model, spec.seed)

    d = spec.data
    try:
        ds = load_data(spec.data_source(), split=d.split, n=d.n, seed=d.seed, **d.options)
    except GauntletError as err:
        raise _prefixed(err, "data") from None
    except Exception as exc:  # noqa: BLE001 - a reader's own failure on a strange file is one line
        raise DataError(f"data: cannot load {str(spec.data_source())!r} ({type(exc).__name__}: {first_line(exc)})") from None
    x, y = ds.x, ds.y.to(torch.int64)
    if x.dtype.is_floating_point and x.dtype != model.input_spec.dtype:
        x = x.to(model.input_spec.dtype)
    x = x.to(model.device)
    y = y.to(model.device)
    _check_data(model, x, y)

    env = AuditEnv(
        model=model, x=x, y=y, batch_size=spec.batch_size, seed=spec.seed,
        base_model=base_model, naive_model=naive_model, defense_info=defense_info,
    )
    for study in studies:
        study.check(env)
    _check_finite(model, x, spec.batch_size)
    _reseed(model, spec.seed)
    env.clean_pred = predict_batched(model, x, spec.batch_size)  # once per audit, shared by every unit
    digest = spec_hash(spec)
    tasks: list[Task] = []
    for study in studies:
        for unit in study.plan(env, digest):
            tasks.append(Task(study, unit, len(tasks)))
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):  # pragma: no cover - a study bug, never user input
        raise ConfigError("the plan has two units with the same key; a study's plan must give every unit its own key")
    model_info = {
        "name": m.display_name,
        "version": m.version,
        # a url model's identity is its address (what answers there can change without notice)
        "sha256": file_sha256(path) if path is not None else hashlib.sha256(f"url:{m.url}".encode()).hexdigest(),
        **({"path": str(m.path)} if path is not None else {"url": _safe_url(str(m.url))}),
        "capabilities": sorted(model.capabilities),
        "num_classes": model.num_classes,
        "bounds": list(model.bounds),
        "output": getattr(model, "output", None),
    }
    source = spec.data_source()
    data_info = {
        "name": d.name if d.name is not None else Path(d.path or "").name,
        "n": int(x.shape[0]),
        "sha256": data_sha256(x, y),
        # the dataset hash of the data's files, as gauntlet data hash prints it (None for a builtin)
        "manifest_sha256": manifest_sha256(source) if isinstance(source, Path) else None,
        "shape": list(x.shape[1:]),
        "split": d.split,
        "seed": d.seed,
    }
    return Prepared(spec, env, list(studies), tasks, model_info, data_info, digest)


def _wrap_defense(defense: DefenseChoice, base: Any, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """The adaptive (audited) and naive wraps of ``model.defense`` around ``base``, and its info."""
    place = "model.defense"
    try:
        pre = defense.create()
        adaptive = pre.wrap(base, adaptive=True, eot_samples=defense.eot_samples, seed=seed)
        naive = pre.wrap(base, adaptive=False, seed=seed)
    except GauntletError as err:
        raise _prefixed(err, place) from None
    info = {
        "name": defense.name,
        "params": json.loads(json.dumps(pre.get_params(), default=str)),
        "randomized": bool(adaptive.randomized),
        "eot_samples": int(adaptive.eot_samples),
    }
    return adaptive, naive, info


def _check_data(model: Any, x: Tensor, y: Tensor) -> None:
    from gauntlet.attacks.base import check_batch

    check_batch(x, model, where="data")
    try:
        with torch.no_grad():
            out = model.scores(x[:2], count=False) if model.has("scores") else model.predict(x[:2], count=False)
    except GauntletError as err:
        raise _prefixed(err, "data") from None
    except Exception as exc:  # noqa: BLE001 - the model's own failure on the data is one line
        raise DataError(
            f"data: the model cannot take inputs of shape {tuple(x.shape[1:])} ({type(exc).__name__}: "
            f"{first_line(exc)}); check the data and model.input_shape"
        ) from None
    if model.has("scores") and (out.dim() != 2 or out.shape[0] != min(2, x.shape[0])):
        raise DataError(f"data: the model returned scores of shape {tuple(out.shape)} for 2 inputs; it must return (N, classes)")
    k = model.infer_num_classes(x)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(
            f"data: labels lie in [{int(y.min())}, {int(y.max())}] but the model has {k} classes; "
            "check the dataset or model.num_classes"
        )


# ------------------------------------------------------------------------------------------------
# execute: units → executor → store → studies' sections
def _reseed(model: Any, seed: int) -> None:
    """Restart a randomized wrapper's noise stream (a no-op for other models)."""
    reseed = getattr(model, "reseed", None)
    if callable(reseed):
        reseed(seed)


def _check_finite(model: Any, x: Tensor, batch: int) -> None:
    """Refuse a model whose scores on the clean data hold NaN or ±inf (its accuracy and every
    attack's result would be meaningless); label-only models are not checked."""
    if not model.has("scores"):
        return
    bad: list[int] = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            out = model.scores(x[s : s + batch], count=False)
            rows = (~torch.isfinite(out.reshape(out.shape[0], -1))).any(dim=1)
            bad.extend(int(i) + s for i in torch.nonzero(rows).flatten().tolist())
    if bad:
        raise DataError(
            f"model: its scores are NaN or infinite on {len(bad)} of the {x.shape[0]} clean samples (first: sample "
            f"{bad[0]}); check the weights (NaN after training?), model.mean/std and that the data lies in "
            "model.bounds"
        )


#: the key of the runner's own record of the clean per-sample outcomes
CLEAN_KEY = "core:clean_correct"


def outcomes_of(store: Store, audit_id: int) -> dict[Any, list[bool | None]] | None:
    """Per-sample outcomes of a stored audit, keyed like :attr:`Metric.key` (``None`` for audits
    stored before the clean outcomes were kept)."""
    records = store.records(audit_id)
    core = records.get(CLEAN_KEY)
    if core is None:
        return None
    by_study: dict[str, list[dict[str, Any]]] = {}
    for study, rec in records.values():
        if study != CORE_STUDY:
            by_study.setdefault(study, []).append(rec)
    return _outcomes(by_study, core[1]["clean_correct"])


def _outcomes(by_study: dict[str, list[dict[str, Any]]], clean_correct: Sequence[bool]) -> dict[Any, list[bool | None]]:
    """Per-sample outcomes from each study's records and the clean outcomes."""
    from gauntlet.audit.studies import get_study

    clean = [bool(c) for c in clean_correct]
    out: dict[Any, list[bool | None]] = {("clean_accuracy", ()): list(clean)}
    for name, recs in by_study.items():
        try:
            out.update(get_study(name).outcomes(recs, clean))
        except GauntletError:  # a study no longer installed: its metrics are compared unpaired
            continue
    return out


def execute(
    prep: Prepared,
    store: Store | None,
    *,
    executor: Executor | None = None,
    command: str = "",
    progress: ProgressCallback | None = None,
    resume: bool = True,
) -> tuple[AuditOutcome, int | None, bool, int]:
    """Run (or resume) the units of a prepared audit; returns ``(outcome, audit_id, resumed, reused)``.

    With ``store=None`` nothing is saved (and nothing can be resumed).  ``executor`` defaults to
    :class:`~gauntlet.audit.executors.LocalExecutor`.
    """
    spec, env = prep.spec, prep.env
    executor = executor if executor is not None else LocalExecutor()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    total = len(prep.tasks)
    audit_id: int | None = None
    resumed = False
    done: dict[str, dict[str, Any]] = {}
    if store is not None:
        audit_id, resumed = store.begin_audit(
            model_name=prep.model_info["name"],
            model_version=prep.model_info["version"],
            model_sha256=prep.model_info["sha256"],
            spec_hash=prep.spec_hash,
            data_sha256=prep.data_info["sha256"],
            data_name=prep.data_info["name"],
            units_total=total,
            spec_json=json.dumps(spec.model_dump(mode="json"), sort_keys=True),
            command=command,
            resume=resume,
        )
        if resumed:
            by_key = {t.key: t.study.name for t in prep.tasks}
            done = {k: rec for k, (study, rec) in store.records(audit_id).items() if by_key.get(k) == study}
        if env.clean_pred is not None:  # per-sample clean outcomes: what a later audit's regression test pairs with
            store.add_record(audit_id, CLEAN_KEY, CORE_STUDY, {"clean_correct": (env.clean_pred == env.y).tolist()})
    emit = progress or (lambda event: None)
    reused = sum(1 for t in prep.tasks if t.key in done)
    try:
        emit(ProgressEvent("units", reused, total, reused, "resumed" if reused else "starting"))
        env.model.warm_up(env.x)  # build the model's fast paths once, before the first unit (their cost is reported)
        if env.clean_pred is None:
            _reseed(env.model, spec.seed)
            env.clean_pred = predict_batched(env.model, env.x, spec.batch_size)
        # the cheapest units first (a stable sort: plan order among equals)
        pending = sorted((t for t in prep.tasks if t.key not in done), key=lambda t: t.cost)
        count = reused

        def on_done(task: Task, record: dict[str, Any]) -> None:
            nonlocal count
            # the fresh record equals what the store gives back on resume (JSON round trip)
            record = json.loads(json.dumps(record, allow_nan=True))
            if store is not None and audit_id is not None:
                store.add_record(audit_id, task.key, task.study.name, record)
            done[task.key] = record
            count += 1
            emit(ProgressEvent("units", count, total, reused, task.describe(), task.study.name))

        executor.run(env, pending, on_done)

        clean = (env.clean_pred == env.y).tolist()
        sections: dict[str, Any] = {}
        flags: list[dict[str, Any]] = []
        by_study: dict[str, list[dict[str, Any]]] = {}
        for study in prep.studies:
            emit(ProgressEvent("merge", total, total, reused, f"{study.name}: report sections", study.name))
            records = by_study[study.name] = [done[t.key] for t in prep.tasks if t.study is study]
            out = study.merge(env, records, clean)
            sections.update(out.sections)
            flags.extend(out.flags)
        for study in prep.studies:  # flags that compare one study's numbers with another's
            flags.extend(study.cross_flags(sections))
        from gauntlet.audit.flags import execution_flags

        execution = env.model.execution()  # the fast paths and their build cost (None: an adapter without)
        flags.extend(execution_flags(execution))
    except BaseException as exc:
        if store is not None and audit_id is not None:
            try:  # interrupted: still unfinished, and free for any process to resume
                store.release(audit_id) if isinstance(exc, KeyboardInterrupt) else store.fail_audit(audit_id)
            except GauntletError:  # pragma: no cover - the original error matters more
                pass
        raise
    manifest = _manifest(prep, store, executor, command, started, audit_id, total, reused)
    manifest["execution"] = execution
    outcome = AuditOutcome(
        spec=spec,
        model_info=dict(prep.model_info),
        data_info=dict(prep.data_info),
        clean_correct=clean,
        sections=sections,
        flags=flags,
        manifest=manifest,
        store_audit_id=audit_id,
        records=by_study,
    )
    return outcome, audit_id, resumed, reused


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("gauntlet", "torch", "numpy", "scipy", "scikit-learn", "pydantic", "pyyaml", "sqlalchemy", "rich", "typer"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _manifest(
    prep: Prepared,
    store: Store | None,
    executor: Executor,
    command: str,
    started: str,
    audit_id: int | None,
    total: int,
    reused: int,
) -> dict[str, Any]:
    spec = prep.spec
    plan: dict[str, Any] = {"units": total, "batch_size": spec.batch_size, "studies": {}}
    for study in prep.studies:
        plan["studies"][study.name] = study.manifest([t.unit for t in prep.tasks if t.study is study])
    return {
        "gauntlet_version": _versions().get("gauntlet"),
        "packages": _versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "command": command,
        "spec": spec.model_dump(mode="json"),
        "spec_file": spec.source,
        "spec_hash": prep.spec_hash,
        "seeds": {
            "spec": spec.seed,
            "data_subset": spec.data.seed,
            "units": "sha256(f'{spec.seed}/{unit key}')[:8] mod 2**31-1, per unit of every study",
            "defense": "a randomized defense's noise is reseeded with the unit's seed before every unit",
        },
        "plan": plan,
        "executor": executor.describe(),
        "defense": prep.env.defense_info,
        "store": safe_url(store.url) if store is not None else None,
        "audit_id": audit_id,
        "units_reused": reused,
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------------
# the whole command
def write_reports(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` atomically (temp file, then rename)."""
    from gauntlet.audit.html import render_html

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "html": out / "report.html"}
        texts = {"json": json.dumps(report, indent=2), "html": render_html(report)}
        for kind, path in paths.items():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(texts[kind], encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r}: cannot write the report ({exc.strerror or exc}); pass a writable folder") from None
    return paths


def _check_out_dir(out: Path) -> None:
    """Fail early (before any work is stored) when the report folder cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder for report.json and report.html")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {str(probe)!r} is not a folder; pass a writable folder")
    # try it (os.access says yes to root on a read-only file system): a file made and removed at once
    try:
        fd, tmp = tempfile.mkstemp(prefix=".gauntlet-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(
            f"--out {str(out)!r}: {str(probe)!r} is not writable ({exc.strerror or type(exc).__name__}); pass a writable folder"
        ) from None


def _baseline(st: Store | None, prep: Prepared, baseline: int | None) -> tuple[int, dict[str, Any]] | None:
    """The report ``--max-regression`` compares against, found before any unit runs."""
    if baseline is not None:
        if isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 1:
            raise ConfigError(f"--baseline must be an audit id >= 1 (gauntlet history lists them), got {baseline!r}")
        if st is None:
            raise ConfigError("--baseline needs a store to read the baseline audit from; pass --store")
        return baseline, st.get_report(baseline)
    if st is None:
        return None
    name, data = prep.model_info["name"], prep.data_info["sha256"]
    same = st.previous_report(name, data_sha256=data, passed=True)
    if same is not None:
        return same
    other = st.previous_report(name, passed=True)
    if other is not None:
        raise ConfigError(
            f"--max-regression: no earlier audit of {name!r} that passed its gate used this data; the last one, "
            f"#{other[0]}, audited other data ({(other[1].get('data') or {}).get('name')}), so a difference would "
            f"not be a regression; pass --baseline {other[0]} to compare against it anyway"
        )
    return None


#: how many earlier audits a report's trends show
HISTORY_LENGTH = 10


def _history(
    st: Store,
    prep: Prepared,
    report: dict[str, Any],
    previous: tuple[int, dict[str, Any]] | None,
    audit_id: int | None,
    max_regression: float | None,
    alpha: float | None,
    outcomes: Callable[[], Mapping[Any, Any]],
) -> dict[str, Any] | None:
    """The report's ``history``: this audit against its baseline (the gate's, else the last audit of
    the model name that did not fail its gate on the same data) — the same rows ``gauntlet compare``
    prints — and, per headline metric, its values over the last audits of this model and data."""
    from gauntlet.audit.gate import compare_reports, metrics_of

    name, data = prep.model_info["name"], prep.data_info["sha256"]
    if previous is None:
        previous = st.previous_report(name, before=audit_id, data_sha256=data, passed=True)
    outcomes_before = outcomes_of(st, previous[0]) if previous is not None and alpha is not None else None
    outcomes_now = outcomes() if outcomes_before is not None else None
    earlier = st.reports(name, data_sha256=data, before=audit_id, limit=HISTORY_LENGTH)
    if previous is None and not earlier:
        return None
    out: dict[str, Any] = {"baseline_audit_id": None, "rows": [], "clean_accuracy": None, "trend": []}
    if previous is not None:
        cmp = compare_reports(
            previous[1], report, max_regression or 0.0, alpha=alpha, outcomes_a=outcomes_before, outcomes_b=outcomes_now
        )
        out.update(
            baseline_audit_id=previous[0], same_data=cmp["same_data"], max_regression=max_regression,
            rows=cmp["rows"], clean_accuracy=cmp["clean_accuracy"],
        )
    series = [(i, r) for i, r in earlier] + [(audit_id, report)]
    heads = [m for m in metrics_of(report) if m.headline]
    trend = [{"what": "clean accuracy", "metric": "clean_accuracy", "labels": {},
              "points": [{"audit_id": i, "value": r.get("clean_accuracy")} for i, r in series]}]
    for m in heads:
        points = []
        for i, r in series:
            other = next((x for x in metrics_of(r) if x.matches(m.name, m.labels)), None)
            points.append({"audit_id": i, "value": other.value if other is not None else None})
        trend.append({"what": m.what, "metric": m.name, "labels": dict(m.labels), "points": points})
    out["trend"] = trend
    return out


def run_audit(
    spec: AuditSpec,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    store: str | None = DEFAULT_STORE_URL,
    fail_under: Sequence[Any] = (),
    max_regression: float | None = None,
    trust: bool | None = None,
    progress: ProgressCallback | None = None,
    command: str | None = None,
    resume: bool = True,
    executor: Executor | str | None = None,
    baseline: int | None = None,
    alpha: float | None = 0.05,
) -> AuditRun:
    """Run an audit end to end: check, run or resume the units, build the report, apply the gate,
    write ``report.json``/``report.html`` into ``out_dir`` and record the audit in ``store``.

    Args:
        spec: from :func:`gauntlet.audit.load_spec`.
        out_dir: where the reports go (nothing written when ``None``).
        store: SQLAlchemy URL of the results store, or ``None`` for no store (no resume, no history).
        fail_under: extra gate thresholds (CLI ``--fail-under``), on top of ``spec.thresholds``.
        max_regression: largest allowed drop of a metric (a fraction, 0.02 = 2 pp) against the
            baseline: the last audit of the same model name in the store that did not fail its
            gate, on the same data.  When the only such audits used other data, the audit is
            refused (``ConfigError``) before anything runs, unless ``baseline`` names one.
        baseline: the audit id to compare against (CLI ``--baseline``), any data.
        alpha: a drop beyond ``max_regression`` is a regression only when it is also significant
            at this level (CLI ``--alpha``): paired per sample with the same data (exact McNemar),
            else from the two proportions (Newcombe).  ``None``: the drop alone decides.
        trust: override ``spec.model.trust`` (CLI ``--trust``).
        progress: called with a :class:`ProgressEvent` after every unit and phase.
        command: the command line, recorded in the manifest and the store.
        executor: where units run: ``"local"`` (default), ``"ray"``, ``"auto"`` (the faster of the
            two on this machine, :class:`~gauntlet.audit.executors.AutoExecutor`) or an
            :class:`~gauntlet.audit.executors.Executor` (e.g. ``RayExecutor(address=..., workers=2)``).
            It is started before anything is written, so an unreachable cluster leaves the store
            untouched; one given by name is closed at the end, one given as an object is left
            open for the caller's next audit (close it yourself).
    """
    from gauntlet.audit.gate import evaluate_gate
    from gauntlet.audit.report import build_report
    from gauntlet.audit.verdict import build_verdict

    command = command if command is not None else " ".join(sys.argv)
    from gauntlet.audit.executors import make_executor

    prep = prepare(spec, trust=trust, fail_under=fail_under)
    if out_dir is not None:
        _check_out_dir(Path(out_dir))
    # an executor given by name is ours to close; a caller's object stays open for its next audit
    owned = not isinstance(executor, Executor)
    ex = executor if isinstance(executor, Executor) else make_executor(executor or "local")
    ex.start()
    st = None
    try:
        st = open_store(store) if store is not None else None
        previous = _baseline(st, prep, baseline) if max_regression is not None or baseline is not None else None
        outcome, audit_id, resumed, reused = execute(
            prep, st, executor=ex, command=command, progress=progress, resume=resume
        )
        emit = progress or (lambda event: None)
        emit(ProgressEvent("report", len(prep.tasks), len(prep.tasks), reused, "writing the report"))
        report = build_report(outcome)
        # per-sample outcomes pair the two audits for the significance test: the baseline's from the
        # store, this audit's from the records in hand
        mine = functools.cache(lambda: _outcomes(outcome.records, outcome.clean_correct))
        before = outcomes_of(st, previous[0]) if previous is not None and st is not None and alpha is not None else None
        gate = evaluate_gate(
            report,
            list(spec.thresholds) + list(fail_under),
            previous[1] if previous else None,
            max_regression,
            alpha=alpha,
            outcomes_previous=before,
            outcomes=mine() if before is not None else None,
            accepted_flags={a.flag: a.reason for a in spec.accept_flags},
        )
        for f in report["flags"]:  # the team's acknowledgement, shown beside the flag
            reason = next((a.reason for a in spec.accept_flags if a.flag == f.get("id")), None)
            if reason is not None:
                f["accepted"] = reason
        if max_regression is not None or baseline is not None:
            gate["baseline_audit_id"] = previous[0] if previous else None
        report["gate"] = gate
        headline = next((h for s in prep.studies if (h := s.headline(report)) is not None), None)
        report["headline_eps"] = headline.get("eps") if headline is not None else None
        history = None if st is None else _history(
            st, prep, report, previous, audit_id, max_regression, alpha, mine,
        )
        if history is not None:
            report["history"] = history
        report["verdict"] = build_verdict(report, headline)
        try:
            paths = write_reports(report, out_dir) if out_dir is not None else {}
        except GauntletError:
            if st is not None and audit_id is not None:  # not left "running": the rerun resumes it
                st.fail_audit(audit_id)
            raise
        if st is not None and audit_id is not None:
            st.finish_audit(audit_id, report)
        emit(ProgressEvent("done", len(prep.tasks), len(prep.tasks), reused, "done"))
        return AuditRun(outcome, report, audit_id, resumed, reused, paths)
    finally:
        if st is not None:
            st.close()
        if owned:
            ex.close()

