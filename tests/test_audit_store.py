"""The results store: per-unit commits, no duplicates, exact round trips, resume lookup, clear errors."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from dataclasses import asdict

from gauntlet.audit.store import open_store
from gauntlet.audit.studies.evasion import UnitRecord, record_of
from gauntlet.errors import StoreError


def rec(start: int = 0, stop: int = 3) -> UnitRecord:
    m = stop - start
    return UnitRecord(
        attack="pgd",
        attack_name="pgd",
        params={"steps": 20, "early_stop": True},
        norm="linf",
        eps=(0.05, 0.1),
        start=start,
        stop=stop,
        success=[[False] * m, [True] * m],
        norms=[[0.1 + 1e-17 * i for i in range(m)], [0.30000001192092896] * m],
        queries=60,
        grad_evals=57,
        seconds=0.25,
    )


def begin(store, sha: str = "a" * 64, spec: str = "s1", data: str = "d1", name: str = "net"):
    return store.begin_audit(
        model_name=name, model_version="1", model_sha256=sha, spec_hash=spec, data_sha256=data,
        data_name="digits", units_total=4, spec_json="{}", command="gauntlet audit x",
    )


def test_units_round_trip_exactly_and_are_never_stored_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    with open_store(url) as st:
        audit_id, resumed = begin(st)
        assert resumed is False
        r = rec()
        assert st.add_record(audit_id, "k1", "evasion", asdict(r)) is True
        assert st.add_record(audit_id, "k1", "evasion", asdict(r)) is False  # UNIQUE(audit_id, key)
        assert st.add_record(audit_id, "k2", "evasion", asdict(rec(3, 5))) is True
        assert st.add_record(audit_id, "k3", "certify", {"prediction": [1, -1], "radius": [0.5, float("nan")]}) is True
        back = st.records(audit_id)
        assert list(back) == ["k1", "k2", "k3"] and back["k1"][0] == "evasion"
        assert record_of(back["k1"][1]) == r  # floats and bools survive unchanged
        assert list(st.records(audit_id, study="certify")) == ["k3"]
        assert back["k3"][1]["radius"][0] == 0.5 and back["k3"][1]["radius"][1] != back["k3"][1]["radius"][1]  # NaN kept
        assert st.count_records(audit_id) == 3
        assert st.list_audits()[0]["units"] == {"done": 3, "total": 4}
    con = sqlite3.connect(tmp_path / "g.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM records").fetchone()[0] == 3


def test_an_unfinished_audit_is_resumed_and_a_finished_one_is_not(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as st:
        a1, _ = begin(st)
        assert begin(st) == (a1, True)  # same model, spec and data, not done: resume
        assert begin(st, spec="s2")[1] is False  # other spec: a new audit
        assert begin(st, data="d2")[1] is False
        assert begin(st, sha="b" * 64)[1] is False
        st.finish_audit(a1, {"audit_id": a1, "clean_accuracy": 0.9, "worst_case": [], "gate": {"passed": True, "violations": []}})
        a2, resumed = begin(st)
        assert resumed is False and a2 > a1
        assert st.get_report(a1)["clean_accuracy"] == 0.9
        with pytest.raises(StoreError, match=f"audit {a2} is not finished"):
            st.get_report(a2)
        with pytest.raises(StoreError, match="has no audit 999"):
            st.get_report(999)
        prev = st.previous_report("net", before=a2)
        assert prev is not None and prev[0] == a1
        assert st.previous_report("net", before=a1) is None
        assert st.previous_report("other") is None
        rows = st.list_audits()
        assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
        done = next(r for r in rows if r["id"] == a1)
        assert done["status"] == "done" and done["clean_accuracy"] == 0.9 and done["model"]["version"] == "1"
        assert len(st.list_audits(model="nobody")) == 0 and len(st.list_audits(limit=2)) == 2


@pytest.mark.parametrize(
    "url, match",
    [
        ("sqlite:////nonexistent/dir/x.db", r"cannot open store sqlite:////nonexistent/dir/x\.db: folder '/nonexistent/dir' does not exist"),
        ("postgresql://nohost/db", r"(database driver '\w+' is not installed; pip install|cannot reach store postgresql://nohost/db)"),
        ("not a url", r"is not an SQLAlchemy URL"),
        ("nosuchdialect://x/y", r"cannot open store"),
    ],
)
def test_unreachable_or_malformed_stores_give_one_line_errors(url: str, match: str) -> None:
    with pytest.raises(StoreError, match=match) as info:
        open_store(url)
    assert "\n" not in str(info.value)


def test_passwords_never_appear_in_errors() -> None:
    with pytest.raises(StoreError) as info:
        open_store("postgresql://user:s3cret@nohost/db")
    assert "s3cret" not in str(info.value)


def test_read_only_commands_do_not_create_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    assert not (tmp_path / "none.db").exists()


def test_an_unfinished_audit_whose_units_sit_in_the_legacy_table_is_not_resumed(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as st:
        a1, _ = begin(st)
    con = sqlite3.connect(tmp_path / "g.db")  # a unit written by a version before the records table
    con.execute(
        "INSERT INTO units (audit_id, key, attack, attack_name, params_json, norm, eps_json, targeted, start, stop, "
        "success_json, norms_json, queries, grad_evals, seconds, created_at) "
        "VALUES (?, 'k', 'pgd', 'pgd', '{}', 'linf', '[0.1]', 0, 0, 1, '[[1]]', '[[0.1]]', 1, 1, 0.1, 'x')",
        (a1,),
    )
    con.commit()
    con.close()
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as st:
        a2, resumed = begin(st)
        assert resumed is False and a2 > a1  # its unit would never be read back: start afresh
        assert begin(st) == (a2, True)
        assert [r["units"]["done"] for r in st.list_audits()] == [0, 1]


def test_two_identical_audits_running_at_once_get_two_rows_and_a_dead_owners_audit_is_resumed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"

    def hand_lease(audit_id: int, owner: str) -> None:
        con = sqlite3.connect(tmp_path / "g.db")
        con.execute("UPDATE leases SET owner = ? WHERE audit_id = ?", (owner, audit_id))
        con.commit()
        con.close()

    with open_store(url) as st:
        first, resumed = begin(st)
        assert resumed is False
        assert begin(st) == (first, True)  # this process's own unfinished audit (e.g. after Ctrl-C)
        hand_lease(first, f"{socket.gethostname()}:1")  # a live process (pid 1) is running it
        second, resumed = begin(st)  # the identical audit started meanwhile: a row of its own
        assert resumed is False and second > first
        hand_lease(second, f"{socket.gethostname()}:{2**22 + 4321}")  # above pid_max: its owner was killed
        assert begin(st) == (second, True)  # taken over: the same command resumes it
        st.release(second)
        assert begin(st) == (second, True)  # released: free for anyone, the newest unfinished one
        st.fail_audit(second)
        st.fail_audit(first)
    con = sqlite3.connect(tmp_path / "g.db")
    assert con.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
    assert [r[0] for r in con.execute("SELECT status FROM audits ORDER BY id")] == ["failed", "failed"]
    con.close()
