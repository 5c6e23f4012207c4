"""The benchmark store: the on-disk format every prepared benchmark is converted to.

Why a format of our own: the published feature files are 19-60 GB HDF5 files that the official
loader reads whole into RAM. A store is instead memory-mapped and read zero-copy, so opening one
costs milliseconds in every Ray worker and a training batch costs one memory copy of its rows.

A store is a directory with three files:

``features.arrow``
    Arrow IPC *file* format, one non-nullable column ``features`` of type
    ``FixedSizeList<float16|float32>(channels * regions)``: one row per image, the channel-major
    ``(channels, regions)`` feature map flattened. It is written in record batches of a fixed row
    count (``rows_per_batch``; only the last batch is shorter), so row ``i`` lives in batch
    ``i // rows_per_batch`` at offset ``i % rows_per_batch``, and each batch's value buffer is one
    contiguous ``(rows, channels, regions)`` array inside the memory map.
``arrays.npz``
    The small arrays (labels, the six splits, class attributes, attribute word vectors), loaded
    with ``allow_pickle=False``. Written deterministically (fixed zip timestamps).
``meta.json``
    Format version, dataset name and source, shapes, dtype, names, and what is needed to check the
    other two files cheaply: the byte size and layout of ``features.arrow``, the CRC-32 of its
    feature values (checked only by :meth:`BenchmarkStore.verify`, which reads everything) and the
    shape, dtype and SHA-256 of every small array (checked on every open).

Reading rows, and why there are two ways: pages of a memory map that a process has read stay
mapped into it and count as its resident memory, so an epoch over a 9.5 GB store read through the
map would grow the process to 9.5 GB. Stores up to ``resident_bytes`` (256 MiB by default:
``tiny``, ``demo``) are therefore read by numpy fancy indexing on the mapped views, and larger
ones with ``preadv`` straight from the file into the output batch (one copy from the page cache,
nothing left mapped), so resident memory stays at a few batches whatever the store size. Where
``preadv`` is missing, mapped reads drop their pages with ``madvise(MADV_DONTNEED)`` once they may
have mapped ``resident_bytes`` (the page cache keeps the data).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import os
import shutil
import sys
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from msdn_tune.errors import DataError

if TYPE_CHECKING:  # imported where tensors are made: resolving a store (the study driver) skips it
    import torch

FORMAT_VERSION: int = 1
SPLIT_NAMES = ("trainval", "test_seen", "test_unseen", "train", "val_seen", "val_unseen")

FEATURES_FILE = "features.arrow"
ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"
FEATURE_COLUMN = "features"
DTYPES = ("float16", "float32")

#: Target size of one record batch. Stores below it (``tiny``, ``demo``) are a single batch, so
#: :attr:`BenchmarkStore.features` works for them; it also bounds the writer's buffer.
BATCH_TARGET_BYTES = 64 << 20
#: Default for ``BenchmarkStore.open(resident_bytes=...)``.
DEFAULT_RESIDENT_BYTES = 256 << 20
_HUGE_PAGE = 2 << 20
_HAVE_PREADV = hasattr(os, "preadv")
_IOV_MAX = 512

_ARRAY_DTYPES = {
    "labels": "int64",
    "class_attributes": "float32",
    "attribute_vectors": "float32",
    **{f"split_{name}": "int64" for name in SPLIT_NAMES},
}
# Keys of meta.json that the store itself writes; extra_meta may not replace them.
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "dataset": str,
    "source": str,
    "n_images": int,
    "channels": int,
    "regions": int,
    "grid": (list, type(None)),
    "dtype": str,
    "n_classes": int,
    "n_attributes": int,
    "word_dim": (int, type(None)),
    "class_names": list,
    "attribute_names": (list, type(None)),
    "split_sizes": dict,
    "created": str,
    "features": dict,
    "arrays": dict,
}


class StoreExistsError(DataError):
    """The target directory of a :class:`StoreWriter` already exists (and ``force`` is off)."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _rows_per_batch(row_bytes: int) -> int:
    return max(1, BATCH_TARGET_BYTES // max(1, row_bytes))


def _feature_type(dtype: np.dtype, row_len: int) -> pa.DataType:
    return pa.list_(pa.from_numpy_dtype(dtype), row_len)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _array_record(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": _sha256(a)}


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` whose bytes depend only on the arrays.

    ``np.savez`` stamps each member with the current time, which would make two generations of
    the same seed differ byte for byte.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_store_dir(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _PageDropper:
    """``madvise(MADV_DONTNEED)`` through libc; a no-op where it is unavailable."""

    MADV_DONTNEED = 4

    def __init__(self) -> None:
        self._fn = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                self._fn = fn
            except (OSError, AttributeError):
                self._fn = None

    @property
    def available(self) -> bool:
        return self._fn is not None

    def drop(self, address: int, size: int) -> bool:
        """Unmap the pages of a read-only file mapping; the next access re-reads them."""
        if self._fn is None or size <= 0:
            return False
        return self._fn(address, size, self.MADV_DONTNEED) == 0


_DROPPER = _PageDropper()


# --------------------------------------------------------------------------------------------
# validation of the small arrays (shared by the writer and by open)
# --------------------------------------------------------------------------------------------


def _classes(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.unique(labels[rows]) if len(rows) else np.zeros(0, dtype=np.int64)


def _check_arrays(
    where: str,
    *,
    n_images: int,
    labels: np.ndarray,
    splits: Mapping[str, np.ndarray],
    class_attributes: np.ndarray,
    attribute_vectors: np.ndarray | None,
) -> None:
    """Raise DataError (prefixed with ``where``) unless the arrays form a consistent ZSL split."""
    if labels.shape != (n_images,):
        raise DataError(f"{where}: labels has shape {labels.shape}, expected ({n_images},)")
    if class_attributes.ndim != 2 or 0 in class_attributes.shape:
        raise DataError(
            f"{where}: class_attributes has shape {class_attributes.shape}, "
            "expected (n_classes, n_attributes)"
        )
    if not np.isfinite(class_attributes).all():
        raise DataError(f"{where}: class_attributes contains NaN or inf")
    n_classes, n_attr = class_attributes.shape
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"{where}: labels must lie in [0, {n_classes}) (n_classes), "
            f"found [{labels.min()}, {labels.max()}]"
        )
    if attribute_vectors is not None:
        if attribute_vectors.ndim != 2 or attribute_vectors.shape[0] != n_attr:
            raise DataError(
                f"{where}: attribute_vectors has shape {attribute_vectors.shape}, "
                f"expected ({n_attr}, word_dim)"
            )
        if not np.isfinite(attribute_vectors).all():
            raise DataError(f"{where}: attribute_vectors contains NaN or inf")
    missing = [s for s in SPLIT_NAMES if s not in splits]
    unknown = sorted(set(splits) - set(SPLIT_NAMES))
    if missing or unknown:
        raise DataError(
            f"{where}: splits must be exactly {list(SPLIT_NAMES)}; "
            f"missing {missing}, unknown {unknown}"
        )
    for name in SPLIT_NAMES:
        rows = splits[name]
        if rows.ndim != 1:
            raise DataError(f"{where}: split {name!r} must be 1-D, has shape {rows.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= n_images):
            raise DataError(
                f"{where}: split {name!r} has row index out of range [0, {n_images}) "
                f"(found {rows.min()}..{rows.max()})"
            )
        if len(np.unique(rows)) != len(rows):
            raise DataError(f"{where}: split {name!r} lists a row more than once")
    for name in ("trainval", "test_seen", "test_unseen"):
        if len(splits[name]) == 0:
            raise DataError(f"{where}: split {name!r} is empty")

    def disjoint(a: str, b: str) -> None:
        common = np.intersect1d(splits[a], splits[b])
        if len(common):
            raise DataError(
                f"{where}: splits {a!r} and {b!r} share {len(common)} rows (e.g. {common[0]})"
            )

    for a, b in (
        ("trainval", "test_seen"),
        ("trainval", "test_unseen"),
        ("test_seen", "test_unseen"),
        ("train", "val_seen"),
        ("train", "val_unseen"),
        ("val_seen", "val_unseen"),
    ):
        disjoint(a, b)
    union = np.concatenate([splits["train"], splits["val_seen"], splits["val_unseen"]])
    if not np.array_equal(np.sort(union), np.sort(splits["trainval"])):
        raise DataError(
            f"{where}: train + val_seen + val_unseen must be exactly the rows of trainval"
        )
    for seen, unseen in (("trainval", "test_unseen"), ("train", "val_unseen")):
        leak = np.intersect1d(_classes(labels, splits[seen]), _classes(labels, splits[unseen]))
        if len(leak):
            raise DataError(
                f"{where}: classes of {unseen!r} must not appear in {seen!r}; "
                f"found {len(leak)} (e.g. class {leak[0]})"
            )


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


class StoreWriter:
    """Stream feature maps into a new store; memory stays at one record batch.

    Everything is written into a hidden temporary sibling directory that :meth:`finish` renames
    onto ``path`` in one step, so an exception, a kill or a full disk leaves no directory at
    ``path`` that opens as a store (and an existing store untouched unless ``force``).
    Use as a context manager: leaving the block without :meth:`finish` removes the temporary
    directory.

    ``rows_per_batch`` is normally derived from a 64 MiB batch target; tests set it small.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_images: int,
        channels: int,
        regions: int,
        dtype: str = "float16",
        force: bool = False,
        rows_per_batch: int | None = None,
    ) -> None:
        self.path = Path(path).expanduser().absolute()
        if str(dtype) not in DTYPES:
            raise DataError(f"store dtype {dtype!r} is not supported; expected one of {DTYPES}")
        for name, value in (("n_images", n_images), ("channels", channels), ("regions", regions)):
            if int(value) != value or value < 1:
                raise DataError(f"store {name} must be a positive integer, got {value!r}")
        self.force = force
        self._check_target()
        self.n_images = int(n_images)
        self.channels = int(channels)
        self.regions = int(regions)
        self.dtype = np.dtype(dtype)
        self.row_len = self.channels * self.regions
        self.rows_per_batch = int(
            rows_per_batch or _rows_per_batch(self.row_len * self.dtype.itemsize)
        )
        if self.rows_per_batch < 1:
            raise DataError(f"rows_per_batch must be >= 1, got {rows_per_batch!r}")
        self.rows_written = 0
        self._grid: list[int] | None = None
        self._crc = 0
        self._finished = False
        self._closed = False

        self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir()
        except OSError as exc:
            raise DataError(f"cannot create the store {self.path}: {exc}") from exc
        try:
            self._schema = pa.schema(
                [pa.field(FEATURE_COLUMN, _feature_type(self.dtype, self.row_len), False)],
                metadata={
                    "msdn_tune.format_version": str(FORMAT_VERSION),
                    "msdn_tune.shape": json.dumps([self.channels, self.regions]),
                    "msdn_tune.rows_per_batch": str(self.rows_per_batch),
                },
            )
            self._sink = pa.OSFile(str(self._tmp / FEATURES_FILE), "wb")
            self._ipc = pa.ipc.new_file(self._sink, self._schema)
            self._buf = np.empty(
                (min(self.rows_per_batch, self.n_images), self.channels, self.regions),
                dtype=self.dtype,
            )
            self._fill = 0
        except BaseException:
            _remove_tree(self._tmp)
            raise

    def _check_target(self) -> None:
        if not self.path.exists():
            return
        if not self.force:
            raise StoreExistsError(
                f"{self.path} already exists; pass force=True (--force) to replace it"
            )
        if not (_is_store_dir(self.path) or (self.path.is_dir() and not any(self.path.iterdir()))):
            raise DataError(
                f"refusing to replace {self.path}: it is not a benchmark store "
                f"(no {META_FILE}) nor an empty directory"
            )

    # -- streaming ------------------------------------------------------------------------

    def write(self, chunk: np.ndarray) -> None:
        """Append ``(n, channels, regions)`` or ``(n, channels, h, w)`` rows (any float dtype).

        Values are cast to the store dtype; a finite value that overflows it raises DataError.
        NaN and inf in the input are stored as given (training detects them as divergence).
        """
        if self._finished or self._closed:
            raise RuntimeError("StoreWriter.write() after finish() or abort()")
        chunk = np.asarray(chunk)
        if not np.issubdtype(chunk.dtype, np.floating):
            raise DataError(f"feature chunk has dtype {chunk.dtype}, expected a float dtype")
        if chunk.ndim == 4:
            grid = [int(chunk.shape[2]), int(chunk.shape[3])]
            if self._grid not in (None, grid):
                raise DataError(f"feature chunk has grid {grid}, earlier chunks {self._grid}")
            self._grid = grid
            chunk = chunk.reshape(chunk.shape[0], chunk.shape[1], -1)
        if chunk.ndim != 3 or chunk.shape[1:] != (self.channels, self.regions):
            raise DataError(
                f"feature chunk has shape {chunk.shape}, expected "
                f"(n, {self.channels}, {self.regions}) or (n, {self.channels}, h, w)"
            )
        n = chunk.shape[0]
        if self.rows_written + n > self.n_images:
            raise DataError(
                f"{self.path}: writing {n} more rows would exceed n_images={self.n_images} "
                f"({self.rows_written} written)"
            )
        start = 0
        while start < n:
            take = min(n - start, len(self._buf) - self._fill)
            dst = self._buf[self._fill : self._fill + take]
            src = chunk[start : start + take]
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(dst, src, casting="unsafe")
            if not np.isfinite(dst).all() and (~np.isfinite(dst) & np.isfinite(src)).any():
                first = self.rows_written + start
                raise DataError(
                    f"{self.path}: feature rows {first}..{first + take - 1} overflow {self.dtype} "
                    f"(largest magnitude {float(np.abs(src).max()):g}; float16 ends at 65504); "
                    "use dtype float32"
                )
            self._fill += take
            start += take
            if self._fill == len(self._buf):
                try:
                    self._flush()
                except OSError as exc:  # e.g. the disk is full
                    self.abort()
                    raise DataError(f"writing the store {self.path} failed: {exc}") from exc
        self.rows_written += n

    def _flush(self) -> None:
        if self._fill == 0:
            return
        flat = self._buf[: self._fill].reshape(-1)
        self._crc = zlib.crc32(flat.data, self._crc)
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.row_len)
        self._ipc.write_batch(pa.record_batch([column], schema=self._schema))
        self._fill = 0

    # -- finishing ------------------------------------------------------------------------

    def finish(
        self,
        *,
        labels: np.ndarray,
        splits: Mapping[str, np.ndarray],
        class_attributes: np.ndarray,
        attribute_vectors: np.ndarray | None,
        class_names: Sequence[str],
        attribute_names: Sequence[str] | None,
        dataset: str,
        source: str,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Validate the small arrays, write them and meta.json, and publish the store.

        Returns the store path. On any error the temporary directory is removed and nothing is
        published.
        """
        if self._finished or self._closed:
            raise RuntimeError("StoreWriter.finish() called twice or after abort()")
        try:
            return self._finish(
                labels=labels,
                splits=splits,
                class_attributes=class_attributes,
                attribute_vectors=attribute_vectors,
                class_names=class_names,
                attribute_names=attribute_names,
                dataset=dataset,
                source=source,
                extra_meta=extra_meta,
            )
        except OSError as exc:
            self.abort()
            raise DataError(f"writing the store {self.path} failed: {exc}") from exc
        except BaseException:
            self.abort()
            raise

    def _finish(
        self,
        *,
        labels: np.ndarray,
        splits: Mapping[str, np.ndarray],
        class_attributes: np.ndarray,
        attribute_vectors: np.ndarray | None,
        class_names: Sequence[str],
        attribute_names: Sequence[str] | None,
        dataset: str,
        source: str,
        extra_meta: Mapping[str, Any] | None,
    ) -> Path:
        if self.rows_written != self.n_images:
            raise DataError(
                f"{self.path}: {self.rows_written} feature rows written, "
                f"expected n_images={self.n_images}"
            )
        labels = _as_index(labels, "labels")
        split_arrays = {name: _as_index(rows, f"split {name!r}") for name, rows in splits.items()}
        class_attributes = np.asarray(class_attributes, dtype=np.float32)
        if attribute_vectors is not None:
            attribute_vectors = np.asarray(attribute_vectors, dtype=np.float32)
        where = f"store {self.path}"
        _check_arrays(
            where,
            n_images=self.n_images,
            labels=labels,
            splits=split_arrays,
            class_attributes=class_attributes,
            attribute_vectors=attribute_vectors,
        )
        n_classes, n_attr = class_attributes.shape
        class_names = [str(c) for c in class_names]
        if len(class_names) != n_classes:
            raise DataError(f"{where}: {len(class_names)} class_names for {n_classes} classes")
        if attribute_names is not None:
            attribute_names = [str(a) for a in attribute_names]
            if len(attribute_names) != n_attr:
                raise DataError(
                    f"{where}: {len(attribute_names)} attribute_names for {n_attr} attributes"
                )
        extra = dict(extra_meta or {})
        clash = sorted(set(extra) & set(_META_TYPES))
        if clash:
            raise ValueError(f"extra_meta may not set reserved meta.json keys {clash}")

        self._flush()
        self._ipc.close()
        self._sink.close()
        features_path = self._tmp / FEATURES_FILE
        _fsync_path(features_path)

        arrays: dict[str, np.ndarray] = {
            "labels": labels,
            "class_attributes": class_attributes,
            **{f"split_{name}": split_arrays[name] for name in SPLIT_NAMES},
        }
        if attribute_vectors is not None:
            arrays["attribute_vectors"] = attribute_vectors
        _write_npz(self._tmp / ARRAYS_FILE, arrays)
        _fsync_path(self._tmp / ARRAYS_FILE)

        n_batches = math.ceil(self.n_images / self.rows_per_batch)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "dataset": str(dataset),
            "source": str(source),
            "n_images": self.n_images,
            "channels": self.channels,
            "regions": self.regions,
            "grid": self._grid,
            "dtype": str(self.dtype),
            "n_classes": int(n_classes),
            "n_attributes": int(n_attr),
            "word_dim": None if attribute_vectors is None else int(attribute_vectors.shape[1]),
            "class_names": class_names,
            "attribute_names": attribute_names,
            "split_sizes": {name: int(len(split_arrays[name])) for name in SPLIT_NAMES},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "features": {
                "file": FEATURES_FILE,
                "column": FEATURE_COLUMN,
                "file_bytes": features_path.stat().st_size,
                "rows_per_batch": self.rows_per_batch,
                "n_batches": n_batches,
                "crc32": self._crc,
            },
            "arrays": {name: _array_record(a) for name, a in sorted(arrays.items())},
            **extra,
        }
        with open(self._tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._publish()
        self._finished = True
        self._buf = np.empty(0, dtype=self.dtype)
        return self.path

    def _publish(self) -> None:
        """Rename the temporary directory onto ``path`` (replacing a store only with force)."""
        old: Path | None = None
        if self.path.exists():
            self._check_target()  # re-check: someone may have created it while we wrote
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.path, old)
        try:
            os.rename(self._tmp, self.path)
        except OSError as exc:
            if old is not None:
                os.rename(old, self.path)
            if self.path.exists():
                raise StoreExistsError(
                    f"{self.path} was created by someone else while this store was written"
                ) from exc
            raise
        try:
            _fsync_path(self.path.parent)
        except OSError:
            pass  # not every filesystem lets a directory be fsync'ed
        if old is not None:
            _remove_tree(old)

    def abort(self) -> None:
        """Discard everything written so far (idempotent)."""
        if self._closed or self._finished:
            return
        self._closed = True
        for closer in (getattr(self, "_ipc", None), getattr(self, "_sink", None)):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - best effort while discarding
                pass
        _remove_tree(self._tmp)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._finished or self._closed:
            return
        self.abort()
        if exc_type is None:
            raise RuntimeError(f"StoreWriter for {self.path} left without finish(); discarded")

    def __del__(self) -> None:
        try:
            if not self._finished:
                self.abort()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _as_index(a: object, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise DataError(f"{what} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(arr.shape)


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------


def _reopen(path: str, resident_bytes: int | None) -> BenchmarkStore:
    return BenchmarkStore.open(path, resident_bytes=resident_bytes)


class BenchmarkStore:
    """A prepared ZSL benchmark opened for reading.

    :meth:`open` reads meta.json and arrays.npz and maps features.arrow without reading its
    feature data. Features are read with :meth:`gather` / :meth:`iter_batches`, which copy just
    the requested rows, or seen directly through :attr:`batch_views` (one zero-copy read-only
    ``(rows, channels, regions)`` view per record batch) and :attr:`features` (the whole
    ``(N, channels, regions)`` view, which exists only when the store is a single record batch,
    i.e. up to 64 MiB of features; larger stores are not one contiguous buffer in the file).

    A store pickles by path, so handing one to another process reopens it there.
    """

    path: Path
    meta: dict[str, Any]
    dataset: str
    n_images: int
    channels: int
    regions: int
    n_classes: int
    n_attributes: int
    dtype: np.dtype
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    class_attributes: np.ndarray
    attribute_vectors: np.ndarray | None
    class_names: list[str]
    attribute_names: list[str] | None
    seen_classes: np.ndarray
    unseen_classes: np.ndarray
    val_seen_classes: np.ndarray
    val_unseen_classes: np.ndarray
    rows_per_batch: int
    batch_views: list[np.ndarray]

    def __init__(self) -> None:
        raise TypeError("use BenchmarkStore.open(path)")

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path, *, resident_bytes: int | None = DEFAULT_RESIDENT_BYTES
    ) -> BenchmarkStore:
        """Open and validate a store without reading its feature data.

        ``resident_bytes``: stores larger than this are read with ``preadv`` so that reading
        never maps the file into this process (see the module docstring); ``None`` always reads
        through the memory map and never drops mapped pages.
        Raises :class:`DataError` naming the file and what was expected if anything is missing,
        truncated or inconsistent.
        """
        self = object.__new__(cls)
        self._mmap = None
        self._reader = None
        self.batch_views = []
        self.path = Path(path).expanduser().absolute()
        if not self.path.is_dir():
            raise DataError(f"benchmark store {self.path} does not exist or is not a directory")
        self.resident_bytes = resident_bytes
        self._gathered = 0
        self._whole = None
        self._fd = None
        try:
            self._read_meta()
            self._read_arrays()
            self._map_features()
        except BaseException:
            self.close()
            raise
        return self

    def _file(self, name: str) -> Path:
        p = self.path / name
        if not p.is_file():
            raise DataError(f"{p} is missing; a benchmark store needs {name}")
        return p

    def _read_meta(self) -> None:
        p = self._file(META_FILE)
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{p} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise DataError(f"{p} must hold a JSON object, got {type(meta).__name__}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"{p}: format_version {version!r} is not supported; expected {FORMAT_VERSION}"
                " (re-create the store with this version of msdn-tune)"
            )
        for key, typ in _META_TYPES.items():
            if key not in meta:
                raise DataError(f"{p}: key {key!r} is missing")
            value = meta[key]
            if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
                raise DataError(f"{p}: key {key!r} has {value!r}, expected {typ}")
        for key in ("n_images", "channels", "regions", "n_classes", "n_attributes"):
            if meta[key] < 1:
                raise DataError(f"{p}: {key} must be >= 1, got {meta[key]}")
        if meta["dtype"] not in DTYPES:
            raise DataError(f"{p}: dtype {meta['dtype']!r} is not one of {DTYPES}")
        feat = meta["features"]
        for key in ("file_bytes", "rows_per_batch", "n_batches", "crc32"):
            if not isinstance(feat.get(key), int) or feat[key] < 0:
                raise DataError(f"{p}: features.{key} must be a non-negative integer")
        if feat["rows_per_batch"] < 1:
            raise DataError(f"{p}: features.rows_per_batch must be >= 1")
        if len(meta["class_names"]) != meta["n_classes"]:
            raise DataError(
                f"{p}: {len(meta['class_names'])} class_names for n_classes={meta['n_classes']}"
            )
        names = meta["attribute_names"]
        if names is not None and len(names) != meta["n_attributes"]:
            raise DataError(
                f"{p}: {len(names)} attribute_names for n_attributes={meta['n_attributes']}"
            )
        self.meta = meta
        self.dataset = meta["dataset"]
        self.n_images = meta["n_images"]
        self.channels = meta["channels"]
        self.regions = meta["regions"]
        self.n_classes = meta["n_classes"]
        self.n_attributes = meta["n_attributes"]
        self.dtype = np.dtype(meta["dtype"])
        self.rows_per_batch = feat["rows_per_batch"]
        self.class_names = [str(c) for c in meta["class_names"]]
        self.attribute_names = None if names is None else [str(a) for a in names]

    def _read_arrays(self) -> None:
        p = self._file(ARRAYS_FILE)
        records: dict[str, Any] = self.meta["arrays"]
        try:
            with np.load(p, allow_pickle=False) as npz:
                loaded = {name: npz[name] for name in npz.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError, ...
            raise DataError(f"{p} cannot be read as an .npz file: {exc}") from exc
        expected = {"labels", "class_attributes", *(f"split_{s}" for s in SPLIT_NAMES)}
        if self.meta["word_dim"] is not None:
            expected.add("attribute_vectors")
        if set(records) != expected:
            raise DataError(f"{self.path / META_FILE}: 'arrays' must describe {sorted(expected)}")
        for name in sorted(expected):
            if name not in loaded:
                raise DataError(f"{p}: array {name!r} is missing")
            a, rec = loaded[name], records[name]
            if not isinstance(rec, dict) or not {"shape", "dtype", "sha256"} <= set(rec):
                raise DataError(f"{self.path / META_FILE}: arrays.{name} is malformed")
            if str(a.dtype) != _ARRAY_DTYPES[name] or str(a.dtype) != rec["dtype"]:
                raise DataError(
                    f"{p}: array {name!r} has dtype {a.dtype}, expected {_ARRAY_DTYPES[name]}"
                )
            if list(a.shape) != list(rec["shape"]):
                raise DataError(
                    f"{p}: array {name!r} has shape {list(a.shape)}, meta.json says {rec['shape']}"
                )
            if _sha256(a) != rec["sha256"]:
                raise DataError(f"{p}: array {name!r} is corrupted (SHA-256 differs from meta)")
        n, c, na = self.n_images, self.n_classes, self.n_attributes
        if loaded["labels"].shape != (n,):
            raise DataError(
                f"{p}: labels has shape {loaded['labels'].shape}, expected ({n},) (n_images)"
            )
        if loaded["class_attributes"].shape != (c, na):
            raise DataError(
                f"{p}: class_attributes has shape {loaded['class_attributes'].shape}, "
                f"expected ({c}, {na}) (n_classes, n_attributes)"
            )
        vectors = loaded.get("attribute_vectors")
        if vectors is not None and vectors.shape != (na, self.meta["word_dim"]):
            raise DataError(
                f"{p}: attribute_vectors has shape {vectors.shape}, "
                f"expected ({na}, {self.meta['word_dim']})"
            )
        splits = {s: loaded[f"split_{s}"] for s in SPLIT_NAMES}
        _check_arrays(
            str(p),
            n_images=n,
            labels=loaded["labels"],
            splits=splits,
            class_attributes=loaded["class_attributes"],
            attribute_vectors=vectors,
        )
        for a in (*loaded.values(),):
            a.setflags(write=False)
        self.labels = loaded["labels"]
        self.splits = splits
        self.class_attributes = loaded["class_attributes"]
        self.attribute_vectors = vectors
        self.seen_classes = _classes(self.labels, splits["trainval"])
        self.unseen_classes = _classes(self.labels, splits["test_unseen"])
        self.val_seen_classes = _classes(self.labels, splits["train"])
        self.val_unseen_classes = _classes(self.labels, splits["val_unseen"])

    def _map_features(self) -> None:
        p = self._file(FEATURES_FILE)
        feat = self.meta["features"]
        size = p.stat().st_size
        if size != feat["file_bytes"]:
            raise DataError(
                f"{p} has {size} bytes, meta.json says {feat['file_bytes']}: "
                "the file is truncated or was replaced"
            )
        try:
            mm = pa.memory_map(str(p), "r")
            reader = pa.ipc.open_file(mm)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{p} is not a readable Arrow IPC file: {exc}") from exc
        self._mmap, self._reader = mm, reader
        expected = _feature_type(self.dtype, self.channels * self.regions)
        schema = reader.schema
        if len(schema) != 1 or schema[0].name != FEATURE_COLUMN or schema[0].type != expected:
            raise DataError(
                f"{p}: schema is {schema.to_string(show_schema_metadata=False)!r}, expected one "
                f"column {FEATURE_COLUMN!r} of {expected} (dtype, channels x regions from meta)"
            )
        rpb = self.rows_per_batch
        file_meta = schema.metadata or {}
        want_meta = {
            b"msdn_tune.shape": json.dumps([self.channels, self.regions]).encode(),
            b"msdn_tune.rows_per_batch": str(rpb).encode(),
        }
        for key, want in want_meta.items():
            if file_meta.get(key) != want:
                raise DataError(
                    f"{p}: schema metadata {key.decode()} is {file_meta.get(key)!r}, "
                    f"meta.json implies {want.decode()!r}"
                )
        n_batches = math.ceil(self.n_images / rpb)
        if reader.num_record_batches != n_batches or feat["n_batches"] != n_batches:
            raise DataError(
                f"{p} has {reader.num_record_batches} record batches, expected {n_batches} "
                f"({self.n_images} rows in batches of {rpb})"
            )
        views = []
        try:
            for i in range(n_batches):
                batch = reader.get_batch(i)
                want = min(rpb, self.n_images - i * rpb)
                column = batch.column(0)
                if batch.num_rows != want or column.null_count or column.offset:
                    raise DataError(
                        f"{p}: record batch {i} has {batch.num_rows} rows, expected {want}"
                    )
                values = column.values
                data = values.buffers()[1]
                count = want * self.channels * self.regions
                if values.offset or data is None or data.size < count * self.dtype.itemsize:
                    raise DataError(f"{p}: record batch {i} has a short value buffer")
                view = np.frombuffer(data, dtype=self.dtype, count=count)
                views.append(view.reshape(want, self.channels, self.regions))
        except pa.ArrowException as exc:
            raise DataError(f"{p}: record batches cannot be read: {exc}") from exc
        self.batch_views = views
        mm.seek(0)
        self._whole = mm.read_buffer(size)  # zero-copy: gives the mapping's address for madvise
        base = self._whole.address
        self._batch_offsets = np.array(
            [v.__array_interface__["data"][0] - base for v in views], dtype=np.int64
        )
        self._fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)) if _HAVE_PREADV else None

    # -- properties -----------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of feature data (not counting Arrow framing)."""
        return self.n_images * self.channels * self.regions * self.dtype.itemsize

    @property
    def features(self) -> np.ndarray:
        """The whole ``(N, channels, regions)`` zero-copy read-only view.

        Only for single-batch stores (up to 64 MiB of features); a larger store raises
        :class:`DataError`, use :meth:`gather`, :meth:`iter_batches` or :attr:`batch_views`.
        Reading it through numpy maps the pages it touches into this process.
        """
        self._check_open()
        if len(self.batch_views) != 1:
            raise DataError(
                f"{self.path}: features are stored in {len(self.batch_views)} record batches, "
                "not one contiguous buffer; use gather(), iter_batches() or batch_views"
            )
        return self.batch_views[0]

    @property
    def closed(self) -> bool:
        return self._reader is None

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return (
            f"BenchmarkStore({str(self.path)!r}, dataset={self.dataset!r}, "
            f"n_images={self.n_images}, channels={self.channels}, regions={self.regions}, "
            f"dtype={self.dtype})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self.path), self.resident_bytes))

    def _check_open(self) -> None:
        if self._reader is None:
            raise ValueError(f"benchmark store {self.path} is closed")

    # -- reading --------------------------------------------------------------------------

    def _rows(self, index: object) -> np.ndarray:
        rows = np.asarray(index)
        if rows.ndim != 1:
            rows = rows.reshape(-1)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"row indices must be integers, got dtype {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_images):
            raise IndexError(
                f"row index out of range [0, {self.n_images}): {rows.min()}..{rows.max()}"
            )
        return rows

    def gather_numpy(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` as a new ``(len, channels, regions)`` array, in the requested order."""
        self._check_open()
        rows = self._rows(index)
        out = np.empty((len(rows), self.channels, self.regions), dtype=self.dtype)
        if len(rows) == 0:
            return out
        if self._use_pread():
            self._pread_rows(rows, out)
        else:
            self._copy_rows(rows, out)
            self._account(len(rows))
        return out

    def _use_pread(self) -> bool:
        return (
            _HAVE_PREADV
            and self._fd is not None
            and self.resident_bytes is not None
            and self.nbytes > self.resident_bytes
        )

    def _pread_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Read rows straight from the file into ``out``: one ``preadv`` per contiguous run.

        Rows are visited in file order; a run of rows that are adjacent in the file becomes one
        system call that scatters them into their (any) output positions.
        """
        row_bytes = self.channels * self.regions * self.dtype.itemsize
        batch, offset = np.divmod(rows, self.rows_per_batch)
        file_pos = self._batch_offsets[batch] + offset * row_bytes
        order = np.argsort(file_pos, kind="stable")
        pos = file_pos[order]
        breaks = np.flatnonzero(np.diff(pos) != row_bytes) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        ends = np.concatenate([breaks, [len(pos)]]).tolist()
        mv = memoryview(out).cast("B")
        targets = order.tolist()
        for s, e in zip(starts, ends, strict=True):
            for lo in range(s, e, _IOV_MAX):
                hi = min(e, lo + _IOV_MAX)
                bufs = [mv[j * row_bytes : (j + 1) * row_bytes] for j in targets[lo:hi]]
                got = os.preadv(self._fd, bufs, int(pos[lo]))
                if got != (hi - lo) * row_bytes:
                    raise DataError(
                        f"{self.path / FEATURES_FILE}: short read at byte {int(pos[lo])} "
                        "(was the file truncated after opening?)"
                    )

    def _copy_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy rows out of the mapped record batches (numpy fancy indexing)."""
        views = self.batch_views
        if len(views) == 1:
            np.take(views[0], rows, axis=0, out=out)
        else:
            # Visit rows in file order (locality), grouped by record batch, and scatter each
            # group into its requested output positions.
            order = np.argsort(rows, kind="stable")
            srt = rows[order]
            batch = srt // self.rows_per_batch
            cuts = np.flatnonzero(np.diff(batch)) + 1
            starts = np.concatenate([[0], cuts])
            ends = np.concatenate([cuts, [len(srt)]])
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                b = int(batch[s])
                offs = srt[s:e] - b * self.rows_per_batch
                if e - s == 1:
                    out[order[s]] = views[b][offs[0]]
                else:
                    out[order[s:e]] = views[b][offs]

    def gather(self, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` as a ``(len, channels, regions)`` tensor of the store dtype.

        Copies only the requested rows (never the file); the order of ``index`` is kept and
        repeats are allowed.
        """
        import torch

        return torch.from_numpy(self.gather_numpy(index))

    def iter_batches(
        self,
        index: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Yield ``(rows, features, labels)`` for one pass over ``index``.

        ``features`` is ``(b, channels, regions)`` of the store dtype and ``labels`` int64.
        Each batch is gathered when it is requested, so resident memory stays at a few batches
        (plus the mapped pages of a store smaller than ``resident_bytes``), whatever the store
        size.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = self._rows(index)
        if shuffle:
            rows = np.random.default_rng(seed).permutation(rows)
        stop = len(rows) - (len(rows) % batch_size if drop_last else 0)
        import torch

        for start in range(0, stop, batch_size):
            part = rows[start : start + batch_size]
            yield part, self.gather(part), torch.from_numpy(self.labels[part].copy())

    def _account(self, n_rows: int) -> None:
        """Count what reading ``n_rows`` may have mapped and drop pages past the budget.

        The kernel may map file pages in 2 MiB huge pages, so a row can map up to one huge
        page more than its own bytes at each end; the estimate assumes the worst.
        """
        if self.resident_bytes is None or self.nbytes <= self.resident_bytes:
            return
        row_bytes = self.channels * self.regions * self.dtype.itemsize
        self._gathered += n_rows * (row_bytes + 2 * _HUGE_PAGE)
        if self._gathered > self.resident_bytes:
            self.release_pages()

    def release_pages(self) -> bool:
        """Drop this process's mapped pages of features.arrow (the page cache keeps them).

        :meth:`gather` calls it where ``preadv`` is unavailable; call it after reading through
        :attr:`features` / :attr:`batch_views`. Returns whether the platform supported it.
        """
        self._gathered = 0
        if self._reader is None:
            return False
        return _DROPPER.drop(self._whole.address, self._whole.size)

    def verify(self) -> None:
        """Read every feature value and compare its CRC-32 with meta.json (slow: reads all).

        :meth:`open` only checks structure and sizes; this catches bytes changed in place.
        """
        self._check_open()
        crc = 0
        for view in self.batch_views:
            step = max(1, (16 << 20) // max(1, view[0].nbytes))
            for s in range(0, len(view), step):
                crc = zlib.crc32(np.ascontiguousarray(view[s : s + step]).data, crc)
            self.release_pages()
        if crc != self.meta["features"]["crc32"]:
            raise DataError(
                f"{self.path / FEATURES_FILE}: feature data is corrupted "
                f"(CRC-32 {crc} differs from meta.json {self.meta['features']['crc32']})"
            )

    def summary(self) -> dict[str, Any]:
        """Plain facts about the store (what ``msdn-tune data info`` prints)."""
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "source": self.meta["source"],
            "format_version": self.meta["format_version"],
            "created": self.meta["created"],
            "n_images": self.n_images,
            "channels": self.channels,
            "regions": self.regions,
            "grid": self.meta["grid"],
            "dtype": str(self.dtype),
            "feature_bytes": self.nbytes,
            "file_bytes": self.meta["features"]["file_bytes"],
            "n_classes": self.n_classes,
            "n_seen": len(self.seen_classes),
            "n_unseen": len(self.unseen_classes),
            "n_val_seen": len(self.val_seen_classes),
            "n_val_unseen": len(self.val_unseen_classes),
            "n_attributes": self.n_attributes,
            "word_vectors": self.attribute_vectors is not None,
            "word_dim": self.meta["word_dim"],
            "split_sizes": {s: len(self.splits[s]) for s in SPLIT_NAMES},
        }

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the feature file. Views obtained earlier stay valid (Arrow keeps the map)."""
        self.batch_views = []
        self._whole = None
        self._reader = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def __enter__(self) -> BenchmarkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
