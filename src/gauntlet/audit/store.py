"""The results store: every model, audit and finished unit, in any SQLAlchemy database.

SQLite by default (``sqlite:///gauntlet.db``, a file in the working folder); any SQLAlchemy URL
works (``postgresql://user@host/db``).  Each finished unit of every study is one row of
``records(audit_id, key, study, json)``, committed in its own transaction the moment it is done
(by the driver process only, whatever the executor), and ``UNIQUE(audit_id, key)`` keeps a unit
from ever being stored twice, so a process killed at any moment loses at most the units it was
computing.  The store knows nothing of what a record holds: the study that wrote it reads it
back.  SQLite runs in WAL mode.

The ``units`` and ``extras`` tables of stores written before the study plug-ins (spec hash
schema 1) are kept as they are: their finished audits stay in the history, and opening such a
store adds the ``records`` table (``create_all`` creates missing tables and leaves existing ones
alone).  The same holds for the ``manifests`` table (data manifests, ``gauntlet data hash
--name``): a store opened read-only before it exists has no manifests, and the first
:meth:`Store.save_manifest` creates it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from typing_extensions import Self

from gauntlet.errors import StoreError

__all__ = ["CORE_STUDY", "DEFAULT_STORE_URL", "Store", "open_store", "safe_url"]

DEFAULT_STORE_URL = "sqlite:///gauntlet.db"
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "pymysql", "MySQLdb": "mysqlclient"}

_TABLES: Any = None
#: the ``study`` of records the runner keeps for itself (the clean per-sample outcomes), not units
CORE_STUDY = "core"


def _tables() -> Any:
    """The schema, built on first use (keeps ``import gauntlet.audit`` light)."""
    global _TABLES
    if _TABLES is None:
        from sqlalchemy import (
            Boolean,
            Column,
            Float,
            ForeignKey,
            Integer,
            MetaData,
            String,
            Table,
            Text,
            UniqueConstraint,
        )

        md = MetaData()
        models = Table(
            "models",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(255), nullable=False),
            Column("version", String(255), nullable=False, default=""),
            Column("sha256", String(64), nullable=False),
            UniqueConstraint("name", "version", "sha256", name="uq_models_identity"),
        )
        audits = Table(
            "audits",
            md,
            Column("id", Integer, primary_key=True),
            Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
            Column("spec_hash", String(64), nullable=False),
            Column("data_sha256", String(64), nullable=False),
            Column("data_name", String(255), nullable=False, default=""),
            Column("status", String(16), nullable=False),  # running | done | failed
            Column("created_at", String(32), nullable=False),
            Column("finished_at", String(32)),
            Column("units_total", Integer, nullable=False, default=0),
            Column("spec_json", Text),
            Column("report_json", Text),
            Column("command", Text),
        )
        units = Table(
            "units",
            md,
            Column("id", Integer, primary_key=True),
            Column("audit_id", Integer, ForeignKey("audits.id"), nullable=False, index=True),
            Column("key", String(64), nullable=False),
            Column("attack", String(255), nullable=False),
            Column("attack_name", String(255), nullable=False),
            Column("params_json", Text, nullable=False),
            Column("norm", String(8), nullable=False),
            Column("eps_json", Text, nullable=False),
            Column("targeted", Boolean, nullable=False, default=False),
            Column("start", Integer, nullable=False),
            Column("stop", Integer, nullable=False),
            Column("success_json", Text, nullable=False),
            Column("norms_json", Text, nullable=False),
            Column("queries", Integer, nullable=False),
            Column("grad_evals", Integer, nullable=False),
            Column("seconds", Float, nullable=False),
            Column("created_at", String(32), nullable=False),
            UniqueConstraint("audit_id", "key", name="uq_units_audit_key"),
        )
        Table(
            "extras",
            md,
            Column("id", Integer, primary_key=True),
            Column("audit_id", Integer, ForeignKey("audits.id"), nullable=False, index=True),
            Column("key", String(64), nullable=False),
            Column("kind", String(32), nullable=False),  # certify | detect
            Column("json", Text, nullable=False),
            Column("created_at", String(32), nullable=False),
            UniqueConstraint("audit_id", "key", name="uq_extras_audit_key"),
        )
        Table(  # which process is working on an unfinished audit (at most one: no two merge into one)
            "leases",
            md,
            Column("audit_id", Integer, ForeignKey("audits.id"), primary_key=True),
            Column("owner", String(255), nullable=False),  # host:pid
            Column("since", String(32), nullable=False),
        )
        Table(
            "records",
            md,
            Column("id", Integer, primary_key=True),
            Column("audit_id", Integer, ForeignKey("audits.id"), nullable=False, index=True),
            Column("key", String(64), nullable=False),
            Column("study", String(64), nullable=False),
            Column("json", Text, nullable=False),
            Column("created_at", String(32), nullable=False),
            UniqueConstraint("audit_id", "key", name="uq_records_audit_key"),
        )
        Table(  # data manifests (gauntlet data hash --name --version): one per dataset name and version
            "manifests",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(255), nullable=False, index=True),
            Column("version", String(255), nullable=False),
            Column("sha256", String(64), nullable=False),  # the manifest's dataset_sha256
            Column("files", Integer, nullable=False),
            Column("bytes", Integer, nullable=False),
            Column("created_at", String(32), nullable=False),
            Column("manifest_json", Text, nullable=False),
            UniqueConstraint("name", "version", name="uq_manifests_name_version"),
        )
        _TABLES = (md, models, audits, units)
    return _TABLES


def _records_table() -> Any:
    return _tables()[0].tables["records"]


def _manifests_table() -> Any:
    return _tables()[0].tables["manifests"]


def _owner() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether the process that holds a lease still runs.  On this host: its pid exists; on
    another host we cannot tell, so the lease is held (a dead remote owner's audit is not resumed
    from here — start it with the same command on that host, or a new audit starts)."""
    import socket

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and reports."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any unparseable URL is masked whole, never echoed
        return "<unparseable store URL>"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Store:
    """A results store at an SQLAlchemy URL; open it with :func:`open_store`."""

    def __init__(self, url: str, engine: Any, owner: str | None = None) -> None:
        self.url = url
        self.engine = engine
        #: ``host:pid`` of this process: whose lease an audit this store starts or resumes holds
        self.owner = owner or _owner()

    # -- plumbing ------------------------------------------------------------------------------
    @contextmanager
    def _tx(self, what: str) -> Iterator[Any]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"store {safe_url(self.url)}: cannot {what} ({_first_line(exc)})") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models and audits ----------------------------------------------------------------------
    def begin_audit(
        self,
        *,
        model_name: str,
        model_version: str | None,
        model_sha256: str,
        spec_hash: str,
        data_sha256: str,
        data_name: str,
        units_total: int,
        spec_json: str,
        command: str,
        resume: bool = True,
    ) -> tuple[int, bool]:
        """The audit to write into: the newest unfinished audit with the same model, data and spec
        that no running process holds (resumed), or a new one.  Returns ``(audit_id, resumed)``.

        The caller holds the audit's lease until :meth:`finish_audit` / :meth:`fail_audit` /
        :meth:`release`: a second identical audit started meanwhile (another process) gets an audit
        of its own instead of writing into this one.  A lease whose process died (``kill -9``) is
        taken over, which is how the same command resumes.
        """
        from sqlalchemy import delete, insert, select
        from sqlalchemy.exc import IntegrityError

        _, models, audits, units = _tables()
        leases = _tables()[0].tables["leases"]
        me = self.owner
        version = model_version or ""
        with self._tx("start the audit") as conn:
            row = conn.execute(
                select(models.c.id).where(
                    models.c.name == model_name, models.c.version == version, models.c.sha256 == model_sha256
                )
            ).first()
            model_id = row[0] if row else conn.execute(
                insert(models).values(name=model_name, version=version, sha256=model_sha256)
            ).inserted_primary_key[0]
            if resume:
                row = conn.execute(
                    select(audits.c.id)
                    .where(
                        audits.c.model_id == model_id,
                        audits.c.spec_hash == spec_hash,
                        audits.c.data_sha256 == data_sha256,
                        audits.c.status != "done",
                        # an audit begun before the records table kept its units in the legacy
                        # tables, which are no longer read: it is not resumed, a new one starts
                        audits.c.id.not_in(select(units.c.audit_id)),
                        audits.c.id.not_in(select(_tables()[0].tables["extras"].c.audit_id)),
                    )
                    .order_by(audits.c.id.desc())
                ).all()
                for (candidate,) in row:
                    held = conn.execute(select(leases.c.owner).where(leases.c.audit_id == candidate)).first()
                    if held is not None and held[0] != me and _alive(held[0]):
                        continue  # another process is running it: not ours to write into
                    if held is not None:
                        taken = conn.execute(
                            leases.update()
                            .where(leases.c.audit_id == candidate, leases.c.owner == held[0])
                            .values(owner=me, since=_now())
                        ).rowcount
                    else:
                        try:
                            with conn.begin_nested():
                                conn.execute(insert(leases).values(audit_id=candidate, owner=me, since=_now()))
                            taken = 1
                        except IntegrityError:  # another process took it this very moment
                            taken = 0
                    if taken != 1:
                        continue
                    conn.execute(audits.update().where(audits.c.id == candidate).values(status="running", command=command))
                    return int(candidate), True
            audit_id = conn.execute(
                insert(audits).values(
                    model_id=model_id,
                    spec_hash=spec_hash,
                    data_sha256=data_sha256,
                    data_name=data_name,
                    status="running",
                    created_at=_now(),
                    units_total=units_total,
                    spec_json=spec_json,
                    command=command,
                )
            ).inserted_primary_key[0]
            conn.execute(delete(leases).where(leases.c.audit_id == audit_id))
            conn.execute(insert(leases).values(audit_id=audit_id, owner=me, since=_now()))
            return int(audit_id), False

    def release(self, audit_id: int) -> None:
        """Give up the lease on an audit (it stays unfinished and resumable)."""
        from sqlalchemy import delete

        leases = _tables()[0].tables["leases"]
        with self._tx("release the audit") as conn:
            conn.execute(delete(leases).where(leases.c.audit_id == audit_id, leases.c.owner == self.owner))

    def finish_audit(self, audit_id: int, report: dict[str, Any]) -> None:
        from sqlalchemy import delete

        _, _, audits, _ = _tables()
        leases = _tables()[0].tables["leases"]
        with self._tx("save the report") as conn:
            conn.execute(
                audits.update()
                .where(audits.c.id == audit_id)
                .values(status="done", finished_at=_now(), report_json=json.dumps(report, allow_nan=True))
            )
            conn.execute(delete(leases).where(leases.c.audit_id == audit_id))

    def fail_audit(self, audit_id: int) -> None:
        from sqlalchemy import delete

        _, _, audits, _ = _tables()
        leases = _tables()[0].tables["leases"]
        with self._tx("mark the audit failed") as conn:
            conn.execute(audits.update().where(audits.c.id == audit_id).values(status="failed"))
            conn.execute(delete(leases).where(leases.c.audit_id == audit_id))

    # -- finished units ----------------------------------------------------------------------------
    def add_record(self, audit_id: int, key: str, study: str, payload: dict[str, Any]) -> bool:
        """Commit one finished unit of ``study`` in its own transaction; ``False`` if it was already
        stored (``UNIQUE(audit_id, key)``: never a duplicate)."""
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError

        values = {
            "audit_id": audit_id,
            "key": key,
            "study": study,
            "json": json.dumps(payload, separators=(",", ":"), allow_nan=True),
            "created_at": _now(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(_records_table()).values(**values))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise StoreError(f"store {safe_url(self.url)}: cannot save a finished {study} unit ({_first_line(exc)})") from None
        return True

    def records(self, audit_id: int, study: str | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
        """The finished units of an audit: key → ``(study, record)``."""
        from sqlalchemy import select

        t = _records_table()
        q = select(t.c.key, t.c.study, t.c.json).where(t.c.audit_id == audit_id).order_by(t.c.id)
        if study is not None:
            q = q.where(t.c.study == study)
        with self._tx("read finished units") as conn:
            rows = conn.execute(q).all()
        return {str(k): (str(s), json.loads(v)) for k, s, v in rows}

    def count_records(self, audit_id: int) -> int:
        from sqlalchemy import func, select

        t = _records_table()
        with self._tx("count units") as conn:
            q = select(func.count()).select_from(t).where(t.c.audit_id == audit_id, t.c.study != CORE_STUDY)
            return int(conn.execute(q).scalar_one())

    # -- history -----------------------------------------------------------------------------------
    def list_audits(self, model: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Audits, newest first, with a short summary of each finished one."""
        from sqlalchemy import func, select

        _, models, audits, units = _tables()
        records = _records_table()
        legacy = select(units.c.audit_id, func.count().label("n")).group_by(units.c.audit_id).subquery()
        n_units = (
            select(records.c.audit_id, func.count().label("n"))
            .where(records.c.study != CORE_STUDY)
            .group_by(records.c.audit_id)
            .subquery()
        )
        q = (
            select(
                audits.c.id,
                audits.c.status,
                audits.c.created_at,
                audits.c.finished_at,
                audits.c.data_name,
                audits.c.data_sha256,
                audits.c.units_total,
                audits.c.report_json,
                audits.c.command,
                models.c.name,
                models.c.version,
                models.c.sha256,
                (func.coalesce(n_units.c.n, 0) + func.coalesce(legacy.c.n, 0)).label("units_done"),
            )
            .join(models, models.c.id == audits.c.model_id)
            .outerjoin(n_units, n_units.c.audit_id == audits.c.id)
            .outerjoin(legacy, legacy.c.audit_id == audits.c.id)
            .order_by(audits.c.id.desc())
        )
        if model is not None:
            q = q.where(models.c.name == model)
        if limit is not None:
            q = q.limit(limit)
        with self._tx("list audits") as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            report = json.loads(r["report_json"]) if r["report_json"] else None
            item: dict[str, Any] = {
                "id": int(r["id"]),
                "model": {"name": r["name"], "version": r["version"] or None, "sha256": r["sha256"]},
                "data": {"name": r["data_name"], "sha256": r["data_sha256"]},
                "status": r["status"],
                "created_at": r["created_at"],
                "finished_at": r["finished_at"],
                "units": {"done": int(r["units_done"]), "total": int(r["units_total"] or 0)},
                "command": r["command"],
            }
            if report is not None:
                item["clean_accuracy"] = report.get("clean_accuracy")
                item["gate"] = report.get("gate")
                item["headline"] = _headline(report)
            out.append(item)
        return out

    def get_report(self, audit_id: int) -> dict[str, Any]:
        """The report of a finished audit (raises :class:`StoreError` when absent or unfinished)."""
        from sqlalchemy import select

        _, _, audits, _ = _tables()
        with self._tx("read an audit") as conn:
            row = conn.execute(select(audits.c.status, audits.c.report_json).where(audits.c.id == audit_id)).first()
        if row is None:
            raise StoreError(f"store {safe_url(self.url)} has no audit {audit_id}; gauntlet history lists them")
        if row[0] != "done" or not row[1]:
            raise StoreError(f"audit {audit_id} is not finished (status {row[0]}); rerun its command to complete it")
        return json.loads(row[1])

    def previous_report(
        self, model_name: str, before: int | None = None, *, data_sha256: str | None = None, passed: bool = False
    ) -> tuple[int, dict[str, Any]] | None:
        """The last finished audit of a model name (older than audit ``before``), or ``None``.

        ``data_sha256``: only audits of that data; ``passed``: only audits whose gate did not fail
        (it passed, or none was configured) — the baseline of ``--max-regression``, so that rerunning
        a failed gate cannot pass it.
        """
        from sqlalchemy import select

        _, models, audits, _ = _tables()
        q = (
            select(audits.c.id, audits.c.report_json)
            .join(models, models.c.id == audits.c.model_id)
            .where(models.c.name == model_name, audits.c.status == "done", audits.c.report_json.is_not(None))
            .order_by(audits.c.id.desc())
        )
        if before is not None:
            q = q.where(audits.c.id < before)
        if data_sha256 is not None:
            q = q.where(audits.c.data_sha256 == data_sha256)
        with self._tx("read the previous audit") as conn:
            rows = conn.execute(q).all()
        for audit_id, text in rows:
            report = json.loads(text)
            if passed and (report.get("gate") or {}).get("passed") is False:
                continue
            return int(audit_id), report
        return None

    def reports(
        self, model_name: str, *, data_sha256: str | None = None, before: int | None = None, limit: int = 10
    ) -> list[tuple[int, dict[str, Any]]]:
        """The last ``limit`` finished audits of a model name (of that data, older than audit
        ``before``), oldest first: the history a report's trends are drawn from."""
        from sqlalchemy import select

        _, models, audits, _ = _tables()
        q = (
            select(audits.c.id, audits.c.report_json)
            .join(models, models.c.id == audits.c.model_id)
            .where(models.c.name == model_name, audits.c.status == "done", audits.c.report_json.is_not(None))
            .order_by(audits.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            q = q.where(audits.c.id < before)
        if data_sha256 is not None:
            q = q.where(audits.c.data_sha256 == data_sha256)
        with self._tx("read the audit history") as conn:
            rows = conn.execute(q).all()
        return [(int(i), json.loads(text)) for i, text in reversed(rows)]


    # -- data manifests ------------------------------------------------------------------------
    def _has_manifests(self) -> bool:
        from sqlalchemy import inspect

        with self._tx("read data manifests") as conn:
            return bool(inspect(conn).has_table("manifests"))

    def save_manifest(self, name: str, version: str | None, manifest: dict[str, Any]) -> dict[str, Any]:
        """Keep a data manifest (:func:`gauntlet.data.provenance.build_manifest`) as ``name``/``version``.

        ``version=None`` takes the newest version when its dataset hash is the same (nothing new is
        stored), else the next integer version.  A version is never overwritten: saving other data
        under an existing name and version is a :class:`StoreError`; saving the same data again
        returns the stored row.  Returns the row (as :meth:`manifests` lists it) plus ``new``.
        """
        from sqlalchemy import insert, select
        from sqlalchemy.exc import IntegrityError

        if not isinstance(name, str) or not name.strip():
            raise StoreError(f"a data manifest needs a dataset name, got {name!r}")
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise StoreError(f"a data manifest's version must be a non-empty string, got {version!r}")
        t = _manifests_table()
        sha = str(manifest["dataset_sha256"])
        files = manifest.get("files") or []
        values = {
            "name": name,
            "sha256": sha,
            "files": len(files),
            "bytes": sum(int(f.get("size") or 0) for f in files),
            "created_at": _now(),
            "manifest_json": json.dumps(manifest, separators=(",", ":")),
        }
        with self._tx("save the data manifest") as conn:
            t.create(conn, checkfirst=True)  # a store made before the manifests table
            if version is None:
                rows = conn.execute(select(t.c.version, t.c.sha256).where(t.c.name == name).order_by(t.c.id.desc())).all()
                if rows and rows[0][1] == sha:
                    version = str(rows[0][0])
                else:
                    numbers = [int(v) for v, _ in rows if str(v).isdigit()]
                    version = str(max(numbers, default=0) + 1)
            row = conn.execute(select(t.c.sha256).where(t.c.name == name, t.c.version == version)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(t).values(version=version, **values))
                    new = True
                except IntegrityError:  # another process saved this version this very moment
                    row = conn.execute(select(t.c.sha256).where(t.c.name == name, t.c.version == version)).first()
            if row is not None:
                if row[0] != sha:
                    raise StoreError(
                        f"dataset {name!r} version {version!r} is already stored with other data (sha256 {row[0][:12]}, "
                        f"this is {sha[:12]}); versions are never overwritten: pass a new --version"
                    )
                new = False
        found = [m for m in self.manifests(name) if m["version"] == version]
        return {**found[0], "new": new}

    def manifests(self, name: str) -> list[dict[str, Any]]:
        """The stored manifests of dataset ``name``, newest first (without the manifest JSON);
        empty for a store made before the manifests table."""
        from sqlalchemy import select

        if not self._has_manifests():
            return []
        t = _manifests_table()
        q = (
            select(t.c.id, t.c.name, t.c.version, t.c.sha256, t.c.files, t.c.bytes, t.c.created_at)
            .where(t.c.name == name)
            .order_by(t.c.id.desc())
        )
        with self._tx("read data manifests") as conn:
            rows = conn.execute(q).mappings().all()
        return [
            {"id": int(r["id"]), "name": r["name"], "version": r["version"], "sha256": r["sha256"],
             "files": int(r["files"]), "bytes": int(r["bytes"]), "created_at": r["created_at"]}
            for r in rows
        ]

    def get_manifest(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The stored manifest of ``name`` at ``version`` (the newest when None); :class:`StoreError` when absent."""
        from sqlalchemy import select

        t = _manifests_table()
        q = select(t.c.version, t.c.manifest_json).where(t.c.name == name).order_by(t.c.id.desc())
        if version is not None:
            q = q.where(t.c.version == version)
        row = None
        if self._has_manifests():
            with self._tx("read a data manifest") as conn:
                row = conn.execute(q).first()
        if row is None:
            which = f"version {version!r} of dataset {name!r}" if version is not None else f"dataset {name!r}"
            raise StoreError(f"store {safe_url(self.url)} has no manifest of {which}; gauntlet data history {name} lists them")
        return dict(json.loads(row[1]))


def _headline(report: dict[str, Any]) -> list[str]:
    """The studies' one-line phrases for a stored report (``worst case linf ε=0.1 51.1%``)."""
    from gauntlet.audit.studies import studies_in

    return [p for s in studies_in(report) for p in s.summary(report)]


def _sqlite_file(url: Any) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def open_store(url: str = DEFAULT_STORE_URL, *, create: bool = True) -> Store:
    """Connect to the store at an SQLAlchemy URL and make sure its tables exist.

    With ``create=False`` a missing SQLite file is an error instead of being created (for
    read-only commands such as ``gauntlet history``).  Raises :class:`StoreError` with one line
    for a bad URL, a missing database driver, an unreachable server or an unwritable file.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    if not isinstance(url, str) or not url.strip():
        raise StoreError(f"store URL must be an SQLAlchemy URL such as {DEFAULT_STORE_URL!r}, got {url!r}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(
            f"store URL {url!r} is not an SQLAlchemy URL; use e.g. {DEFAULT_STORE_URL!r} or 'postgresql://user@host/db'"
        ) from None
    shown = safe_url(url)
    file = _sqlite_file(parsed)
    if file is not None:
        if not file.parent.exists():
            raise StoreError(f"cannot open store {shown}: folder {str(file.parent)!r} does not exist; create it or pass another --store")
        if not create and not file.exists():
            raise StoreError(f"store {shown} does not exist (no audits yet); run gauntlet audit first or pass --store")
    kwargs: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": int(os.environ.get("GAUNTLET_STORE_TIMEOUT", "10"))}
    elif backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    try:
        engine = create_engine(parsed, **kwargs)
    except ModuleNotFoundError as exc:
        pkg = _DRIVER_PACKAGES.get(str(exc.name), exc.name)
        raise StoreError(
            f"cannot open store {shown}: its database driver {exc.name!r} is not installed; pip install {pkg!r} "
            "or name another driver in the URL (e.g. postgresql+psycopg2://...)"
        ) from None
    except (ArgumentError, SQLAlchemyError, ValueError, TypeError) as exc:
        raise StoreError(f"cannot open store {shown}: {_first_line(exc)}") from None

    if backend == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            if file is not None:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    md = _tables()[0]
    try:
        if create:
            md.create_all(engine)
        else:
            with engine.connect():
                pass
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot reach store {shown} ({_first_line(exc)}); check the URL, the server and your access") from None
    return Store(url, engine)
