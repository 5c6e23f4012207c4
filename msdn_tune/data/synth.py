"""A deterministic synthetic zero-shot benchmark with the structure of the real ones.

Why: the real feature files are 19-60 GB and need a GPU to extract, so tests, demos and
benchmarks run on a generated benchmark instead. It is built so that what MSDN relies on is
actually present and useful, which a random tensor would not be:

* **Attributes in groups**, like CUB's 28 groups ("has_wing_color::red", "has_wing_color::blue").
  The class-attribute matrix is continuous in 0..100 (the percentage of a class's images that show
  the attribute): one dominant value per group, sometimes a secondary one, rare small noise.
* **Word vectors** are sums of per-word vectors over the attribute's words (as DAZLE built them
  from word2vec), so attributes sharing a group or a value word ("red") are correlated.
* **Feature maps** are non-negative (like ReLU features), ``channels x regions`` on a square grid.
  Each attribute an image shows (drawn per image from its class's percentages) adds an
  attribute-specific channel direction at the image's location of the attribute's body part
  (a per-part canonical position, shifted per image and jittered) and a neighbouring region;
  parts can be occluded. Noise, a per-image channel "style" and distractor patterns of random
  attributes at random places (clutter) make mean pooling weak and attention worthwhile.
* **A shortcut, optional** (``shortcut > 0``, the ``confounded`` presets): a context pattern
  spread over every region of an image (a per-class channel direction, jittered per region), as
  a background or habitat would be. It names the class of seen-class images, so in training it
  predicts the class, and with it the attributes, without any attribute evidence; for images of
  unseen classes (and of the seen classes held out as ``val_unseen``, so that validation sees the
  same shift) it is the context of a random training class: at test it points to the wrong
  class. This is the structure MSDN++'s causal attention claims to handle: attention that leans
  on context which is predictive in training but does not carry the attributes. A counterfactual
  attention (random or uniform over regions) pools the spread-out context as well as the factual
  one does, so the effect logits (factual minus counterfactual) cancel it and keep what the
  attended regions add.
* **Splits** follow the xlsa17 proposed split: unseen classes never appear in ``trainval``; a
  ``test_seen_frac`` share of every seen class's images is ``test_seen``; all unseen-class images
  are ``test_unseen``. For honest model selection, ``val_unseen`` holds all trainval images of a
  ``val_unseen_frac`` share of the seen classes, ``val_seen`` a ``val_seen_frac`` share of the
  other seen classes' trainval images, and ``train`` the rest.

Generation is streamed in chunks of a fixed size derived from the spec (so the bytes never depend
on memory settings), each chunk from its own seeded generator: the same seed gives the same bytes.

One concept: the synthetic benchmark's generative model, from the spec to the written store.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msdn_tune.console import progress_bar
from msdn_tune.data.store import (
    ARRAYS_FILE,
    FEATURES_FILE,
    META_FILE,
    SPLIT_NAMES,
    StoreExistsError,
    StoreWriter,
)
from msdn_tune.errors import DataError
from msdn_tune.outdir import check_replace

_COLORS = (
    "blue brown iridescent purple rufous grey yellow olive green pink orange black white red buff"
).split()
_VALUES: dict[str, Sequence[str]] = {
    "color": tuple(_COLORS),
    "pattern": ("solid", "spotted", "striped", "multi-colored"),
    "bill_shape": (
        "curved dagger hooked needle hooked_seabird spatulate all-purpose cone specialized"
    ).split(),
    "tail_shape": ("forked", "rounded", "notched", "fan-shaped", "pointed", "squared"),
    "head_pattern": (
        "spotted malar crested masked unique_pattern eyebrow eyering plain eyeline striped capped"
    ).split(),
    "length": ("about_the_same_as_head", "longer_than_head", "shorter_than_head"),
    "wing_shape": ("rounded", "pointed", "broad", "tapered", "long"),
    "size": ("large", "small", "very_large", "medium", "very_small"),
    "shape": (
        "upright-perching_water-like chicken-like-marsh long-legged-like duck-like owl-like "
        "gull-like hummingbird-like pigeon-like tree-clinging-like hawk-like sandpiper-like "
        "upland-ground-like swallow-like perching-like"
    ).split(),
}

#: CUB-200-2011's 28 attribute groups and their sizes (312 attributes in all).
CUB_GROUPS: tuple[tuple[str, int], ...] = (
    ("has_bill_shape", 9),
    ("has_wing_color", 15),
    ("has_upperparts_color", 15),
    ("has_underparts_color", 15),
    ("has_breast_pattern", 4),
    ("has_back_color", 15),
    ("has_tail_shape", 6),
    ("has_upper_tail_color", 15),
    ("has_head_pattern", 11),
    ("has_breast_color", 15),
    ("has_throat_color", 15),
    ("has_eye_color", 14),
    ("has_bill_length", 3),
    ("has_forehead_color", 15),
    ("has_under_tail_color", 15),
    ("has_nape_color", 15),
    ("has_belly_color", 15),
    ("has_wing_shape", 5),
    ("has_size", 5),
    ("has_shape", 14),
    ("has_back_pattern", 4),
    ("has_tail_pattern", 4),
    ("has_belly_pattern", 4),
    ("has_primary_color", 15),
    ("has_leg_color", 15),
    ("has_bill_color", 15),
    ("has_crown_color", 15),
    ("has_wing_pattern", 4),
)


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic benchmark (together with the seed).

    ``groups`` are ``(name, size)`` pairs; a name ``has_<part>_<kind>`` puts the group's
    attributes at body part ``<part>`` and picks value words by ``<kind>`` (``color``,
    ``pattern``, ...). ``grid`` is the side of the square region grid (``regions = grid**2``).
    Strengths are in feature units; features are ``max(0, noise*N(0,1) + bias + style + signal)``.
    """

    name: str
    n_classes: int
    n_unseen: int
    groups: tuple[tuple[str, int], ...]
    channels: int
    grid: int
    n_images: int
    word_dim: int = 300
    signal: float = 4.0
    noise: float = 0.4
    bias: float = -0.25
    style: float = 1.0
    n_style: int = 4
    clutter: float = 3.0
    clutter_strength: float = 0.7
    occlusion: float = 0.15
    shift: int = 1
    test_seen_frac: float = 0.2
    val_unseen_frac: float = 0.2
    val_seen_frac: float = 0.2
    shortcut: float = 0.0
    seed: int = 0
    description: str = ""

    @property
    def n_attributes(self) -> int:
        return sum(size for _, size in self.groups)

    @property
    def regions(self) -> int:
        return self.grid * self.grid

    @property
    def n_seen(self) -> int:
        return self.n_classes - self.n_unseen

    @property
    def feature_bytes_float16(self) -> int:
        return self.n_images * self.channels * self.regions * 2

    def validate(self) -> None:
        """Raise DataError naming the field if the spec cannot produce a sensible benchmark."""

        def bad(field: str, why: str) -> DataError:
            return DataError(f"synthetic spec {self.name!r}: {field} {why}")

        if self.n_classes < 4:
            raise bad("n_classes", f"must be >= 4, got {self.n_classes}")
        if not 1 <= self.n_unseen <= self.n_classes - 2:
            raise bad("n_unseen", f"must be in [1, n_classes-2], got {self.n_unseen}")
        if not self.groups or any(size < 2 for _, size in self.groups):
            raise bad("groups", "must be non-empty with every group of size >= 2")
        for field in ("channels", "grid", "word_dim"):
            if getattr(self, field) < 1:
                raise bad(field, f"must be >= 1, got {getattr(self, field)}")
        if self.n_images < 5 * self.n_classes:
            raise bad("n_images", f"must be >= 5 * n_classes, got {self.n_images}")
        for field in ("test_seen_frac", "val_unseen_frac", "val_seen_frac", "occlusion"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise bad(field, f"must be in [0, 1), got {getattr(self, field)}")
        if round(self.val_unseen_frac * self.n_seen) > self.n_seen - 1:
            raise bad("val_unseen_frac", "leaves no training class")
        if not 0.0 <= self.shortcut <= 100.0:
            raise bad("shortcut", f"must be in [0, 100], got {self.shortcut}")


#: The confounded presets' shortcut strength, per region in feature units (an attribute's
#: pattern adds 2.4-5.6 at its one or two regions).
SHORTCUT = 1.0

PRESETS: dict[str, SynthSpec] = {
    spec.name: spec
    for spec in (
        SynthSpec(
            name="tiny",
            n_classes=30,
            n_unseen=8,
            groups=(
                ("has_wing_color", 6),
                ("has_bill_shape", 4),
                ("has_breast_pattern", 4),
                ("has_tail_shape", 4),
                ("has_crown_color", 6),
            ),
            channels=48,
            grid=4,
            n_images=800,
            description="for tests: generated in well under a second",
        ),
        SynthSpec(
            name="demo",
            n_classes=40,
            n_unseen=10,
            groups=(
                ("has_wing_color", 8),
                ("has_bill_shape", 5),
                ("has_breast_pattern", 4),
                ("has_tail_shape", 6),
                ("has_crown_color", 8),
                ("has_belly_color", 8),
                ("has_size", 5),
            ),
            channels=64,
            grid=6,
            n_images=2000,
            description="the README's main job: a multi-trial search in minutes on 2 CPU cores",
        ),
        SynthSpec(
            name="cub-like",
            n_classes=200,
            n_unseen=50,
            groups=CUB_GROUPS,
            channels=2048,
            grid=14,
            n_images=11788,
            clutter=12.0,
            description="CUB-sized (11,788 x 2048 x 196, ~9.5 GB float16): for benchmarks",
        ),
    )
}
# The demo and tiny benchmarks with a context shortcut (see the module docstring): the data of
# the causal-attention benchmark (benchmarks/causal.py) and of search_spaces/demo-causal.yaml.
PRESETS["confounded"] = dataclasses.replace(
    PRESETS["demo"], name="confounded", shortcut=SHORTCUT,
    description="demo with a context shortcut that holds for seen classes only")
PRESETS["confounded-tiny"] = dataclasses.replace(
    PRESETS["tiny"], name="confounded-tiny", shortcut=SHORTCUT,
    description="tiny with the confounded preset's shortcut: for tests")


def get_spec(preset: str | SynthSpec) -> SynthSpec:
    """A preset by name (or a spec as is), validated; DataError lists the presets otherwise."""
    if isinstance(preset, SynthSpec):
        spec = preset
    else:
        name = str(preset)
        name = name.removeprefix("synth:")
        if name not in PRESETS:
            raise DataError(
                f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}"
            )
        spec = PRESETS[name]
    spec.validate()
    return spec


