"""Benchmark the Arrow benchmark store against an HDF5 file holding the same features.

For a cub-like store (11,788 x 2048 x 196 float16 at full size, 9.5 GB; ``--images N`` for a
quicker run) this prints, for our store and for h5py (one chunk per image, uncompressed, read
the same way) in the same run:

* write time: both formats fed the same generated float32 chunks (generation time excluded),
  including closing and fsync of the files;
* open time: median of several opens with a warm page cache (store: meta + arrays + mapping;
  HDF5: file + dataset handle);
* gather throughput: shuffled batches of 50 rows returned as torch tensors in the requested
  order, after reading the whole file once so the page cache is warm (HDF5 is given sorted
  indices, which it needs, and the result is put back in the requested order);
* peak RSS while iterating one epoch of shuffled batches of 50 (gather only, no conversion),
  measured in a fresh child process as VmHWM minus VmRSS just before the epoch, after resetting
  VmHWM through /proc/self/clear_refs (Linux). It counts mapped page-cache pages as resident,
  which is exactly what a memory-mapped reader has to keep down.

Usage:  python benchmarks/store.py --images 2000
        python benchmarks/store.py --dir /tmp/cubbench --keep      # full size, reuse later
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from msdn_tune.data.store import BenchmarkStore, StoreWriter
from msdn_tune.data.store.writer import fsync_path as fsync
from msdn_tune.data.synth import PRESETS, build_benchmark, iter_feature_chunks

TARGETS = {"open_s": 0.5, "gather_ratio": 5.0, "rss_bytes": 1 << 30}
STORE, H5 = "store", "features.h5"


def status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(key + r":\s+(\d+)", text).group(1)) * 1024


def mem_available() -> int:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) * 1024


def write_both(root: Path, n_images: int) -> dict[str, float]:
    """Generate cub-like chunks once and write each into both formats, timing only the writes."""
    spec = dataclasses.replace(PRESETS["cub-like"], n_images=n_images)
    bench = build_benchmark(spec)
    shape = (n_images, spec.channels, spec.regions)
    t_store = t_h5 = t_gen = 0.0
    t0 = time.perf_counter()
    writer = StoreWriter(
        root / STORE, n_images=n_images, channels=spec.channels, regions=spec.regions, force=True
    )
    t_store += time.perf_counter() - t0
    t0 = time.perf_counter()
    h5 = h5py.File(root / H5, "w")
    ds = h5.create_dataset("feature_map", shape=shape, dtype="f2", chunks=(1, *shape[1:]))
    t_h5 += time.perf_counter() - t0
    lo = 0
    t0 = time.perf_counter()
    for chunk in iter_feature_chunks(bench):
        t1 = time.perf_counter()
        t_gen += t1 - t0
        writer.write(chunk)
        t2 = time.perf_counter()
        ds[lo : lo + len(chunk)] = np.ascontiguousarray(chunk, dtype=np.float16)
        t0 = time.perf_counter()
        t_store += t2 - t1
        t_h5 += t0 - t2
        lo += len(chunk)
        print(f"\r  writing {lo}/{n_images} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    t0 = time.perf_counter()
    writer.finish(
        labels=bench.labels,
        splits=bench.splits,
        class_attributes=bench.class_attributes,
        attribute_vectors=bench.attribute_vectors,
        class_names=bench.class_names,
        attribute_names=bench.attribute_names,
        dataset="synthetic:cub-like",
        source="benchmarks/store.py",
    )
    t1 = time.perf_counter()
    h5.close()
    fsync(root / H5)
    t2 = time.perf_counter()
    return {"store": t_store + t1 - t0, "h5": t_h5 + t2 - t1, "generate": t_gen}


def open_times(root: Path, repeats: int = 7) -> dict[str, float]:
    def store() -> None:
        BenchmarkStore.open(root / STORE).close()

    def h5() -> None:
        with h5py.File(root / H5, "r") as f:
            f["feature_map"].shape  # noqa: B018 - the dataset handle is part of opening

    out = {}
    for name, fn in (("store", store), ("h5", h5)):
        fn()  # first open warms meta/arrays/footer pages
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def warm(path: Path) -> float:
    """Read a file once with plain reads so it sits in the page cache; return seconds."""
    t0 = time.perf_counter()
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    return time.perf_counter() - t0


def h5_fancy(ds: h5py.Dataset, idx: np.ndarray) -> torch.Tensor:
    """One h5py read per batch: ``ds[sorted indices]``, then back to the requested order."""
    order = np.argsort(idx, kind="stable")
    data = ds[idx[order]]  # h5py needs increasing indices
    out = np.empty_like(data)
    out[order] = data
    return torch.from_numpy(out)


def h5_rows(ds: h5py.Dataset, idx: np.ndarray) -> torch.Tensor:
    """``ds[i]`` per row, stacked: what a lazy map-style Dataset's ``__getitem__`` does."""
    return torch.from_numpy(np.stack([ds[int(i)] for i in idx]))


