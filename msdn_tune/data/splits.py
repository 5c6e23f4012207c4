"""The benchmark's split arrays: index checks, the validation split, and the small arrays of an
import checked against the registry and the store's rules before any feature byte is copied.

Source formats differ in numbering (MATLAB 1-based, HDF5 0-based); the checks here name the
variable, the position in the source's own numbering and the value, so a user can find it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msdn_tune.data.registry import DatasetInfo, check_counts, observed_counts
from msdn_tune.data.store import check_arrays
from msdn_tune.errors import DataError

#: Share of each remaining training class's images held out as ``val_seen``.
VAL_SEEN_FRAC = 0.2
#: Seed of the deterministic validation split (recorded in meta.json).
VALIDATION_SEED = 0
#: The splits every source provides (the validation ones are derived from trainval).
TEST_SPLITS = ("trainval", "test_seen", "test_unseen")


def validation_split(
    labels: np.ndarray,
    trainval: np.ndarray,
    test_unseen: np.ndarray,
    *,
    train_loc: np.ndarray | None = None,
    val_loc: np.ndarray | None = None,
    val_seen_frac: float = VAL_SEEN_FRAC,
    seed: int = VALIDATION_SEED,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split ``trainval`` into ``train`` / ``val_seen`` / ``val_unseen`` (0-based rows).

    ``val_unseen`` plays the unseen test classes during tuning: all trainval images of held-out
    seen classes. With xlsa17's tuning split (``train_loc``/``val_loc``, 0-based) those are the
    classes of ``val_loc``; xlsa17 draws both from trainval and test_seen, so rows outside
    trainval are dropped (the test splits stay untouched). Without it, a share of the seen
    classes equal to the test split's unseen share is held out, drawn with ``seed``.
    ``val_seen`` is ``val_seen_frac`` of every remaining class's images (drawn per class, like
    test_seen is), ``train`` the rest. Returns the splits and a description for meta.json.
    """
    labels = np.asarray(labels, dtype=np.int64)
    trainval = np.asarray(trainval, dtype=np.int64)
    seen = np.unique(labels[trainval])
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"val_seen_frac": val_seen_frac, "seed": seed}
    if (train_loc is None) != (val_loc is None):
        raise DataError("train_loc and val_loc must be given together")
    if train_loc is not None and val_loc is not None:
        in_tv = np.isin(trainval, val_loc)
        in_train = np.isin(trainval, train_loc)
        neither = trainval[~(in_tv | in_train)]
        if len(neither):
            raise DataError(
                f"{len(neither)} trainval images are in neither train_loc nor val_loc "
                f"(e.g. row {neither[0]}); the file's tuning split does not cover trainval"
            )
        val_classes = np.unique(labels[trainval[in_tv]])
        train_classes = np.unique(labels[trainval[in_train & ~in_tv]])
        both = np.intersect1d(val_classes, train_classes)
        if len(both) or len(val_classes) == 0:
            raise DataError(
                "train_loc and val_loc must hold disjoint, non-empty sets of classes; "
                f"they share {len(both)} classes (e.g. {both[:3].tolist()}) and val_loc has "
                f"{len(val_classes)}"
            )
        info.update(
            source="xlsa17 train_loc/val_loc",
            val_loc_rows_outside_trainval=int(len(np.setdiff1d(val_loc, trainval))),
        )
    else:
        unseen = np.unique(labels[np.asarray(test_unseen, dtype=np.int64)])
        if len(seen) < 2:
            raise DataError(f"trainval has {len(seen)} class(es); a validation split needs >= 2")
        share = len(unseen) / (len(seen) + len(unseen))
        n_hold = min(len(seen) - 1, max(1, round(share * len(seen))))
        val_classes = np.sort(rng.choice(seen, size=n_hold, replace=False))
        info.update(source="held-out seen classes", held_out_share=round(share, 4))
    is_val = np.isin(labels[trainval], val_classes)
    train: list[np.ndarray] = []
    val_seen: list[np.ndarray] = []
    rest = trainval[~is_val]
    for k in np.unique(labels[rest]).tolist():
        rows = rng.permutation(np.sort(rest[labels[rest] == k]))
        n_val = round(val_seen_frac * len(rows))
        val_seen.append(rows[:n_val])
        train.append(rows[n_val:])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    splits = {
        "train": cat(train),
        "val_seen": cat(val_seen),
        "val_unseen": np.sort(trainval[is_val]).astype(np.int64),
    }
    info["val_unseen_classes"] = int(len(val_classes))
    info["train_classes"] = int(len(seen) - len(val_classes))
    return splits, info


def integers(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{what} must hold integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if len(bad):
            raise DataError(f"{what}[{bad[0]}] = {arr[bad[0]]} is not an integer")
    return arr.astype(np.int64)


def check_range(arr: np.ndarray, lo: int, hi: int, what: str, meaning: str, base: int) -> None:
    """Raise DataError naming the first entry of ``arr`` outside ``[lo, hi]``."""
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if len(bad):
        i = int(bad[0])
        pos = f"({i + 1})" if base == 1 else f"[{i}]"
        extra = " (MATLAB 1-based)" if base == 1 else ""
        if base == 0 and arr.min() >= 1 and arr.max() == hi + 1:
            extra = "; the values look 1-based, but this format is 0-based"
        raise DataError(
            f"{what}{pos} = {arr[i]} is outside {meaning} [{lo}, {hi}]{extra} "
            f"({len(bad)} of {len(arr)} entries are)"
        )


def check_split(rows: np.ndarray, n_images: int, what: str, base: int) -> None:
    check_range(rows, base, n_images - 1 + base, what, f"the {n_images} images", base)
    uniq, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{what} lists image {uniq[counts > 1][0]} more than once")


@dataclass
class SmallArrays:
    """Everything of a benchmark except the feature maps, 0-based and C x A."""

    labels: np.ndarray
    splits: dict[str, np.ndarray]
    class_attributes: np.ndarray
    attribute_vectors: np.ndarray | None
    class_names: list[str]
    attribute_key: str
    validation: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(len(self.labels))


def finish_small(
    small: SmallArrays,
    info: DatasetInfo,
    *,
    train_loc: np.ndarray | None,
    val_loc: np.ndarray | None,
    allow_mismatch: bool,
    where: str,
) -> list[str]:
    """Add the validation split, run the registry check and the store's consistency checks."""
    splits, small.validation = validation_split(
        small.labels,
        small.splits["trainval"],
        small.splits["test_unseen"],
        train_loc=train_loc,
        val_loc=val_loc,
    )
    small.splits.update(splits)
    word_dim = None if small.attribute_vectors is None else small.attribute_vectors.shape[1]
    counts = observed_counts(
        n_images=small.n_images,
        n_classes=small.class_attributes.shape[0],
        n_attributes=small.class_attributes.shape[1],
        labels=small.labels,
        splits=small.splits,
        word_dim=word_dim,
    )
    found = check_counts(info, counts, allow_mismatch=allow_mismatch, where=where)
    check_arrays(
        where,
        n_images=small.n_images,
        labels=small.labels,
        splits=small.splits,
        class_attributes=small.class_attributes,
        attribute_vectors=small.attribute_vectors,
    )
    return found
