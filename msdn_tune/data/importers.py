"""Importers: the published CUB / SUN / AWA2 / FLO files -> a benchmark store, streaming and safe.

Two sources (docs/model.md §4):

* **Feature-map HDF5** (``feature_map_ResNet_101_{CUB,SUN,AWA2}.hdf5``, written by TransZero's
  preprocessing): keys ``feature_map`` (N x 2048 x 14 x 14), ``labels``, ``trainval_loc``,
  ``test_seen_loc``, ``test_unseen_loc`` (all **0-based**), ``att`` / ``original_att`` (C x A)
  and ``w2v_att`` (A x 300). :func:`import_hdf5`.
* **xlsa17 proposed split** (``att_splits.mat`` + ``res101.mat``; MATLAB **1-based** indices and
  labels, attributes stored **A x C**) plus feature maps extracted from the images
  (``msdn-tune data extract``, see :mod:`msdn_tune.data.extract`) or any HDF5 with a
  ``feature_map`` in ``res101.mat`` image order. :func:`import_mat`.

Class attributes: the store holds the **raw** ``original_att`` (C x A; CUB in percent, AWA2 with
its negative entries), because the model L2-normalises each class row itself (after the optional
AWA2 clipping of negatives), which makes any per-class scale - the official loader's /100, or the
per-class L2 normalisation that ``att`` is - irrelevant. Only a source without ``original_att``
falls back to ``att`` (equivalent after that normalisation); meta.json records which key was used
(``import.attribute_key``).

Every import is checked against the dataset registry (:mod:`msdn_tune.data.registry`) before the
first feature byte is copied, and records a validation split for honest model selection
(:func:`validation_split`).

**Streaming and memory.** Features are copied ``chunk_rows`` images at a time (default about
64 MiB of source data) while a background thread reads the next chunk, so resident memory is a
few hundred MB (Python, torch, two read buffers and the store writer's 64 MiB record batch)
whatever the file size: the 60 GB AWA2 file converts on a 24 GiB machine. Uncompressed HDF5
datasets are read with ``pread`` straight into the buffer (no h5py copy); chunked or compressed
ones through h5py in whole HDF5 chunks.

**Interruption and resume.** The store is written by :class:`StoreWriter` into a hidden temporary
directory that is renamed into place only when complete, so an interrupted import never leaves a
store that opens as valid. The feature file being written is also hard-linked into
``.<out>.partial/`` next to the target, with a ``state.json`` naming the input (path, size,
mtime) and the layout; a link survives Ctrl-C, a crash or ``kill -9``. ``resume=True``
(``--resume``) copies the complete record batches of that partial file into a new writer (no
re-reading of the source for them) and continues the source from the first missing row; without
it, a partial import is refused unless ``force`` (``--force``) discards it. A bad input found
mid-stream (a :class:`DataError`) discards the partial file: resuming could not fix it.

Test hook (documented so tests can kill an import at a known point): when the environment
variable ``MSDN_TUNE_TEST_KILL_AFTER_CHUNKS=N`` is set, the process sends itself SIGKILL after
writing N source chunks - a real, uncatchable kill.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from msdn_tune.data.registry import (
    DatasetInfo,
    check_counts,
    get_dataset,
    observed_counts,
)
from msdn_tune.data.store import (
    FEATURES_FILE,
    SPLIT_NAMES,
    BenchmarkStore,
    StoreExistsError,
    StoreWriter,
    _check_arrays,
)
from msdn_tune.errors import DataError

try:  # POSIX only; elsewhere two concurrent imports of one target are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Source bytes read per step (``--chunk-rows`` overrides it in images).
CHUNK_TARGET_BYTES = 64 << 20
#: Share of each remaining training class's images held out as ``val_seen``.
VAL_SEEN_FRAC = 0.2
#: Seed of the deterministic validation split (recorded in meta.json).
VALIDATION_SEED = 0
HDF5_KEYS = ("feature_map", "labels", "trainval_loc", "test_seen_loc", "test_unseen_loc")
KILL_HOOK_ENV = "MSDN_TUNE_TEST_KILL_AFTER_CHUNKS"
_TEST_SPLITS = ("trainval", "test_seen", "test_unseen")


# --------------------------------------------------------------------------------------------
# word vectors
# --------------------------------------------------------------------------------------------


def _codecs_encode(text: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """What protocol 0-2 pickles use to rebuild ``bytes``; only the latin-1 codec is allowed."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode with encoding {encoding!r} is not part of a plain numpy array"
        )
    return text.encode("latin-1", errors)


def _numpy_core(name: str) -> Any:
    for module in ("numpy._core." + name.split(".")[0], "numpy.core." + name.split(".")[0]):
        try:
            return getattr(importlib.import_module(module), name.split(".")[1])
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {name}")  # pragma: no cover


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    reconstruct = _numpy_core("multiarray._reconstruct")
    frombuffer = _numpy_core("numeric._frombuffer")
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays.

    A pickle can name any importable callable and call it, so loading a downloaded pickle with
    ``pickle.load`` runs whatever its author wanted. This one resolves only the handful of
    globals a pickled ``numpy.ndarray`` needs and refuses everything else before calling it.
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only a plain numpy array may be unpickled"
            ) from None

    def persistent_load(self, pid: object) -> Any:
        raise pickle.UnpicklingError("refusing persistent references in a word-vector pickle")


