"""The feature-map HDF5 of TransZero's preprocessing (``feature_map_ResNet_101_<DATASET>.hdf5``).

Keys ``feature_map`` (N x 2048 x 14 x 14), ``labels``, ``trainval_loc``, ``test_seen_loc``,
``test_unseen_loc`` (all **0-based**), ``att`` / ``original_att`` (C x A) and ``w2v_att``
(A x 300). :class:`Hdf5Features` reads the feature maps, :func:`read_hdf5_small` the rest.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from msdn_tune.data.sources.base import file_identity
from msdn_tune.data.splits import TEST_SPLITS, SmallArrays, check_range, check_split, integers
from msdn_tune.errors import DataError

HDF5_KEYS = ("feature_map", "labels", "trainval_loc", "test_seen_loc", "test_unseen_loc")


class Hdf5Features:
    """``feature_map`` of an HDF5 file: N x C x H x W (or N x C x R) floats.

    An uncompressed contiguous dataset is read with ``os.preadv`` at its file offset directly
    into the caller's buffer (what a plain sequential read costs); anything else goes through
    h5py in row ranges aligned to the HDF5 chunks, so every chunk is decompressed once.
    """

    def __init__(self, path: str | Path, key: str = "feature_map") -> None:
        self.path = Path(os.path.expanduser(path)).absolute()
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path} cannot be opened as an HDF5 file: {exc}") from exc
        self._fd: int | None = None
        try:
            if key not in self._file:
                raise DataError(
                    f"{self.path} has no {key!r} dataset (found: {', '.join(sorted(self._file))})"
                )
            dset = self._file[key]
            shape = dset.shape
            if len(shape) not in (3, 4) or dset.dtype.kind != "f" or 0 in shape:
                raise DataError(
                    f"{self.path}: {key} has shape {shape} and dtype {dset.dtype}; expected "
                    "images x channels x height x width floats (e.g. N x 2048 x 14 x 14)"
                )
            self._dset = dset
            self.n_images, self.channels = int(shape[0]), int(shape[1])
            self.grid = (int(shape[2]), int(shape[3])) if len(shape) == 4 else None
            self.regions = int(np.prod(shape[2:]))
            self.dtype = np.dtype(dset.dtype)
            self.align = int(dset.chunks[0]) if dset.chunks else 1
            offset = dset.id.get_offset()
            raw = (
                dset.chunks is None
                and offset is not None
                and self.dtype.isnative
                and dset.id.get_storage_size() == self.n_images * self.row_bytes
            )
            self._offset = int(offset) if raw else None
            if raw:
                self._fd = os.open(self.path, os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    @property
    def row_bytes(self) -> int:
        return self.channels * self.regions * self.dtype.itemsize

    @property
    def raw(self) -> bool:
        """Whether reads bypass h5py (contiguous, uncompressed, native byte order)."""
        return self._fd is not None

    def identity(self) -> dict[str, Any]:
        return {"kind": "hdf5", **file_identity(self.path)}

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows ``lo..hi`` into ``out[: hi - lo]`` (``out`` of the source dtype); returns it."""
        n = hi - lo
        view = out[:n]
        if self._fd is not None and self._offset is not None:
            buf = view.reshape(-1).view(np.uint8).data
            pos, done = self._offset + lo * self.row_bytes, 0
            while done < len(buf):
                got = os.preadv(self._fd, [buf[done:]], pos + done)
                if got <= 0:
                    raise DataError(f"{self.path}: file ended inside feature_map (row {lo})")
                done += got
            if hasattr(os, "posix_fadvise"):  # read once: keep it out of the page cache
                os.posix_fadvise(self._fd, pos, done, os.POSIX_FADV_DONTNEED)
        else:
            shaped = view.reshape((n, *self._dset.shape[1:]))
            try:
                self._dset.read_direct(shaped, np.s_[lo:hi], np.s_[0:n])
            except OSError as exc:
                raise DataError(f"{self.path}: feature_map rows {lo}..{hi - 1}: {exc}") from exc
        return view

    def labels(self) -> np.ndarray | None:
        """The file's ``labels`` (0-based) when it has them: the import checks the image order."""
        if "labels" not in self._file:
            return None
        return integers(self._file["labels"][()], f"{self.path}: labels")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(Exception):
            self._file.close()


def read_hdf5_small(path: Path, n_images: int) -> tuple[SmallArrays, dict[str, Any]]:
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} cannot be opened as an HDF5 file: {exc}") from exc
    with fh:
        missing = [k for k in HDF5_KEYS if k not in fh]
        if "original_att" not in fh and "att" not in fh:
            missing.append("original_att (or att)")
        if missing:
            raise DataError(
                f"{path} has no {', '.join(missing)} (found: {', '.join(sorted(fh))}); "
                "expected the feature-map HDF5 of TransZero's preprocessing"
            )
        key = "original_att" if "original_att" in fh else "att"
        att = np.asarray(fh[key][()])
        if att.ndim != 2 or att.dtype.kind not in "fiu" or 0 in att.shape:
            raise DataError(f"{path}: {key} has shape {att.shape}; expected classes x attributes")
        n_cls = att.shape[0]
        labels = integers(fh["labels"][()], f"{path}: labels")
        if len(labels) != n_images:
            raise DataError(f"{path}: labels has {len(labels)} entries for {n_images} feature maps")
        check_range(labels, 0, n_cls - 1, f"{path}: labels", f"the {n_cls} classes of {key}", 0)
        splits = {}
        for split in TEST_SPLITS:
            rows = integers(fh[f"{split}_loc"][()], f"{path}: {split}_loc")
            check_split(rows, n_images, f"{path}: {split}_loc", base=0)
            splits[split] = rows
        vectors = None
        if "w2v_att" in fh:
            vectors = np.asarray(fh["w2v_att"][()])
            if vectors.ndim != 2 or vectors.shape[0] != att.shape[1]:
                raise DataError(
                    f"{path}: w2v_att has shape {vectors.shape}; expected one row per attribute "
                    f"({att.shape[1]} x dim)"
                )
            vectors = vectors.astype(np.float32)
    small = SmallArrays(
        labels=labels,
        splits=splits,
        class_attributes=att.astype(np.float32),
        attribute_vectors=vectors,
        class_names=[f"class_{k:03d}" for k in range(n_cls)],
        attribute_key=key,
    )
    return small, {"word_vectors": "w2v_att" if vectors is not None else None}