# --------------------------------------------------------------------------------------------
# structure: names, word vectors, class attributes, visual directions, splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthBenchmark:
    """Everything of a synthetic benchmark except the feature maps (cheap to build)."""

    spec: SynthSpec
    seed: int
    labels: np.ndarray  # int64 (N,)
    splits: dict[str, np.ndarray]
    class_attributes: np.ndarray  # float32 (C, A), 0..100
    attribute_vectors: np.ndarray  # float32 (A, word_dim)
    class_names: list[str]
    attribute_names: list[str]
    attribute_group: np.ndarray  # int64 (A,) group index of each attribute
    attribute_part: np.ndarray  # int64 (A,) body-part index of each attribute
    directions: np.ndarray  # float32 (A, channels) non-negative unit visual pattern
    part_centers: np.ndarray  # int64 (P, 2) canonical (row, col) of each part
    style_directions: np.ndarray  # float32 (S, channels) image-wide nuisance directions
    context_directions: np.ndarray  # float32 (C, channels) each class's context pattern
    context_class: np.ndarray  # int64 (N,) whose context each image carries (shortcut > 0)

    @property
    def unseen_classes(self) -> np.ndarray:
        return np.unique(self.labels[self.splits["test_unseen"]])


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _group_kind(name: str) -> tuple[str, str]:
    """``has_upper_tail_color`` -> part ``upper_tail``, kind ``color``."""
    body = name.removeprefix("has_")
    for kind in ("bill_shape", "tail_shape", "head_pattern", "wing_shape"):
        if body == kind:
            return kind.split("_")[0], kind
    if body in ("size", "shape"):
        return "whole", body
    part, _, kind = body.rpartition("_")
    if kind == "length":
        return part or "whole", kind
    return part or "whole", kind


