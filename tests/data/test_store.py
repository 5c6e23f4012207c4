"""The benchmark store: round trip, zero-copy open, gather/iterate, safe writing, validation."""

from __future__ import annotations

import gc
import hashlib
import json
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from msdn_tune.data.store import (
    SPLIT_NAMES,
    BenchmarkStore,
    StoreExistsError,
    StoreWriter,
)
from msdn_tune.errors import DataError, MsdnTuneError

N_CLASSES = 6
N_ATTR = 5


def make_arrays(n: int, *, vectors: bool = True) -> dict:
    """Labels and xlsa17-style splits: classes 4, 5 unseen; class 3 held out for validation."""
    labels = np.arange(n) % N_CLASSES
    rows = np.arange(n)
    unseen = np.isin(labels, [4, 5])
    seen_rows = rows[~unseen]
    test_seen = seen_rows[::5]
    trainval = np.setdiff1d(seen_rows, test_seen)
    val_unseen = trainval[labels[trainval] == 3]
    rest = np.setdiff1d(trainval, val_unseen)
    val_seen = rest[::4]
    train = np.setdiff1d(rest, val_seen)
    rng = np.random.default_rng(0)
    return dict(
        labels=labels,
        splits=dict(
            trainval=trainval,
            test_seen=test_seen,
            test_unseen=rows[unseen],
            train=train,
            val_seen=val_seen,
            val_unseen=val_unseen,
        ),
        class_attributes=rng.uniform(0, 100, (N_CLASSES, N_ATTR)).astype(np.float32),
        attribute_vectors=rng.standard_normal((N_ATTR, 300)).astype(np.float32)
        if vectors
        else None,
        class_names=[f"class{k}" for k in range(N_CLASSES)],
        attribute_names=[f"group::value{a}" for a in range(N_ATTR)] if vectors else None,
        dataset="unit",
        source="tests",
    )


def make_store(
    path: Path,
    *,
    n: int = 40,
    channels: int = 8,
    regions: int = 12,
    dtype: str = "float16",
    rows_per_batch: int | None = 7,
    chunk: int = 9,
    seed: int = 0,
    **kw,
) -> np.ndarray:
    """Write a store of random features in uneven chunks; return the features (float32)."""
    feats = np.random.default_rng(seed).uniform(0, 4, (n, channels, regions)).astype(np.float32)
    with StoreWriter(
        path,
        n_images=n,
        channels=channels,
        regions=regions,
        dtype=dtype,
        rows_per_batch=rows_per_batch,
        **kw,
    ) as w:
        for s in range(0, n, chunk):
            w.write(feats[s : s + chunk])
        assert w.rows_written == n
        w.finish(**make_arrays(n), extra_meta={"note": "hello"})
    return feats


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}"))


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("rows_per_batch", [7, None])
def test_round_trip(tmp_path, dtype, rows_per_batch):
    path = tmp_path / "s"
    feats = make_store(path, dtype=dtype, rows_per_batch=rows_per_batch)
    want = make_arrays(40)
    with BenchmarkStore.open(path) as st:
        assert (st.n_images, st.channels, st.regions) == (40, 8, 12)
        assert st.dtype == np.dtype(dtype)
        assert (st.n_classes, st.n_attributes) == (N_CLASSES, N_ATTR)
        assert st.dataset == "unit" and st.meta["source"] == "tests"
        assert st.meta["note"] == "hello" and st.meta["format_version"] == 1
        assert st.labels.dtype == np.int64
        np.testing.assert_array_equal(st.labels, want["labels"])
        assert set(st.splits) == set(SPLIT_NAMES)
        for name in SPLIT_NAMES:
            assert st.splits[name].dtype == np.int64
            np.testing.assert_array_equal(st.splits[name], want["splits"][name])
        assert st.class_attributes.dtype == np.float32
        np.testing.assert_array_equal(st.class_attributes, want["class_attributes"])
        np.testing.assert_array_equal(st.attribute_vectors, want["attribute_vectors"])
        assert st.class_names == want["class_names"]
        assert st.attribute_names == want["attribute_names"]
        np.testing.assert_array_equal(st.seen_classes, [0, 1, 2, 3])
        np.testing.assert_array_equal(st.unseen_classes, [4, 5])
        np.testing.assert_array_equal(st.val_seen_classes, [0, 1, 2])
        np.testing.assert_array_equal(st.val_unseen_classes, [3])
        assert st.nbytes == 40 * 8 * 12 * np.dtype(dtype).itemsize
        got = st.gather(np.arange(40))
        assert got.dtype == getattr(torch, dtype) and got.shape == (40, 8, 12)
        np.testing.assert_array_equal(got.numpy(), feats.astype(dtype))
        if rows_per_batch is None:  # one record batch: the whole view exists
            np.testing.assert_array_equal(st.features, feats.astype(dtype))
            assert not st.features.flags.writeable
        else:
            assert len(st.batch_views) == 6
            with pytest.raises(DataError, match="record batches"):
                _ = st.features
        st.verify()
        assert st.summary()["split_sizes"]["test_unseen"] == len(want["splits"]["test_unseen"])


