"""What we know about the four real ZSL benchmarks, to check an import against.

Why a registry: the source files carry no dataset name, and a file of the wrong dataset, a
truncated download or an off-by-one split all import "successfully" as a benchmark that trains to
meaningless numbers. Every import therefore compares what it read with the published facts
(docs/model.md §4.3) and refuses a mismatch unless the user says ``--allow-mismatch``
(for subsets and test files).

The registry also knows each dataset's MATLAB image-path rule (how many leading components of the
absolute paths in ``res101.mat``'s ``image_files`` to drop, reference §4.2) and the name of each
dataset's published training recipe (``recipe``). The recipes themselves (hyperparameters) are
training's business: ``TrainConfig.for_dataset(info.recipe)`` in ``msdn_tune.train.config``;
the data layer names them only, so it imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from msdn_tune.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """Published facts about one benchmark (xlsa17 proposed split).

    ``path_strip``: the number of leading elements of ``path.split("/")`` to drop from a MATLAB
    ``image_files`` entry (the empty element before the leading ``/`` counts, as in
    ``"/".join(path.split("/")[n:])``) to get the path relative to the image root. ``None``
    means no published rule (FLO): the extractor finds it from the first image. ``recipe``: the
    name of the published training recipe (``TrainConfig.for_dataset(recipe)``).
    """

    name: str
    recipe: str
    title: str
    n_images: int
    n_classes: int
    n_seen: int
    n_unseen: int
    n_attributes: int
    trainval: int
    test_seen: int
    test_unseen: int
    word_dim: int | None
    path_strip: int | None
    image_root_hint: str

    def expected(self) -> dict[str, int | None]:
        """The facts an import is checked against, by the keys of :func:`observed_counts`."""
        return {
            "images": self.n_images,
            "classes": self.n_classes,
            "seen classes": self.n_seen,
            "unseen classes": self.n_unseen,
            "attributes": self.n_attributes,
            "trainval": self.trainval,
            "test_seen": self.test_seen,
            "test_unseen": self.test_unseen,
            "word vector dim": self.word_dim,
        }


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            name="CUB",
            recipe="cub",
            title="Caltech-UCSD Birds-200-2011",
            n_images=11788,
            n_classes=200,
            n_seen=150,
            n_unseen=50,
            n_attributes=312,
            trainval=7057,
            test_seen=1764,
            test_unseen=2967,
            word_dim=300,
            path_strip=6,
            image_root_hint="the folder that holds CUB_200_2011/images/",
        ),
        DatasetInfo(
            name="SUN",
            recipe="sun",
            title="SUN Attribute",
            n_images=14340,
            n_classes=717,
            n_seen=645,
            n_unseen=72,
            n_attributes=102,
            trainval=10320,
            test_seen=2580,
            test_unseen=1440,
            word_dim=300,
            path_strip=7,
            image_root_hint="the folder that holds images/ (images/a/abbey/...)",
        ),
        DatasetInfo(
            name="AWA2",
            recipe="awa2",
            title="Animals with Attributes 2",
            n_images=37322,
            n_classes=50,
            n_seen=40,
            n_unseen=10,
            n_attributes=85,
            trainval=23527,
            test_seen=5882,
            test_unseen=7913,
            word_dim=300,
            path_strip=5,
            image_root_hint="the folder that holds Animals_with_Attributes2/JPEGImages/",
        ),
        DatasetInfo(
            name="FLO",
            recipe="flo",
            title="Oxford Flowers 102",
            n_images=8189,
            n_classes=102,
            n_seen=82,
            n_unseen=20,
            n_attributes=1024,
            trainval=5631,
            test_seen=1403,
            test_unseen=1155,
            word_dim=None,  # 1024 sentence-embedding dimensions: no attribute names to embed
            path_strip=None,
            image_root_hint="the folder the image paths of res101.mat are relative to",
        ),
    )
}


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (case-insensitive); DataError lists the known names."""
    key = str(name).strip().upper()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[key]


def observed_counts(
    *,
    n_images: int,
    n_classes: int,
    n_attributes: int,
    labels: object,
    splits: Mapping[str, object],
    word_dim: int | None,
) -> dict[str, int | None]:
    """Count what an import read, under the keys of :meth:`DatasetInfo.expected`.

    Seen classes are those in ``trainval`` and unseen ones those in ``test_unseen`` (np.unique
    over the 0-based labels, as the official loader computes them).
    """
    lab = np.asarray(labels)
    return {
        "images": int(n_images),
        "classes": int(n_classes),
        "seen classes": int(len(np.unique(lab[np.asarray(splits["trainval"])]))),
        "unseen classes": int(len(np.unique(lab[np.asarray(splits["test_unseen"])]))),
        "attributes": int(n_attributes),
        "trainval": int(len(np.asarray(splits["trainval"]))),
        "test_seen": int(len(np.asarray(splits["test_seen"]))),
        "test_unseen": int(len(np.asarray(splits["test_unseen"]))),
        "word vector dim": None if word_dim is None else int(word_dim),
    }


def mismatches(info: DatasetInfo, observed: Mapping[str, int | None]) -> list[str]:
    """One line per fact that differs from the registry, e.g. ``images: 120 (CUB has 11788)``."""
    out = []
    for key, want in info.expected().items():
        got = observed.get(key)
        if got != want:
            shown = "none" if got is None else got
            wanted = "none" if want is None else want
            out.append(f"{key}: {shown} ({info.name} has {wanted})")
    return out


def check_counts(
    info: DatasetInfo, observed: Mapping[str, int | None], *, allow_mismatch: bool, where: str
) -> list[str]:
    """Raise DataError listing every mismatch, or return them when ``allow_mismatch``."""
    found = mismatches(info, observed)
    if found and not allow_mismatch:
        raise DataError(
            f"{where} does not match the published {info.name} benchmark:\n  - "
            + "\n  - ".join(found)
            + f"\nCheck that the files are the {info.name} ones (xlsa17 proposed split), or pass "
            "--allow-mismatch to import them anyway (e.g. a subset)."
        )
    return found


def strip_matlab_path(path: str, n: int) -> str:
    """Drop the first ``n`` elements of a MATLAB absolute path split on ``/``.

    ``strip_matlab_path("/BS/x/y/z/CUB_200_2011/CUB_200_2011/images/a.jpg", 6)`` is
    ``"CUB_200_2011/images/a.jpg"``: the leading empty element counts, as in the published
    preprocessing. Backslashes (paths saved on Windows) are treated as ``/``.
    """
    parts = str(path).replace("\\", "/").split("/")
    if n < 0 or n >= len(parts):
        raise DataError(f"cannot strip {n} path components from {path!r}: it has only {len(parts)}")
    return "/".join(p for p in parts[n:] if p)