def _values(kind: str, size: int) -> list[str]:
    words = list(_VALUES.get(kind, ()))
    if kind == "pattern" and size > len(words):
        words = list(_VALUES["head_pattern"])
    words += [f"{kind}{j}" for j in range(len(words), size)]
    return words[:size]


def _word_vector(seed: int, word: str, dim: int) -> np.ndarray:
    # GoogleNews-like scale: entries ~ N(0, 0.12^2), norm ~2 per word.
    return (_rng(seed, 1, zlib.crc32(word.encode())).standard_normal(dim) * 0.12).astype(np.float32)


def build_benchmark(preset: str | SynthSpec, seed: int | None = None) -> SynthBenchmark:
    """Names, word vectors, class attributes, visual patterns, labels and splits (no features)."""
    spec = get_spec(preset)
    seed = spec.seed if seed is None else int(seed)
    n_cls, n_img = spec.n_classes, spec.n_images

    # -- attributes -----------------------------------------------------------------------
    names: list[str] = []
    group_of: list[int] = []
    part_names: list[str] = []
    part_of: list[int] = []
    value_word: list[str] = []
    for g, (group, size) in enumerate(spec.groups):
        part, kind = _group_kind(group)
        if part not in part_names:
            part_names.append(part)
        for value in _values(kind, size):
            names.append(f"{group}::{value}")
            group_of.append(g)
            part_of.append(part_names.index(part))
            value_word.append(value)
    n_attr = len(names)
    if len(set(names)) != n_attr:
        raise DataError(f"synthetic spec {spec.name!r}: attribute group names repeat")

    # Word vectors: the sum of the vectors of the attribute's words (group words + value words).
    vectors = np.zeros((n_attr, spec.word_dim), dtype=np.float32)
    for a, name in enumerate(names):
        for word in name.replace("::", "_").replace("-", "_").split("_"):
            if word:
                vectors[a] += _word_vector(seed, word, spec.word_dim)

    # -- class attributes (C x A, percentages) ---------------------------------------------
    rng = _rng(seed, 2)
    att = np.zeros((n_cls, n_attr), dtype=np.float32)
    group_index = np.asarray(group_of)
    for g, (_, size) in enumerate(spec.groups):
        cols = np.flatnonzero(group_index == g)
        popularity = rng.dirichlet(np.full(size, 2.0))
        for k in range(n_cls):
            order = rng.permutation(size)
            first = rng.choice(size, p=popularity)
            att[k, cols[first]] = rng.uniform(55.0, 100.0)
            if rng.random() < 0.4:
                second = next(j for j in order if j != first)
                att[k, cols[second]] = rng.uniform(15.0, 50.0)
            small = (rng.random(size) < 0.15) & (att[k, cols] == 0)
            att[k, cols[small]] = rng.uniform(0.0, 10.0, size=int(small.sum()))
    att = np.round(att, 2)

    # -- visual patterns ---------------------------------------------------------------------
    rng = _rng(seed, 3)
    value_proto = {w: rng.standard_normal(spec.channels) for w in sorted(set(value_word))}
    own = rng.standard_normal((n_attr, spec.channels))
    dirs = np.stack([value_proto[w] for w in value_word]) * 0.6 + own * 0.8 - 0.35
    dirs = np.maximum(dirs, 0.0)
    dirs[np.arange(n_attr), np.argmax(own, axis=1)] += 0.5  # never all-zero
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    centers = rng.integers(0, spec.grid, size=(len(part_names), 2))
    style = np.abs(rng.standard_normal((spec.n_style, spec.channels)))
    style /= np.linalg.norm(style, axis=1, keepdims=True)

    # -- labels and splits ------------------------------------------------------------------
    rng = _rng(seed, 4)
    unseen = np.sort(rng.choice(n_cls, size=spec.n_unseen, replace=False))
    seen = np.setdiff1d(np.arange(n_cls), unseen)
    weights = rng.uniform(0.75, 1.25, size=n_cls)
    counts = np.maximum(5, np.floor(weights / weights.sum() * n_img).astype(np.int64))
    while counts.sum() != n_img:  # fix the rounding, keeping every class at >= 5 images
        k = int(rng.integers(n_cls))
        if counts.sum() < n_img:
            counts[k] += 1
        elif counts[k] > 5:
            counts[k] -= 1
    labels = np.repeat(np.arange(n_cls, dtype=np.int64), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def rows_of(k: int) -> np.ndarray:
        return np.arange(starts[k], starts[k] + counts[k], dtype=np.int64)

    trainval_of: dict[int, np.ndarray] = {}
    test_seen: list[np.ndarray] = []
    for k in seen.tolist():
        rows = rng.permutation(rows_of(k))
        n_test = max(1, round(spec.test_seen_frac * len(rows)))
        test_seen.append(rows[:n_test])
        trainval_of[k] = rows[n_test:]
    val_unseen_cls = np.sort(
        rng.choice(seen, size=round(spec.val_unseen_frac * len(seen)), replace=False)
    )
    train: list[np.ndarray] = []
    val_seen: list[np.ndarray] = []
    for k in seen.tolist():
        if k in val_unseen_cls:
            continue
        rows = rng.permutation(trainval_of[k])
        n_val = round(spec.val_seen_frac * len(rows))
        val_seen.append(rows[:n_val])
        train.append(rows[n_val:])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    splits = {
        "trainval": cat(list(trainval_of.values())),
        "test_seen": cat(test_seen),
        "test_unseen": cat([rows_of(k) for k in unseen.tolist()]),
        "train": cat(train),
        "val_seen": cat(val_seen),
        "val_unseen": cat([trainval_of[k] for k in val_unseen_cls.tolist()]),
    }
    assert set(splits) == set(SPLIT_NAMES)

    # -- the context shortcut (own generators: the other presets' bytes do not change) --------
    rng = _rng(seed, 5)
    context = np.abs(rng.standard_normal((n_cls, spec.channels)))
    context /= np.linalg.norm(context, axis=1, keepdims=True)
    context_class = labels.copy()
    misleading = np.concatenate([splits["test_unseen"], splits["val_unseen"]])
    train_classes = np.unique(labels[splits["train"]])
    context_class[misleading] = rng.choice(train_classes, size=len(misleading))
    return SynthBenchmark(
        spec=spec,
        seed=seed,
        labels=labels,
        splits=splits,
        class_attributes=att,
        attribute_vectors=vectors,
        class_names=[f"{k + 1:03d}.synthetic_class_{k:03d}" for k in range(n_cls)],
        attribute_names=names,
        attribute_group=group_index.astype(np.int64),
        attribute_part=np.asarray(part_of, dtype=np.int64),
        directions=dirs.astype(np.float32),
        part_centers=centers.astype(np.int64),
        style_directions=style.astype(np.float32),
        context_directions=context.astype(np.float32),
        context_class=context_class,
    )


# --------------------------------------------------------------------------------------------
# feature maps
# --------------------------------------------------------------------------------------------


def chunk_rows(spec: SynthSpec) -> int:
    """Images per generated chunk: ~48 MiB of float32 work memory, a function of the spec only."""
    return max(1, (48 << 20) // (spec.channels * spec.regions * 4))


def _neighbour(rng: np.random.Generator, rc: np.ndarray, grid: int) -> np.ndarray:
    """A random 4-neighbour of each (row, col), clipped to the grid."""
    steps = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])
    return np.clip(rc + steps[rng.integers(0, 4, size=rc.shape[:-1])], 0, grid - 1)


