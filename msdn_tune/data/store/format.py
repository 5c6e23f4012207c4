"""The benchmark store's on-disk format: file names, dtypes, meta.json keys and the array checks.

Shared by :mod:`.writer` (which produces the format) and :mod:`.reader` (which validates it on
every open), and by the importers, which run :func:`check_arrays` on what they read before the
first feature byte is copied. The layout itself is described in :mod:`msdn_tune.data.store`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from msdn_tune.errors import DataError

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
