"""Importers of the real benchmark formats: HDF5 and xlsa17 .mat files built in the exact
published layouts, round-tripped into a store; registry checks; word-vector pickles; bounded
memory; resume after a real kill; every bad input as a clean CLI error."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from msdn_tune.data.ingest import import_hdf5, import_mat
from msdn_tune.data.registry import (
    DATASETS,
    get_dataset,
    mismatches,
    strip_matlab_path,
)
from msdn_tune.data.sources import load_word_vectors
from msdn_tune.data.splits import validation_split
from msdn_tune.data.store import SPLIT_NAMES, BenchmarkStore
from msdn_tune.errors import DataError
from msdn_tune.train.config import TrainConfig
from tests.helpers.formats import (
    assert_clean_error,
    features_for,
    make_bench,
    make_hdf5,
    make_mat,
    run,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench():
    return make_bench()


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_holds_the_published_counts():
    cub, sun, awa2, flo = (get_dataset(n) for n in ("cub", "SUN", "AwA2", "FLO"))
    assert (cub.n_images, cub.n_seen, cub.n_unseen, cub.n_attributes) == (11788, 150, 50, 312)
    assert (cub.trainval, cub.test_seen, cub.test_unseen) == (7057, 1764, 2967)
    assert (sun.n_images, sun.n_classes, sun.n_attributes, sun.test_unseen) == (
        14340,
        717,
        102,
        1440,
    )
    assert (awa2.n_images, awa2.trainval, awa2.test_seen, awa2.test_unseen) == (
        37322,
        23527,
        5882,
        7913,
    )
    assert (flo.n_attributes, flo.word_dim, flo.path_strip) == (1024, None, None)
    assert [d.path_strip for d in (cub, sun, awa2)] == [6, 7, 5]
    for d in DATASETS.values():
        assert d.n_seen + d.n_unseen == d.n_classes
        assert d.trainval + d.test_seen + d.test_unseen == d.n_images
    # the registry names each published training recipe; the trainer's config holds it
    assert TrainConfig.for_dataset(cub.recipe).seed == 214
    assert TrainConfig.for_dataset(awa2.recipe).momentum == 0.0
    assert TrainConfig.for_dataset(sun.recipe).sampler == "balanced"
    with pytest.raises(DataError, match="CUB, SUN, AWA2, FLO"):
        get_dataset("imagenet")


def test_registry_mismatch_lists_every_difference():
    cub = get_dataset("CUB")
    good = {k: v for k, v in cub.expected().items()}
    assert mismatches(cub, good) == []
    bad = dict(good, images=100, attributes=85)
    bad["word vector dim"] = None
    assert mismatches(cub, bad) == [
        "images: 100 (CUB has 11788)",
        "attributes: 85 (CUB has 312)",
        "word vector dim: none (CUB has 300)",
    ]


def test_strip_matlab_path_follows_the_published_rule():
    p = "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.Albatross/a.jpg"
    assert strip_matlab_path(p, 6) == "CUB_200_2011/images/001.Albatross/a.jpg"
    awa = "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg"
    assert (
        strip_matlab_path(awa, 5)
        == "Animals_with_Attributes2/JPEGImages/antelope/antelope_10001.jpg"
    )
    with pytest.raises(DataError, match="only 3"):
        strip_matlab_path("/a/b", 5)


# --------------------------------------------------------------------------------------------
# HDF5 round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "layout"),
    [("float32", "contiguous"), ("float16", "contiguous"), ("float32", "gzip-chunked")],
)
def test_hdf5_round_trip(tmp_path, bench, dtype, layout):
    src = tmp_path / "feature_map_ResNet_101_CUB.hdf5"
    opts = {"chunks": (5, 16, 3, 3), "compression": "gzip"} if layout == "gzip-chunked" else {}
    feats = make_hdf5(src, bench, **opts)
    out = tmp_path / "cub"
    result = import_hdf5(
        src,
        "CUB",
        out,
        dtype=dtype,
        allow_mismatch=True,
        chunk_rows=7,
        progress=False,
        rows_per_batch=16,
    )
    assert result.path == out and result.n_images == bench["n"]
    with BenchmarkStore.open(out) as store:
        store.verify()
        assert store.dataset == "CUB" and str(store.dtype) == dtype
        assert store.meta["grid"] == [3, 3] and (store.channels, store.regions) == (16, 9)
        got = store.gather_numpy(np.arange(bench["n"]))
        want = feats.reshape(bench["n"], 16, 9)
        if dtype == "float32":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-3)
        np.testing.assert_array_equal(store.labels, bench["labels"])
        for split in ("trainval", "test_seen", "test_unseen"):
            np.testing.assert_array_equal(store.splits[split], bench[split])
        # raw original_att, C x A (the model normalises rows itself)
        np.testing.assert_allclose(store.class_attributes, bench["original_att"], rtol=1e-6)
        np.testing.assert_allclose(store.attribute_vectors, bench["w2v"], rtol=1e-6)
        imp = store.meta["import"]
        assert imp["attribute_key"] == "original_att" and imp["word_vectors"] == "w2v_att"
        assert imp["validation"]["source"] == "held-out seen classes"
        assert any("images: 80 (CUB has 11788)" == m for m in imp["registry"]["mismatches"])
        # the validation split: trainval = train + val_seen + val_unseen, held-out classes
        tv = np.sort(np.concatenate([store.splits[s] for s in ("train", "val_seen", "val_unseen")]))
        np.testing.assert_array_equal(tv, bench["trainval"])
        held = np.unique(bench["labels"][store.splits["val_unseen"]])
        assert len(held) == 2  # round(7 seen * 3/10 unseen share)
        assert not np.isin(bench["labels"][store.splits["train"]], held).any()


def test_hdf5_with_att_splits_takes_xlsa17_validation_and_names(tmp_path, bench):
    src = tmp_path / "cub.hdf5"
    make_hdf5(src, bench)
    att, _ = make_mat(tmp_path, bench)
    out = tmp_path / "store"
    import_hdf5(src, "CUB", out, att_splits=att, allow_mismatch=True, progress=False)
    with BenchmarkStore.open(out) as store:
        assert store.class_names == bench["classes"]
        held = np.unique(bench["labels"][store.splits["val_unseen"]])
        np.testing.assert_array_equal(held, bench["val_classes"])
        v = store.meta["import"]["validation"]
        assert v["source"] == "xlsa17 train_loc/val_loc"
        # val_loc rows that are test_seen images are dropped, never used for tuning
        assert v["val_loc_rows_outside_trainval"] == 4
        assert not np.isin(store.splits["val_unseen"], bench["test_seen"]).any()


def test_cli_import_hdf5_checks_the_registry(tmp_path, bench):
    src = tmp_path / "feature_map_ResNet_101_CUB.hdf5"
    make_hdf5(src, bench)
    out = tmp_path / "cub"
    res = run("data", "import", "hdf5", src, "--dataset", "CUB", "--out", out, "-q")
    assert_clean_error(
        res,
        "does not match the published CUB benchmark",
        "images: 80 (CUB has 11788)",
        "classes: 10 (CUB has 200)",
        "seen classes: 7 (CUB has 150)",
        "attributes: 6 (CUB has 312)",
        "trainval: 42 (CUB has 7057)",
        "--allow-mismatch",
    )
    assert not out.exists()
    res = run(
        "data",
        "import",
        "hdf5",
        src,
        "--dataset",
        "CUB",
        "--out",
        out,
        "-q",
        "--allow-mismatch",
        "--dtype",
        "float32",
    )
    assert res.exit_code == 0, res.output
    assert "warning: differs from the published CUB: images: 80" in res.output
    assert "validation:" in res.output and "80 x 16 x 9 (grid 3x3)" in res.output
    assert "float32" in res.output
    res = run("data", "info", out)
    assert res.exit_code == 0 and "msdn-tune import" in res.output


# --------------------------------------------------------------------------------------------
# .mat (xlsa17) round trip
# --------------------------------------------------------------------------------------------


def test_mat_round_trip_converts_matlab_conventions(tmp_path, bench):
    att, res101 = make_mat(tmp_path, bench)
    feats_file = tmp_path / "features.hdf5"
    with h5py.File(feats_file, "w") as f:  # feature maps in res101 image order
        f.create_dataset("feature_map", data=features_for(bench["n"]))
    w2v = tmp_path / "CUB_attribute.pkl"
    w2v.write_bytes(pickle.dumps(bench["w2v"], protocol=4))
    out = tmp_path / "cub"
    result = import_mat(
        "CUB",
        att,
        res101,
        feats_file,
        out,
        w2v=w2v,
        dtype="float32",
        allow_mismatch=True,
        progress=False,
    )
    assert result.validation["source"] == "xlsa17 train_loc/val_loc"
    with BenchmarkStore.open(out) as store:
        np.testing.assert_array_equal(store.labels, bench["labels"])  # 1-based -> 0-based
        for split in ("trainval", "test_seen", "test_unseen"):
            np.testing.assert_array_equal(store.splits[split], bench[split])
        np.testing.assert_allclose(store.class_attributes, bench["original_att"])  # A x C -> C x A
        np.testing.assert_allclose(store.attribute_vectors, bench["w2v"], rtol=1e-6)
        assert store.class_names == bench["classes"]
        np.testing.assert_array_equal(
            store.gather_numpy(np.arange(bench["n"])), features_for(bench["n"]).reshape(-1, 16, 9)
        )
        np.testing.assert_array_equal(
            np.unique(bench["labels"][store.splits["val_unseen"]]), bench["val_classes"]
        )
        assert store.meta["import"]["word_vectors"] == str(w2v)


def test_mat_import_from_an_existing_store_resplits_it(tmp_path, bench):
    """--features may be a store: re-import with other .mat files without re-extracting."""
    src = tmp_path / "cub.hdf5"
    make_hdf5(src, bench)
    first = tmp_path / "first"
    import_hdf5(src, "CUB", first, allow_mismatch=True, progress=False, dtype="float32")
    att, res101 = make_mat(tmp_path, bench)
    out = tmp_path / "second"
    import_mat("CUB", att, res101, first, out, allow_mismatch=True, progress=False)
    with BenchmarkStore.open(out) as a, BenchmarkStore.open(first) as b:
        np.testing.assert_allclose(
            a.gather_numpy(np.arange(80)).astype(np.float32),
            b.gather_numpy(np.arange(80)),
            rtol=1e-3,
        )
        assert a.attribute_vectors is None  # no --w2v given


# --------------------------------------------------------------------------------------------
# word vectors and the restricted unpickler
# --------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_word_vectors_from_pickles_of_any_protocol(tmp_path, protocol):
    arr = np.random.default_rng(1).standard_normal((7, 300))
    p = tmp_path / "w.pkl"
    p.write_bytes(pickle.dumps(np.asfortranarray(arr) if protocol == 5 else arr, protocol=protocol))
    got = load_word_vectors(p, n_attributes=7)
    assert got.dtype == np.float32 and got.shape == (7, 300)
    np.testing.assert_allclose(got, arr, rtol=1e-6)


def test_word_vectors_from_npy_and_refusals(tmp_path):
    arr = np.ones((5, 300), dtype=np.float64)
    np.save(tmp_path / "w.npy", arr)
    assert load_word_vectors(tmp_path / "w.npy").shape == (5, 300)
    with pytest.raises(DataError, match="has 5 rows, expected one per attribute \\(312\\)"):
        load_word_vectors(tmp_path / "w.npy", n_attributes=312)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(DataError, match="refusing to load posix.mkdir"):
        load_word_vectors(evil)
    assert not marker.exists()  # nothing ran

    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="holds a dict, not a numpy array"):
        load_word_vectors(tmp_path / "dict.pkl")
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(DataError, match="builtins|object"):
        load_word_vectors(tmp_path / "obj.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="junk.pkl"):
        load_word_vectors(tmp_path / "junk.pkl")
    np.save(tmp_path / "nan.npy", np.full((2, 3), np.nan))
    with pytest.raises(DataError, match="NaN"):
        load_word_vectors(tmp_path / "nan.npy")


# --------------------------------------------------------------------------------------------
# validation split
# --------------------------------------------------------------------------------------------


def test_held_out_validation_split_is_deterministic_and_class_disjoint():
    b = make_bench(n_classes=40, n_unseen=10, per_class=20)
    s1, info = validation_split(b["labels"], b["trainval"], b["test_unseen"])
    s2, _ = validation_split(b["labels"], b["trainval"], b["test_unseen"])
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    assert info["val_unseen_classes"] == round(30 * 10 / 40) == 8
    lab = b["labels"]
    held = np.unique(lab[s1["val_unseen"]])
    assert not np.isin(lab[s1["train"]], held).any()
    assert not np.isin(lab[s1["val_seen"]], held).any()
    for k in np.unique(lab[s1["train"]]):  # val_seen: 20% of each remaining class (15 -> 3)
        assert (lab[s1["val_seen"]] == k).sum() == 3
    s3, _ = validation_split(lab, b["trainval"], b["test_unseen"], seed=1)
    assert not np.array_equal(s3["val_unseen"], s1["val_unseen"])


def test_xlsa17_validation_split_must_cover_trainval_with_disjoint_classes(bench):
    lab = bench["labels"]
    with pytest.raises(DataError, match="in neither train_loc nor val_loc"):
        validation_split(
            lab,
            bench["trainval"],
            bench["test_unseen"],
            train_loc=bench["train_loc"][5:],
            val_loc=bench["val_loc"],
        )
    mixed = np.concatenate([bench["val_loc"], bench["train_loc"][:3]])
    with pytest.raises(DataError, match="disjoint"):
        validation_split(
            lab,
            bench["trainval"],
            bench["test_unseen"],
            train_loc=bench["train_loc"],
            val_loc=mixed,
        )


# --------------------------------------------------------------------------------------------
# bad inputs: each one a clean CLI error naming the entry
# --------------------------------------------------------------------------------------------


def _h5_case(tmp_path, bench, case):
    src = tmp_path / "in.hdf5"
    if case == "missing key":
        make_hdf5(src, bench, drop=("test_unseen_loc",))
        return src, ["has no test_unseen_loc", str(src)]
    make_hdf5(src, bench)
    with h5py.File(src, "a") as f:
        if case == "label out of range":
            lab = bench["labels"].copy()
            lab[17] = 10
            del f["labels"]
            f["labels"] = lab
            return src, ["labels[17] = 10 is outside the 10 classes of original_att [0, 9]"]
        if case == "1-based labels":
            del f["labels"]
            f["labels"] = bench["labels"] + 1
            return src, ["look 1-based"]
        if case == "split beyond images":
            loc = bench["test_seen"].copy()
            loc[3] = 80
            del f["test_seen_loc"]
            f["test_seen_loc"] = loc
            return src, ["test_seen_loc[3] = 80 is outside the 80 images [0, 79]"]
        if case == "wrong feature shape":
            del f["feature_map"]
            f["feature_map"] = np.zeros((80, 144), dtype=np.float32)
            return src, ["feature_map has shape (80, 144)", "N x 2048 x 14 x 14"]
        if case == "w2v rows":
            del f["w2v_att"]
            f["w2v_att"] = np.zeros((5, 300))
            return src, ["w2v_att has shape (5, 300)", "6 x dim"]
        if case == "labels count":
            del f["labels"]
            f["labels"] = bench["labels"][:-1]
            return src, ["labels has 79 entries for 80 feature maps"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing key",
        "label out of range",
        "1-based labels",
        "split beyond images",
        "wrong feature shape",
        "w2v rows",
        "labels count",
    ],
)
def test_bad_hdf5_is_a_clean_error(tmp_path, bench, case):
    src, needles = _h5_case(tmp_path, bench, case)
    out = tmp_path / "out"
    res = run(
        "data", "import", "hdf5", src, "--dataset", "CUB", "--out", out, "-q", "--allow-mismatch"
    )
    assert_clean_error(res, *needles)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_not_an_hdf5_file_and_missing_file(tmp_path):
    bad = tmp_path / "x.hdf5"
    bad.write_text("hello")
    res = run("data", "import", "hdf5", bad, "--dataset", "SUN", "--out", tmp_path / "o", "-q")
    assert_clean_error(res, "cannot be opened as an HDF5 file")
    res = run(
        "data",
        "import",
        "hdf5",
        tmp_path / "nope.h5",
        "--dataset",
        "SUN",
        "--out",
        tmp_path / "o",
        "-q",
    )
    assert_clean_error(res, "nope.h5 does not exist")
    cut = tmp_path / "cut.hdf5"  # a download that stopped half-way
    make_hdf5(cut, make_bench())
    with open(cut, "r+b") as fh:
        fh.truncate(cut.stat().st_size // 2)
    res = run("data", "import", "hdf5", cut, "--dataset", "CUB", "--out", tmp_path / "o", "-q")
    assert_clean_error(res, "cut.hdf5")
    assert not (tmp_path / "o").exists()


def _mat_case(tmp_path, bench, case):
    feats = tmp_path / "f.hdf5"
    with h5py.File(feats, "w") as f:
        f["feature_map"] = features_for(bench["n"])
    if case == "att_splits without keys":
        att, res = make_mat(tmp_path, bench, drop=("trainval_loc", "test_seen_loc"))
        return att, res, feats, ["has no trainval_loc, test_seen_loc", "att_splits.mat"]
    if case == "res101 without labels":
        att, res = make_mat(tmp_path, bench, drop=("labels",))
        return att, res, feats, ["res101.mat has no labels"]
    att, res = make_mat(tmp_path, bench)
    m = scipy.io.loadmat(att)
    r = scipy.io.loadmat(res)
    if case == "index beyond images":
        m["test_unseen_loc"][4, 0] = 81
        scipy.io.savemat(att, m)
        return (
            att,
            res,
            feats,
            ["test_unseen_loc(5) = 81 is outside the 80 images [1, 80]", "MATLAB 1-based"],
        )
    if case == "label beyond classes":
        r["labels"][9, 0] = 11
        scipy.io.savemat(res, r)
        return att, res, feats, ["labels(10) = 11 is outside the 10 classes"]
    if case == "transposed attributes":
        make_mat(tmp_path, bench, att_key_shape="CxA")
        return att, res, feats, ["original_att has shape (10, 6)", "looks transposed"]
    if case == "feature count":
        with h5py.File(feats, "w") as f:
            f["feature_map"] = features_for(70)
        return att, res, feats, ["holds 70 feature maps but", "lists 80 images"]
    if case == "feature order":
        with h5py.File(feats, "a") as f:
            f["labels"] = bench["labels"][::-1]
        return att, res, feats, ["not in res101.mat image order"]
    if case == "not a mat file":
        att.write_text("garbage")
        return att, res, feats, ["cannot be read as a MATLAB .mat file"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "att_splits without keys",
        "res101 without labels",
        "index beyond images",
        "label beyond classes",
        "transposed attributes",
        "feature count",
        "feature order",
        "not a mat file",
    ],
)
def test_bad_mat_is_a_clean_error(tmp_path, bench, case):
    att, res101, feats, needles = _mat_case(tmp_path, bench, case)
    out = tmp_path / "out"
    res = run(
        "data",
        "import",
        "mat",
        "--dataset",
        "CUB",
        "--att-splits",
        att,
        "--res101",
        res101,
        "--features",
        feats,
        "--out",
        out,
        "-q",
        "--allow-mismatch",
    )
    assert_clean_error(res, *needles)
    assert not out.exists()


def test_existing_store_needs_force_and_concurrent_import_is_refused(tmp_path, bench):
    src = tmp_path / "in.hdf5"
    make_hdf5(src, bench)
    out = tmp_path / "cub"
    args = [
        "data",
        "import",
        "hdf5",
        src,
        "--dataset",
        "CUB",
        "--out",
        out,
        "-q",
        "--allow-mismatch",
    ]
    assert run(*args).exit_code == 0
    assert_clean_error(run(*args), "already exists", "--force")
    lock_dir = tmp_path / ".cub.partial"
    lock_dir.mkdir()
    with open(lock_dir / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert_clean_error(run(*args, "--force"), "another msdn-tune process is importing")
    assert run(*args, "--force", "--dtype", "float32").exit_code == 0
    with BenchmarkStore.open(out) as store:
        assert str(store.dtype) == "float32"
    assert not lock_dir.exists()


# --------------------------------------------------------------------------------------------
# streaming: bounded memory, resume after a real kill
# --------------------------------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import json, re, sys
    from pathlib import Path
    import torch  # converts dtypes inside the import: its fixed footprint is not what is bounded
    from msdn_tune.data.ingest import import_hdf5
    from msdn_tune.data.store import StoreWriter
    from tests.helpers.interrupt import interrupt_after

    def status(key):
        text = Path("/proc/self/status").read_text()
        return int(re.search(key + r":\\s+(\\d+)", text).group(1)) * 1024

    args = json.loads(sys.argv[1])
    if args.get("kill_after_chunks"):  # SIGKILL right after that many chunks reach the store
        interrupt_after(StoreWriter, "write", args["kill_after_chunks"])
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status("VmRSS")
    r = import_hdf5(args["src"], "CUB", args["out"], allow_mismatch=True, progress=False,
                    chunk_rows=args["chunk_rows"], rows_per_batch=args["rows_per_batch"],
                    resume=args.get("resume", False))
    print(json.dumps({"growth": status("VmHWM") - before, "resumed": r.resumed_rows}))
    """
)