def _chunk(bench: SynthBenchmark, index: int, lo: int, hi: int) -> np.ndarray:
    """Feature maps of images ``lo..hi``: float32 ``(n, channels, regions)``, a transposed view."""
    spec = bench.spec
    rng = _rng(bench.seed, 100, index)
    n, grid, n_attr = hi - lo, spec.grid, len(bench.attribute_names)
    y = bench.labels[lo:hi]

    x = rng.standard_normal((n, spec.regions, spec.channels), dtype=np.float32)
    x *= np.float32(spec.noise)
    x += np.float32(spec.bias)
    coef = np.abs(rng.standard_normal((n, len(bench.style_directions)), dtype=np.float32))
    x += (np.float32(spec.style) * coef @ bench.style_directions)[:, None, :]

    # Where each part is in each image: canonical centre + image shift + part jitter, and a
    # neighbouring region the pattern also covers (parts span more than one region).
    n_parts = len(bench.part_centers)
    shift = rng.integers(-spec.shift, spec.shift + 1, size=(n, 1, 2))
    jitter = rng.integers(-1, 2, size=(n, n_parts, 2))
    main = np.clip(bench.part_centers[None] + shift + jitter, 0, grid - 1)
    side = _neighbour(rng, main, grid)
    main_region = main[..., 0] * grid + main[..., 1]  # (n, P)
    side_region = side[..., 0] * grid + side[..., 1]
    visible = rng.random((n, n_parts)) >= spec.occlusion

    # Which attributes each image shows: Bernoulli(class percentage), if the part is visible.
    present = rng.random((n, n_attr)) < bench.class_attributes[y] / 100.0
    present &= visible[:, bench.attribute_part]
    strength = rng.uniform(0.6, 1.4, size=(n, n_attr)).astype(np.float32) * spec.signal
    img, attr = np.nonzero(present)
    part = bench.attribute_part[attr]
    w = strength[img, attr]

    # Clutter: patterns of random attributes at random regions.
    n_clutter = rng.poisson(spec.clutter, size=n)
    c_img = np.repeat(np.arange(n), n_clutter)
    c_attr = rng.integers(0, n_attr, size=len(c_img))
    c_reg = rng.integers(0, spec.regions, size=len(c_img))
    c_w = rng.uniform(0.3, 1.0, size=len(c_img)).astype(np.float32) * (
        spec.signal * spec.clutter_strength
    )

    all_img = np.concatenate([img, img, c_img])
    all_reg = np.concatenate([main_region[img, part], side_region[img, part], c_reg])
    all_attr = np.concatenate([attr, attr, c_attr])
    all_w = np.concatenate([w, 0.5 * w, c_w]).astype(np.float32)
    np.add.at(x, (all_img, all_reg), all_w[:, None] * bench.directions[all_attr])
    if spec.shortcut > 0:  # the context, on every region (its own generator, see above)
        crng = _rng(bench.seed, 101, index)
        level = crng.uniform(0.7, 1.3, size=(n, spec.regions, 1)).astype(np.float32)
        x += np.float32(spec.shortcut) * level * bench.context_directions[
            bench.context_class[lo:hi]][:, None, :]
    np.maximum(x, 0.0, out=x)
    return x.transpose(0, 2, 1)