def load_word_vectors(path: str | Path, *, n_attributes: int | None = None) -> np.ndarray:
    """Attribute word vectors (A x D float32) from a ``.npy`` file or a pickled numpy array.

    ``.npy`` is read with ``allow_pickle=False``. A pickle (``.pkl``, as TransZero ships
    ``w2v/{CUB,SUN,AWA2}_attribute.pkl``) is read with an unpickler that only rebuilds numpy
    arrays (no other code can run) and Python 2 byte strings as latin-1. Raises DataError naming
    the file for anything else, a non-2-D or non-finite array, or a row count other than
    ``n_attributes``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"word-vector file {p} does not exist")
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
            fh.seek(0)
            if head == b"\x93NUMPY":
                arr = np.load(fh, allow_pickle=False)
            else:
                arr = _ArrayUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"word-vector file {p}: {exc}") from exc
    except (ValueError, EOFError, OSError, TypeError, IndexError, KeyError) as exc:
        raise DataError(
            f"word-vector file {p} is neither a .npy array nor a pickled numpy array: {exc}"
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise DataError(f"word-vector file {p} holds a {type(arr).__name__}, not a numpy array")
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or 0 in arr.shape:
        raise DataError(
            f"word-vector file {p} holds a {arr.dtype} array of shape {arr.shape}; "
            "expected a 2-D float array (attributes x dim, e.g. 312 x 300)"
        )
    if n_attributes is not None and arr.shape[0] != n_attributes:
        raise DataError(
            f"word-vector file {p} has {arr.shape[0]} rows, expected one per attribute "
            f"({n_attributes}); is it the file of another dataset?"
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"word-vector file {p} contains NaN or inf")
    return arr


# --------------------------------------------------------------------------------------------
# the validation split
# --------------------------------------------------------------------------------------------


def validation_split(
    labels: np.ndarray,
    trainval: np.ndarray,
    test_unseen: np.ndarray,
    *,
    train_loc: np.ndarray | None = None,
    val_loc: np.ndarray | None = None,
    val_seen_frac: float = VAL_SEEN_FRAC,
    seed: int = VALIDATION_SEED,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split ``trainval`` into ``train`` / ``val_seen`` / ``val_unseen`` (0-based rows).

    ``val_unseen`` plays the unseen test classes during tuning: all trainval images of held-out
    seen classes. With xlsa17's tuning split (``train_loc``/``val_loc``, 0-based) those are the
    classes of ``val_loc``; xlsa17 draws both from trainval and test_seen, so rows outside
    trainval are dropped (the test splits stay untouched). Without it, a share of the seen
    classes equal to the test split's unseen share is held out, drawn with ``seed``.
    ``val_seen`` is ``val_seen_frac`` of every remaining class's images (drawn per class, like
    test_seen is), ``train`` the rest. Returns the splits and a description for meta.json.
    """
    labels = np.asarray(labels, dtype=np.int64)
    trainval = np.asarray(trainval, dtype=np.int64)
    seen = np.unique(labels[trainval])
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"val_seen_frac": val_seen_frac, "seed": seed}
    if (train_loc is None) != (val_loc is None):
        raise DataError("train_loc and val_loc must be given together")
    if train_loc is not None and val_loc is not None:
        in_tv = np.isin(trainval, val_loc)
        in_train = np.isin(trainval, train_loc)
        neither = trainval[~(in_tv | in_train)]
        if len(neither):
            raise DataError(
                f"{len(neither)} trainval images are in neither train_loc nor val_loc "
                f"(e.g. row {neither[0]}); the file's tuning split does not cover trainval"
            )
        val_classes = np.unique(labels[trainval[in_tv]])
        train_classes = np.unique(labels[trainval[in_train & ~in_tv]])
        both = np.intersect1d(val_classes, train_classes)
        if len(both) or len(val_classes) == 0:
            raise DataError(
                "train_loc and val_loc must hold disjoint, non-empty sets of classes; "
                f"they share {len(both)} classes (e.g. {both[:3].tolist()}) and val_loc has "
                f"{len(val_classes)}"
            )
        info.update(
            source="xlsa17 train_loc/val_loc",
            val_loc_rows_outside_trainval=int(len(np.setdiff1d(val_loc, trainval))),
        )
    else:
        unseen = np.unique(labels[np.asarray(test_unseen, dtype=np.int64)])
        if len(seen) < 2:
            raise DataError(f"trainval has {len(seen)} class(es); a validation split needs >= 2")
        share = len(unseen) / (len(seen) + len(unseen))
        n_hold = min(len(seen) - 1, max(1, round(share * len(seen))))
        val_classes = np.sort(rng.choice(seen, size=n_hold, replace=False))
        info.update(source="held-out seen classes", held_out_share=round(share, 4))
    is_val = np.isin(labels[trainval], val_classes)
    train: list[np.ndarray] = []
    val_seen: list[np.ndarray] = []
    rest = trainval[~is_val]
    for k in np.unique(labels[rest]).tolist():
        rows = rng.permutation(np.sort(rest[labels[rest] == k]))
        n_val = round(val_seen_frac * len(rows))
        val_seen.append(rows[:n_val])
        train.append(rows[n_val:])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    splits = {
        "train": cat(train),
        "val_seen": cat(val_seen),
        "val_unseen": np.sort(trainval[is_val]).astype(np.int64),
    }
    info["val_unseen_classes"] = int(len(val_classes))
    info["train_classes"] = int(len(seen) - len(val_classes))
    return splits, info


# --------------------------------------------------------------------------------------------
# index and array checks
# --------------------------------------------------------------------------------------------


