"""Attribute word vectors (A x D) from a ``.npy`` file or a pickled numpy array."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from msdn_tune.data.sources.unpickle import ArrayUnpickler
from msdn_tune.errors import DataError


def load_word_vectors(path: str | Path, *, n_attributes: int | None = None) -> np.ndarray:
    """Attribute word vectors (A x D float32) from a ``.npy`` file or a pickled numpy array.

    ``.npy`` is read with ``allow_pickle=False``. A pickle (``.pkl``, as TransZero ships
    ``w2v/{CUB,SUN,AWA2}_attribute.pkl``) is read with an unpickler that only rebuilds numpy
    arrays (no other code can run) and Python 2 byte strings as latin-1. Raises DataError naming
    the file for anything else, a non-2-D or non-finite array, or a row count other than
    ``n_attributes``.
    """
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise DataError(f"word-vector file {p} does not exist")
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
            fh.seek(0)
            if head == b"\x93NUMPY":
                arr = np.load(fh, allow_pickle=False)
            else:
                arr = ArrayUnpickler(fh, encoding="latin1").load()
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
