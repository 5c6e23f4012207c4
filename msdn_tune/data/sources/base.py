"""What the import copies features from: the FeatureSource protocol, and an existing store as one.

A source is read in row ranges into a caller's buffer, so the import's memory stays at two
chunks whatever the source size; ``identity`` is what a resumed import compares to be sure it
continues the same input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from msdn_tune.data.store import FEATURES_FILE, BenchmarkStore


class FeatureSource(Protocol):
    """Feature maps to copy, read in row ranges (in ``res101.mat`` image order).

    Read-only properties so that a source may narrow them (a feature folder always has a grid).
    """

    @property
    def n_images(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def regions(self) -> int: ...

    @property
    def grid(self) -> tuple[int, int] | None:
        """The (height, width) of a feature map, None for flat regions."""

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def align(self) -> int:
        """Rows per native block of the source (HDF5 chunk, feature part); reads align to it."""

    def identity(self) -> dict[str, Any]:
        """What a resumed import compares to be sure it continues the same input."""

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows ``lo..hi`` into ``out[: hi - lo]`` (``out`` of the source dtype); returns it."""

    def close(self) -> None: ...


def file_identity(path: Path) -> dict[str, Any]:
    """A file's path, size and mtime: enough to notice that an input changed between runs."""
    st = path.stat()
    return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class StoreFeatures:
    """The features of an existing benchmark store, as a source (e.g. to re-split it)."""

    grid: tuple[int, int] | None

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
        return {"kind": "store", **file_identity(self.path / FEATURES_FILE)}

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        view = out[: hi - lo]
        view[...] = self.store.gather_numpy(np.arange(lo, hi))
        return view

    def close(self) -> None:
        self.store.close()
