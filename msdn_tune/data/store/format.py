"""The benchmark store's on-disk format: file names, dtypes, meta.json keys and the array checks.

Shared by :mod:`.writer` (which produces the format) and :mod:`.reader` (which validates it on
every open), and by the importers, which run :func:`check_arrays` on what they read before the
first feature byte is copied. The layout itself is described in :mod:`msdn_tune.data.store`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from msdn_tune.errors import DataError
from msdn_tune.safeload import shorten

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

ARRAY_DTYPES = {
    "labels": "int64",
    "class_attributes": "float32",
    "attribute_vectors": "float32",
    **{f"split_{name}": "int64" for name in SPLIT_NAMES},
}
# Keys of meta.json that the store itself writes; extra_meta may not replace them.
META_TYPES: dict[str, type | tuple[type, ...]] = {
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


MAX_COUNT = 2**31 - 1
"""Largest image, channel, region, class or attribute count (and channels x regions) a store may
declare: Arrow's fixed-size lists and torch's index arithmetic take 32-bit sizes."""

MAX_ARRAY_BYTES = 1 << 30
"""Largest small array in ``arrays.npz`` (1 GiB): far above any benchmark's labels, splits or
attributes, so a corrupt shape cannot make an open allocate without bound."""

_NAME_CHARS = 200
"""Longest ``dataset`` / ``source`` label: they are printed and become parts of names."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


def expected_arrays(word_dim: int | None) -> dict[str, int]:
    """The arrays a store holds (with their number of dimensions): ``attribute_vectors`` only
    when it has word vectors."""
    out = {"labels": 1, "class_attributes": 2, **{f"split_{s}": 1 for s in SPLIT_NAMES}}
    if word_dim is not None:
        out["attribute_vectors"] = 2
    return out


def check_meta(meta: object, where: str) -> dict[str, Any]:
    """``meta`` (a parsed meta.json) if every key has the right type, range and consistency.

    Raises DataError (prefixed with ``where``, the meta.json path) naming the first bad key and
    what was expected. Everything the reader later takes from meta.json is checked here: counts
    are integers in [1, :data:`MAX_COUNT`], ``grid`` is two positive integers whose product is
    ``regions``, names match the counts, and the recorded shape of every array agrees with the
    counts, so nothing downstream indexes, multiplies or allocates with an unchecked value.
    """
    if not isinstance(meta, dict):
        raise DataError(f"{where} must hold a JSON object, got {_kind(meta)}")
    version = meta.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {shorten(version)} is not supported; expected "
            f"{FORMAT_VERSION} (re-create the store with this version of msdn-tune)"
        )
    for key in META_TYPES:
        if key not in meta:
            raise DataError(f"{where}: key {key!r} is missing")
    for key in ("dataset", "source", "created"):
        _text(where, key, meta[key], limit=_NAME_CHARS if key != "created" else 64)
    for key in ("n_images", "channels", "regions", "n_classes", "n_attributes"):
        _count(where, key, meta[key], low=1)
    if meta["channels"] * meta["regions"] > MAX_COUNT:
        raise DataError(
            f"{where}: channels x regions is {meta['channels'] * meta['regions']}, more than "
            f"{MAX_COUNT} values per image"
        )
    grid = meta["grid"]
    if grid is not None:
        if not (isinstance(grid, list) and len(grid) == 2 and all(_is_int(g) for g in grid)
                and min(grid) >= 1):
            raise DataError(f"{where}: key 'grid' has {shorten(grid)}, expected null or two "
                            "positive integers [height, width]")
        if grid[0] * grid[1] != meta["regions"]:
            raise DataError(f"{where}: grid {grid} has {grid[0] * grid[1]} regions, but "
                            f"regions is {meta['regions']}")
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in DTYPES:
        raise DataError(f"{where}: dtype {shorten(meta['dtype'])} is not one of {DTYPES}")
    if meta["word_dim"] is not None:
        _count(where, "word_dim", meta["word_dim"], low=1, what="null or an integer")
    _names(where, "class_names", meta["class_names"], meta["n_classes"], "n_classes")
    if meta["attribute_names"] is not None:
        _names(where, "attribute_names", meta["attribute_names"], meta["n_attributes"],
               "n_attributes")
    sizes = meta["split_sizes"]
    if not isinstance(sizes, dict) or set(sizes) != set(SPLIT_NAMES):
        raise DataError(f"{where}: key 'split_sizes' must map exactly {list(SPLIT_NAMES)} to "
                        f"row counts, got {shorten(sizes)}")
    for name in SPLIT_NAMES:
        _count(where, f"split_sizes.{name}", sizes[name], low=0, high=meta["n_images"])
    _check_features_record(where, meta)
    _check_array_records(where, meta)
    return meta


def _check_features_record(where: str, meta: dict[str, Any]) -> None:
    feat = meta["features"]
    if not isinstance(feat, dict):
        raise DataError(f"{where}: key 'features' must be a JSON object, got {_kind(feat)}")
    for key, high in (("file_bytes", 2**63 - 1), ("rows_per_batch", MAX_COUNT),
                      ("n_batches", MAX_COUNT), ("crc32", 2**32 - 1)):
        if key not in feat:
            raise DataError(f"{where}: key 'features.{key}' is missing")
        _count(where, f"features.{key}", feat[key], low=1 if key == "rows_per_batch" else 0,
               high=high)