def _driver(tmp_path, **args):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _DRIVER,
            json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in args.items()}),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.slow  # imports a file larger than a chunk to measure memory
def test_import_memory_stays_bounded_on_a_file_larger_than_a_chunk(tmp_path):
    n, channels, grid = 256, 2048, (14, 14)  # 411 MB of float32 feature maps
    b = make_bench(n_classes=16, n_unseen=4, per_class=16)
    src = tmp_path / "big.hdf5"
    with h5py.File(src, "w") as f:
        ds = f.create_dataset("feature_map", shape=(n, channels, *grid), dtype=np.float32)
        block = np.random.default_rng(0).random((32, channels, *grid), dtype=np.float32)
        for lo in range(0, n, 32):
            ds[lo : lo + 32] = block + lo
        f["labels"] = b["labels"]
        for s in ("trainval", "test_seen", "test_unseen"):
            f[f"{s}_loc"] = b[s]
        f["original_att"] = b["original_att"]
    size = src.stat().st_size
    assert size > 400e6
    proc = _driver(tmp_path, src=src, out=tmp_path / "store", chunk_rows=4, rows_per_batch=4)
    assert proc.returncode == 0, proc.stderr
    growth = json.loads(proc.stdout.splitlines()[-1])["growth"]
    # about 50 MB of fixed overhead plus two 6.4 MB read buffers and the writer's batch
    assert growth < 0.3 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for {size / 1e6:.0f} MB"
    with BenchmarkStore.open(tmp_path / "store") as store:
        row = store.gather_numpy(np.array([255]))[0].astype(np.float32)
        np.testing.assert_allclose(row, (block[-1] + 224).reshape(channels, -1), rtol=1e-3)