def _integers(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{what} must hold integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if len(bad):
            raise DataError(f"{what}[{bad[0]}] = {arr[bad[0]]} is not an integer")
    return arr.astype(np.int64)


def _check_range(arr: np.ndarray, lo: int, hi: int, what: str, meaning: str, base: int) -> None:
    """Raise DataError naming the first entry of ``arr`` outside ``[lo, hi]``."""
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if len(bad):
        i = int(bad[0])
        pos = f"({i + 1})" if base == 1 else f"[{i}]"
        extra = " (MATLAB 1-based)" if base == 1 else ""
        if base == 0 and arr.min() >= 1 and arr.max() == hi + 1:
            extra = "; the values look 1-based, but this format is 0-based"
        raise DataError(
            f"{what}{pos} = {arr[i]} is outside {meaning} [{lo}, {hi}]{extra} "
            f"({len(bad)} of {len(arr)} entries are)"
        )


def _check_split(rows: np.ndarray, n_images: int, what: str, base: int) -> None:
    _check_range(rows, base, n_images - 1 + base, what, f"the {n_images} images", base)
    uniq, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{what} lists image {uniq[counts > 1][0]} more than once")


@dataclass
class SmallArrays:
    """Everything of a benchmark except the feature maps, 0-based and C x A."""

    labels: np.ndarray
    splits: dict[str, np.ndarray]
    class_attributes: np.ndarray
    attribute_vectors: np.ndarray | None
    class_names: list[str]
    attribute_key: str
    validation: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(len(self.labels))


def _finish_small(
    small: SmallArrays,
    info: DatasetInfo,
    *,
    train_loc: np.ndarray | None,
    val_loc: np.ndarray | None,
    allow_mismatch: bool,
    where: str,
) -> list[str]:
    """Add the validation split, run the registry check and the store's consistency checks."""
    splits, small.validation = validation_split(
        small.labels,
        small.splits["trainval"],
        small.splits["test_unseen"],
        train_loc=train_loc,
        val_loc=val_loc,
    )
    small.splits.update(splits)
    word_dim = None if small.attribute_vectors is None else small.attribute_vectors.shape[1]
    counts = observed_counts(
        n_images=small.n_images,
        n_classes=small.class_attributes.shape[0],
        n_attributes=small.class_attributes.shape[1],
        labels=small.labels,
        splits=small.splits,
        word_dim=word_dim,
    )
    found = check_counts(info, counts, allow_mismatch=allow_mismatch, where=where)
    _check_arrays(
        where,
        n_images=small.n_images,
        labels=small.labels,
        splits=small.splits,
        class_attributes=small.class_attributes,
        attribute_vectors=small.attribute_vectors,
    )
    return found


# --------------------------------------------------------------------------------------------
# .mat files (xlsa17)
# --------------------------------------------------------------------------------------------


def _loadmat(path: str | Path, names: list[str]) -> dict[str, Any]:
    """Read only ``names`` of a MATLAB v5 file (others, e.g. res101's 2048 x N features, are
    skipped on disk rather than loaded)."""
    import scipy.io

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    try:
        return scipy.io.loadmat(str(p), variable_names=names)
    except NotImplementedError as exc:  # v7.3 files are HDF5
        raise DataError(
            f"{p} is a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7') "
            f"or use the original xlsa17 file ({exc})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, OSError, ...
        raise DataError(f"{p} cannot be read as a MATLAB .mat file: {exc}") from exc


def _mat_strings(value: object, what: str) -> list[str]:
    """A MATLAB cell array of char arrays (as scipy returns it) -> list of str."""
    arr = np.asarray(value)
    out = []
    for item in arr.reshape(-1, order="F"):
        cell = np.asarray(item).reshape(-1)
        if cell.size == 0:
            out.append("")
        elif cell.dtype.kind == "U":
            out.append(str(cell[0]) if cell.size == 1 else "".join(str(c) for c in cell))
        elif cell.dtype == object and cell.size == 1:
            out.append(_mat_strings(cell[0], what)[0])
        else:
            raise DataError(f"{what} must be a cell array of strings, found {cell.dtype}")
    return out


def _need(mat: Mapping[str, Any], keys: tuple[str, ...], path: str | Path) -> None:
    missing = [k for k in keys if k not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path} has no {', '.join(missing)} (found: {', '.join(present)})")


@dataclass
class Res101:
    """What the importers use of xlsa17's res101.mat: labels (0-based) and image paths."""

    path: Path
    labels: np.ndarray
    image_files: list[str] | None

    @property
    def n_images(self) -> int:
        return int(len(self.labels))


def read_res101(path: str | Path, *, need_images: bool = False) -> Res101:
    """Labels (1-based in the file, returned 0-based) and ``image_files`` of res101.mat."""
    keys = ["labels", "image_files"]
    mat = _loadmat(path, keys)
    _need(mat, ("labels", "image_files") if need_images else ("labels",), path)
    labels = _integers(mat["labels"], f"{path}: labels")
    if len(labels) == 0:
        raise DataError(f"{path}: labels is empty")
    if labels.min() < 1:
        i = int(np.argmin(labels))
        raise DataError(f"{path}: labels({i + 1}) = {labels[i]}; labels are 1-based class numbers")
    files = None
    if "image_files" in mat:
        files = _mat_strings(mat["image_files"], f"{path}: image_files")
        if len(files) != len(labels):
            raise DataError(
                f"{path}: {len(files)} image_files for {len(labels)} labels; expected one each"
            )
    return Res101(Path(path).expanduser().absolute(), labels - 1, files)


@dataclass
class AttSplits:
    """xlsa17's att_splits.mat, converted: 0-based indices, C x A attributes."""

    path: Path
    class_attributes: np.ndarray
    attribute_key: str
    locs: dict[str, np.ndarray]  # trainval/test_seen/test_unseen (+ train/val), 0-based
    class_names: list[str] | None


def read_att_splits(path: str | Path, n_images: int | None = None) -> AttSplits:
    """Read att_splits.mat: 1-based ``*_loc`` -> 0-based, ``original_att`` A x C -> C x A.

    With ``n_images`` every index is checked to lie in ``1..n_images``; the error names the
    variable, the MATLAB position and the value.
    """
    names = [
        "original_att",
        "att",
        "trainval_loc",
        "test_seen_loc",
        "test_unseen_loc",
        "train_loc",
        "val_loc",
        "allclasses_names",
    ]
    mat = _loadmat(path, names)
    _need(mat, ("trainval_loc", "test_seen_loc", "test_unseen_loc"), path)
    key = "original_att" if "original_att" in mat else "att"
    if key not in mat:
        raise DataError(f"{path} has neither original_att nor att (the class attributes)")
    att = np.asarray(mat[key])
    if att.ndim != 2 or att.dtype.kind not in "fiu" or 0 in att.shape:
        raise DataError(f"{path}: {key} has shape {att.shape} ({att.dtype}); expected A x C")
    class_names = None
    if "allclasses_names" in mat:
        class_names = _mat_strings(mat["allclasses_names"], f"{path}: allclasses_names")
        n_cls = len(class_names)
        if att.shape[1] != n_cls:
            flip = " (it looks transposed)" if att.shape[0] == n_cls else ""
            raise DataError(
                f"{path}: {key} has shape {att.shape}; expected attributes x {n_cls} classes "
                f"(A x C, one column per allclasses_names entry){flip}"
            )
    locs = {}
    for split, var in (
        ("trainval", "trainval_loc"),
        ("test_seen", "test_seen_loc"),
        ("test_unseen", "test_unseen_loc"),
        ("train", "train_loc"),
        ("val", "val_loc"),
    ):
        if var not in mat:
            continue
        rows = _integers(mat[var], f"{path}: {var}")
        if n_images is not None:
            _check_split(rows, n_images, f"{path}: {var}", base=1)
        locs[split] = rows - 1
    if ("train" in locs) != ("val" in locs):
        locs.pop("train", None)
        locs.pop("val", None)
    return AttSplits(
        path=Path(path).expanduser().absolute(),
        class_attributes=np.ascontiguousarray(att.T, dtype=np.float32),
        attribute_key=key,
        locs=locs,
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------------
# feature sources
# --------------------------------------------------------------------------------------------


class FeatureSource(Protocol):
    """Feature maps to copy, read in row ranges (in ``res101.mat`` image order)."""

    n_images: int
    channels: int
    regions: int
    grid: tuple[int, int] | None
    dtype: np.dtype
    align: int

    def identity(self) -> dict[str, Any]: ...

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class Hdf5Features:
    """``feature_map`` of an HDF5 file: N x C x H x W (or N x C x R) floats.

    An uncompressed contiguous dataset is read with ``os.preadv`` at its file offset directly
    into the caller's buffer (what a plain sequential read costs); anything else goes through
    h5py in row ranges aligned to the HDF5 chunks, so every chunk is decompressed once.
    """

    def __init__(self, path: str | Path, key: str = "feature_map") -> None:
        import h5py

        self.path = Path(path).expanduser().absolute()
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path} cannot be opened as an HDF5 file: {exc}") from exc
        self._fd: int | None = None
        try:
            if key not in self._file:
                raise DataError(
                    f"{self.path} has no {key!r} dataset (found: {', '.join(sorted(self._file))})"
                )
            dset = self._file[key]
            shape = dset.shape
            if len(shape) not in (3, 4) or dset.dtype.kind != "f" or 0 in shape:
                raise DataError(
                    f"{self.path}: {key} has shape {shape} and dtype {dset.dtype}; expected "
                    "images x channels x height x width floats (e.g. N x 2048 x 14 x 14)"
                )
            self._dset = dset
            self.n_images, self.channels = int(shape[0]), int(shape[1])
            self.grid = (int(shape[2]), int(shape[3])) if len(shape) == 4 else None
            self.regions = int(np.prod(shape[2:]))
            self.dtype = np.dtype(dset.dtype)
            self.align = int(dset.chunks[0]) if dset.chunks else 1
            offset = dset.id.get_offset()
            raw = (
                dset.chunks is None
                and offset is not None
                and self.dtype.isnative
                and dset.id.get_storage_size() == self.n_images * self.row_bytes
            )
            self._offset = int(offset) if raw else None
            if raw:
                self._fd = os.open(self.path, os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    @property
    def row_bytes(self) -> int:
        return self.channels * self.regions * self.dtype.itemsize

    @property
    def raw(self) -> bool:
        """Whether reads bypass h5py (contiguous, uncompressed, native byte order)."""
        return self._fd is not None

    def identity(self) -> dict[str, Any]:
        return {"kind": "hdf5", **_file_identity(self.path)}

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows ``lo..hi`` into ``out[: hi - lo]`` (``out`` of the source dtype); returns it."""
        n = hi - lo
        view = out[:n]
        if self._fd is not None and self._offset is not None:
            buf = memoryview(view.reshape(-1).view(np.uint8))
            pos, done = self._offset + lo * self.row_bytes, 0
            while done < len(buf):
                got = os.preadv(self._fd, [buf[done:]], pos + done)
                if got <= 0:
                    raise DataError(f"{self.path}: file ended inside feature_map (row {lo})")
                done += got
            if hasattr(os, "posix_fadvise"):  # read once: keep it out of the page cache
                os.posix_fadvise(self._fd, pos, done, os.POSIX_FADV_DONTNEED)
        else:
            shaped = view.reshape((n, *self._dset.shape[1:]))
            try:
                self._dset.read_direct(shaped, np.s_[lo:hi], np.s_[0:n])
            except OSError as exc:
                raise DataError(f"{self.path}: feature_map rows {lo}..{hi - 1}: {exc}") from exc
        return view

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(Exception):
            self._file.close()


class StoreFeatures:
    """The features of an existing benchmark store, as a source (e.g. to re-split it)."""

    def __init__(self, path: str | Path) -> None:
        self.store = BenchmarkStore.open(path)
        self.path = self.store.path
        self.n_images = self.store.n_images
        self.channels = self.store.channels
        self.regions = self.store.regions
        grid = self.store.meta.get("grid")
        self.grid = (int(grid[0]), int(grid[1])) if grid else None
        self.dtype = self.store.dtype
        self.align = 1

    def identity(self) -> dict[str, Any]:
        return {"kind": "store", **_file_identity(self.path / FEATURES_FILE)}

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        view = out[: hi - lo]
        view[...] = self.store.gather_numpy(np.arange(lo, hi))
        return view

    def close(self) -> None:
        self.store.close()


def open_features(path: str | Path) -> FeatureSource:
    """A feature source from a path: an ``extract`` output folder, a store, or an HDF5 file."""
    p = Path(path).expanduser()
    if p.is_dir():
        from msdn_tune.data.extract import FEATURES_JSON, FeatureDir

        if (p / FEATURES_JSON).is_file():
            return FeatureDir.open(p)
        if (p / "meta.json").is_file():
            return StoreFeatures(p)
        raise DataError(
            f"{p} is neither a feature folder written by 'msdn-tune data extract' "
            f"({FEATURES_JSON}) nor a benchmark store (meta.json)"
        )
    if not p.exists():
        raise DataError(f"feature source {p} does not exist")
    return Hdf5Features(p)


# --------------------------------------------------------------------------------------------
# progress display
# --------------------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on stderr with throughput (MB/s for bytes, img/s for images)."""

    def __init__(self, enabled: bool, description: str, total: int, unit: str) -> None:
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.text import Text

            class ImagesPerSecond(ProgressColumn):
                def render(self, task: Any) -> Text:
                    speed = task.finished_speed or task.speed
                    return Text("? img/s" if speed is None else f"{speed:.1f} img/s")

            columns: list[ProgressColumn]
            if unit == "bytes":
                columns = [DownloadColumn(), TransferSpeedColumn()]
            else:
                columns = [MofNCompleteColumn(), ImagesPerSecond()]
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                *columns,
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, amount: float, description: str | None = None) -> None:
        if self._bar is not None:
            kwargs = {"description": description} if description else {}
            self._bar.update(self._task, advance=amount, **kwargs)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _maybe_kill(chunks_done: int) -> None:
    """The documented test hook: SIGKILL ourselves after N chunks (see the module doc)."""
    value = os.environ.get(KILL_HOOK_ENV)
    if value and chunks_done >= int(value):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# resumable streaming into a store
# --------------------------------------------------------------------------------------------


class _Partial:
    """The ``.<name>.partial`` folder that lets an interrupted import resume (module doc)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out.parent / f".{out.name}.partial"
        self.features = self.dir / FEATURES_FILE
        self.state_file = self.dir / "state.json"
        self._lock_fd: int | None = None

    def lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DataError(
                    f"another msdn-tune process is importing into {self.out} "
                    f"(it holds {self.dir / 'lock'})"
                ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def state(self) -> dict[str, Any] | None:
        if not self.state_file.is_file():
            return None
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)

    def discard(self) -> None:
        for p in (self.features, self.state_file, self.dir / "features.next.arrow"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def remove(self) -> None:
        self.discard()
        self.unlock()
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_stale_temp_dirs(self) -> None:
        """Remove StoreWriter temp dirs of this target left by processes that no longer run."""
        for tmp in self.out.parent.glob(f".{self.out.name}.tmp-*"):
            try:
                pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(tmp, ignore_errors=True)
            except (ValueError, IndexError, PermissionError):
                continue


def _salvage(
    path: Path,
    writer: StoreWriter,
    grid: tuple[int, int] | None,
    src_row_bytes: int,
    progress: _Progress,
) -> int:
    """Copy the complete record batches of a partial features.arrow into ``writer``.

    The partial file is an Arrow IPC file without its footer: the 8-byte magic, then a stream.
    Batches are read one at a time (bounded memory) until the stream ends or a batch is cut off;
    only batches of the writer's full ``rows_per_batch`` count. Returns the rows copied.
    """
    import pyarrow as pa

    copied = 0
    try:
        src = pa.OSFile(str(path), "rb")
    except (OSError, pa.ArrowException):
        return 0
    with src:
        if src.read(8) != b"ARROW1\x00\x00":
            return 0
        try:
            reader = pa.ipc.open_stream(src)
        except (OSError, pa.ArrowException):
            return 0
        expected = pa.list_(pa.from_numpy_dtype(writer.dtype), writer.row_len)
        if len(reader.schema) != 1 or reader.schema[0].type != expected:
            return 0
        while copied + writer.rows_per_batch <= writer.n_images:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (OSError, pa.ArrowException):
                break
            if batch.num_rows != writer.rows_per_batch:
                break
            values = batch.column(0).values.to_numpy(zero_copy_only=False)
            shape = (batch.num_rows, writer.channels, *(grid or (writer.regions,)))
            writer.write(values.reshape(shape))
            copied += batch.num_rows
            progress.advance(batch.num_rows * src_row_bytes)
    return copied


@dataclass
class ImportResult:
    """What an import did (the CLI prints it)."""

    path: Path
    dataset: str
    n_images: int
    seconds: float
    source_bytes: int
    resumed_rows: int
    mismatches: list[str]
    validation: dict[str, Any]

    @property
    def mb_per_s(self) -> float:
        return self.source_bytes / 1e6 / max(self.seconds, 1e-9)


def _stream(
    source: FeatureSource,
    out: Path,
    *,
    dtype: str,
    force: bool,
    resume: bool,
    chunk_rows: int | None,
    rows_per_batch: int | None,
    progress: bool,
    label: str,
    finish: Callable[[StoreWriter], Path],
) -> tuple[Path, int, float]:
    """Copy all features of ``source`` into a new store at ``out``; returns path, resumed rows,
    seconds. See the module doc for the partial / resume protocol."""
    if dtype not in ("float16", "float32"):
        raise DataError(f"dtype {dtype!r} is not supported; expected float16 or float32")
    n, row_bytes = source.n_images, source.channels * source.regions * source.dtype.itemsize
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_TARGET_BYTES // row_bytes)
        chunk_rows = max(source.align, chunk_rows // source.align * source.align)
    if chunk_rows < 1:
        raise DataError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    chunk_rows = min(chunk_rows, n)
    if out.exists() and not force:
        raise StoreExistsError(f"{out} already exists; pass --force to replace it")

    partial = _Partial(out)
    partial.lock()
    try:
        partial.remove_stale_temp_dirs()
        writer = StoreWriter(
            out,
            n_images=n,
            channels=source.channels,
            regions=source.regions,
            dtype=dtype,
            force=force,
            rows_per_batch=rows_per_batch,
        )
        identity = {
            "source": source.identity(),
            "n_images": n,
            "channels": source.channels,
            "regions": source.regions,
            "dtype": dtype,
            "rows_per_batch": writer.rows_per_batch,
        }
        state = partial.state()
        old = partial.features if partial.features.is_file() else None
        if state is not None or old is not None:
            if not resume and not force:
                writer.abort()
                done = "" if state is None else f" (started {state.get('started', '?')})"
                raise DataError(
                    f"an interrupted import into {out} exists{done} in {partial.dir}; pass "
                    "--resume to continue it or --force to discard it and start over"
                )
            if resume and (state is None or state.get("identity") != identity):
                writer.abort()
                raise DataError(
                    f"cannot resume: the interrupted import in {partial.dir} was of other input "
                    f"or settings ({_diff(state, identity)}); pass --force instead of --resume "
                    "to discard it and start over"
                )
        if not resume:
            partial.discard()
            old = None
        return _copy(
            source, writer, partial, old, identity, chunk_rows, progress, label, finish, row_bytes
        )
    finally:
        partial.unlock()
        if not (partial.features.exists() or partial.state_file.exists()):
            shutil.rmtree(partial.dir, ignore_errors=True)  # nothing to resume: no stray folder


def _diff(state: dict[str, Any] | None, identity: dict[str, Any]) -> str:
    if state is None:
        return "no state.json"
    before = state.get("identity") or {}
    keys = [k for k in identity if before.get(k) != identity[k]]
    return "differs in " + ", ".join(keys) if keys else "unknown"


def _copy(
    source: FeatureSource,
    writer: StoreWriter,
    partial: _Partial,
    old: Path | None,
    identity: dict[str, Any],
    chunk_rows: int,
    progress: bool,
    label: str,
    finish: Callable[[StoreWriter], Path],
    row_bytes: int,
) -> tuple[Path, int, float]:
    t0 = time.perf_counter()
    n = source.n_images
    new_link = partial.dir / ("features.next.arrow" if old is not None else FEATURES_FILE)
    with contextlib.suppress(FileNotFoundError):  # left by a resume interrupted while salvaging
        (partial.dir / "features.next.arrow").unlink()
    linked = True
    try:
        os.link(writer._tmp / FEATURES_FILE, new_link)
    except OSError:
        linked = False  # no hard links here: the import still works, it just cannot resume
    resumed = 0
    try:
        with _Progress(progress, label, n * row_bytes, "bytes") as bar:
            if old is not None:
                resumed = _salvage(old, writer, source.grid, row_bytes, bar)
                if linked:
                    os.replace(new_link, partial.features)
            if linked:
                partial.write_state(
                    {
                        "identity": identity,
                        "started": datetime.now(UTC).isoformat(timespec="seconds"),
                        "pid": os.getpid(),
                    }
                )
            _pump(
                source,
                writer,
                resumed,
                chunk_rows,
                bar,
                writer._tmp / FEATURES_FILE,
            )
            path = finish(writer)
    except DataError:
        writer.abort()
        partial.discard()
        raise
    except BaseException:
        writer.abort()
        if old is not None and new_link.name != FEATURES_FILE:  # salvage not finished:
            with contextlib.suppress(FileNotFoundError):  # keep resuming from the old file
                new_link.unlink()
        raise
    finally:
        source.close()
    partial.remove()
    return path, resumed, time.perf_counter() - t0


def _cast(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src`` with a dtype change, through torch when it can.

    torch converts float32 -> float16 with the CPU's F16C instructions on all intra-op threads,
    about 6x faster than numpy's scalar loop, with the same round-to-nearest-even result (values
    past float16's range become inf, caught by the caller).
    """
    import torch

    try:
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    except (TypeError, RuntimeError):  # a dtype torch does not map: numpy does it
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(dst, src, casting="unsafe")


def _all_finite(a: np.ndarray) -> bool:
    """Whether ``a`` has no inf/NaN; for float16 by its exponent bits (numpy's isfinite on
    float16 is ten times slower)."""
    if a.dtype == np.float16:
        return bool((np.bitwise_and(a.view(np.uint16), 0x7C00) != 0x7C00).all())
    return bool(np.isfinite(a).all())


def _pump(
    source: FeatureSource,
    writer: StoreWriter,
    start: int,
    chunk_rows: int,
    bar: _Progress,
    written: Path | None,
) -> None:
    """Copy rows ``start..`` of ``source`` into ``writer`` as a two-stage pipeline.

    A background thread reads chunk i+1 and casts it to the store dtype (checking that no finite
    value overflows it) while this thread hands chunk i to the writer; numpy and ``preadv``
    release the GIL, so the two overlap on two cores. Double-buffered: memory is two chunks in
    each dtype. ``written`` (the features file being written, e.g. our hard link to it) gets
    ``POSIX_FADV_DONTNEED`` after each chunk, which starts writing its dirty pages back to disk
    now - overlapped with reading - instead of all at the final fsync, and keeps a 60 GB import
    from filling the page cache.
    """
    n = source.n_images
    row_bytes = source.channels * source.regions * source.dtype.itemsize
    shape = (chunk_rows, source.channels, source.regions)
    n_buf = 2 if n - start > chunk_rows else 1
    raw = [np.empty(shape, dtype=source.dtype) for _ in range(n_buf)]
    convert = source.dtype != writer.dtype
    cast = [np.empty(shape, dtype=writer.dtype) for _ in range(n_buf)] if convert else raw
    ranges = [(lo, min(lo + chunk_rows, n)) for lo in range(start, n, chunk_rows)]
    grid = source.grid

    def read(i: int) -> np.ndarray:
        lo, hi = ranges[i]
        chunk = source.read(lo, hi, raw[i % n_buf])
        if not convert:
            return chunk
        dst = cast[i % n_buf][: hi - lo]
        _cast(chunk, dst)
        if not _all_finite(dst):
            bad = np.argwhere(~np.isfinite(dst) & np.isfinite(chunk))
            if len(bad):
                row = lo + int(bad[0][0])
                raise DataError(
                    f"feature row {row} overflows {writer.dtype} (largest magnitude "
                    f"{float(np.abs(chunk[bad[0][0]]).max()):g}; float16 ends at 65504); "
                    "use --dtype float32"
                )
        return dst

    fd = None
    if written is not None and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            fd = os.open(written, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="msdn-read") as pool:
            pending: Future[np.ndarray] | None = pool.submit(read, 0) if ranges else None
            for i in range(len(ranges)):
                assert pending is not None
                chunk = pending.result()
                # The next read may use the other buffers only: start it now, before writing.
                pending = pool.submit(read, i + 1) if i + 1 < len(ranges) else None
                if grid is not None:
                    chunk = chunk.reshape(len(chunk), source.channels, *grid)
                writer.write(chunk)
                if fd is not None:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                bar.advance(len(chunk) * row_bytes)
                _maybe_kill(i + 1)
    finally:
        if fd is not None:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# the two importers
# --------------------------------------------------------------------------------------------


def _read_hdf5_small(path: Path, n_images: int) -> tuple[SmallArrays, dict[str, Any]]:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} cannot be opened as an HDF5 file: {exc}") from exc
    with fh:
        missing = [k for k in HDF5_KEYS if k not in fh]
        if "original_att" not in fh and "att" not in fh:
            missing.append("original_att (or att)")
        if missing:
            raise DataError(
                f"{path} has no {', '.join(missing)} (found: {', '.join(sorted(fh))}); "
                "expected the feature-map HDF5 of TransZero's preprocessing"
            )
        key = "original_att" if "original_att" in fh else "att"
        att = np.asarray(fh[key][()])
        if att.ndim != 2 or att.dtype.kind not in "fiu" or 0 in att.shape:
            raise DataError(f"{path}: {key} has shape {att.shape}; expected classes x attributes")
        n_cls = att.shape[0]
        labels = _integers(fh["labels"][()], f"{path}: labels")
        if len(labels) != n_images:
            raise DataError(f"{path}: labels has {len(labels)} entries for {n_images} feature maps")
        _check_range(labels, 0, n_cls - 1, f"{path}: labels", f"the {n_cls} classes of {key}", 0)
        splits = {}
        for split in _TEST_SPLITS:
            rows = _integers(fh[f"{split}_loc"][()], f"{path}: {split}_loc")
            _check_split(rows, n_images, f"{path}: {split}_loc", base=0)
            splits[split] = rows
        vectors = None
        if "w2v_att" in fh:
            vectors = np.asarray(fh["w2v_att"][()])
            if vectors.ndim != 2 or vectors.shape[0] != att.shape[1]:
                raise DataError(
                    f"{path}: w2v_att has shape {vectors.shape}; expected one row per attribute "
                    f"({att.shape[1]} x dim)"
                )
            vectors = vectors.astype(np.float32)
    small = SmallArrays(
        labels=labels,
        splits=splits,
        class_attributes=att.astype(np.float32),
        attribute_vectors=vectors,
        class_names=[f"class_{k:03d}" for k in range(n_cls)],
        attribute_key=key,
    )
    return small, {"word_vectors": "w2v_att" if vectors is not None else None}


def _tuning_locs(att: AttSplits | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if att is None or "train" not in att.locs:
        return None, None
    return att.locs["train"], att.locs["val"]


def import_hdf5(
    path: str | Path,
    dataset: str,
    out: str | Path,
    *,
    dtype: str = "float16",
    allow_mismatch: bool = False,
    force: bool = False,
    resume: bool = False,
    chunk_rows: int | None = None,
    w2v: str | Path | None = None,
    att_splits: str | Path | None = None,
    progress: bool = True,
    rows_per_batch: int | None = None,
) -> ImportResult:
    """Convert a published feature-map HDF5 file into a benchmark store at ``out``.

    ``w2v`` replaces the file's ``w2v_att``. ``att_splits`` (xlsa17's att_splits.mat of the same
    dataset, optional) supplies class names and the xlsa17 tuning split (``train_loc``/
    ``val_loc``); its trainval/test splits must equal the file's. ``rows_per_batch`` is the
    store's record-batch size (default: the store's 64 MiB target; tests set it small).
    Raises DataError naming the key / entry for bad input, and for counts that differ from the
    registry unless ``allow_mismatch``.
    """
    info = get_dataset(dataset)
    src_path = Path(path).expanduser().absolute()
    if not src_path.is_file():
        raise DataError(f"HDF5 file {src_path} does not exist")
    out = Path(out).expanduser().absolute()
    source = Hdf5Features(src_path)
    try:
        small, notes = _read_hdf5_small(src_path, source.n_images)
        n_attr = small.class_attributes.shape[1]
        if w2v is not None:
            small.attribute_vectors = load_word_vectors(w2v, n_attributes=n_attr)
            notes["word_vectors"] = str(Path(w2v).expanduser().absolute())
        att = None
        if att_splits is not None:
            att = read_att_splits(att_splits, source.n_images)
            for split in _TEST_SPLITS:
                if not np.array_equal(np.sort(att.locs[split]), np.sort(small.splits[split])):
                    raise DataError(
                        f"{att.path}: {split}_loc differs from {split}_loc of {src_path}; "
                        "the two files are not of the same dataset / split"
                    )
            if att.class_names is not None:
                if len(att.class_names) != small.class_attributes.shape[0]:
                    raise DataError(
                        f"{att.path}: {len(att.class_names)} allclasses_names for "
                        f"{small.class_attributes.shape[0]} classes in {src_path}"
                    )
                small.class_names = att.class_names
        train_loc, val_loc = _tuning_locs(att)
        found = _finish_small(
            small,
            info,
            train_loc=train_loc,
            val_loc=val_loc,
            allow_mismatch=allow_mismatch,
            where=str(src_path),
        )
    except BaseException:
        source.close()
        raise
    meta = {
        "format": "feature-map hdf5 (0-based)",
        "files": {"features": str(src_path), **({"att_splits": str(att.path)} if att else {})},
        "attribute_key": small.attribute_key,
        "word_vectors": notes["word_vectors"],
        "validation": small.validation,
        "registry": {"dataset": info.name, "mismatches": found},
        "source_dtype": str(source.dtype),
    }
    return _run_import(
        source,
        small,
        info,
        out,
        meta,
        found,
        dtype,
        force,
        resume,
        chunk_rows,
        progress,
        rows_per_batch,
        f"import {info.name} from {src_path.name}",
    )


def import_mat(
    dataset: str,
    att_splits: str | Path,
    res101: str | Path,
    features: str | Path,
    out: str | Path,
    *,
    w2v: str | Path | None = None,
    dtype: str = "float16",
    allow_mismatch: bool = False,
    force: bool = False,
    resume: bool = False,
    chunk_rows: int | None = None,
    progress: bool = True,
    rows_per_batch: int | None = None,
) -> ImportResult:
    """Build a store from xlsa17's att_splits.mat + res101.mat and extracted feature maps.

    ``features``: a folder written by ``msdn-tune data extract`` from the same res101.mat, an
    existing benchmark store, or an HDF5 file with ``feature_map`` in res101.mat image order.
    Indices and labels are converted from MATLAB's 1-based numbering, attributes from A x C.
    ``w2v``: attribute word vectors (.pkl or .npy, A x 300); none for FLO.
    """
    info = get_dataset(dataset)
    out = Path(out).expanduser().absolute()
    res = read_res101(res101)
    att = read_att_splits(att_splits, res.n_images)
    n_cls = att.class_attributes.shape[0]
    _check_range(
        res.labels + 1,
        1,
        n_cls,
        f"{res.path}: labels",
        f"the {n_cls} classes of {att.path.name}:{att.attribute_key}",
        1,
    )
    vectors = None
    if w2v is not None:
        vectors = load_word_vectors(w2v, n_attributes=att.class_attributes.shape[1])
    small = SmallArrays(
        labels=res.labels,
        splits={s: att.locs[s] for s in _TEST_SPLITS},
        class_attributes=att.class_attributes,
        attribute_vectors=vectors,
        class_names=att.class_names or [f"class_{k:03d}" for k in range(n_cls)],
        attribute_key=att.attribute_key,
    )
    train_loc, val_loc = _tuning_locs(att)
    found = _finish_small(
        small,
        info,
        train_loc=train_loc,
        val_loc=val_loc,
        allow_mismatch=allow_mismatch,
        where=f"{att.path} + {res.path}",
    )
    source = open_features(features)
    try:
        _check_feature_order(source, res, Path(features))
    except BaseException:
        source.close()
        raise
    meta = {
        "format": "xlsa17 proposed split (MATLAB 1-based, attributes A x C)",
        "files": {
            "att_splits": str(att.path),
            "res101": str(res.path),
            "features": str(Path(features).expanduser().absolute()),
        },
        "attribute_key": att.attribute_key,
        "word_vectors": None if w2v is None else str(Path(w2v).expanduser().absolute()),
        "validation": small.validation,
        "registry": {"dataset": info.name, "mismatches": found},
        "source_dtype": str(source.dtype),
    }
    return _run_import(
        source,
        small,
        info,
        out,
        meta,
        found,
        dtype,
        force,
        resume,
        chunk_rows,
        progress,
        rows_per_batch,
        f"import {info.name} from {Path(features).name}",
    )


def image_files_digest(files: list[str]) -> str:
    """SHA-256 of res101.mat's image list: ties extracted features to one image order."""
    return hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()


def _check_feature_order(source: FeatureSource, res: Res101, path: Path) -> None:
    """The features must be of res101.mat's images, in its order."""
    if source.n_images != res.n_images:
        raise DataError(
            f"{path} holds {source.n_images} feature maps but {res.path} lists "
            f"{res.n_images} images; the features must be of the same images, in res101 order"
        )
    digest = getattr(source, "image_files_digest", None)
    if digest and res.image_files is not None and digest != image_files_digest(res.image_files):
        raise DataError(
            f"{path} was extracted from another image list than {res.path}'s image_files"
        )
    if isinstance(source, Hdf5Features) and "labels" in source._file:
        labels = _integers(source._file["labels"][()], f"{path}: labels")
        if not np.array_equal(labels, res.labels):
            raise DataError(
                f"{path}: labels differ from {res.path} labels - 1; the feature maps are not "
                "in res101.mat image order"
            )
    if isinstance(source, StoreFeatures) and not np.array_equal(source.store.labels, res.labels):
        raise DataError(f"{path}: the store's labels differ from {res.path} labels - 1")


def _run_import(
    source: FeatureSource,
    small: SmallArrays,
    info: DatasetInfo,
    out: Path,
    meta: dict[str, Any],
    found: list[str],
    dtype: str,
    force: bool,
    resume: bool,
    chunk_rows: int | None,
    progress: bool,
    rows_per_batch: int | None,
    label: str,
) -> ImportResult:
    def finish(writer: StoreWriter) -> Path:
        return writer.finish(
            labels=small.labels,
            splits={s: small.splits[s] for s in SPLIT_NAMES},
            class_attributes=small.class_attributes,
            attribute_vectors=small.attribute_vectors,
            class_names=small.class_names,
            attribute_names=None,
            dataset=info.name,
            source=f"msdn-tune import ({meta['format']})",
            extra_meta={"import": meta},
        )

    n_bytes = source.n_images * source.channels * source.regions * source.dtype.itemsize
    try:
        path, resumed, seconds = _stream(
            source,
            out,
            dtype=dtype,
            force=force,
            resume=resume,
            chunk_rows=chunk_rows,
            rows_per_batch=rows_per_batch,
            progress=progress,
            label=label,
            finish=finish,
        )
    finally:
        source.close()
    return ImportResult(
        path=path,
        dataset=info.name,
        n_images=source.n_images,
        seconds=seconds,
        source_bytes=n_bytes,
        resumed_rows=resumed,
        mismatches=found,
        validation=small.validation,
    )


__all__ = [
    "CHUNK_TARGET_BYTES",
    "AttSplits",
    "FeatureSource",
    "Hdf5Features",
    "ImportResult",
    "Res101",
    "StoreFeatures",
    "import_hdf5",
    "import_mat",
    "image_files_digest",
    "load_word_vectors",
    "open_features",
    "read_att_splits",
    "read_res101",
    "validation_split",
]