def _check_array_records(where: str, meta: dict[str, Any]) -> None:
    records = meta["arrays"]
    want = expected_arrays(meta["word_dim"])
    if not isinstance(records, dict):
        raise DataError(f"{where}: key 'arrays' must be a JSON object describing "
                        f"{sorted(want)}, got {_kind(records)}")
    missing, unknown = sorted(set(want) - set(records)), sorted(set(records) - set(want))
    if missing or unknown:
        which = (f"lacks {missing[0]!r}" if missing
                 else f"has {shorten(unknown[0], 40)}, which is not")
        raise DataError(f"{where}: key 'arrays' {which} one of the store's arrays (word_dim "
                        f"{meta['word_dim']} makes them {len(want)})")
    shapes = {  # what each array's shape must be, and the keys that say so
        "labels": ([meta["n_images"]], "n_images"),
        "class_attributes": ([meta["n_classes"], meta["n_attributes"]],
                             "(n_classes, n_attributes)"),
        "attribute_vectors": ([meta["n_attributes"], meta["word_dim"]],
                              "(n_attributes, word_dim)"),
        **{f"split_{s}": ([meta["split_sizes"][s]], f"split_sizes.{s}") for s in SPLIT_NAMES},
    }
    for name, ndim in sorted(want.items()):
        rec, key = records[name], f"arrays.{name}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: key {key!r} must be a JSON object, got {_kind(rec)}")
        for field in ("shape", "dtype", "sha256"):
            if field not in rec:
                raise DataError(f"{where}: key '{key}.{field}' is missing")
        shape = rec["shape"]
        if not (isinstance(shape, list) and len(shape) == ndim
                and all(_is_int(d) and 0 <= d <= MAX_COUNT for d in shape)):
            raise DataError(f"{where}: key '{key}.shape' has {shorten(shape)}, expected a list "
                            f"of {ndim} non-negative integer{'s' if ndim > 1 else ''}")
        want_shape, source = shapes[name]
        if shape != want_shape:
            raise DataError(f"{where}: key '{key}.shape' is {shape}, but {source} makes it "
                            f"{want_shape}")
        if rec["dtype"] != ARRAY_DTYPES[name]:
            raise DataError(f"{where}: key '{key}.dtype' has {shorten(rec['dtype'])}, expected "
                            f"{ARRAY_DTYPES[name]!r}")
        if not (isinstance(rec["sha256"], str) and _SHA256.fullmatch(rec["sha256"])):
            raise DataError(f"{where}: key '{key}.sha256' has {shorten(rec['sha256'])}, "
                            "expected 64 lowercase hex digits")
        nbytes = math.prod(shape) * np.dtype(ARRAY_DTYPES[name]).itemsize
        if nbytes > MAX_ARRAY_BYTES:
            raise DataError(f"{where}: key '{key}.shape' {shape} makes a {nbytes:,}-byte array, "
                            f"more than the {MAX_ARRAY_BYTES:,} a store's small array may be")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                           type(value).__name__)


def _count(where: str, key: str, value: object, *, low: int, high: int = MAX_COUNT,
           what: str = "an integer") -> None:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise DataError(f"{where}: key {key!r} has {shorten(value)}, expected {what} from "
                        f"{low} to {high}")


def _text(where: str, key: str, value: object, *, limit: int) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise DataError(f"{where}: key {key!r} has {shorten(value)}, expected a string of at "
                        f"most {limit} characters")


def _names(where: str, key: str, value: object, count: int, count_key: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: key {key!r} has {shorten(value)}, expected a list of strings")
    if len(value) != count:
        raise DataError(f"{where}: {len(value)} {key} for {count_key}={count}")


def rows_per_batch_for(row_bytes: int) -> int:
    """Rows per record batch for rows of ``row_bytes``: about :data:`BATCH_TARGET_BYTES`."""
    return max(1, BATCH_TARGET_BYTES // max(1, row_bytes))


def feature_type(dtype: np.dtype, row_len: int) -> pa.DataType:
    """The Arrow type of the feature column: ``FixedSizeList<dtype>(row_len)``."""
    return pa.list_(pa.from_numpy_dtype(dtype), row_len)


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes (meta.json records it for every small array)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def array_record(a: np.ndarray) -> dict[str, Any]:
    """What meta.json says of a small array: shape, dtype, SHA-256."""
    return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": array_sha256(a)}


def classes_in(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The sorted distinct classes of ``rows`` (empty for no rows)."""
    return np.unique(labels[rows]) if len(rows) else np.zeros(0, dtype=np.int64)


def check_arrays(
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
        leak = np.intersect1d(classes_in(labels, splits[seen]), classes_in(labels, splits[unseen]))
        if len(leak):
            raise DataError(
                f"{where}: classes of {unseen!r} must not appear in {seen!r}; "
                f"found {len(leak)} (e.g. class {leak[0]})"
            )


def as_index(a: object, what: str) -> np.ndarray:
    """``a`` as int64 row indices; integral floats are accepted, anything else is a DataError."""
    arr = np.asarray(a)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise DataError(f"{what} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(arr.shape)
