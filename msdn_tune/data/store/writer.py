"""StoreWriter: stream feature maps into a new benchmark store, published atomically.

The writer produces the format of :mod:`.format`; why it writes into a hidden temporary sibling
and renames it into place is in :class:`StoreWriter`'s docstring.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from msdn_tune.data.store.format import (
    ARRAYS_FILE,
    DTYPES,
    FEATURE_COLUMN,
    FEATURES_FILE,
    FORMAT_VERSION,
    META_FILE,
    META_TYPES,
    SPLIT_NAMES,
    array_record,
    as_index,
    check_arrays,
    feature_type,
    rows_per_batch_for,
)
from msdn_tune.errors import DataError
from msdn_tune.safeload import shorten

_MAX_STORE_NAME = 200
"""Bytes of a store's folder name: NAME_MAX (255) less its temporary sibling's affixes."""


class StoreExistsError(DataError):
    """The target directory of a :class:`StoreWriter` already exists (and ``force`` is off)."""


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


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path (what makes a rename or a write durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_store_dir(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


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
        self.path = Path(os.path.expanduser(path)).absolute()
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
            rows_per_batch or rows_per_batch_for(self.row_len * self.dtype.itemsize)
        )
        if self.rows_per_batch < 1:
            raise DataError(f"rows_per_batch must be >= 1, got {rows_per_batch!r}")
        self.rows_written = 0
        self._grid: list[int] | None = None
        self._crc = 0
        self._finished = False
        self._closed = False

        if len(self.path.name.encode("utf-8", "surrogateescape")) > _MAX_STORE_NAME:
            # the store is written as a hidden sibling `.<name>.tmp-<pid>-<id>` and renamed
            raise DataError(f"cannot create the store {shorten(str(self.path))}: its folder "
                            f"name may be at most {_MAX_STORE_NAME} bytes")
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir()
        except OSError as exc:
            raise DataError(f"cannot create the store {shorten(str(self.path))}: "
                            f"{exc.strerror or shorten(str(exc))}") from exc
        try:
            self._schema = pa.schema(
                [pa.field(FEATURE_COLUMN, feature_type(self.dtype, self.row_len), False)],
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

    @property
    def features_path(self) -> Path:
        """The features file being written (inside the temporary directory until finish).

        The importers hard-link it so that an interrupted import can resume from it.
        """
        return self._tmp / FEATURES_FILE

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
        with self._discard_on_error():
            if self.rows_written != self.n_images:
                raise DataError(
                    f"{self.path}: {self.rows_written} feature rows written, "
                    f"expected n_images={self.n_images}"
                )
            labels = as_index(labels, "labels")
            split_arrays = {
                name: as_index(rows, f"split {name!r}") for name, rows in splits.items()
            }
            class_attributes = np.asarray(class_attributes, dtype=np.float32)
            if attribute_vectors is not None:
                attribute_vectors = np.asarray(attribute_vectors, dtype=np.float32)
            where = f"store {self.path}"
            check_arrays(
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
            clash = sorted(set(extra) & set(META_TYPES))
            if clash:
                raise ValueError(f"extra_meta may not set reserved meta.json keys {clash}")

            self._flush()
            self._ipc.close()
            self._sink.close()
            features_path = self._tmp / FEATURES_FILE
            fsync_path(features_path)

            arrays: dict[str, np.ndarray] = {
                "labels": labels,
                "class_attributes": class_attributes,
                **{f"split_{name}": split_arrays[name] for name in SPLIT_NAMES},
            }
            if attribute_vectors is not None:
                arrays["attribute_vectors"] = attribute_vectors
            _write_npz(self._tmp / ARRAYS_FILE, arrays)
            fsync_path(self._tmp / ARRAYS_FILE)

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
                "arrays": {name: array_record(a) for name, a in sorted(arrays.items())},
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

    @contextlib.contextmanager
    def _discard_on_error(self) -> Iterator[None]:
        """Discard the temporary directory on any error; an OSError (e.g. a full disk) becomes
        a DataError naming the store."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise DataError(f"writing the store {self.path} failed: {exc}") from exc
        except BaseException:
            self.abort()
            raise

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
            fsync_path(self.path.parent)
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
