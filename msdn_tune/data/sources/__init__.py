"""The source formats a benchmark is imported from, one module each, and :func:`open_features`.

* :mod:`.hdf5`: the feature-map HDF5 of TransZero's preprocessing (features and small arrays).
* :mod:`.xlsa17`: xlsa17's ``att_splits.mat`` and ``res101.mat`` (MATLAB 1-based, A x C).
* :mod:`.featuredir`: the feature folder written by ``msdn-tune data extract``.
* :mod:`.wordvec` (with :mod:`.unpickle`): attribute word vectors, ``.npy`` or a safe pickle.
* :mod:`.base`: the :class:`FeatureSource` protocol and an existing store as a source.
"""

from __future__ import annotations

import os
from pathlib import Path

from msdn_tune.data.sources.base import FeatureSource, StoreFeatures
from msdn_tune.data.sources.featuredir import FEATURES_JSON, FeatureDir
from msdn_tune.data.sources.hdf5 import Hdf5Features
from msdn_tune.data.sources.wordvec import load_word_vectors
from msdn_tune.data.sources.xlsa17 import (
    AttSplits,
    Res101,
    image_files_digest,
    read_att_splits,
    read_res101,
)
from msdn_tune.data.store import META_FILE
from msdn_tune.errors import DataError


def open_features(path: str | Path) -> FeatureSource:
    """A feature source from a path: an ``extract`` output folder, a store, or an HDF5 file."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        if (p / FEATURES_JSON).is_file():
            return FeatureDir.open(p)
        if (p / META_FILE).is_file():
            return StoreFeatures(p)
        raise DataError(
            f"{p} is neither a feature folder written by 'msdn-tune data extract' "
            f"({FEATURES_JSON}) nor a benchmark store ({META_FILE})"
        )
    if not p.exists():
        raise DataError(f"feature source {p} does not exist")
    return Hdf5Features(p)


__all__ = [
    "AttSplits",
    "FeatureDir",
    "FeatureSource",
    "Hdf5Features",
    "Res101",
    "StoreFeatures",
    "image_files_digest",
    "load_word_vectors",
    "open_features",
    "read_att_splits",
    "read_res101",
]