def iter_feature_chunks(bench: SynthBenchmark) -> Iterator[np.ndarray]:
    """Yield the feature maps in order, ``chunk_rows(spec)`` images at a time (float32)."""
    step = chunk_rows(bench.spec)
    for index, lo in enumerate(range(0, bench.spec.n_images, step)):
        yield _chunk(bench, index, lo, min(lo + step, bench.spec.n_images))


def generate(
    preset: str | SynthSpec,
    out: str | Path,
    *,
    seed: int | None = None,
    dtype: str = "float16",
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a synthetic benchmark into a new store at ``out`` and return its path.

    Streams chunk by chunk, so memory stays bounded (``cub-like`` included). ``seed`` defaults
    to the spec's; the same seed gives the same bytes in features.arrow and arrays.npz.
    ``out`` may be new or an empty folder; ``force`` replaces a store there, and nothing else
    (a folder holding other files is refused: replacing it would delete them).
    """
    bench = build_benchmark(preset, seed)
    spec = bench.spec
    target = Path(os.path.expanduser(out)).absolute()
    check_replace(target, what="benchmark store", files=(META_FILE, FEATURES_FILE, ARRAYS_FILE),
                  key_file=META_FILE, key_field="format_version", force=force,
                  error=StoreExistsError)
    with StoreWriter(
        target,
        n_images=spec.n_images,
        channels=spec.channels,
        regions=spec.regions,
        dtype=dtype,
        force=target.exists(),  # checked above: an empty folder, or a store to replace
    ) as writer:
        chunks = iter_feature_chunks(bench)
        show = progress and spec.n_images > 2 * chunk_rows(spec)
        with progress_bar(
            f"synth {spec.name}", spec.n_images, unit="images", enabled=show, transient=True
        ) as bar:
            for chunk in chunks:
                writer.write(chunk.reshape(len(chunk), spec.channels, spec.grid, spec.grid))
                bar.advance(len(chunk))
        return writer.finish(
            labels=bench.labels,
            splits=bench.splits,
            class_attributes=bench.class_attributes,
            attribute_vectors=bench.attribute_vectors,
            class_names=bench.class_names,
            attribute_names=bench.attribute_names,
            dataset=f"synthetic:{spec.name}",
            source="msdn-tune synth",
            extra_meta={
                "synth": {
                    "seed": bench.seed,
                    "spec": {
                        k: (list(map(list, v)) if k == "groups" else v)
                        for k, v in dataclasses.asdict(spec).items()
                    },
                }
            },
        )
