"""The runner: spec → model and data → plan → units (saved one by one) → report → gate.

:func:`run_audit` is the whole ``gauntlet audit`` command as a library call.  It is resumable:
each finished unit is committed to the store at once, and running the same audit again (same
model file, data and spec) continues the unfinished audit from its finished units instead of
starting over; since every unit's seed derives from the spec and the unit, the final report is
the one an uninterrupted run would have written.

Nothing is written to the store before the spec, the model and the data have been checked, so
a bad spec, an unreadable model or data of the wrong shape leaves the store untouched.  The
library never prints: progress goes to an optional callback (the CLI draws a bar with it).

Defenses (``model.defense``, ``certify``, ``detect`` in the spec): the audited model is the
preprocessing defense's adaptive (BPDA + EOT) wrap and naive units attack its naive wrap;
certification runs on the undefended model in chunks of ``batch_size`` samples and detection fits
its detector on the first ``calibration`` samples and evaluates it on the rest.  Each finished
certification chunk and detection result is committed to the store's ``extras`` table, so an
interrupted audit resumes without redoing them.  A randomized wrap is reseeded from the unit's
seed before every unit, so its noise too is the same whenever the unit runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gauntlet.audit.plan import (
    CertifyChunk,
    DetectTask,
    Unit,
    make_certify_plan,
    make_detect_plan,
    make_plan,
    unit_seed,
)
from gauntlet.audit.records import AuditOutcome, UnitRecord, is_naive
from gauntlet.audit.spec import (
    AttackChoice,
    AuditSpec,
    DefenseChoice,
    ThresholdSpec,
    check_threshold,
    resolve_attacks,
    resolve_certify,
    resolve_defense,
    resolve_detect,
    spec_hash,
)
from gauntlet.audit.store import DEFAULT_STORE_URL, Store, open_store, safe_url
from gauntlet.errors import CapabilityError, ConfigError, DataError, GauntletError, ModelLoadError

__all__ = [
    "AuditOutcome",
    "AuditRun",
    "Prepared",
    "ProgressEvent",
    "UnitRecord",
    "execute",
    "prepare",
    "run_audit",
    "write_reports",
]

GALLERY_SIZE = 6


@dataclass(frozen=True)
class ProgressEvent:
    """What the runner reports to a progress callback.

    ``phase`` is ``"units"`` while units run (``done`` of ``total`` units, ``reused`` of them
    read back from the store), ``"certify"`` while certification chunks run and ``"detect"``
    while detectors are evaluated (``done`` of ``total`` chunks / detectors, ``reused`` read
    back), then ``"flags"``, ``"report"`` and ``"done"``.
    """

    phase: str
    done: int
    total: int
    reused: int = 0
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class Prepared:
    """A checked spec with its model, data and plan loaded; nothing written anywhere yet."""

    spec: AuditSpec
    attacks: list[AttackChoice]
    model: Any
    x: Tensor
    y: Tensor
    model_info: dict[str, Any]
    data_info: dict[str, Any]
    units: list[Unit]
    spec_hash: str
    #: the undefended model (the loaded file); equals ``model`` when the spec has no defense
    base_model: Any = None
    #: the naive wrap of ``model.defense`` (``None`` without a defense)
    naive_model: Any = None
    #: ``{name, params, randomized, eot_samples}`` of ``model.defense`` (``None`` without one)
    defense_info: dict[str, Any] | None = None
    certify_chunks: list[CertifyChunk] = field(default_factory=list)
    detect_tasks: list[DetectTask] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.base_model is None:
            self.base_model = self.model


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
        return bool(self.report.get("gate", {}).get("passed", True))

    @property
    def exit_code(self) -> int:
        """0 when the gate passed, 1 when it failed."""
        return 0 if self.passed else 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _prefixed(err: GauntletError, place: str) -> GauntletError:
    msg = str(err)
    try:
        return type(err)(msg if msg.startswith(place) else f"{place}: {msg}")
    except Exception:  # pragma: no cover - exotic subclasses
        return err


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
        h.update(a.numpy())  # buffer protocol: no copy of the data
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# prepare: everything that can fail on user input, before the store is touched
def prepare(spec: AuditSpec, *, trust: bool | None = None, fail_under: Sequence[ThresholdSpec] = ()) -> Prepared:
    """Load and check the model and the data for ``spec`` and make the plan.

    Raises a :class:`~gauntlet.errors.GauntletError` (message prefixed ``model:`` / ``data:`` /
    ``attacks[i]:`` / ``model.defense:`` / ``certify[i]:`` / ``detect[i]:``) for an unreadable
    model, data the model cannot take, attacks, a defense, a certification method or a detector
    the model cannot be used with, or a detector calibration that leaves nothing to evaluate.
    Certification methods are tried on one sample (smoothing with one noise draw).  Writes nothing.
    """
    from gauntlet.data import load as load_data
    from gauntlet.models import load as load_model

    attacks = resolve_attacks(spec)
    defense = resolve_defense(spec)
    certify = resolve_certify(spec)
    detect = resolve_detect(spec, attacks)
    for i, th in enumerate(fail_under):
        check_threshold(spec, th, f"--fail-under {th.describe()!r}", attacks)
    m = spec.model
    path = spec.model_path()
    try:
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
    except Exception as exc:  # a loader's own failure on a strange file
        raise ModelLoadError(f"model: cannot load {str(path)!r} ({type(exc).__name__}: {_first_line(exc)})") from None
    base_model = model
    naive_model = None
    defense_info = None
    if defense is not None:
        model, naive_model, defense_info = _wrap_defense(defense, base_model, spec.seed)

    for a in attacks:
        from gauntlet.attacks import get_attack_class

        missing = get_attack_class(a.name).requires - model.capabilities
        if missing:
            raise CapabilityError(
                f"{a.place}: {a.name} needs {', '.join(sorted(missing))} but the model offers only "
                f"{', '.join(sorted(model.capabilities))}; use a score- or decision-based attack such as 'square'"
            )

    d = spec.data
    try:
        ds = load_data(spec.data_source(), split=d.split, n=d.n, seed=d.seed, **d.options)
    except GauntletError as err:
        raise _prefixed(err, "data") from None
    except Exception as exc:
        raise DataError(f"data: cannot load {str(spec.data_source())!r} ({type(exc).__name__}: {_first_line(exc)})") from None
    x, y = ds.x, ds.y.to(torch.int64)
    if x.dtype.is_floating_point and x.dtype != model.input_spec.dtype:
        x = x.to(model.input_spec.dtype)
    x = x.to(model.device)
    y = y.to(model.device)
    _check_data(model, x, y)

    digest = spec_hash(spec)
    model_info = {
        "name": m.display_name,
        "version": m.version,
        "sha256": file_sha256(path),
        "path": str(m.path),
        "capabilities": sorted(model.capabilities),
        "num_classes": model.num_classes,
        "bounds": list(model.bounds),
        "output": getattr(model, "output", None),
    }
    data_info = {
        "name": d.name if d.name is not None else Path(d.path or "").name,
        "n": int(x.shape[0]),
        "sha256": data_sha256(x, y),
        "shape": list(x.shape[1:]),
        "split": d.split,
        "seed": d.seed,
    }
    n = int(x.shape[0])
    units = make_plan(spec, n, attacks)
    chunks = make_certify_plan(spec, n, certify)
    tasks = make_detect_plan(spec, n, detect)
    _check_certify(chunks, base_model, x, y)
    _check_detect(tasks, base_model, y)
    return Prepared(
        spec, attacks, model, x, y, model_info, data_info, units, digest,
        base_model=base_model, naive_model=naive_model, defense_info=defense_info,
        certify_chunks=chunks, detect_tasks=tasks,
    )


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


def _check_certify(chunks: list[CertifyChunk], model: Any, x: Tensor, y: Tensor) -> None:
    """Fail before anything is stored when a certification method cannot handle the model: run it
    on one sample (randomized smoothing with a single noise draw)."""
    seen: set[int] = set()
    for chunk in chunks:
        c = chunk.choice
        if c.index in seen:
            continue
        seen.add(c.index)
        params = {**c.params, "n0": 1, "n": 1} if c.name == "randomized_smoothing" else c.params
        try:
            from gauntlet.defenses.registry import create

            create(c.name, **params).certify(model, x[:1], y[:1], seed=0)
        except GauntletError as err:
            raise _prefixed(err, c.place) from None


def _split_calibration(detector: Any, calibration: int) -> int:
    """How many of the ``calibration`` samples fit the detector's statistics; the rest set its
    threshold.  Detectors that learn statistics from clean data (``mahalanobis``) get half, since a
    threshold calibrated on the points the statistics were fitted on under-states the false-positive
    rate; detectors without statistics use every calibration sample for both."""
    from gauntlet.defenses.detection._base import Detector

    learns = type(detector)._fit_statistics is not Detector._fit_statistics
    return calibration - calibration // 2 if learns else calibration


def _check_detect(tasks: list[DetectTask], model: Any, y: Tensor) -> None:
    n = int(y.shape[0])
    for task in tasks:
        c = task.choice
        if task.calibration >= n:
            raise ConfigError(
                f"{c.place}.calibration: must be < the {n} audited samples so that samples remain to evaluate the "
                f"detector on, got {task.calibration}"
            )
        if task.calibration < 2:
            raise ConfigError(f"{c.place}.calibration: needs at least 2 of the {n} audited samples, got {task.calibration}")
        det = c.create()
        try:
            det._check_model_type(model, c.place)
            det._check_model(model)
        except GauntletError as err:
            raise _prefixed(err, c.place) from None
        fit_n = _split_calibration(det, task.calibration)
        if getattr(det, "needs_labels", False) and int(torch.unique(y[:fit_n]).numel()) < 2:
            raise ConfigError(
                f"{c.place}.calibration: the first {fit_n} samples {c.name} is fitted on hold a single class; "
                "raise calibration"
            )


def _check_data(model: Any, x: Tensor, y: Tensor) -> None:
    from gauntlet.attacks.base import check_batch

    check_batch(x, model, where="data")
    try:
        with torch.no_grad():
            out = model.scores(x[:2], count=False) if model.has("scores") else model.predict(x[:2], count=False)
    except GauntletError as err:
        raise _prefixed(err, "data") from None
    except Exception as exc:
        raise DataError(
            f"data: the model cannot take inputs of shape {tuple(x.shape[1:])} ({type(exc).__name__}: "
            f"{_first_line(exc)}); check the data and model.input_shape"
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
# execute: units → store → outcome
def _reseed(model: Any, seed: int) -> None:
    """Restart a randomized wrapper's noise stream (a no-op for other models)."""
    reseed = getattr(model, "reseed", None)
    if callable(reseed):
        reseed(seed)


