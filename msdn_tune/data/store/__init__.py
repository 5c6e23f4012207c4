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

from msdn_tune.data.store.format import (
    ARRAYS_FILE,
    BATCH_TARGET_BYTES,
    DEFAULT_RESIDENT_BYTES,
    DTYPES,
    FEATURE_COLUMN,
    FEATURES_FILE,
    FORMAT_VERSION,
    META_FILE,
    SPLIT_NAMES,
    check_arrays,
)
from msdn_tune.data.store.reader import BenchmarkStore
from msdn_tune.data.store.writer import StoreExistsError, StoreWriter

__all__ = [
    "ARRAYS_FILE",
    "BATCH_TARGET_BYTES",
    "DEFAULT_RESIDENT_BYTES",
    "DTYPES",
    "FEATURES_FILE",
    "FEATURE_COLUMN",
    "FORMAT_VERSION",
    "META_FILE",
    "SPLIT_NAMES",
    "BenchmarkStore",
    "StoreExistsError",
    "StoreWriter",
    "check_arrays",
]
