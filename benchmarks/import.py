"""Benchmark `msdn-tune data import hdf5` on a CUB-sized feature-map file.

Generates (streaming, 32 images at a time) an HDF5 file in the published layout of
``feature_map_ResNet_101_CUB.hdf5``: ``feature_map`` N x 2048 x 14 x 14 float32, uncompressed,
plus ``labels``, the three ``*_loc`` splits, ``att``, ``original_att`` and ``w2v_att``. At the
full size (N = 11,788, about 19 GB) the labels and splits have CUB's exact counts, so the
import passes the registry check; with ``--images N`` they are scaled and the import runs with
``--allow-mismatch``.

Then, ``--repeat`` rounds (default 2) of, each with a cold page cache for the file
(``posix_fadvise DONTNEED`` after fsync, which needs no root):

1. a plain sequential read of the whole file (64 MiB ``readinto`` calls), in this process;
2. the import, in a child process (``import_hdf5`` with its defaults: float16 store, default
   chunk size, no progress bar; the store's final fsync included), timed inside the child
   around the call; its peak RSS is the child's ``ru_maxrss`` from ``os.wait4`` (all of it:
   Python, torch, numpy, buffers).

Throughput is feature bytes of the source divided by seconds; the ratio compares the medians.
On a virtual disk the host may still cache a freshly written file although the guest's cache
was dropped (reads of several GB/s): the per-round figures show it, and more rounds help.
Targets (issue 6): peak RSS under 1.5 GB whatever the size, import throughput at least 80% of
the plain read.

Usage:  python benchmarks/import.py --images 2000
        python benchmarks/import.py                    # full CUB size, ~19 GB in /tmp
        python benchmarks/import.py --dir /data/tmp --keep --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CUB = {"classes": 200, "unseen": 50, "trainval": 7057, "test_seen": 1764, "test_unseen": 2967}
SHAPE = (2048, 14, 14)
TARGET_RSS = 1.5e9
TARGET_RATIO = 0.8

_CHILD = """
import json, sys, time
from msdn_tune.data.ingest import import_hdf5
a = json.loads(sys.argv[1])
t = time.perf_counter()
r = import_hdf5(a["src"], "CUB", a["out"], dtype=a["dtype"], allow_mismatch=a["allow"],
                chunk_rows=a["chunk_rows"], progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "bytes": r.source_bytes}))