def _run_unit(model: Any, x: Tensor, y: Tensor, unit: Unit, clean_pred: Tensor | None = None) -> UnitRecord:
    attack = unit.create_attack()
    _reseed(model, unit.seed)
    sl = slice(unit.start, unit.stop)
    res = attack.run(model, x[sl], y[sl], seed=unit.seed, clean_pred=None if clean_pred is None else clean_pred[sl])
    success = res.success.reshape(len(unit.eps), -1)
    norms = res.norms.reshape(len(unit.eps), -1)
    return UnitRecord(
        attack=unit.attack_label,
        attack_name=unit.attack_name,
        params=json.loads(json.dumps(unit.params, default=str)),
        norm=unit.norm,
        eps=tuple(unit.eps),
        start=unit.start,
        stop=unit.stop,
        success=[[bool(b) for b in row] for row in success.tolist()],
        norms=[[float(v) for v in row] for row in norms.float().tolist()],
        queries=int(res.queries),
        grad_evals=int(res.grad_evals),
        seconds=float(res.seconds),
    )


def _certify_chunk(model: Any, x: Tensor, y: Tensor, chunk: CertifyChunk) -> dict[str, Any]:
    """Certify samples ``chunk.start:chunk.stop``; a JSON-able record of the per-sample results."""
    from gauntlet.audit.report import _jsonable

    certifier = chunk.choice.create()
    sl = slice(chunk.start, chunk.stop)
    cert = certifier.certify(model, x[sl], y[sl], seed=chunk.seed)
    params = {k: v for k, v in cert.params.items() if k != "seed"}
    out = {
        "method": cert.method,
        "norm": cert.norm,
        "start": chunk.start,
        "stop": chunk.stop,
        "prediction": [int(v) for v in cert.prediction.tolist()],
        "radius": [float(v) for v in cert.radius.double().tolist()],
        "params": _jsonable(params),
        "seconds": float(cert.seconds),
    }
    if "max_radius" in cert.info:
        out["max_radius"] = float(cert.info["max_radius"])
    return out