@pytest.mark.slow  # an import killed mid-way, then resumed, in subprocesses
def test_resume_after_kill_gives_the_same_store(tmp_path, bench):
    src = tmp_path / "in.hdf5"
    make_hdf5(src, bench)
    out = tmp_path / "cub"
    common = dict(src=src, out=out, chunk_rows=8, rows_per_batch=8)
    proc = _driver(tmp_path, kill_after_chunks=3, **common)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # nothing that opens as a store; the partial import is kept
    assert not out.exists()
    with pytest.raises(DataError):
        BenchmarkStore.open(out)
    assert (tmp_path / ".cub.partial" / "features.arrow").is_file()
    # a plain re-run refuses to throw the partial import away silently
    with pytest.raises(DataError, match="--resume to continue it or --force"):
        import_hdf5(
            src, "CUB", out, allow_mismatch=True, progress=False, chunk_rows=8, rows_per_batch=8
        )
    # other settings cannot resume it
    with pytest.raises(DataError, match="differs in dtype"):
        import_hdf5(
            src,
            "CUB",
            out,
            allow_mismatch=True,
            progress=False,
            chunk_rows=8,
            rows_per_batch=8,
            resume=True,
            dtype="float32",
        )
    proc = _driver(tmp_path, resume=True, **common)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["resumed"] == 24  # 3 chunks of 8 rows
    assert not (tmp_path / ".cub.partial").exists()
    assert not list(tmp_path.glob(".cub.tmp-*"))  # the killed writer's temp dir is cleaned up
    fresh = tmp_path / "fresh"
    import_hdf5(
        src, "CUB", fresh, allow_mismatch=True, progress=False, chunk_rows=8, rows_per_batch=8
    )
    with BenchmarkStore.open(out) as a, BenchmarkStore.open(fresh) as b:
        a.verify()
        assert a.meta["features"]["crc32"] == b.meta["features"]["crc32"]
        assert a.meta["grid"] == [3, 3]
        for s in SPLIT_NAMES:
            np.testing.assert_array_equal(a.splits[s], b.splits[s])


