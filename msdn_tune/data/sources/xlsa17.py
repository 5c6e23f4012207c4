"""xlsa17's proposed split: ``att_splits.mat`` and ``res101.mat`` (MATLAB v5 files).

MATLAB numbering is 1-based and attributes are stored A x C; both are converted here (0-based,
C x A), so nothing downstream sees the MATLAB conventions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from msdn_tune.data.splits import check_split, integers
from msdn_tune.errors import DataError


def _loadmat(path: str | Path, names: list[str]) -> dict[str, Any]:
    """Read only ``names`` of a MATLAB v5 file (others, e.g. res101's 2048 x N features, are
    skipped on disk rather than loaded)."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    try:
        return scipy.io.loadmat(str(p), variable_names=names)
    except NotImplementedError as exc:  # v7.3 files are HDF5
        raise DataError(
            f"{p} is a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7') "
            f"or use the original xlsa17 file ({exc})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, OSError, ...
        raise DataError(f"{p} cannot be read as a MATLAB .mat file: {exc}") from exc


def _mat_strings(value: object, what: str) -> list[str]:
    """A MATLAB cell array of char arrays (as scipy returns it) -> list of str."""
    arr = np.asarray(value)
    out = []
    for item in arr.reshape(-1, order="F"):
        cell = np.asarray(item).reshape(-1)
        if cell.size == 0:
            out.append("")
        elif cell.dtype.kind == "U":
            out.append(str(cell[0]) if cell.size == 1 else "".join(str(c) for c in cell))
        elif cell.dtype == object and cell.size == 1:
            out.append(_mat_strings(cell[0], what)[0])
        else:
            raise DataError(f"{what} must be a cell array of strings, found {cell.dtype}")
    return out


def _need(mat: Mapping[str, Any], keys: tuple[str, ...], path: str | Path) -> None:
    missing = [k for k in keys if k not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path} has no {', '.join(missing)} (found: {', '.join(present)})")


@dataclass
class Res101:
    """What the importers use of xlsa17's res101.mat: labels (0-based) and image paths."""

    path: Path
    labels: np.ndarray
    image_files: list[str] | None

    @property
    def n_images(self) -> int:
        return int(len(self.labels))


def read_res101(path: str | Path, *, need_images: bool = False) -> Res101:
    """Labels (1-based in the file, returned 0-based) and ``image_files`` of res101.mat."""
    keys = ["labels", "image_files"]
    mat = _loadmat(path, keys)
    _need(mat, ("labels", "image_files") if need_images else ("labels",), path)
    labels = integers(mat["labels"], f"{path}: labels")
    if len(labels) == 0:
        raise DataError(f"{path}: labels is empty")
    if labels.min() < 1:
        i = int(np.argmin(labels))
        raise DataError(f"{path}: labels({i + 1}) = {labels[i]}; labels are 1-based class numbers")
    files = None
    if "image_files" in mat:
        files = _mat_strings(mat["image_files"], f"{path}: image_files")
        if len(files) != len(labels):
            raise DataError(
                f"{path}: {len(files)} image_files for {len(labels)} labels; expected one each"
            )
    return Res101(Path(os.path.expanduser(path)).absolute(), labels - 1, files)


@dataclass
class AttSplits:
    """xlsa17's att_splits.mat, converted: 0-based indices, C x A attributes."""

    path: Path
    class_attributes: np.ndarray
    attribute_key: str
    locs: dict[str, np.ndarray]  # trainval/test_seen/test_unseen (+ train/val), 0-based
    class_names: list[str] | None


def read_att_splits(path: str | Path, n_images: int | None = None) -> AttSplits:
    """Read att_splits.mat: 1-based ``*_loc`` -> 0-based, ``original_att`` A x C -> C x A.

    With ``n_images`` every index is checked to lie in ``1..n_images``; the error names the
    variable, the MATLAB position and the value.
    """
    names = [
        "original_att",
        "att",
        "trainval_loc",
        "test_seen_loc",
        "test_unseen_loc",
        "train_loc",
        "val_loc",
        "allclasses_names",
    ]
    mat = _loadmat(path, names)
    _need(mat, ("trainval_loc", "test_seen_loc", "test_unseen_loc"), path)
    key = "original_att" if "original_att" in mat else "att"
    if key not in mat:
        raise DataError(f"{path} has neither original_att nor att (the class attributes)")
    att = np.asarray(mat[key])
    if att.ndim != 2 or att.dtype.kind not in "fiu" or 0 in att.shape:
        raise DataError(f"{path}: {key} has shape {att.shape} ({att.dtype}); expected A x C")
    class_names = None
    if "allclasses_names" in mat:
        class_names = _mat_strings(mat["allclasses_names"], f"{path}: allclasses_names")
        n_cls = len(class_names)
        if att.shape[1] != n_cls:
            flip = " (it looks transposed)" if att.shape[0] == n_cls else ""
            raise DataError(
                f"{path}: {key} has shape {att.shape}; expected attributes x {n_cls} classes "
                f"(A x C, one column per allclasses_names entry){flip}"
            )
    locs = {}
    for split, var in (
        ("trainval", "trainval_loc"),
        ("test_seen", "test_seen_loc"),
        ("test_unseen", "test_unseen_loc"),
        ("train", "train_loc"),
        ("val", "val_loc"),
    ):
        if var not in mat:
            continue
        rows = integers(mat[var], f"{path}: {var}")
        if n_images is not None:
            check_split(rows, n_images, f"{path}: {var}", base=1)
        locs[split] = rows - 1
    if ("train" in locs) != ("val" in locs):
        locs.pop("train", None)
        locs.pop("val", None)
    return AttSplits(
        path=Path(os.path.expanduser(path)).absolute(),
        class_attributes=np.ascontiguousarray(att.T, dtype=np.float32),
        attribute_key=key,
        locs=locs,
        class_names=class_names,
    )


def image_files_digest(files: list[str]) -> str:
    """SHA-256 of res101.mat's image list: ties extracted features to one image order."""
    return hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()
