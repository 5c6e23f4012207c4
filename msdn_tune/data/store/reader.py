"""BenchmarkStore: open, validate and read a benchmark store (mmap, preadv, madvise).

Reading is one concept, hence the length: opening checks every file against meta.json, and rows
are read either through the memory map or with ``preadv`` so that resident memory stays at a few
batches whatever the store size (the module docstring of :mod:`msdn_tune.data.store` says why).

One concept: reading a store, from opening and verifying it to gathering rows fast.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
import traceback
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from msdn_tune.data.store.format import (
    ARRAY_DTYPES,
    ARRAYS_FILE,
    DEFAULT_RESIDENT_BYTES,
    FEATURE_COLUMN,
    FEATURES_FILE,
    META_FILE,
    SPLIT_NAMES,
    array_sha256,
    check_arrays,
    check_meta,
    classes_in,
    feature_type,
)
from msdn_tune.errors import DataError
from msdn_tune.safeload import load_json, shorten

if TYPE_CHECKING:  # imported where tensors are made: resolving a store (the study driver) skips it
    import torch

_HUGE_PAGE = 2 << 20
_HAVE_PREADV = hasattr(os, "preadv")
_IOV_MAX = 512
_NPY_HEADER_MAX = 1 << 16  # numpy's own reader refuses headers over 10,000 bytes


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


def read_arrays_file(path: Path, records: dict[str, Any]) -> dict[str, np.ndarray]:
    """The small arrays of ``arrays.npz``, each checked against its meta.json record.

    Read member by member instead of with ``np.load``, so that whatever the file holds the
    answer is one line in our words (``np.load`` of random bytes suggests loading them
    unsafely with ``allow_pickle``): the archive must hold exactly the recorded arrays, each a
    plain ``.npy`` whose header gives the recorded dtype and shape, checked before its data is
    read, so a corrupt file cannot make the open allocate more than meta.json (already checked
    by :func:`~msdn_tune.data.store.format.check_meta`) allows. Pickled data is never loaded.
    """
    what = "a store's arrays.npz (a zip of .npy arrays)"
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a valid arrays file: expected {what}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as {what} ({_one_line(exc)})") from None
    with archive:
        names = [info.filename for info in archive.infolist()]
        members = {n[:-4]: n for n in names if n.endswith(".npy")}
        unknown = sorted(set(names) - {f"{r}.npy" for r in records})
        if unknown:
            raise DataError(f"{path}: holds {shorten(unknown[0])}, which is not one of the "
                            f"store's arrays {sorted(records)}")
        loaded = {}
        for name in sorted(records):
            if name not in members:
                raise DataError(f"{path}: array {name!r} is missing")
            loaded[name] = _read_member(path, archive, members[name], name, records[name])
    return loaded


def _read_member(path: Path, archive: zipfile.ZipFile, member: str, name: str,
                 record: dict[str, Any]) -> np.ndarray:
    """One ``.npy`` member: header checked against ``record``, then exactly its data read."""
    dtype = np.dtype(ARRAY_DTYPES[name])
    shape = tuple(record["shape"])
    nbytes = math.prod(shape) * dtype.itemsize
    info = archive.getinfo(member)
    if not nbytes <= info.file_size <= nbytes + _NPY_HEADER_MAX:
        raise DataError(f"{path}: array {name!r} takes {info.file_size:,} bytes, but its "
                        f"shape {list(shape)} and dtype {dtype} in meta.json need {nbytes:,}")
    bad = f"{path}: array {name!r} is not a plain numeric .npy array"
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                have_shape, fortran, have_dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                have_shape, fortran, have_dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise DataError(f"{bad} (.npy format version {version} is not supported)")
            if have_dtype.hasobject:
                raise DataError(f"{bad}: it holds pickled Python objects, which a store never "
                                "does (they are not loaded)")
            if have_dtype != dtype:
                raise DataError(f"{path}: array {name!r} has dtype {str(have_dtype)[:40]}, "
                                f"expected {dtype}")
            if tuple(have_shape) != shape:
                raise DataError(f"{path}: array {name!r} has shape {shorten(list(have_shape))}, "
                                f"meta.json says {list(shape)}")
            data = fh.read(nbytes + 1)  # one more: a longer member is corrupt too
            fh.read()  # to the end, where zipfile checks the member's CRC-32
    except DataError:
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise DataError(f"{bad} ({_one_line(exc)})") from None
    if len(data) != nbytes:
        held = "more" if len(data) > nbytes else f"{len(data):,}"
        raise DataError(f"{path}: array {name!r} holds {held} data bytes, its header says "
                        f"{nbytes:,}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
    if array_sha256(array) != record["sha256"]:
        raise DataError(f"{path}: array {name!r} is corrupted (SHA-256 differs from meta.json)")
    return array


def _one_line(exc: object) -> str:
    """A library exception's message (or any text) as one short line: they may span lines or
    be long."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


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
    #: Stores larger than this are read with ``preadv`` (None: always through the map).
    resident_bytes: int | None
    _mmap: pa.MemoryMappedFile | None
    _reader: pa.ipc.RecordBatchFileReader | None
    _whole: pa.Buffer | None
    _fd: int | None
    _gathered: int
    _batch_offsets: np.ndarray

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
        self.path = Path(os.path.expanduser(path)).absolute()
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
        except BaseException as exc:
            # The traceback keeps the failed steps' frames alive, and their locals (the Arrow
            # reader, schema, batches) keep the file mapped until the garbage collector finds the
            # cycle: clear them so that the mapping goes now, with close().
            traceback.clear_frames(exc.__traceback__)
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
        meta = check_meta(load_json(p, error=DataError, what="meta.json"), str(p))
        feat = meta["features"]
        names = meta["attribute_names"]
        self.meta = meta
        self.dataset = meta["dataset"]
        self.n_images = meta["n_images"]
        self.channels = meta["channels"]
        self.regions = meta["regions"]
        self.n_classes = meta["n_classes"]
        self.n_attributes = meta["n_attributes"]
        self.dtype = np.dtype(meta["dtype"])
        self.rows_per_batch = feat["rows_per_batch"]
        self.class_names = list(meta["class_names"])
        self.attribute_names = None if names is None else list(names)

    def _read_arrays(self) -> None:
        p = self._file(ARRAYS_FILE)
        loaded = read_arrays_file(p, self.meta["arrays"])
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
        check_arrays(
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
        self.seen_classes = classes_in(self.labels, splits["trainval"])
        self.unseen_classes = classes_in(self.labels, splits["test_unseen"])
        self.val_seen_classes = classes_in(self.labels, splits["train"])
        self.val_unseen_classes = classes_in(self.labels, splits["val_unseen"])

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
            raise DataError(f"{p} is not a readable Arrow IPC file: {_one_line(exc)}") from None
        self._mmap, self._reader = mm, reader
        expected = feature_type(self.dtype, self.channels * self.regions)
        schema = reader.schema
        if len(schema) != 1 or schema[0].name != FEATURE_COLUMN or schema[0].type != expected:
            shown = _one_line(schema.to_string(show_schema_metadata=False))
            raise DataError(
                f"{p}: schema is {shown!r}, expected one "
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
                    f"{p}: schema metadata {key.decode()} is {shorten(file_meta.get(key))}, "
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
                n_rows = min(rpb, self.n_images - i * rpb)
                column = batch.column(0)
                if batch.num_rows != n_rows or column.null_count or column.offset:
                    raise DataError(
                        f"{p}: record batch {i} has {batch.num_rows} rows, expected {n_rows}"
                    )
                values = column.values
                data = values.buffers()[1]
                count = n_rows * self.channels * self.regions
                if values.offset or data is None or data.size < count * self.dtype.itemsize:
                    raise DataError(f"{p}: record batch {i} has a short value buffer")
                view = np.frombuffer(data, dtype=self.dtype, count=count)
                views.append(view.reshape(n_rows, self.channels, self.regions))
        except pa.ArrowException as exc:
            raise DataError(f"{p}: record batches cannot be read: {_one_line(exc)}") from None
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
        mv = out.data.cast("B")  # out is a new C-contiguous array
        fd = self._fd
        assert fd is not None  # _use_pread() checked it
        targets = order.tolist()
        for s, e in zip(starts, ends, strict=True):
            for lo in range(s, e, _IOV_MAX):
                hi = min(e, lo + _IOV_MAX)
                bufs = [mv[j * row_bytes : (j + 1) * row_bytes] for j in targets[lo:hi]]
                got = os.preadv(fd, bufs, int(pos[lo]))
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
        import torch  # lazy: the study driver opens stores before Ray starts and skips ~1.5 s

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
        import torch  # lazy: see gather()

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
        if self._reader is None or self._whole is None:
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
