"""Data provenance on MNIST: ``data verify`` finds every randomly changed row of the 60,000-row
training images, and how long it takes beside hashing them.

One command (from the project root)::

    .venv/bin/python benchmarks/bench_provenance.py

The MNIST training images (``../shared/data/mnist/train-images-idx3-ubyte.gz``, 60,000 × 28 × 28
uint8) are copied to a temporary folder twice, once as the original IDX ``.gz`` and once as an
uncompressed ``.npy`` of the same array.  For each format and each of ``--seeds`` seeds:

* **hash**: ``build_manifest`` + ``write_manifest`` of the original file (what
  ``gauntlet data hash FILE --out manifest.json`` does: file SHA-256 and 60,000 row SHA-256s);
* **change**: ``--rows`` random rows (drawn with the seed) get one random pixel changed
  (``v -> 255 - v``, so the row always differs), and the file is written again (re-gzipped);
* **verify**: ``load_manifest`` + ``verify_manifest`` of the changed file (what
  ``gauntlet data verify FILE manifest.json`` does), and the rows it reports are compared with the
  rows changed: found, missed and falsely reported;
* **verify unchanged**: the same on the original file (the fast path: bytes equal, no parsing).

Hash and verify runs alternate (``--repeats`` each, medians of wall and CPU time), on one torch
thread.  The must-reach figure: every changed row found, verify time < 2× hash time.  As a
reference point, ``sha256sum`` (coreutils) of the same file: it only says *that* the file changed.
Also the two CLI commands end to end (subprocess: Python start-up and imports included).

Options: ``--rows 50``, ``--seeds 3``, ``--repeats 5``.  Writes ``benchmarks/results/provenance.json``.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, markdown_table, median, shared_dir, write_json

from gauntlet.data.idx import read_idx
from gauntlet.data.provenance import build_manifest, load_manifest, verify_manifest, write_manifest

HEADER = 16  # bytes before the pixels in an IDX3 file: magic + 3 sizes


def timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def write_idx_gz(path: Path, header: bytes, arr: np.ndarray) -> None:
    path.write_bytes(gzip.compress(header + arr.tobytes(), compresslevel=6))


def run_format(fmt: str, src: Path, work: Path, n_rows: int, seeds: int, repeats: int) -> dict[str, Any]:
    images = read_idx(src)
    raw_header = gzip.decompress(src.read_bytes())[:HEADER]
    name = "train-images-idx3-ubyte.gz" if fmt == "idx.gz" else "train-images.npy"
    orig_dir, changed_dir = work / fmt / "original", work / fmt / "changed"
    orig_dir.mkdir(parents=True)
    changed_dir.mkdir(parents=True)
    orig, changed = orig_dir / name, changed_dir / name
    if fmt == "idx.gz":
        shutil.copyfile(src, orig)
    else:
        np.save(orig, images)
    manifest_path = work / fmt / "manifest.json"
    n = images.shape[0]
    per_seed = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, n_rows, replace=False))
        pix = rng.integers(0, images[0].size, n_rows)
        mod = images.copy()
        flat = mod.reshape(n, -1)
        flat[rows, pix] = 255 - flat[rows, pix]
        if fmt == "idx.gz":
            write_idx_gz(changed, raw_header, mod)
        else:
            np.save(changed, mod)
        hash_w, hash_c, ver_w, ver_c, same_w, same_c = [], [], [], [], [], []
        result = None
        for _ in range(repeats):  # alternate, so a load spike hits both
            _, w, c = timed(lambda: write_manifest(build_manifest(orig), manifest_path))
            hash_w.append(w)
            hash_c.append(c)
            result, w, c = timed(lambda: verify_manifest(changed, load_manifest(manifest_path)))
            ver_w.append(w)
            ver_c.append(c)
            same, w, c = timed(lambda: verify_manifest(orig, load_manifest(manifest_path)))
            assert same.same
            same_w.append(w)
            same_c.append(c)
        assert result is not None
        reported = sorted(i for ch in result.changed for a in ch.arrays for i in a.rows_changed)
        extra = [i for ch in result.changed for a in ch.arrays for i in a.rows_added + a.rows_removed]
        truth = rows.tolist()
        per_seed.append({
            "seed": seed,
            "rows_changed": len(truth),
            "rows_found": len(set(reported) & set(truth)),
            "rows_missed": len(set(truth) - set(reported)),
            "rows_false": len(set(reported) - set(truth)) + len(extra),
            "exact": reported == truth and not extra and not result.added and not result.removed,
            "hash_wall_s": median(hash_w), "hash_cpu_s": median(hash_c),
            "verify_wall_s": median(ver_w), "verify_cpu_s": median(ver_c),
            "verify_unchanged_wall_s": median(same_w), "verify_unchanged_cpu_s": median(same_c),
            "ratio_wall": median(ver_w) / median(hash_w), "ratio_cpu": median(ver_c) / median(hash_c),
        })
        print(f"  {fmt} seed {seed}: found {per_seed[-1]['rows_found']}/{len(truth)}, "
              f"hash {median(hash_c):.3f}s cpu, verify {median(ver_c):.3f}s cpu", flush=True)
    sha_w = []
    for _ in range(repeats):
        _, w, _ = timed(lambda: subprocess.run(["sha256sum", str(orig)], check=True, capture_output=True))
        sha_w.append(w)
    return {
        "format": fmt,
        "file": name,
        "file_bytes": orig.stat().st_size,
        "rows": int(n),
        "manifest_bytes": manifest_path.stat().st_size,
        "seeds": per_seed,
        "sha256sum_wall_s": median(sha_w),
        "hash_cpu_s": median([s["hash_cpu_s"] for s in per_seed]),
        "verify_cpu_s": median([s["verify_cpu_s"] for s in per_seed]),
        "verify_unchanged_cpu_s": median([s["verify_unchanged_cpu_s"] for s in per_seed]),
        "hash_wall_s": median([s["hash_wall_s"] for s in per_seed]),
        "verify_wall_s": median([s["verify_wall_s"] for s in per_seed]),
        "ratio_cpu": max(s["ratio_cpu"] for s in per_seed),
        "ratio_wall": max(s["ratio_wall"] for s in per_seed),
        "all_found_exactly": all(s["exact"] for s in per_seed),
    }


def run_cli(work: Path, repeats: int) -> dict[str, Any]:
    """``gauntlet data hash`` / ``verify`` end to end on the changed .gz (last seed), as subprocesses."""
    exe = [sys.executable, "-m", "gauntlet.cli", "data"]
    folder = work / "idx.gz"
    orig, changed = folder / "original" / "train-images-idx3-ubyte.gz", folder / "changed" / "train-images-idx3-ubyte.gz"
    out = folder / "cli-manifest.json"
    hw, vw, hc, vc, codes = [], [], [], [], []
    for _ in range(repeats):
        r, w, c = child(lambda: subprocess.run([*exe, "hash", str(orig), "--out", str(out)], check=False, capture_output=True, text=True))
        assert r.returncode == 0, r.stderr
        hw.append(w)
        hc.append(c)
        r, w, c = child(lambda: subprocess.run([*exe, "verify", str(changed), str(out)], check=False, capture_output=True, text=True))
        codes.append(r.returncode)
        vw.append(w)
        vc.append(c)
    r, _, imports = child(lambda: subprocess.run([sys.executable, "-c", "import gauntlet.data.provenance, gauntlet.cli"], check=True))
    return {"hash_wall_s": median(hw), "verify_wall_s": median(vw), "hash_cpu_s": median(hc), "verify_cpu_s": median(vc),
            "verify_exit_codes": sorted(set(codes)), "ratio_cpu": median(vc) / median(hc), "imports_cpu_s": imports}


def child(fn: Any) -> tuple[Any, float, float]:
    """``fn()`` (which runs a subprocess), its wall time and the CPU time of the child processes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - w
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    src = shared_dir() / "data" / "mnist" / "train-images-idx3-ubyte.gz"
    if not src.is_file():
        raise SystemExit(f"{src} not found: the MNIST training images are needed")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        formats = [run_format(f, src, work, args.rows, args.seeds, args.repeats) for f in ("idx.gz", "npy")]
        cli = run_cli(work, max(2, args.repeats // 2))
    doc = {
        "benchmark": "provenance",
        "claim": "data verify finds every randomly changed row of a 60,000-row array file in < 2x the time of hashing it",
        "params": vars(args),
        "environment": environment(),
        "formats": formats,
        "cli": cli,
        "passed": all(f["all_found_exactly"] and f["ratio_cpu"] < 2 and f["ratio_wall"] < 2 for f in formats),
    }
    path = write_json("provenance.json", doc)
    rows = [
        [f["format"], f"{f['file_bytes'] / 1e6:.1f} MB", f["rows"],
         f"{sum(s['rows_found'] for s in f['seeds'])}/{sum(s['rows_changed'] for s in f['seeds'])}",
         sum(s["rows_false"] for s in f["seeds"]),
         f["hash_cpu_s"], f["verify_cpu_s"], f"{f['ratio_cpu']:.2f}× ({f['ratio_wall']:.2f}× wall)",
         f["verify_unchanged_cpu_s"], f["sha256sum_wall_s"]]
        for f in formats
    ]
    print()
    print(markdown_table(
        ["file", "size", "rows", "changed rows found", "false reports", "hash s (cpu)", "verify s (cpu)",
         "verify/hash (worst seed)", "verify unchanged s", "sha256sum s (wall)"], rows))
    print(f"\nCLI end to end (.gz, subprocess, imports included), CPU time: hash {cli['hash_cpu_s']:.2f}s, "
          f"verify {cli['verify_cpu_s']:.2f}s (exit {cli['verify_exit_codes']}), ratio {cli['ratio_cpu']:.2f}×; "
          f"of which Python start-up and imports {cli['imports_cpu_s']:.2f}s")
    print(f"must reach: every changed row found and verify < 2× hash: {'PASSED' if doc['passed'] else 'NOT REACHED'}")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
