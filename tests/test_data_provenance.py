"""Data provenance: manifests of files and rows, ``gauntlet data hash | verify | history``, the
store's manifests table (old stores still open) and the audit's data manifest hash."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gauntlet.audit.report import validate_report
from gauntlet.audit.store import _tables, open_store
from gauntlet.cli import app
from gauntlet.data.provenance import (
    build_manifest,
    load_manifest,
    manifest_sha256,
    row_hashes,
    verify_manifest,
    write_manifest,
)
from gauntlet.errors import DataError, StoreError

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, ["data", *map(str, args)])


def write_idx(path: Path, arr: np.ndarray) -> None:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A folder with every array format (npy, npz, pt, IDX .gz), a plain file, a subfolder and a link."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    np.save(d / "x.npy", rng.random((200, 3, 4), dtype=np.float32))
    np.savez(d / "pair.npz", x=rng.integers(0, 255, (50, 8), dtype=np.uint8), y=np.arange(50))
    torch.save({"x": torch.arange(24, dtype=torch.float32).reshape(6, 4), "y": torch.arange(6)}, d / "sub" / "t.pt")
    write_idx(d / "sub" / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (30, 5, 5)))
    (d / "README.txt").write_text("digits, version 1\n")
    os.symlink("x.npy", d / "latest.npy")
    return d


def rows_of(manifest: dict[str, Any], path: str, name: str = "") -> list[str]:
    entry = next(f for f in manifest["files"] if f["path"] == path)
    return next(a["rows"] for a in entry["arrays"] if a["name"] == name)


# ------------------------------------------------------------------------------------------------
# the manifest
def test_manifest_lists_files_sorted_relative_with_row_hashes_and_records_links_unfollowed(dataset: Path) -> None:
    m = build_manifest(dataset)
    assert m["format"] == "gauntlet-data-manifest" and m["format_version"] == 1 and m["algorithm"] == "sha256"
    paths = [f["path"] for f in m["files"]]
    assert paths == sorted(paths) == ["README.txt", "latest.npy", "pair.npz", "sub/t.pt",
                                      "sub/train-images-idx3-ubyte.gz", "x.npy"]
    link = m["files"][1]
    assert link == {"path": "latest.npy", "link": "x.npy"}  # recorded as a link, its target not hashed again
    x = np.load(dataset / "x.npy")
    assert rows_of(m, "x.npy") == row_hashes(x) and len(rows_of(m, "x.npy")) == 200
    assert len(rows_of(m, "pair.npz", "x")) == 50 and len(rows_of(m, "pair.npz", "y")) == 50
    assert len(rows_of(m, "sub/t.pt", "x")) == 6
    assert len(rows_of(m, "sub/train-images-idx3-ubyte.gz")) == 30
    assert "arrays" not in m["files"][0]  # a text file: bytes only
    assert m["dataset_sha256"] == manifest_sha256(dataset)  # the same hash without the rows


def test_row_hashes_are_the_sha256_of_each_rows_bytes_and_independent_of_byte_order() -> None:
    import hashlib

    a = np.arange(12, dtype="<i4").reshape(3, 4)
    assert row_hashes(a) == [hashlib.sha256(a[i].tobytes()).hexdigest() for i in range(3)]
    assert row_hashes(a.astype(">i4")) == row_hashes(a)
    assert row_hashes(np.asfortranarray(a)) == row_hashes(a)
    assert row_hashes(torch.from_numpy(a)) == row_hashes(a)
    assert len(row_hashes(torch.zeros(5, 2, dtype=torch.bfloat16))) == 5


def test_dataset_hash_changes_with_any_byte_name_or_link_and_not_with_the_folders_location(dataset: Path, tmp_path: Path) -> None:
    base = manifest_sha256(dataset)
    moved = tmp_path / "elsewhere"
    dataset.rename(moved)
    assert manifest_sha256(moved) == base
    (moved / "README.txt").write_text("digits, version 2\n")
    assert manifest_sha256(moved) != base
    (moved / "README.txt").write_text("digits, version 1\n")
    assert manifest_sha256(moved) == base
    (moved / "README.txt").rename(moved / "README.md")
    assert manifest_sha256(moved) != base
    (moved / "README.md").rename(moved / "README.txt")
    (moved / "latest.npy").unlink()
    os.symlink("pair.npz", moved / "latest.npy")
    assert manifest_sha256(moved) != base


# ------------------------------------------------------------------------------------------------
# verify
def test_unchanged_data_verifies_the_same(dataset: Path, tmp_path: Path) -> None:
    write_manifest(build_manifest(dataset), tmp_path / "m.json")
    res = verify_manifest(dataset, load_manifest(tmp_path / "m.json"))
    assert res.same and res.expected_sha256 == res.actual_sha256 and res.files == 6
    assert res.to_dict()["rows"] == {"changed": 0, "added": 0, "removed": 0}


def test_every_changed_added_and_removed_row_and_file_is_reported_exactly(dataset: Path) -> None:
    m = build_manifest(dataset)
    rng = np.random.default_rng(1)
    x = np.load(dataset / "x.npy")
    changed = sorted(rng.choice(200, 17, replace=False).tolist())
    x[changed, 1, 2] += 1.0
    np.save(dataset / "x.npy", x[:190])  # 17 rows changed (some may be cut), rows 190-199 removed
    npz = dict(np.load(dataset / "pair.npz"))
    npz["y"] = np.concatenate([npz["y"], [7, 8, 9]])  # 3 rows added to y; x untouched
    np.savez(dataset / "pair.npz", **npz)
    img = np.frombuffer(gzip.decompress((dataset / "sub" / "train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    img = img.reshape(30, 5, 5).copy()
    img[[0, 29]] ^= 1
    write_idx(dataset / "sub" / "train-images-idx3-ubyte.gz", img)
    (dataset / "sub" / "t.pt").unlink()
    (dataset / "new.csv").write_text("1\n2\n")

    res = verify_manifest(dataset, m)
    assert not res.same
    assert [e["path"] for e in res.added] == ["new.csv"]
    assert [e["path"] for e in res.removed] == ["sub/t.pt"] and res.removed[0]["rows"] == {"x": 6, "y": 6}
    by_path = {c.path: c for c in res.changed}
    assert sorted(by_path) == ["pair.npz", "sub/train-images-idx3-ubyte.gz", "x.npy"]
    (xa,) = by_path["x.npy"].arrays
    assert xa.rows_changed == [i for i in changed if i < 190]
    assert xa.rows_removed == list(range(190, 200)) and xa.rows_added == []
    (ya,) = by_path["pair.npz"].arrays  # x of the npz is unchanged, so not listed
    assert ya.name == "y" and ya.rows_added == [50, 51, 52] and ya.rows_changed == [] and ya.rows_removed == []
    (ia,) = by_path["sub/train-images-idx3-ubyte.gz"].arrays
    assert ia.rows_changed == [0, 29]
    rows = res.to_dict()["rows"]
    assert rows == {"changed": len(xa.rows_changed) + 2, "added": 3, "removed": 10}
    assert res.actual_sha256 == manifest_sha256(dataset) != res.expected_sha256


def test_a_manifest_with_a_different_row_count_still_verifies_as_rows_added_or_removed(tmp_path: Path) -> None:
    f = tmp_path / "x.npy"
    np.save(f, np.ones((10, 2)))
    m = build_manifest(f)
    np.save(f, np.ones((4, 2)))
    (a,) = verify_manifest(f, m).changed[0].arrays
    assert a.rows_removed == list(range(4, 10)) and a.rows_changed == [] and a.shape == ([10, 2], [4, 2])


def test_recompressed_file_with_the_same_rows_differs_in_bytes_but_lists_no_rows(tmp_path: Path) -> None:
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(f, arr)
    m = build_manifest(f)
    head = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 3, 4, 5)
    f.write_bytes(gzip.compress(head + arr.tobytes(), compresslevel=1, mtime=12345))
    (c,) = verify_manifest(f, m).changed
    assert c.arrays == [] and "every array and row is the same" in (c.note or "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{bad json", "not valid JSON"),
        ('["a list"]', "not a gauntlet data manifest"),
        ('{"format": "dvc"}', "not a gauntlet data manifest"),
        ('{"format": "gauntlet-data-manifest", "format_version": 99}', "newer than this gauntlet reads"),
        ('{"format": "gauntlet-data-manifest", "format_version": 1, "algorithm": "md5"}', "not supported"),
    ],
)
def test_malformed_manifest_is_one_line_exit_2(tmp_path: Path, dataset: Path, text: str, expected: str) -> None:
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(DataError, match=expected):
        load_manifest(tmp_path / "m.json")
    res = cli("verify", dataset, tmp_path / "m.json")
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err


def test_an_edited_manifest_is_refused_because_its_dataset_hash_no_longer_matches(dataset: Path, tmp_path: Path) -> None:
    m = build_manifest(dataset)
    m["files"][0]["size"] += 1
    write_manifest(m, tmp_path / "m.json")
    with pytest.raises(DataError, match="edited or corrupted"):
        load_manifest(tmp_path / "m.json")
    m = build_manifest(dataset)
    m["files"][2]["arrays"][0]["rows"].pop()  # rows no longer match the shape
    write_manifest(m, tmp_path / "m.json")
    with pytest.raises(DataError, match="row hashes for shape"):
        load_manifest(tmp_path / "m.json")


def test_missing_path_and_file_versus_folder_manifest_are_exit_2(dataset: Path, tmp_path: Path) -> None:
    write_manifest(build_manifest(dataset / "x.npy"), tmp_path / "file.json")
    res = cli("verify", dataset, tmp_path / "file.json")
    assert res.exit_code == 2 and "describes a file" in res.stderr
    res = cli("verify", tmp_path / "nope", tmp_path / "file.json")
    assert res.exit_code == 2 and "no such file or folder" in res.stderr
    res = cli("verify", dataset, tmp_path / "absent.json")
    assert res.exit_code == 2 and "manifest file not found" in res.stderr


# ------------------------------------------------------------------------------------------------
# the CLI
def test_cli_hash_then_verify_round_trip_exit_0_then_1_with_json_shapes(dataset: Path, tmp_path: Path) -> None:
    out = dataset / "manifest.json"  # inside the folder: left out of its own listing
    res = cli("hash", dataset, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert set(info) == {"path", "dataset_sha256", "files", "bytes", "rows", "out", "stored", "seconds", "summary"}
    assert info["files"] == 6 and info["rows"] == 200 + 50 + 50 + 6 + 6 + 30 and info["stored"] is None
    assert info["dataset_sha256"] == json.loads(out.read_text())["dataset_sha256"]
    assert info["out"] == str(out) and "manifest.json" not in [f["path"] for f in load_manifest(out)["files"]]
    res = cli("verify", dataset, out)
    assert res.exit_code == 0, res.output
    assert "same as the manifest" in res.stdout

    x = np.load(dataset / "x.npy")
    x[[3, 150]] = 0.5
    np.save(dataset / "x.npy", x)
    res = cli("verify", dataset, out)
    assert res.exit_code == 1
    assert "changed  x.npy" in res.stdout and "rows changed (2): 3, 150" in res.stdout
    res = cli("verify", dataset, out, "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert set(doc) == {"path", "same", "expected_sha256", "actual_sha256", "files", "added", "removed", "changed",
                        "rows", "summary", "exit_code"}
    assert doc["same"] is False and doc["exit_code"] == 1 and doc["rows"] == {"changed": 2, "added": 0, "removed": 0}
    (c,) = doc["changed"]
    assert c["path"] == "x.npy" and set(c) == {"path", "old", "new", "arrays", "note"}
    assert c["arrays"] == [{"name": "", "status": "changed", "dtype": ["float32", "float32"],
                            "shape": [[200, 3, 4], [200, 3, 4]], "rows_changed": [3, 150], "rows_added": [],
                            "rows_removed": []}]
    assert "differs from the manifest" in res.stderr


def test_cli_json_errors_are_json_with_exit_code(tmp_path: Path) -> None:
    res = cli("hash", tmp_path / "absent", "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout) == {"error": f"{tmp_path / 'absent'}: no such file or folder", "exit_code": 2}


def test_history_lists_saved_versions_newest_first_and_never_overwrites_a_version(dataset: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli("hash", dataset, "--name", "digits", "--version", "v1", "--store", url).exit_code == 0
    again = cli("hash", dataset, "--name", "digits", "--store", url, "--json")  # unchanged data: the same version
    assert json.loads(again.stdout)["stored"]["version"] == "v1" and json.loads(again.stdout)["stored"]["new"] is False
    (dataset / "README.txt").write_text("digits, version 2\n")
    res = cli("hash", dataset, "--name", "digits", "--store", url, "--json")
    stored = json.loads(res.stdout)["stored"]
    assert stored["version"] == "1" and stored["new"] is True  # no integer version yet: 1
    clash = cli("hash", dataset, "--name", "digits", "--version", "v1", "--store", url)
    assert clash.exit_code == 2 and "already stored with other data" in clash.stderr

    res = cli("history", "digits", "--store", url, "--json")
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert [r["version"] for r in rows] == ["1", "v1"]
    assert set(rows[0]) == {"id", "name", "version", "sha256", "files", "bytes", "created_at"}
    assert rows[0]["sha256"] == manifest_sha256(dataset) and rows[0]["files"] == 6
    text = cli("history", "digits", "--store", url).stdout
    assert "v1" in text and rows[1]["sha256"][:12] in text
    assert "no manifests of dataset 'other'" in cli("history", "other", "--store", url).stdout

    # verify against the stored manifest: the newest by default, or a named version
    assert cli("verify", dataset, "--name", "digits", "--store", url).exit_code == 0
    res = cli("verify", dataset, "--name", "digits", "--version", "v1", "--store", url)
    assert res.exit_code == 1 and "changed  README.txt" in res.stdout
    res = cli("verify", dataset, "--name", "digits", "--version", "v9", "--store", url)
    assert res.exit_code == 2 and "no manifest of version 'v9'" in res.stderr


def test_an_old_store_without_the_manifests_table_still_opens_and_gains_it_on_first_save(dataset: Path, tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    db = tmp_path / "old.db"
    md = _tables()[0]
    engine = create_engine(f"sqlite:///{db}")
    md.create_all(engine, tables=[t for t in md.sorted_tables if t.name != "manifests"])  # the schema before it
    engine.dispose()
    url = f"sqlite:///{db}"
    with open_store(url, create=False) as st:
        assert st.manifests("digits") == [] and st.list_audits() == []
        with pytest.raises(StoreError, match="no manifest of dataset 'digits'"):
            st.get_manifest("digits")
    res = cli("history", "digits", "--store", url)
    assert res.exit_code == 0 and "no manifests" in res.stdout
    with open_store(url, create=False) as st:  # read-only open: save_manifest creates the table itself
        row = st.save_manifest("digits", None, build_manifest(dataset))
        assert row["version"] == "1" and row["new"] is True
        assert st.get_manifest("digits")["dataset_sha256"] == row["sha256"]
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    assert "manifests" in tables


# ------------------------------------------------------------------------------------------------
# the audit
def test_audit_report_records_the_manifest_hash_of_its_data_and_old_reports_still_validate(tmp_path: Path) -> None:
    from gauntlet.audit.runner import prepare
    from gauntlet.audit.spec import AuditSpec

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.random((20, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 20))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(net, tmp_path / "m.pt")
    spec = AuditSpec.model_validate({
        "model": {"path": str(tmp_path / "m.pt"), "num_classes": 10, "bounds": [0, 1], "trust": True},
        "data": {"path": str(data)},
        "threats": [{"norm": "linf", "eps": [0.1]}],
        "attacks": [{"name": "fgsm"}],
    })
    prep = prepare(spec)
    assert prep.data_info["manifest_sha256"] == manifest_sha256(data) == build_manifest(data)["dataset_sha256"]
    assert prep.data_info["sha256"] != prep.data_info["manifest_sha256"]  # the tensor hash stays as it was


def test_report_schema_accepts_the_data_manifest_hash_and_reports_without_it() -> None:
    from gauntlet.audit.report import build_report
    from tests.test_audit_report import outcome

    old = build_report(outcome())
    assert "manifest_sha256" not in old["data"]
    validate_report(old)  # a report written before the key existed
    data_info = {"name": "digits", "n": 6, "sha256": "b" * 64, "manifest_sha256": "c" * 64}
    new = build_report(outcome(data_info=data_info))
    assert new["data"]["manifest_sha256"] == "c" * 64
    validate_report(new)
    validate_report(build_report(outcome(data_info={**data_info, "manifest_sha256": None})))  # a builtin dataset
    with pytest.raises(DataError, match=r"^report.data.manifest_sha256: expected string or null"):
        validate_report(build_report(outcome(data_info={**data_info, "manifest_sha256": 5})))


def test_a_broken_array_file_is_hashed_as_bytes_with_a_note_and_no_rows_hashes_files_only(tmp_path: Path) -> None:
    (tmp_path / "broken.npy").write_bytes(b"not numpy at all")
    np.save(tmp_path / "ok.npy", np.zeros((4, 2)))
    m = build_manifest(tmp_path)
    broken, ok = m["files"]
    assert "arrays" not in broken and "hashed as bytes only" in broken["note"]
    assert len(ok["arrays"][0]["rows"]) == 4
    bare = build_manifest(tmp_path, rows=False)
    assert all("arrays" not in f for f in bare["files"]) and bare["dataset_sha256"] == m["dataset_sha256"]
    res = cli("hash", tmp_path, "--no-rows", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["rows"] == 0


def test_cifar_batches_get_row_hashes_through_the_restricted_unpickler(tmp_path: Path) -> None:
    import pickle

    data = np.random.default_rng(0).integers(0, 255, (4, 3072), dtype=np.uint8)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f, protocol=2)
    m = build_manifest(tmp_path / "data_batch_1")
    assert m["kind"] == "file" and m["files"][0]["format"] == "cifar"
    assert rows_of(m, "data_batch_1", "data") == row_hashes(data.reshape(4, 3, 32, 32))
    assert len(rows_of(m, "data_batch_1", "labels")) == 4