def h5_read_direct(ds: h5py.Dataset, idx: np.ndarray) -> torch.Tensor:
    """Per-row ``read_direct`` into one preallocated batch: the fastest plain h5py idiom."""
    out = np.empty((len(idx), *ds.shape[1:]), dtype=ds.dtype)
    for j, i in enumerate(idx):
        ds.read_direct(out, np.s_[int(i)], np.s_[j])
    return torch.from_numpy(out)


H5_READERS = {"h5 ds[idx]": h5_fancy, "h5 ds[i] rows": h5_rows, "h5 read_direct": h5_read_direct}


def batches(n: int, batch: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i : i + batch] for i in range(0, n, batch)]


def gather_throughput(root: Path, batch: int, seconds: float) -> dict[str, float]:
    """GB/s of shuffled batches from a warm page cache, same batches for both formats."""
    st = BenchmarkStore.open(root / STORE)
    plan = batches(st.n_images, batch, seed=0)
    row = st.channels * st.regions * st.dtype.itemsize
    out: dict[str, float] = {}
    f = h5py.File(root / H5, "r")
    ds = f["feature_map"]
    readers = {"store": st.gather} | {
        k: (lambda i, fn=fn: fn(ds, i)) for k, fn in H5_READERS.items()
    }
    for name, read in readers.items():
        warm(root / (STORE + "/features.arrow" if name == "store" else H5))
        nbytes, t0 = 0, time.perf_counter()
        for i, idx in enumerate(plan):
            x = read(idx)
            assert x.shape[0] == len(idx)
            nbytes += len(idx) * row
            if time.perf_counter() - t0 > seconds and i >= 4:
                break
        out[name] = nbytes / (time.perf_counter() - t0) / 1e9
    # Correctness spot check: every reader returns the same rows in the same order.
    idx = plan[0][:5]
    want = st.gather(idx).numpy()
    for read in readers.values():
        assert np.array_equal(read(idx).numpy(), want)
    f.close()
    st.close()
    return out


def rss_child(root: Path, fmt: str, batch: int) -> None:
    """Run in a fresh process: one shuffled epoch; print peak RSS growth as JSON."""
    st = BenchmarkStore.open(root / STORE)
    n = st.n_images
    if fmt == "store":
        get = st.gather
    else:
        f = h5py.File(root / H5, "r")
        ds = f["feature_map"]

        def get(idx: np.ndarray) -> torch.Tensor:
            return h5_read_direct(ds, idx)  # the fast h5py idiom (ds[idx] takes minutes here)

    plan = batches(n, batch, seed=1)
    get(plan[0])  # warm up code paths before the baseline
    st.release_pages()
    base = status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    for idx in plan:
        x = get(idx)
        del x
    seconds = time.perf_counter() - t0
    peak = status_bytes("VmHWM")
    print(json.dumps({"baseline": base, "growth": peak - base, "epoch_s": seconds}))