def test_ctrl_c_keeps_the_partial_import_for_resume(tmp_path, bench):
    src = tmp_path / "in.hdf5"
    make_hdf5(src, bench)
    out = tmp_path / "cub"
    code = textwrap.dedent(
        f"""
        import signal
        from msdn_tune.data.store import StoreWriter
        from tests.helpers.interrupt import interrupt_after
        interrupt_after(StoreWriter, "write", 2, signal.SIGINT)  # Ctrl-C after the 2nd chunk
        from msdn_tune.cli import main
        main(["data", "import", "hdf5", {str(src)!r}, "--dataset", "CUB", "--out", {str(out)!r},
              "--allow-mismatch", "-q", "--chunk-rows", "8"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 130, proc.stderr
    assert "rerun the same import command with --resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and (tmp_path / ".cub.partial" / "state.json").is_file()
    res = run(
        "data",
        "import",
        "hdf5",
        src,
        "--dataset",
        "CUB",
        "--out",
        out,
        "-q",
        "--allow-mismatch",
        "--chunk-rows",
        "8",
        "--resume",
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"imported 80 images", res.output)
    with BenchmarkStore.open(out) as store:
        store.verify()


# --------------------------------------------------------------------------------------------
# output folders (issue 14): a folder holding someone else's files is never replaced
# --------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_import_refuses_a_users_folder_even_with_force(tmp_path, bench):
    src = tmp_path / "in.hdf5"
    make_hdf5(src, bench)
    out = tmp_path / "cub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "meta.json").write_text('{"my": "metadata"}')
    before = _snapshot(out)
    args = ["data", "import", "hdf5", src, "--dataset", "CUB", "--out", out, "-q",
            "--allow-mismatch"]
    assert_clean_error(run(*args), "not a benchmark store", "--force")
    assert_clean_error(run(*args, "--force"), "never deletes")
    assert _snapshot(out) == before
    assert not list(tmp_path.glob(".cub*"))  # no partial import or temporary store left
    # a store of ours with a user's file added is not replaced either
    store = tmp_path / "store"
    assert run(*args[:7], store, *args[8:]).exit_code == 0
    (store / "notes.txt").write_text("mine")
    before = _snapshot(store)
    assert_clean_error(run(*args[:7], store, *args[8:], "--force"), "notes.txt")
    assert _snapshot(store) == before


def test_import_into_an_empty_folder(tmp_path, bench):
    src = tmp_path / "in.hdf5"
    make_hdf5(src, bench)
    out = tmp_path / "cub"
    out.mkdir()
    res = run("data", "import", "hdf5", src, "--dataset", "CUB", "--out", out, "-q",
              "--allow-mismatch")
    assert res.exit_code == 0, res.output
    with BenchmarkStore.open(out) as store:
        assert store.n_images == bench["labels"].shape[0]