def _merge_certification(prep: Prepared, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report entry per ``certify`` item from its chunks: the certified-accuracy-vs-radius
    curve, the abstention rate and the average certified radius over all audited samples."""
    from gauntlet.defenses.certify import Certification

    out = []
    choices = {c.choice.index: c.choice for c in prep.certify_chunks}
    for index, choice in choices.items():
        recs = sorted(
            (r for c, r in zip(prep.certify_chunks, records) if c.choice.index == index), key=lambda r: r["start"]
        )
        if not recs:
            continue
        pred = torch.tensor([p for r in recs for p in r["prediction"]], dtype=torch.int64)
        radius = torch.tensor([v for r in recs for v in r["radius"]], dtype=torch.float64)
        y = prep.y.detach().cpu().to(torch.int64)[: pred.shape[0]]
        params = dict(recs[0]["params"])
        cert = Certification(
            method=recs[0]["method"], norm=recs[0]["norm"], prediction=pred, radius=radius, y=y,
            params=params, seconds=sum(float(r["seconds"]) for r in recs),
        )
        curve = cert.curve(list(choice.radii) if choice.radii is not None else None)
        correct = (pred == y) & ~cert.abstained
        entry: dict[str, Any] = {
            "method": cert.method,
            "norm": cert.norm,
            "params": params,
            "model": "base",
            "n": len(cert),
            "curve": [[float(r), float(a)] for r, a in curve],
            "certified_accuracy": cert.certified_accuracy(0.0),
            "abstain_rate": float(cert.abstained.double().mean()) if len(cert) else 0.0,
            "average_certified_radius": float(torch.where(correct, radius, torch.zeros_like(radius)).mean()) if len(cert) else 0.0,
            "seconds": cert.seconds,
            "chunks": len(recs),
        }
        if any("max_radius" in r for r in recs):
            entry["max_radius"] = max(float(r.get("max_radius", 0.0)) for r in recs)
        out.append(entry)
    return out


def _detect_task(model: Any, x: Tensor, y: Tensor, task: DetectTask, batch_size: int) -> dict[str, Any]:
    """Fit and calibrate ``detect[i]`` on samples ``0:calibration``, evaluate it on the rest."""
    import time

    t0 = time.perf_counter()
    c = task.choice
    det = c.create()
    cal = task.calibration
    fit_n = _split_calibration(det, cal)
    det.fit(
        model, x[:fit_n], y[:fit_n], fpr=c.fpr, batch_size=batch_size,
        x_calibration=x[fit_n:cal] if fit_n < cal else None,
    )
    attacks = {a.key: a.create() for a in c.attacks}
    rep = det.evaluate(model, x[cal:], y[cal:], attacks, seed=task.seed, adaptive=c.adaptive)
    out = rep.to_dict()
    out["calibration_samples"] = cal
    out["fit_samples"] = fit_n
    out["seconds"] = time.perf_counter() - t0
    return out


def _trim_heap() -> None:
    """Give freed heap pages back to the OS between units (glibc only; a no-op elsewhere).

    Attacks that shrink their working batch (early stopping) allocate tensors of ever-changing
    sizes; glibc's allocator then keeps fragmented free pages resident, and without a trim the
    process's resident memory creeps up unit after unit although nothing is kept alive.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _clean_pred(model: Any, x: Tensor, batch: int) -> Tensor:
    """The model's labels on the clean data, computed once per audit and shared by every unit."""
    return torch.cat([model.predict(x[s : s + batch], count=False) for s in range(0, x.shape[0], batch)])


def execute(
    prep: Prepared,
    store: Store | None,
    *,
    command: str = "",
    progress: ProgressCallback | None = None,
    resume: bool = True,
) -> tuple[AuditOutcome, int | None, bool, int]:
    """Run (or resume) the units of a prepared audit; returns ``(outcome, audit_id, resumed, reused)``.

    With ``store=None`` nothing is saved (and nothing can be resumed).
    """
    from gauntlet.audit.flags import compute_flags

    spec = prep.spec
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    total = len(prep.units)
    audit_id: int | None = None
    resumed = False
    done_records: dict[str, UnitRecord] = {}
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
            done_records = store.units(audit_id)
    emit = progress or (lambda event: None)
    records: list[UnitRecord] = []
    reused = 0
    reused_extras = 0
    try:
        emit(ProgressEvent("units", 0, total, 0, "starting"))
        _reseed(prep.model, spec.seed)
        clean_pred = _clean_pred(prep.model, prep.x, spec.batch_size)
        for i, unit in enumerate(prep.units):
            rec = done_records.get(unit.key)
            if rec is not None:
                reused += 1
            else:
                model = prep.naive_model if unit.naive else prep.model
                rec = _run_unit(model, prep.x, prep.y, unit, clean_pred)
                _trim_heap()
                if store is not None and audit_id is not None:
                    store.add_unit(audit_id, unit.key, rec, targeted=unit.targeted)
                # the fresh record equals what the store gives back on resume (JSON round trip)
            records.append(rec)
            emit(ProgressEvent("units", i + 1, total, reused, unit.describe()))

        done_extras = store.extras(audit_id) if (store is not None and audit_id is not None and resumed) else {}

        def extras(kind: str, items: list[Any], compute: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
            """Each certification chunk / detection task: reused from the store or computed and saved."""
            nonlocal reused_extras
            out: list[dict[str, Any]] = []
            for k, item in enumerate(items):
                payload = done_extras.get(item.key)
                if payload is not None:
                    reused_extras += 1
                else:
                    # the fresh payload equals what the store gives back on resume (JSON round trip)
                    payload = json.loads(json.dumps(compute(item)))
                    if store is not None and audit_id is not None:
                        store.add_extra(audit_id, item.key, kind, payload)
                out.append(payload)
                emit(ProgressEvent(kind, k + 1, len(items), reused_extras, item.describe()))
            return out

        cert_records = extras("certify", prep.certify_chunks, lambda c: _certify_chunk(prep.base_model, prep.x, prep.y, c))
        certification = _merge_certification(prep, cert_records)
        detection = extras(
            "detect", prep.detect_tasks, lambda t: _detect_task(prep.base_model, prep.x, prep.y, t, spec.batch_size)
        )

        emit(ProgressEvent("flags", total, total, reused, "evaluation hygiene checks"))
        clean = (clean_pred == prep.y).tolist()
        _reseed(prep.model, spec.seed)
        flags = compute_flags(prep.model, prep.x, prep.y, records, clean, seed=spec.seed)
        _reseed(prep.model, spec.seed)
        gallery = _gallery(prep, [r for r in records if not is_naive(r.attack)], clean)
    except BaseException as exc:
        if store is not None and audit_id is not None and not isinstance(exc, KeyboardInterrupt):
            try:
                store.fail_audit(audit_id)
            except GauntletError:  # pragma: no cover - the original error matters more
                pass
        raise
    manifest = _manifest(prep, store, command, started, audit_id, total, reused, reused_extras)
    outcome = AuditOutcome(
        spec=spec,
        model_info=dict(prep.model_info),
        data_info=dict(prep.data_info),
        clean_correct=clean,
        units=records,
        flags=flags,
        gallery=gallery,
        manifest=manifest,
        store_audit_id=audit_id,
        defense=dict(prep.defense_info) if prep.defense_info is not None else None,
        certification=certification,
        detection=detection,
    )
    return outcome, audit_id, resumed, reused


def _gallery(prep: Prepared, records: list[UnitRecord], clean: list[bool]) -> list[dict[str, Any]]:
    """A few clean / adversarial pairs for image data, recomputed deterministically.

    The store keeps no adversarial inputs, so the examples are made again at the end of every
    run (same samples, same seed): the smallest ε of the first threat at which some attack fooled
    enough samples, and the attack that fooled the most there.
    """
    x, y, spec = prep.x, prep.y, prep.spec
    if x.dim() != 4 or x.shape[1] not in (1, 3, 4) or not records:
        return []
    threat = spec.threats[0]
    eps_sorted = sorted(threat.eps)
    n = x.shape[0]
    best: tuple[float, str, list[int]] | None = None
    for eps in eps_sorted:
        per_attack: dict[str, set[int]] = {}
        for r in records:
            if r.norm != threat.norm or eps not in r.eps:
                continue
            row = r.success[r.eps.index(eps)]
            hits = per_attack.setdefault(r.attack, set())
            hits.update(r.start + j for j, s in enumerate(row) if s and clean[r.start + j])
        if not per_attack:
            continue
        label, hits = max(per_attack.items(), key=lambda kv: len(kv[1]))
        if hits:
            best = (eps, label, sorted(hits))
            if len(hits) >= GALLERY_SIZE:
                break
    if best is None:
        return []
    eps, label, hits = best
    choice = next(a for a in prep.attacks if a.label == label)
    cand = hits[: 2 * GALLERY_SIZE]
    unit = Unit(
        key="gallery",
        attack_label=label,
        attack_name=choice.name,
        params=dict(choice.params),
        norm=threat.norm,
        eps=(eps,),
        targeted=threat.targeted,
        start=0,
        stop=len(cand),
        seed=unit_seed(spec.seed, "gallery"),
    )
    idx = torch.tensor(cand, dtype=torch.long, device=x.device)
    xs, ys = x[idx], y[idx]
    res = unit.create_attack().run(prep.model, xs, ys, seed=unit.seed)
    adv = res.x_adv.reshape(xs.shape)
    succ = res.success.reshape(-1)
    with torch.no_grad():
        p_clean = prep.model.predict(xs, count=False)
        p_adv = prep.model.predict(adv, count=False)
    out = []
    for j, i in enumerate(cand):
        if not bool(succ[j]):
            continue
        out.append(
            {
                "index": int(i),
                "label": int(ys[j]),
                "pred_clean": int(p_clean[j]),
                "pred_adv": int(p_adv[j]),
                "attack": label,
                "norm": threat.norm,
                "eps": float(eps),
                "x": _rounded(xs[j]),
                "x_adv": _rounded(adv[j]),
            }
        )
        if len(out) == GALLERY_SIZE:
            break
    return out


def _rounded(t: Tensor) -> Any:
    return torch.round(t.detach().float().cpu(), decimals=5).tolist()


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
    command: str,
    started: str,
    audit_id: int | None,
    total: int,
    reused: int,
    reused_extras: int = 0,
) -> dict[str, Any]:
    spec = prep.spec
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
            "units": "sha256(f'{spec.seed}/{unit key}')[:8] mod 2**31-1, per unit",
            "certify_detect": "the same formula with the key of each certification chunk / detection task",
            "defense": "a randomized defense's noise is reseeded with the unit's seed before every unit",
        },
        "plan": {
            "units": total,
            "batch_size": spec.batch_size,
            "attacks": [{"label": a.label, "name": a.name, "params": a.params, "preset": a.preset} for a in prep.attacks],
            "naive_units": sum(1 for u in prep.units if u.naive),
            "certify_chunks": len(prep.certify_chunks),
            "detect_tasks": len(prep.detect_tasks),
        },
        "defense": prep.defense_info,
        "store": safe_url(store.url) if store is not None else None,
        "audit_id": audit_id,
        "units_reused": reused,
        "extras_reused": reused_extras,
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
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: {str(probe)!r} is not writable; pass a writable folder")


