"""The feature folder that ``msdn-tune data extract`` writes, read as a feature source.

``features.json``
    format marker, image count, shape, dtype, image size, the SHA-256 of the weights and of
    ``res101.mat``'s image list (so the import can refuse features of other images), the path
    rule used, and ``complete``.
``part-NNNNNN.npy``
    ``part_rows`` consecutive images each (the last part shorter), ``(n, 2048, 14, 14)`` in the
    chosen dtype, written to a temporary name, fsync'ed and renamed: a part either exists whole
    or not at all.

The writer is :mod:`msdn_tune.data.extract`; the layout helpers here are shared by both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from msdn_tune.errors import DataError

FEATURES_JSON = "features.json"
FORMAT_NAME = "msdn-tune-features"
FORMAT_VERSION = 1


def part_name(i: int) -> str:
    return f"part-{i:06d}.npy"


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a msdn-tune feature folder description")
    if data.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: version {data.get('version')!r} is not {FORMAT_VERSION}")
    return data


def part_shape(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from a .npy header (cheap), or None if unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            header = fh.tell()
        if path.stat().st_size != header + int(np.prod(shape)) * np.dtype(dtype).itemsize:
            return None
        return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError):
        return None


class FeatureDir:
    """A complete feature folder opened for reading (a ``FeatureSource`` for the importers)."""

    path: Path
    meta: dict[str, Any]
    n_images: int
    channels: int
    grid: tuple[int, int]
    regions: int
    dtype: np.dtype
    align: int
    part_rows: int
    #: SHA-256 of the res101.mat image list the features were extracted from.
    image_files_digest: str
    _part_index: int
    _part: np.ndarray | None

    def __init__(self) -> None:
        raise TypeError("use FeatureDir.open(path)")

    @classmethod
    def open(cls, path: str | Path) -> FeatureDir:
        """Open a folder written by ``msdn-tune data extract``; DataError if it is incomplete."""
        self = object.__new__(cls)
        self.path = Path(os.path.expanduser(path)).absolute()
        meta = read_manifest(self.path / FEATURES_JSON)
        self.meta = meta
        try:
            self.n_images = int(meta["n_images"])
            self.channels = int(meta["channels"])
            self.grid = (int(meta["grid"][0]), int(meta["grid"][1]))
            self.dtype = np.dtype(meta["dtype"])
            self.part_rows = int(meta["part_rows"])
            self.image_files_digest = str(meta["image_files_sha256"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DataError(f"{self.path / FEATURES_JSON} is malformed: {exc!r}") from exc
        if min(self.n_images, self.channels, *self.grid, self.part_rows) < 1:
            raise DataError(f"{self.path / FEATURES_JSON}: sizes must be positive")
        self.regions = self.grid[0] * self.grid[1]
        self.align = self.part_rows
        n_parts = -(-self.n_images // self.part_rows)
        if not meta.get("complete"):
            done = sum(1 for i in range(n_parts) if (self.path / part_name(i)).is_file())
            raise DataError(
                f"{self.path}: the extraction is not complete ({done} of {n_parts} parts); "
                "run 'msdn-tune data extract ... --resume' to finish it"
            )
        for i in range(n_parts):
            rows = min(self.part_rows, self.n_images - i * self.part_rows)
            want = (rows, self.channels, *self.grid)
            got = part_shape(self.path / part_name(i))
            if got is None or got != (want, self.dtype):
                raise DataError(
                    f"{self.path / part_name(i)} is missing or damaged: expected {want} "
                    f"{self.dtype}, found {got}"
                )
        self._part_index = -1
        self._part = None
        return self

    def identity(self) -> dict[str, Any]:
        st = (self.path / FEATURES_JSON).stat()
        return {"kind": "feature-dir", "path": str(self.path), "mtime_ns": st.st_mtime_ns}

    def _load(self, i: int) -> np.ndarray:
        if i != self._part_index:
            self._part = None  # unmap the previous part before mapping the next
            self._part = np.load(self.path / part_name(i), mmap_mode="r", allow_pickle=False)
            self._part_index = i
        assert self._part is not None
        return self._part

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        view = out[: hi - lo]
        pos = lo
        while pos < hi:
            i = pos // self.part_rows
            part = self._load(i)
            a = pos - i * self.part_rows
            b = min(hi - i * self.part_rows, len(part))
            view[pos - lo : pos - lo + (b - a)] = part[a:b].reshape(b - a, self.channels, -1)
            pos += b - a
        return view

    def close(self) -> None:
        self._part = None
        self._part_index = -1
