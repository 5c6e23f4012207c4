"""The import: the published CUB / SUN / AWA2 / FLO files -> a benchmark store, streaming and safe.

One concept: the resumable streaming copy into a store, and its two front ends
(:func:`import_hdf5`, :func:`import_mat`); hence the length. The source formats are read by
:mod:`msdn_tune.data.sources`, the small arrays checked by :mod:`msdn_tune.data.splits`.

Two sources (docs/model.md §4):

* **Feature-map HDF5** (``feature_map_ResNet_101_{CUB,SUN,AWA2}.hdf5``, written by TransZero's
  preprocessing): keys ``feature_map`` (N x 2048 x 14 x 14), ``labels``, ``trainval_loc``,
  ``test_seen_loc``, ``test_unseen_loc`` (all **0-based**), ``att`` / ``original_att`` (C x A)
  and ``w2v_att`` (A x 300). :func:`import_hdf5` (:mod:`msdn_tune.data.sources.hdf5`).
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
(:func:`msdn_tune.data.splits.validation_split`).

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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from msdn_tune.console import ProgressBar, progress_bar
from msdn_tune.data.registry import DatasetInfo, get_dataset
from msdn_tune.data.sources import (
    AttSplits,
    FeatureSource,
    Hdf5Features,
    Res101,
    StoreFeatures,
    image_files_digest,
    load_word_vectors,
    open_features,
    read_att_splits,
    read_res101,
)
from msdn_tune.data.sources.hdf5 import read_hdf5_small
from msdn_tune.data.splits import TEST_SPLITS, SmallArrays, check_range, finish_small
from msdn_tune.data.store import (
    ARRAYS_FILE,
    FEATURES_FILE,
    META_FILE,
    SPLIT_NAMES,
    StoreExistsError,
    StoreWriter,
)
from msdn_tune.data.store.format import feature_type
from msdn_tune.errors import DataError
from msdn_tune.outdir import check_replace

try:  # POSIX only; elsewhere two concurrent imports of one target are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Source bytes read per step (``--chunk-rows`` overrides it in images).
CHUNK_TARGET_BYTES = 64 << 20


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
    progress: ProgressBar,
) -> int:
    """Copy the complete record batches of a partial features.arrow into ``writer``.

    The partial file is an Arrow IPC file without its footer: the 8-byte magic, then a stream.
    Batches are read one at a time (bounded memory) until the stream ends or a batch is cut off;
    only batches of the writer's full ``rows_per_batch`` count. Returns the rows copied.
    """
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
        expected = feature_type(writer.dtype, writer.row_len)
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


@dataclass(frozen=True)
class ImportOptions:
    """How an import writes its store: the options both importers share (CLI flags of the same
    names). ``rows_per_batch`` is the store's record-batch size (default: the store's 64 MiB
    target; tests set it small)."""

    dtype: str = "float16"
    force: bool = False
    resume: bool = False
    chunk_rows: int | None = None
    progress: bool = True
    rows_per_batch: int | None = None


def _stream(
    source: FeatureSource,
    out: Path,
    options: ImportOptions,
    *,
    label: str,
    finish: Callable[[StoreWriter], Path],
) -> tuple[Path, int, float]:
    """Copy all features of ``source`` into a new store at ``out``; returns path, resumed rows,
    seconds. See the module doc for the partial / resume protocol."""
    dtype, force, resume = options.dtype, options.force, options.resume
    chunk_rows = options.chunk_rows
    if dtype not in ("float16", "float32"):
        raise DataError(f"dtype {dtype!r} is not supported; expected float16 or float32")
    n, row_bytes = source.n_images, source.channels * source.regions * source.dtype.itemsize
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_TARGET_BYTES // row_bytes)
        chunk_rows = max(source.align, chunk_rows // source.align * source.align)
    if chunk_rows < 1:
        raise DataError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    chunk_rows = min(chunk_rows, n)
    # New, empty, or (with force) a store to replace; a folder holding anything else is refused
    # even with force, because publishing the store would delete what is in it.
    check_replace(out, what="benchmark store", files=(META_FILE, FEATURES_FILE, ARRAYS_FILE),
                  key_file=META_FILE, key_field="format_version", force=force,
                  error=StoreExistsError)

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
            force=out.exists(),  # checked above: an empty folder, or a store to replace
            rows_per_batch=options.rows_per_batch,
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
        bar = progress_bar(label, n * row_bytes, unit="bytes", enabled=options.progress)
        return _copy(source, writer, partial, old, identity, chunk_rows, bar, finish)
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
    progress: ProgressBar,
    finish: Callable[[StoreWriter], Path],
) -> tuple[Path, int, float]:
    """Salvage ``old`` (a partial features file) if any, then pump the rest of ``source``."""
    row_bytes = source.channels * source.regions * source.dtype.itemsize
    t0 = time.perf_counter()
    new_link = partial.dir / ("features.next.arrow" if old is not None else FEATURES_FILE)
    with contextlib.suppress(FileNotFoundError):  # left by a resume interrupted while salvaging
        (partial.dir / "features.next.arrow").unlink()
    linked = True
    try:
        os.link(writer.features_path, new_link)
    except OSError:
        linked = False  # no hard links here: the import still works, it just cannot resume
    resumed = 0
    try:
        with progress as bar:
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
            _pump(source, writer, resumed, chunk_rows, bar, writer.features_path)
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
    bar: ProgressBar,
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
    finally:
        if fd is not None:
            os.close(fd)


def _check_small(
    small: SmallArrays, info: DatasetInfo, att: AttSplits | None, allow_mismatch: bool, where: str
) -> list[str]:
    """:func:`finish_small` with xlsa17's tuning split (``train_loc``/``val_loc``) if ``att``
    has one; returns the registry mismatches."""
    locs = att.locs if att is not None else {}  # read_att_splits keeps train and val together
    return finish_small(
        small,
        info,
        train_loc=locs.get("train"),
        val_loc=locs.get("val"),
        allow_mismatch=allow_mismatch,
        where=where,
    )


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
    src_path = Path(os.path.expanduser(path)).absolute()
    if not src_path.is_file():
        raise DataError(f"HDF5 file {src_path} does not exist")
    out = Path(os.path.expanduser(out)).absolute()
    source = Hdf5Features(src_path)
    try:
        small, notes = read_hdf5_small(src_path, source.n_images)
        n_attr = small.class_attributes.shape[1]
        if w2v is not None:
            small.attribute_vectors = load_word_vectors(w2v, n_attributes=n_attr)
            notes["word_vectors"] = str(Path(os.path.expanduser(w2v)).absolute())
        att = None
        if att_splits is not None:
            att = read_att_splits(att_splits, source.n_images)
            for split in TEST_SPLITS:
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
        found = _check_small(small, info, att, allow_mismatch, str(src_path))
    except BaseException:
        source.close()
        raise
    meta = {
        "format": "feature-map hdf5 (0-based)",
        "files": {"features": str(src_path), **({"att_splits": str(att.path)} if att else {})},
        "attribute_key": small.attribute_key,
        "word_vectors": notes["word_vectors"],
    }
    options = ImportOptions(dtype, force, resume, chunk_rows, progress, rows_per_batch)
    label = f"import {info.name} from {src_path.name}"
    return _run_import(source, small, out, meta, options, info=info, found=found, label=label)


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
    out = Path(os.path.expanduser(out)).absolute()
    res = read_res101(res101)
    att = read_att_splits(att_splits, res.n_images)
    n_cls = att.class_attributes.shape[0]
    check_range(
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
        splits={s: att.locs[s] for s in TEST_SPLITS},
        class_attributes=att.class_attributes,
        attribute_vectors=vectors,
        class_names=att.class_names or [f"class_{k:03d}" for k in range(n_cls)],
        attribute_key=att.attribute_key,
    )
    found = _check_small(small, info, att, allow_mismatch, f"{att.path} + {res.path}")
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
            "features": str(Path(os.path.expanduser(features)).absolute()),
        },
        "attribute_key": att.attribute_key,
        "word_vectors": None if w2v is None else str(Path(os.path.expanduser(w2v)).absolute()),
    }
    options = ImportOptions(dtype, force, resume, chunk_rows, progress, rows_per_batch)
    label = f"import {info.name} from {Path(features).name}"
    return _run_import(source, small, out, meta, options, info=info, found=found, label=label)


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
    labels = source.labels() if isinstance(source, Hdf5Features) else None
    if labels is not None:
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
    out: Path,
    meta: dict[str, Any],
    options: ImportOptions,
    *,
    info: DatasetInfo,
    found: list[str],
    label: str,
) -> ImportResult:
    """Stream ``source`` into the store at ``out`` and finish it with ``small``; ``meta`` (what
    the source was) becomes meta.json's ``import`` entry with the validation split, the registry
    mismatches ``found`` and the source dtype added."""
    dataset = info.name
    meta = {
        **meta,
        "validation": small.validation,
        "registry": {"dataset": dataset, "mismatches": found},
        "source_dtype": str(source.dtype),
    }

    def finish(writer: StoreWriter) -> Path:
        return writer.finish(
            labels=small.labels,
            splits={s: small.splits[s] for s in SPLIT_NAMES},
            class_attributes=small.class_attributes,
            attribute_vectors=small.attribute_vectors,
            class_names=small.class_names,
            attribute_names=None,
            dataset=dataset,
            source=f"msdn-tune import ({meta['format']})",
            extra_meta={"import": meta},
        )

    n_bytes = source.n_images * source.channels * source.regions * source.dtype.itemsize
    try:
        path, resumed, seconds = _stream(source, out, options, label=label, finish=finish)
    finally:
        source.close()
    return ImportResult(
        path=path,
        dataset=dataset,
        n_images=source.n_images,
        seconds=seconds,
        source_bytes=n_bytes,
        resumed_rows=resumed,
        mismatches=found,
        validation=small.validation,
    )
