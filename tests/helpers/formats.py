"""Builders of the published benchmark formats (xlsa17 .mat, feature-map HDF5) and the CLI
error check, shared by the importer and extraction tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from click.testing import CliRunner

from msdn_tune.cli import main


def make_bench(n_classes=10, n_unseen=3, per_class=8, n_attr=6, seed=0):
    """A small benchmark with the xlsa17 structure, 0-based.

    Seen classes: 25% of their images test_seen, the rest trainval. xlsa17's tuning split draws
    from all seen-class images: val_loc = the images of 2 seen classes, train_loc the others.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(labels)
    unseen = np.arange(n_classes - n_unseen, n_classes)
    seen = np.arange(n_classes - n_unseen)
    trainval, test_seen = [], []
    for k in seen:
        rows = rng.permutation(np.flatnonzero(labels == k))
        test_seen += rows[: per_class // 4].tolist()
        trainval += rows[per_class // 4 :].tolist()
    test_unseen = np.flatnonzero(np.isin(labels, unseen))
    val_classes = seen[-min(2, len(seen) - 1) :]
    all_seen = np.flatnonzero(np.isin(labels, seen))
    val_loc = all_seen[np.isin(labels[all_seen], val_classes)]
    train_loc = all_seen[~np.isin(labels[all_seen], val_classes)]
    att = rng.uniform(-1, 100, size=(n_classes, n_attr)).astype(np.float64)  # C x A, raw
    return {
        "labels": labels.astype(np.int64),
        "trainval": np.sort(np.array(trainval)),
        "test_seen": np.sort(np.array(test_seen)),
        "test_unseen": test_unseen,
        "train_loc": train_loc,
        "val_loc": val_loc,
        "val_classes": val_classes,
        "original_att": att,
        "w2v": rng.standard_normal((n_attr, 300)),
        "n": len(labels),
        "classes": [f"{k + 1:03d}.Class_{k}" for k in range(n_classes)],
    }


def features_for(n, channels=16, grid=(3, 3), dtype=np.float32):
    """Feature maps whose values identify the row, so order errors show."""
    base = np.arange(channels * grid[0] * grid[1], dtype=np.float64).reshape(channels, *grid)
    rows = np.arange(n, dtype=np.float64)[:, None, None, None]
    return (rows + base / 1000.0).astype(dtype)


def make_hdf5(path, bench, *, channels=16, grid=(3, 3), chunks=None, compression=None, drop=()):
    """The published feature-map HDF5 layout (TransZero preprocessing), 0-based."""
    feats = features_for(bench["n"], channels, grid)
    att = bench["original_att"]
    with h5py.File(path, "w") as f:
        f.create_dataset("feature_map", data=feats, chunks=chunks, compression=compression)
        f.create_dataset("labels", data=bench["labels"])
        for split in ("trainval", "test_seen", "test_unseen"):
            f.create_dataset(f"{split}_loc", data=bench[split].astype(np.uint16))
        f.create_dataset("att", data=att / np.linalg.norm(att, axis=1, keepdims=True))
        f.create_dataset("original_att", data=att)
        f.create_dataset("w2v_att", data=bench["w2v"])
        for key in drop:
            del f[key]
    return feats


def matlab_path(k, label):
    return f"/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/{label:03d}/img_{k}.jpg"


def cell(strings):
    arr = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        arr[i, 0] = s
    return arr


def make_mat(folder, bench, *, image_files=None, drop=(), att_key_shape="AxC"):
    """xlsa17's att_splits.mat and res101.mat: 1-based doubles, attributes A x C, cells."""
    folder = Path(folder)
    att = bench["original_att"].T  # A x C
    if att_key_shape == "CxA":
        att = att.T
    col = att / np.linalg.norm(att, axis=0, keepdims=True)
    splits = {
        "att": col,
        "original_att": att,
        "trainval_loc": (bench["trainval"] + 1).astype(float)[:, None],
        "test_seen_loc": (bench["test_seen"] + 1).astype(float)[:, None],
        "test_unseen_loc": (bench["test_unseen"] + 1).astype(float)[:, None],
        "train_loc": (bench["train_loc"] + 1).astype(float)[:, None],
        "val_loc": (bench["val_loc"] + 1).astype(float)[:, None],
        "allclasses_names": cell(bench["classes"]),
    }
    if image_files is None:
        image_files = [matlab_path(k, lab + 1) for k, lab in enumerate(bench["labels"])]
    res = {
        "features": np.zeros((4, bench["n"])),
        "labels": (bench["labels"] + 1).astype(float)[:, None],
        "image_files": cell(image_files),
    }
    for key in drop:
        splits.pop(key, None)
        res.pop(key, None)
    scipy.io.savemat(folder / "att_splits.mat", splits)
    scipy.io.savemat(folder / "res101.mat", res)
    return folder / "att_splits.mat", folder / "res101.mat"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)