def peak_rss(root: Path, batch: int) -> dict[str, dict]:
    out = {}
    for fmt in ("store", "h5"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--dir",
                str(root),
                "--_rss-child",
                fmt,
                "--batch",
                str(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out[fmt] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=11788, help="images (>= 1000; CUB: 11788)")
    ap.add_argument("--dir", type=Path, help="work directory; reused if it holds both files")
    ap.add_argument("--keep", action="store_true", help="keep the files (default: delete)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=8.0, help="time per gather measurement")
    ap.add_argument(
        "--_rss-child", dest="rss_child", choices=["store", "h5"], help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.rss_child:
        rss_child(args.dir, args.rss_child, args.batch)
        return

    root = args.dir or Path(tempfile.mkdtemp(prefix="storebench-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    keep = args.keep or (args.dir is not None and (root / STORE).exists())
    try:
        if (root / STORE / "meta.json").exists() and (root / H5).exists():
            writes = None
            print(f"reusing {root}")
        else:
            need = 2 * args.images * 2048 * 196 * 2
            free = shutil.disk_usage(root).free
            if free < 1.1 * need:
                sys.exit(f"need {need / 1e9:.1f} GB free in {root}, have {free / 1e9:.1f} GB")
            writes = write_both(root, args.images)
        st = BenchmarkStore.open(root / STORE)
        n, gb = st.n_images, st.nbytes / 1e9
        how = "preadv into the batch" if st._use_pread() else "numpy indexing of the memory map"
        st.close()
        if mem_available() < 1.2 * gb * 1e9:
            print(
                f"warning: {mem_available() / 1e9:.1f} GB available < {gb:.1f} GB file; the "
                "page cache cannot hold it and gather figures include disk reads"
            )
        opens = open_times(root)
        gathers = gather_throughput(root, args.batch, args.seconds)
        rss = peak_rss(root, args.batch)

        def row(label: str, a: str, b: str, ratio: str = "", target: str = "") -> None:
            print(f"{label:<34}{a:>14}{b:>14}{ratio:>10}  {target}")

        print()
        print(
            f"cub-like: {n} images x 2048 x 196 float16 = {gb:.2f} GB of features; "
            f"batches of {args.batch}; {os.cpu_count()} CPUs; store rows read by {how}"
        )
        row("", "arrow store", "h5py", "ratio")
        if writes:
            row(
                "write (s)",
                f"{writes['store']:.1f}",
                f"{writes['h5']:.1f}",
                f"{writes['h5'] / writes['store']:.2f}x",
                f"(generating took {writes['generate']:.1f} s)",
            )
        ok_open = opens["store"] < TARGETS["open_s"]
        row(
            "open, warm (ms)",
            f"{opens['store'] * 1e3:.2f}",
            f"{opens['h5'] * 1e3:.2f}",
            "",
            f"target < 500 ms: {'PASS' if ok_open else 'FAIL'}",
        )
        row("gather, warm cache (GB/s)", f"{gathers['store']:.2f}", "", "", "")
        for name in H5_READERS:
            ratio = gathers["store"] / gathers[name]
            verdict = "PASS" if ratio >= TARGETS["gather_ratio"] else "FAIL"
            row(
                f"  vs {name} (GB/s)",
                "",
                f"{gathers[name]:.3f}",
                f"{ratio:.1f}x",
                f"target >= 5x: {verdict}",
            )
        s, h = rss["store"], rss["h5"]
        ok_rss = s["growth"] < TARGETS["rss_bytes"]
        print("epoch in a fresh child process (h5py: read_direct per row):")
        row(
            "  peak RSS above baseline (MB)",
            f"{s['growth'] / 2**20:.0f}",
            f"{h['growth'] / 2**20:.0f}",
            "",
            f"target < 1024 MB: {'PASS' if ok_rss else 'FAIL'}",
        )
        row(
            "  epoch time (s)",
            f"{s['epoch_s']:.1f}",
            f"{h['epoch_s']:.1f}",
            f"{h['epoch_s'] / s['epoch_s']:.1f}x",
        )
        row(
            "  baseline RSS (MB)",
            f"{s['baseline'] / 2**20:.0f}",
            f"{h['baseline'] / 2**20:.0f}",
        )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
