"""A restricted unpickler that can rebuild plain numpy arrays and nothing else.

Why: TransZero ships its attribute word vectors as pickles (``w2v/{CUB,SUN,AWA2}_attribute.pkl``),
and ``pickle.load`` on a downloaded file runs whatever callables its author named.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np


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


class ArrayUnpickler(pickle.Unpickler):
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