"""


def cub_like_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels and 0-based splits with CUB's structure (its exact counts when n == 11788)."""
    rng = np.random.default_rng(seed)
    scale = n / 11788
    n_unseen_img = round(CUB["test_unseen"] * scale)
    n_test_seen = round(CUB["test_seen"] * scale)
    unseen = np.arange(CUB["classes"] - CUB["unseen"], CUB["classes"])
    seen = np.arange(CUB["classes"] - CUB["unseen"])
    labels = np.empty(n, dtype=np.int64)
    order = rng.permutation(n)
    unseen_rows, seen_rows = order[:n_unseen_img], order[n_unseen_img:]
    labels[unseen_rows] = unseen[np.arange(len(unseen_rows)) % len(unseen)]
    labels[seen_rows] = seen[np.arange(len(seen_rows)) % len(seen)]
    # test_seen: 20% of each seen class's images, topped up at random to the exact total
    test_seen = []
    for k in seen:
        rows = rng.permutation(seen_rows[labels[seen_rows] == k])
        test_seen.append(rows[: len(rows) // 5])
    ts = np.concatenate(test_seen)
    rest = rng.permutation(np.setdiff1d(seen_rows, ts))
    ts = np.sort(np.concatenate([ts, rest[: max(0, n_test_seen - len(ts))]])[:n_test_seen])
    trainval = np.sort(np.setdiff1d(seen_rows, ts))
    att = rng.uniform(0, 100, size=(CUB["classes"], 312))
    return {
        "labels": labels,
        "trainval_loc": trainval,
        "test_seen_loc": ts,
        "test_unseen_loc": np.sort(unseen_rows),
        "original_att": att,
        "att": att / np.linalg.norm(att, axis=1, keepdims=True),
        "w2v_att": rng.standard_normal((312, 300)),
    }


def generate(path: Path, n: int) -> float:
    """Write the HDF5 file in 32-image blocks; returns seconds."""
    t = time.perf_counter()
    block = np.random.default_rng(1).random((32, *SHAPE), dtype=np.float32) * 4
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("feature_map", shape=(n, *SHAPE), dtype=np.float32)
        for lo in range(0, n, 32):
            hi = min(lo + 32, n)
            ds[lo:hi] = block[: hi - lo] + np.float32(lo % 7)
        for key, value in cub_like_arrays(n).items():
            f.create_dataset(key, data=value)
    return time.perf_counter() - t


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def plain_read(path: Path) -> tuple[float, int]:
    """Sequential read of the whole file; returns (seconds, bytes)."""
    evict(path)
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    total = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while True:
            got = fh.readinto(view)
            if not got:
                break
            total += got
    return time.perf_counter() - t, total


def run_import(src: Path, out: Path, dtype: str, allow: bool, chunk_rows: int | None) -> dict:
    evict(src)
    args = json.dumps(
        {"src": str(src), "out": str(out), "dtype": dtype, "allow": allow, "chunk_rows": chunk_rows}
    )
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"import failed with exit code {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    result["peak_rss"] = usage.ru_maxrss * 1024  # KiB on Linux
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=11788, help="images (default: CUB's 11,788)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a /tmp dir)")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--chunk-rows", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of (plain read, import)")
    ap.add_argument("--keep", action="store_true", help="keep the generated file and store")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()

    work = a.dir or Path(tempfile.mkdtemp(prefix="msdn-import-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "feature_map_ResNet_101_CUB.hdf5"
    out = work / "cub"
    try:
        if not (src.exists() and a.keep):
            gen = generate(src, a.images)
            print(f"generated {src} ({src.stat().st_size / 1e9:.2f} GB) in {gen:.0f} s")
        feature_bytes = a.images * int(np.prod(SHAPE)) * 4
        reads, imports = [], []
        for rep in range(a.repeat):
            shutil.rmtree(out, ignore_errors=True)
            seconds, size = plain_read(src)
            reads.append(size / 1e6 / seconds)
            imp = run_import(src, out, a.dtype, a.images != 11788, a.chunk_rows)
            imports.append(imp)
            print(
                f"round {rep + 1}: plain read {reads[-1]:.0f} MB/s, import "
                f"{feature_bytes / 1e6 / imp['seconds']:.0f} MB/s, peak RSS "
                f"{imp['peak_rss'] / 1e6:.0f} MB"
            )
        plain = float(np.median(reads))
        import_mbs = float(np.median([feature_bytes / 1e6 / i["seconds"] for i in imports]))
        peak = max(i["peak_rss"] for i in imports)
        ratio = import_mbs / plain
        figures = {
            "images": a.images,
            "file_bytes": size,
            "feature_bytes": feature_bytes,
            "store_dtype": a.dtype,
            "plain_read_mb_s": [round(x, 1) for x in reads],
            "import_seconds": [round(i["seconds"], 2) for i in imports],
            "import_wall_seconds_with_startup": [round(i["wall_seconds"], 2) for i in imports],
            "import_mb_s_median": round(import_mbs, 1),
            "plain_read_mb_s_median": round(plain, 1),
            "ratio": round(ratio, 3),
            "peak_rss_bytes": peak,
        }
        print(f"file:         {size / 1e9:.2f} GB ({a.images} x 2048 x 14 x 14 float32)")
        print(f"plain read:   {plain:.0f} MB/s (median of {a.repeat}, cold page cache)")
        print(f"import:       {import_mbs:.0f} MB/s (median of {a.repeat}) -> {a.dtype} store")
        ok_ratio = "ok" if ratio >= TARGET_RATIO else "MISSED"
        ok_rss = "ok" if peak < TARGET_RSS else "MISSED"
        print(f"ratio:        {ratio:.2f} of the plain read (target >= {TARGET_RATIO}: {ok_ratio})")
        print(f"peak RSS:     {peak / 1e6:.0f} MB (target < 1500 MB: {ok_rss})")
        if a.json:
            a.json.write_text(json.dumps(figures, indent=1))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