def test_four_d_chunks_and_no_word_vectors(tmp_path):
    feats = np.random.default_rng(1).uniform(0, 1, (10, 3, 2, 5)).astype(np.float64)
    arrays = make_arrays(10, vectors=False)
    with StoreWriter(tmp_path / "s", n_images=10, channels=3, regions=10) as w:
        w.write(feats[:4])
        w.write(feats[4:])
        w.finish(**arrays)
    st = BenchmarkStore.open(tmp_path / "s")
    assert st.meta["grid"] == [2, 5]
    assert st.attribute_vectors is None and st.attribute_names is None
    assert st.meta["word_dim"] is None
    np.testing.assert_array_equal(
        st.gather([3, 1]).numpy(), feats[[3, 1]].reshape(2, 3, 10).astype(np.float16)
    )


def test_same_input_gives_same_bytes(tmp_path):
    make_store(tmp_path / "a")
    make_store(tmp_path / "b")
    make_store(tmp_path / "c", seed=1)
    for name in ("features.arrow", "arrays.npz"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    assert (tmp_path / "a/features.arrow").read_bytes() != (
        tmp_path / "c/features.arrow"
    ).read_bytes()


# ---------------------------------------------------------------------------- reading


def test_gather_keeps_requested_order_across_batches(tmp_path):
    feats = make_store(tmp_path / "s", n=60, rows_per_batch=8)
    st = BenchmarkStore.open(tmp_path / "s")
    idx = np.random.default_rng(3).integers(0, 60, size=45)  # repeats, every batch, any order
    idx[:3] = [59, 0, 59]
    np.testing.assert_array_equal(st.gather(idx).numpy(), feats[idx].astype(np.float16))
    assert st.gather(np.array([], dtype=np.int64)).shape == (0, 8, 12)
    assert st.gather(torch.tensor([5, 2])).shape == (2, 8, 12)
    with pytest.raises(IndexError):
        st.gather([60])
    with pytest.raises(IndexError):
        st.gather([-1])


@pytest.mark.parametrize("rows_per_batch", [8, None])
def test_file_reads_and_mapped_reads_agree(tmp_path, rows_per_batch):
    feats = make_store(tmp_path / "s", n=60, rows_per_batch=rows_per_batch)
    mapped = BenchmarkStore.open(tmp_path / "s", resident_bytes=None)
    direct = BenchmarkStore.open(tmp_path / "s", resident_bytes=0)  # any store is "large"
    assert not mapped._use_pread() and direct._use_pread()
    rng = np.random.default_rng(4)
    for idx in (np.arange(60), rng.integers(0, 60, 50), np.array([9, 8, 7, 7, 8, 9, 40, 41])):
        want = feats[idx].astype(np.float16)
        np.testing.assert_array_equal(direct.gather(idx).numpy(), want)
        np.testing.assert_array_equal(mapped.gather(idx).numpy(), want)


def test_iter_batches_covers_index_once_in_seeded_order(tmp_path):
    feats = make_store(tmp_path / "s", n=60, rows_per_batch=8)
    st = BenchmarkStore.open(tmp_path / "s")
    index = st.splits["trainval"]

    def epoch(**kw):
        return list(st.iter_batches(index, 7, **kw))

    batches = epoch(seed=1)
    rows = np.concatenate([r for r, _, _ in batches])
    assert sorted(rows.tolist()) == sorted(index.tolist())
    assert [len(r) for r, _, _ in batches][:-1] == [7] * (len(batches) - 1)
    for r, x, y in batches:
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(y.numpy(), st.labels[r])
        np.testing.assert_array_equal(x.numpy(), feats[r].astype(np.float16))
    again = np.concatenate([r for r, _, _ in epoch(seed=1)])
    other = np.concatenate([r for r, _, _ in epoch(seed=2)])
    np.testing.assert_array_equal(rows, again)
    assert not np.array_equal(rows, other)
    ordered = np.concatenate([r for r, _, _ in epoch(shuffle=False)])
    np.testing.assert_array_equal(ordered, index)
    assert all(len(r) == 7 for r, _, _ in epoch(seed=0, drop_last=True))


def _mapped_rss_kb(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_open_reads_no_feature_data_and_views_are_the_mapping(tmp_path):
    path = tmp_path / "s"
    make_store(path, n=1000, channels=64, regions=64, rows_per_batch=None, chunk=250)  # 8 MB
    st = BenchmarkStore.open(path)
    feature_file = path / "features.arrow"
    size_kb = feature_file.stat().st_size // 1024
    assert _mapped_rss_kb(feature_file) < size_kb * 0.05  # opening touched ~nothing
    # The view points into the memory map of features.arrow: no copy was made.
    lo = st._whole.address
    addr = st.features.__array_interface__["data"][0]
    assert lo <= addr and addr + st.nbytes <= lo + st._whole.size
    assert not st.features.flags.writeable
    float(st.features.astype(np.float32).sum())  # read everything through the view
    assert _mapped_rss_kb(feature_file) > size_kb * 0.9  # ...which the measurement sees
    assert st.release_pages()
    assert _mapped_rss_kb(feature_file) < size_kb * 0.05


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_epoch_peak_memory_is_bounded_by_batches_not_store_size(tmp_path):
    # 200 rows of 512 KiB (CUB-like rows are 784 KiB): a 100 MiB store, read 4 rows a batch.
    path = tmp_path / "s"
    n, channels, regions = 200, 256, 1024
    with StoreWriter(path, n_images=n, channels=channels, regions=regions) as w:
        rng = np.random.default_rng(0)
        for _ in range(0, n, 25):
            w.write(rng.uniform(0, 1, (25, channels, regions)).astype(np.float32))
        w.finish(**make_arrays(n))
    script = textwrap.dedent(
        """
        import re, sys
        import numpy as np
        from msdn_tune.data.store import BenchmarkStore

        def status(key):
            text = open("/proc/self/status").read()
            return int(re.search(key + r":\\s+(\\d+)", text).group(1)) * 1024

        for budget in (8 << 20, None):
            st = BenchmarkStore.open(sys.argv[1], resident_bytes=budget)
            for rows, x, y in st.iter_batches(np.arange(8), 4, seed=0):  # warm up code paths
                float(x.float().mean())
            st.release_pages()
            base = status("VmRSS")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            total = 0.0
            for rows, x, y in st.iter_batches(np.arange(st.n_images), 4, seed=0):
                total += float(x.float().mean())
            print(status("VmHWM") - base, st.nbytes)
            st.release_pages()
            st.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    (bounded, nbytes), (unbounded, _) = [
        tuple(map(int, line.split())) for line in out.stdout.split("\n")[:2]
    ]
    assert bounded < 0.3 * nbytes, (bounded, nbytes)
    # Control: without dropping pages the same epoch maps the whole file (so the probe works).
    assert unbounded > 0.8 * nbytes, (unbounded, nbytes)


def test_pickle_reopens_by_path(tmp_path):
    feats = make_store(tmp_path / "s")
    st = BenchmarkStore.open(tmp_path / "s")
    clone = pickle.loads(pickle.dumps(st))
    assert clone.path == st.path and clone is not st
    np.testing.assert_array_equal(clone.gather([4]).numpy(), feats[[4]].astype(np.float16))
    st.close()
    assert st.closed
    with pytest.raises(ValueError, match="closed"):
        st.gather([0])


# ---------------------------------------------------------------------------- safe writing


def test_existing_path_is_not_overwritten_without_force(tmp_path):
    path = tmp_path / "s"
    make_store(path)
    before = (path / "features.arrow").read_bytes()
    with pytest.raises(StoreExistsError, match=re.escape(str(path))):
        make_store(path, seed=5)
    assert (path / "features.arrow").read_bytes() == before
    assert issubclass(StoreExistsError, MsdnTuneError)
    feats = make_store(path, seed=5, force=True)
    np.testing.assert_array_equal(
        BenchmarkStore.open(path).gather([0]).numpy(), feats[[0]].astype(np.float16)
    )
    assert siblings(path) == []


def test_force_refuses_to_replace_a_directory_that_is_not_a_store(tmp_path):
    path = tmp_path / "precious"
    path.mkdir()
    (path / "thesis.tex").write_text("do not delete")
    with pytest.raises(DataError, match="not a benchmark store"):
        make_store(path, force=True)
    assert (path / "thesis.tex").read_text() == "do not delete"


def test_exception_while_writing_leaves_nothing(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(KeyError):
        with StoreWriter(path, n_images=10, channels=2, regions=3) as w:
            w.write(np.ones((4, 2, 3)))
            raise KeyError("boom")
    assert not path.exists() and siblings(path) == []
    with pytest.raises(RuntimeError, match="without finish"):
        with StoreWriter(path, n_images=10, channels=2, regions=3) as w:
            w.write(np.ones((4, 2, 3)))
    assert not path.exists() and siblings(path) == []


def _move_unseen_row_to_training(a):
    row = a["splits"]["test_unseen"][:1]
    a["splits"]["test_unseen"] = a["splits"]["test_unseen"][1:]
    a["splits"]["trainval"] = np.concatenate([a["splits"]["trainval"], row])
    a["splits"]["train"] = np.concatenate([a["splits"]["train"], row])


def _append(name, rows_of):
    def edit(a):
        a["splits"][name] = np.concatenate([a["splits"][name], rows_of(a)])

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (None, "39 feature rows written, expected n_images=40"),
        (_append("test_seen", lambda a: a["splits"]["trainval"][:2]), "share 2 rows"),
        (_append("test_seen", lambda a: a["splits"]["test_seen"][:1]), "more than once"),
        (_append("val_seen", lambda a: [10**6]), "out of range"),
        (_append("train", lambda a: a["splits"]["test_seen"][:1]), "exactly the rows of trainval"),
        (_move_unseen_row_to_training, "classes of 'test_unseen' must not appear in 'trainval'"),
        (lambda a: a["splits"].pop("val_seen"), "missing \\['val_seen'\\]"),
        (lambda a: a.update(labels=a["labels"] + 10), "labels must lie in"),
        (lambda a: a.update(class_names=["a"]), "1 class_names for 6 classes"),
        (lambda a: a.update(attribute_vectors=np.ones((2, 300))), "attribute_vectors has shape"),
    ],
)
def test_finish_rejects_inconsistent_arrays_and_publishes_nothing(tmp_path, edit, message):
    path = tmp_path / "s"
    arrays = make_arrays(40)
    if edit is not None:
        edit(arrays)
    w = StoreWriter(path, n_images=40, channels=2, regions=3)
    w.write(np.zeros((40 if edit else 39, 2, 3)))
    with pytest.raises(DataError, match=message):
        w.finish(**arrays)
    assert not path.exists() and siblings(path) == []


def test_write_rejects_bad_chunks(tmp_path):
    path = tmp_path / "s"
    with StoreWriter(path, n_images=5, channels=2, regions=3) as w:
        with pytest.raises(DataError, match=r"expected \(n, 2, 3\)"):
            w.write(np.zeros((2, 3, 2)))
        with pytest.raises(DataError, match="float dtype"):
            w.write(np.zeros((2, 2, 3), dtype=np.int32))
        with pytest.raises(DataError, match="overflow float16"):
            w.write(np.full((2, 2, 3), 1e6))
        with pytest.raises(DataError, match="exceed n_images=5"):
            w.write(np.zeros((6, 2, 3)))
        w.abort()
    with pytest.raises(DataError, match="dtype 'int8'"):
        StoreWriter(path, n_images=5, channels=2, regions=3, dtype="int8")
    assert not path.exists() and siblings(path) == []


def test_killed_writer_leaves_no_openable_store(tmp_path):
    path = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from msdn_tune.data.store import StoreWriter
        w = StoreWriter({str(path)!r}, n_images=100, channels=4, regions=4, rows_per_batch=10)
        w.write(np.ones((55, 4, 4)))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()
    leftovers = [tmp_path / name for name in siblings(path)]
    assert leftovers, "the killed writer's temporary directory should be the only trace"
    for leftover in leftovers:
        with pytest.raises(DataError):
            BenchmarkStore.open(leftover)


# ---------------------------------------------------------------------------- validation


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "s"
    make_store(path)
    return path


def _edit_meta(path: Path, fn) -> None:
    meta = json.loads((path / "meta.json").read_text())
    fn(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def _rewrite_arrays(path: Path, **changes) -> None:
    """Replace arrays in arrays.npz and record them in meta.json like the writer does."""
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    np.savez(path / "arrays.npz", **arrays)

    def record(meta):
        for name, a in changes.items():
            if name.startswith("split_"):
                meta["split_sizes"][name[len("split_"):]] = len(a)
            meta["arrays"][name] = {
                "shape": list(a.shape),
                "dtype": str(a.dtype),
                "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
            }

    _edit_meta(path, record)


@pytest.mark.parametrize("name", ["meta.json", "arrays.npz", "features.arrow"])
def test_missing_file(store, name):
    (store / name).unlink()
    with pytest.raises(DataError, match=re.escape(str(store / name)) + ".*missing"):
        BenchmarkStore.open(store)


def test_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        BenchmarkStore.open(tmp_path / "nothing")


def test_truncated_features(store):
    f = store / "features.arrow"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="features.arrow has .* bytes.*truncated"):
        BenchmarkStore.open(store)
    # Even when meta.json is edited to the new size, the Arrow footer is gone.
    _edit_meta(store, lambda m: m["features"].update(file_bytes=len(data) // 2))
    with pytest.raises(DataError, match="not a readable Arrow IPC file"):
        BenchmarkStore.open(store)


def test_corrupted_footer(store):
    f = store / "features.arrow"
    data = bytearray(f.read_bytes())
    data[-40:-6] = b"\xff" * 34
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match="features.arrow"):
        BenchmarkStore.open(store)


def test_flipped_feature_bytes_are_found_by_verify(store):
    f = store / "features.arrow"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    st = BenchmarkStore.open(store)  # structure is intact; content is checked by verify()
    with pytest.raises(DataError, match="CRC-32"):
        st.verify()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(channels=16), "schema"),
        (lambda m: m.update(dtype="float32"), "schema"),
        (lambda m: m.update(channels=12, regions=8), "msdn_tune.shape"),
        (lambda m: m["features"].update(rows_per_batch=8), "rows_per_batch"),
        (lambda m: m.update(dtype="float64"), "dtype 'float64'"),
    ],
)
def test_meta_disagrees_with_features(store, edit, message):
    _edit_meta(store, edit)
    with pytest.raises(DataError, match=message):
        BenchmarkStore.open(store)


def test_row_count_disagrees(store):
    _edit_meta(store, lambda m: m.update(n_images=41))
    with pytest.raises(DataError, match=r"'arrays.labels.shape' is \[40\], but n_images makes "
                                        r"it \[41\]"):
        BenchmarkStore.open(store)


@pytest.mark.parametrize("bad", [40, -1])
def test_split_index_out_of_range(store, bad):
    with np.load(store / "arrays.npz") as npz:
        test_seen = npz["split_test_seen"]
    _rewrite_arrays(store, split_test_seen=np.append(test_seen, bad).astype(np.int64))
    with pytest.raises(DataError, match="arrays.npz.*'test_seen'.*out of range"):
        BenchmarkStore.open(store)


def test_labels_outside_class_range(store):
    labels = np.arange(40, dtype=np.int64) % N_CLASSES
    labels[7] = N_CLASSES
    _rewrite_arrays(store, labels=labels)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 6\)"):
        BenchmarkStore.open(store)


def test_array_dtype_and_shape_disagree(store):
    _rewrite_arrays(store, labels=(np.arange(40) % N_CLASSES).astype(np.int32))
    with pytest.raises(DataError, match="'arrays.labels.dtype' has 'int32', expected 'int64'"):
        BenchmarkStore.open(store)


def test_class_attributes_shape_disagrees(store):
    _rewrite_arrays(store, class_attributes=np.ones((N_CLASSES, N_ATTR + 1), np.float32))
    with pytest.raises(DataError, match=r"'arrays.class_attributes.shape' is \[6, 6\], but "
                                        r"\(n_classes, n_attributes\) makes it \[6, 5\]"):
        BenchmarkStore.open(store)


def test_array_changed_without_meta(store):
    with np.load(store / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["class_attributes"] = arrays["class_attributes"] + 1
    np.savez(store / "arrays.npz", **arrays)
    with pytest.raises(DataError, match="'class_attributes' is corrupted"):
        BenchmarkStore.open(store)


def test_arrays_file_is_garbage(store):
    (store / "arrays.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="arrays.npz: not a valid arrays file"):
        BenchmarkStore.open(store)


def test_unknown_format_version(store):
    _edit_meta(store, lambda m: m.update(format_version=2))
    with pytest.raises(DataError, match="format_version 2 is not supported; expected 1"):
        BenchmarkStore.open(store)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "line 1, column 2: invalid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_malformed_meta_text(store, text, message):
    (store / "meta.json").write_text(text)
    with pytest.raises(DataError, match=f"meta.json.*{message}"):
        BenchmarkStore.open(store)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("n_classes"), "'n_classes' is missing"),
        (lambda m: m.update(n_images="forty"), "'n_images' has 'forty'"),
        (lambda m: m.update(class_names=["a"]), "1 class_names for n_classes=6"),
        (lambda m: m["features"].pop("crc32"), "features.crc32"),
    ],
)
def test_malformed_meta_fields(store, edit, message):
    _edit_meta(store, edit)
    with pytest.raises(DataError, match=message):
        BenchmarkStore.open(store)


def test_open_failure_does_not_keep_the_file_mapped(store):
    """The mapping is gone when `open` raises, not when the garbage collector next runs: the
    failed open's frames (kept alive by the exception's traceback) must not hold Arrow buffers.
    The collector is off here so that a mapping released only by it is caught every time."""
    _edit_meta(store, lambda m: m.update(channels=16))
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(DataError) as caught:
            BenchmarkStore.open(store)
        maps = Path("/proc/self/maps")
        if maps.exists():
            assert str(store / "features.arrow") not in maps.read_text()
        assert "schema" in str(caught.value)  # the check that failed is the one after mapping
    finally:
        gc.enable()


def test_unwritable_location_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot create the store"):
        StoreWriter(tmp_path / "file" / "s", n_images=1, channels=1, regions=1)


# ---------------------------------------------------------------------------- hostile stores
# issue 14: each of these was a traceback (or torch/numpy's own advice) in `data info` / `train`.

def _data_info(store: Path):
    from click.testing import CliRunner

    from msdn_tune.cli import main

    return CliRunner().invoke(main, ["data", "info", str(store)])


def assert_one_error_line(res, *needles: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line (returned), mentioning each needle."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    assert len(errors[0]) < 400, errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[" * 3000 + "]" * 3000, "nested deeper than"),
        ('{"format_version": 1, "n_images": ' + "9" * 5000 + "}", "invalid JSON"),
        ("\xff\xfe", "meta.json"),
    ],
    ids=["deep nesting", "5000-digit integer", "not JSON"],
)
def test_hostile_meta_text_is_one_line(store, text, needle):
    (store / "meta.json").write_text(text, encoding="latin-1")
    assert_one_error_line(_data_info(store), "meta.json", needle)


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda m: m["arrays"]["labels"].update(shape=800), ["'arrays.labels.shape'", "800"]),
        (lambda m: m.update(grid=[7]), ["'grid'", "[7]"]),
        (lambda m: m.update(grid=[3, 5]), ["grid [3, 5] has 15 regions", "regions is 12"]),
        (lambda m: m.update(n_images=10**400), ["'n_images'", "about 401 digits"]),
        (lambda m: m.update(channels=True), ["'channels'", "True"]),
        (lambda m: m.update(regions=2**40), ["'regions'", "2147483647"]),
        (lambda m: m.update(class_names="abc"), ["'class_names'", "list of strings"]),
        (lambda m: m["split_sizes"].update(train=-1), ["'split_sizes.train'"]),
        (lambda m: m["arrays"]["labels"].update(dtype=["int64"]), ["'arrays.labels.dtype'"]),
        (lambda m: m["arrays"]["labels"].update(sha256=5), ["'arrays.labels.sha256'"]),
        (lambda m: m["arrays"].pop("split_train"), ["'arrays' lacks 'split_train'"]),
        (lambda m: m.update(features=[1]), ["'features'", "a list"]),
        (lambda m: m["features"].update(rows_per_batch=0), ["'features.rows_per_batch'"]),
        (lambda m: m.update(word_dim=-3), ["'word_dim'"]),
        (lambda m: m["arrays"].update(class_attributes=None), ["'arrays.class_attributes'"]),
    ],
)
def test_hostile_meta_keys_are_one_line_naming_the_key(store, edit, needles):
    _edit_meta(store, edit)
    line = assert_one_error_line(_data_info(store), str(store / "meta.json"), *needles)
    assert len(line) < 300


def _npy(dtype: str, shape: tuple, payload: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _rewrite_member(store: Path, name: str, data: bytes) -> None:
    import zipfile

    with np.load(store / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    with zipfile.ZipFile(store / "arrays.npz", "w") as zf:
        for key, a in arrays.items():
            if key == name:
                zf.writestr(f"{key}.npy", data)
            else:
                buf = __import__("io").BytesIO()
                np.lib.format.write_array(buf, a)
                zf.writestr(f"{key}.npy", buf.getvalue())


def test_random_bytes_as_arrays_file_is_one_line_in_our_words(store):
    (store / "arrays.npz").write_bytes(np.random.default_rng(1).bytes(5000))
    line = assert_one_error_line(_data_info(store), "arrays.npz", "not a valid arrays file")
    assert "allow_pickle" not in line


def test_pickled_objects_in_arrays_file_are_never_loaded(store):
    # an object array of the recorded size: numpy would say "load it unsafely with allow_pickle"
    _rewrite_member(store, "labels", _npy("|O", (40,), b"\x00" * 320))
    line = assert_one_error_line(_data_info(store), "'labels'", "pickled Python objects")
    assert "allow_pickle" not in line


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("labels", b"\x93NUMPY" + b"\xff" * 400, "not a plain numeric .npy array"),
        ("labels", _npy("<i4", (80,), b"\x00" * 320), "has dtype int32, expected int64"),
        ("labels", _npy("<i8", (8, 5), b"\x00" * 320), "has shape [8, 5], meta.json says [40]"),
        ("labels", _npy("<i8", (40,), b"\x00" * 300), "holds 300 data bytes"),
        ("labels", _npy("<i8", (40,), b"\x00" * 9000), "holds more data bytes"),
        ("labels", _npy("<i8", (40,), b"\x00" * 90000), "takes"),
    ],
    ids=["bad header", "wrong dtype", "wrong shape", "short data", "long data",
         "far too long"],
)
def test_corrupt_members_of_arrays_file_are_one_line(store, name, data, needle):
    _rewrite_member(store, name, data)
    assert_one_error_line(_data_info(store), "arrays.npz", needle)


def test_extra_member_in_arrays_file_is_refused(store):
    import zipfile

    with zipfile.ZipFile(store / "arrays.npz", "a") as zf:
        zf.writestr("evil.pkl", b"cos\nsystem\n")
    assert_one_error_line(_data_info(store), "arrays.npz", "'evil.pkl'")


def test_refused_store_is_left_as_it_was(store):
    _edit_meta(store, lambda m: m.update(grid=[7]))
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    assert_one_error_line(_data_info(store))
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