def run_audit(
    spec: AuditSpec,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    store: str | None = DEFAULT_STORE_URL,
    fail_under: Sequence[ThresholdSpec] = (),
    max_regression: float | None = None,
    trust: bool | None = None,
    progress: ProgressCallback | None = None,
    command: str | None = None,
    resume: bool = True,
) -> AuditRun:
    """Run an audit end to end: check, run or resume the units, build the report, apply the gate,
    write ``report.json``/``report.html`` into ``out_dir`` and record the audit in ``store``.

    Args:
        spec: from :func:`gauntlet.audit.load_spec`.
        out_dir: where the reports go (nothing written when ``None``).
        store: SQLAlchemy URL of the results store, or ``None`` for no store (no resume, no history).
        fail_under: extra gate thresholds (CLI ``--fail-under``), on top of ``spec.thresholds``.
        max_regression: largest allowed drop in robust accuracy (a fraction, 0.02 = 2 pp) against
            the last finished audit of the same model name in the store.
        trust: override ``spec.model.trust`` (CLI ``--trust``).
        progress: called with a :class:`ProgressEvent` after every unit and phase.
        command: the command line, recorded in the manifest and the store.
    """
    from gauntlet.audit.gate import evaluate_gate
    from gauntlet.audit.report import build_report

    command = command if command is not None else " ".join(sys.argv)
    prep = prepare(spec, trust=trust, fail_under=fail_under)
    if out_dir is not None:
        _check_out_dir(Path(out_dir))
    st = open_store(store) if store is not None else None
    try:
        outcome, audit_id, resumed, reused = execute(prep, st, command=command, progress=progress, resume=resume)
        emit = progress or (lambda event: None)
        emit(ProgressEvent("report", len(prep.units), len(prep.units), reused, "writing the report"))
        report = build_report(outcome)
        previous = None
        if max_regression is not None and st is not None:
            previous = st.previous_report(prep.model_info["name"], before=audit_id)
        gate = evaluate_gate(
            report,
            list(spec.thresholds) + list(fail_under),
            previous[1] if previous else None,
            max_regression,
        )
        if max_regression is not None:
            gate["baseline_audit_id"] = previous[0] if previous else None
        report["gate"] = gate
        paths = write_reports(report, out_dir) if out_dir is not None else {}
        if st is not None and audit_id is not None:
            st.finish_audit(audit_id, report)
        emit(ProgressEvent("done", len(prep.units), len(prep.units), reused, "done"))
        return AuditRun(outcome, report, audit_id, resumed, reused, paths)
    finally:
        if st is not None:
            st.close()

