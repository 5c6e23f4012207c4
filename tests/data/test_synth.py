"""The synthetic benchmark: presets, protocol splits, determinism, structure, learnability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from msdn_tune.data.store import BenchmarkStore
from msdn_tune.data.synth import (
    PRESETS,
    SynthSpec,
    build_benchmark,
    chunk_rows,
    generate,
    get_spec,
    iter_feature_chunks,
)
from msdn_tune.errors import DataError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = generate("tiny", tmp_path_factory.mktemp("synth") / "tiny", progress=False)
    return BenchmarkStore.open(path)


def test_presets_have_the_promised_sizes():
    cub = PRESETS["cub-like"]
    assert (cub.n_classes, cub.n_unseen, cub.n_attributes) == (200, 50, 312)
    assert (cub.n_images, cub.channels, cub.regions) == (11788, 2048, 196)
    assert 9.4e9 < cub.feature_bytes_float16 < 9.5e9  # 11,788 x 2048 x 196 x 2 bytes
    assert len(cub.groups) == 28
    tiny, demo = PRESETS["tiny"], PRESETS["demo"]
    assert 16 <= tiny.n_attributes <= 24 and tiny.regions == 16 and tiny.n_images <= 800
    assert 32 <= demo.n_attributes <= 48 and 25 <= demo.regions <= 49
    assert 1500 <= demo.n_images <= 2500 and 64 <= demo.channels <= 128


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_splits_follow_the_protocol(name):
    b = build_benchmark(name)
    spec, labels, sp = b.spec, b.labels, b.splits
    assert len(labels) == spec.n_images and set(np.unique(labels)) == set(range(spec.n_classes))

    def classes(rows):
        return set(np.unique(labels[rows]).tolist())

    seen, unseen = classes(sp["trainval"]), classes(sp["test_unseen"])
    assert len(unseen) == spec.n_unseen and len(seen) == spec.n_seen
    assert not seen & unseen
    # test_unseen is every image of the unseen classes.
    np.testing.assert_array_equal(sp["test_unseen"], np.flatnonzero(np.isin(labels, list(unseen))))
    # test_seen is ~20% of every seen class; trainval the rest.
    for k in seen:
        n_k = int((labels == k).sum())
        in_test = int((labels[sp["test_seen"]] == k).sum())
        assert in_test == max(1, round(spec.test_seen_frac * n_k))
    assert classes(sp["test_seen"]) == seen
    rows = [set(sp[s].tolist()) for s in ("trainval", "test_seen", "test_unseen")]
    assert sum(map(len, rows)) == len(set.union(*rows)) == spec.n_images
    # Validation: val_unseen = all trainval images of ~20% of the seen classes.
    val_unseen = classes(sp["val_unseen"])
    assert len(val_unseen) == round(spec.val_unseen_frac * spec.n_seen) and val_unseen <= seen
    tv = sp["trainval"]
    np.testing.assert_array_equal(sp["val_unseen"], tv[np.isin(labels[tv], list(val_unseen))])
    assert not classes(sp["train"]) & val_unseen
    assert classes(sp["val_seen"]) <= classes(sp["train"]) == seen - val_unseen
    parts = [set(sp[s].tolist()) for s in ("train", "val_seen", "val_unseen")]
    assert sum(map(len, parts)) == len(set.union(*parts))
    assert set.union(*parts) == set(tv.tolist())
    share = len(sp["val_seen"]) / (len(sp["val_seen"]) + len(sp["train"]))
    assert abs(share - spec.val_seen_frac) < 0.05


def test_same_seed_same_bytes_other_seed_different(tmp_path):
    a = generate("tiny", tmp_path / "a", progress=False)
    b = generate("tiny", tmp_path / "b", seed=0, progress=False)
    c = generate("tiny", tmp_path / "c", seed=1, progress=False)
    for name in ("features.arrow", "arrays.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    d = generate("tiny", tmp_path / "d", dtype="float32", progress=False)
    st = BenchmarkStore.open(d)
    assert st.dtype == np.float32 and st.meta["synth"]["seed"] == 0
    np.testing.assert_array_equal(
        st.gather(np.arange(5)).half().numpy(), BenchmarkStore.open(a).gather(np.arange(5)).numpy()
    )


def test_store_metadata(tiny):
    assert tiny.dataset == "synthetic:tiny" and tiny.meta["source"] == "msdn-tune synth"
    assert tiny.meta["grid"] == [4, 4]
    assert tiny.attribute_vectors.shape == (tiny.n_attributes, 300)
    assert all("::" in a for a in tiny.attribute_names)
    assert len(set(tiny.attribute_names)) == tiny.n_attributes


def test_features_are_relu_like(tiny):
    x = tiny.features.astype(np.float32)
    assert np.isfinite(x).all() and x.min() == 0.0
    zeros = float((x == 0).mean())
    assert 0.2 < zeros < 0.9, zeros


def test_class_attributes_are_sparse_percentages(tiny):
    att = tiny.class_attributes
    assert att.min() >= 0 and att.max() <= 100
    assert 0.4 < float((att == 0).mean()) < 0.9
    groups = [a.split("::")[0] for a in tiny.attribute_names]
    for g in set(groups):
        cols = [i for i, name in enumerate(groups) if name == g]
        assert (att[:, cols].max(axis=1) >= 55).all()  # every class has a dominant value
    # Classes are distinguishable by their attributes.
    assert len({tuple(np.argsort(-row)[:5]) for row in att}) == tiny.n_classes


def test_word_vectors_correlate_like_related_attributes(tiny):
    v = tiny.attribute_vectors / np.linalg.norm(tiny.attribute_vectors, axis=1, keepdims=True)
    cos = v @ v.T
    names = tiny.attribute_names
    group = np.array([n.split("::")[0] for n in names])
    value = np.array([n.split("::")[1] for n in names])
    off = ~np.eye(len(names), dtype=bool)
    same_group = (group[:, None] == group[None]) & off
    same_value = (value[:, None] == value[None]) & ~(group[:, None] == group[None])
    unrelated = (group[:, None] != group[None]) & (value[:, None] != value[None])
    assert same_value.any()  # e.g. wing color::red and crown color::red
    assert cos[same_group].mean() > cos[unrelated].mean() + 0.2
    assert cos[same_value].mean() > cos[unrelated].mean() + 0.2


def _auc(pos, neg):
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
    return (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def test_attributes_are_local_so_region_attention_helps():
    b = build_benchmark("tiny")
    x = np.concatenate(list(iter_feature_chunks(b)))
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-6  # per-region L2, as MSDN does
    wins = []
    for a in range(len(b.attribute_names)):
        proj = np.einsum("ncr,c->nr", x, b.directions[a])
        z = b.class_attributes[b.labels, a]
        pos, neg = z > 50, z == 0
        if pos.sum() >= 5 and neg.sum() >= 5:
            best_region = _auc(proj.max(1)[pos], proj.max(1)[neg])
            mean_pooled = _auc(proj.mean(1)[pos], proj.mean(1)[neg])
            wins.append(best_region > mean_pooled)
    assert len(wins) > 10 and np.mean(wins) > 0.9


def _ridge_zsl_accuracy(store: BenchmarkStore, att: np.ndarray) -> float:
    """Ridge from region-mean-pooled features to class attributes; nearest unseen class."""
    x = store.gather(np.arange(store.n_images)).float().numpy().mean(axis=2)
    tv, tu = store.splits["trainval"], store.splits["test_unseen"]
    mu, sd = x[tv].mean(0), x[tv].std(0) + 1e-6
    x = (x - mu) / sd
    y = att[store.labels[tv]]
    w = np.linalg.solve(
        x[tv].T @ x[tv] + 1e-2 * len(tv) * np.eye(x.shape[1]), x[tv].T @ (y - y.mean(0))
    )
    pred_att = x[tu] @ w + y.mean(0)
    unseen = store.unseen_classes
    z = att[unseen] / np.linalg.norm(att[unseen], axis=1, keepdims=True)
    pred = unseen[np.argmax(pred_att @ z.T, axis=1)]
    truth = store.labels[tu]
    return float(np.mean([np.mean(pred[truth == k] == k) for k in unseen]))


def test_learnable_by_a_linear_baseline_and_only_through_the_attributes(tiny):
    chance = 1.0 / len(tiny.unseen_classes)
    acc = _ridge_zsl_accuracy(tiny, tiny.class_attributes)
    assert acc >= 3 * chance, (acc, chance)
    assert acc < 0.95, "the benchmark should not be trivial"
    rng = np.random.default_rng(0)
    shuffled = [
        _ridge_zsl_accuracy(tiny, tiny.class_attributes[rng.permutation(tiny.n_classes)])
        for _ in range(5)
    ]
    assert np.mean(shuffled) < 1.6 * chance, (shuffled, chance)


def test_cub_like_streams_in_bounded_chunks():
    b = build_benchmark("cub-like")
    assert chunk_rows(b.spec) * 2048 * 196 * 4 <= 64 << 20
    first = next(iter_feature_chunks(b))
    assert first.shape == (chunk_rows(b.spec), 2048, 196)
    assert first.min() >= 0 and np.isfinite(first).all()
    assert len(b.attribute_names) == 312 and len(set(b.attribute_names)) == 312
    assert "has_wing_color::red" in b.attribute_names


def test_unknown_preset_and_bad_spec():
    with pytest.raises(DataError,
                       match=r"unknown synthetic preset .huge.*confounded.*cub-like.*demo.*tiny"):
        get_spec("huge")
    assert get_spec("synth:tiny") is PRESETS["tiny"]
    bad = dataclasses.replace(PRESETS["tiny"], n_unseen=0)
    with pytest.raises(DataError, match="n_unseen"):
        get_spec(bad)
    with pytest.raises(DataError, match="groups"):
        SynthSpec("x", 10, 2, (("has_wing_color", 1),), 4, 2, 100).validate()


# --- the confounded presets: a context shortcut that holds for seen classes only (issue 18) ----


def _probe(bench, x: np.ndarray) -> tuple[float, float]:
    """A linear ZSL probe on region-mean-pooled features: ridge to class attributes on `train`,
    nearest class among the seen classes for test_seen and among the unseen for test_unseen;
    (seen, unseen) per-class mean accuracy."""
    att = bench.class_attributes
    x = x.mean(axis=2)
    tr = bench.splits["train"]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mu) / sd
    y = att[bench.labels[tr]]
    w = np.linalg.solve(x[tr].T @ x[tr] + 1e-2 * len(tr) * np.eye(x.shape[1]),
                        x[tr].T @ (y - y.mean(0)))
    out = []
    for split in ("test_seen", "test_unseen"):
        rows = bench.splits[split]
        classes = np.unique(bench.labels[rows])
        z = att[classes] / np.linalg.norm(att[classes], axis=1, keepdims=True)
        pred = classes[np.argmax((x[rows] @ w + y.mean(0)) @ z.T, axis=1)]
        truth = bench.labels[rows]
        out.append(float(np.mean([np.mean(pred[truth == k] == k) for k in classes])))
    return out[0], out[1]


def _features(spec) -> np.ndarray:
    return np.concatenate(list(iter_feature_chunks(build_benchmark(spec))))


def test_confounded_is_tiny_plus_the_shortcut_and_deterministic():
    conf = PRESETS["confounded-tiny"]
    assert conf.shortcut > 0 and PRESETS["confounded"].shortcut == conf.shortcut
    a, b = _features(conf), _features(conf)
    np.testing.assert_array_equal(a, b)
    # without the shortcut it is the tiny preset, byte for byte: nothing else moved
    np.testing.assert_array_equal(_features(dataclasses.replace(conf, shortcut=0.0)),
                                  _features(PRESETS["tiny"]))
    assert not np.array_equal(a, _features(PRESETS["tiny"]))
    bench = build_benchmark(conf)
    unseen_like = np.concatenate([bench.splits["test_unseen"], bench.splits["val_unseen"]])
    train_classes = set(np.unique(bench.labels[bench.splits["train"]]).tolist())
    assert set(bench.context_class[unseen_like].tolist()) <= train_classes  # the wrong context
    np.testing.assert_array_equal(bench.context_class[bench.splits["train"]],
                                  bench.labels[bench.splits["train"]])


def test_the_shortcut_alone_names_seen_classes_and_says_nothing_of_unseen_ones():
    """Context only (no attribute patterns, no clutter): a linear probe learns the seen classes
    from it, and is at chance on the unseen ones."""
    only_context = dataclasses.replace(PRESETS["confounded-tiny"], signal=0.0, clutter=0.0)
    bench = build_benchmark(only_context)
    seen, unseen = _probe(bench, _features(only_context))
    n_seen = len(np.unique(bench.labels[bench.splits["test_seen"]]))
    chance = 1.0 / len(bench.unseen_classes)
    assert seen > 0.5 and seen > 10 / n_seen, (seen, 1 / n_seen)  # 15x chance measured
    assert unseen < 1.6 * chance, (unseen, chance)


def test_the_attribute_evidence_alone_suffices_for_unseen_classes_and_the_shortcut_hurts():
    """Without the shortcut the same probe recognises unseen classes well above chance; with it,
    a model that pools every region (as the probe does) loses much of that."""
    conf = PRESETS["confounded-tiny"]
    bench = build_benchmark(conf)
    chance = 1.0 / len(bench.unseen_classes)
    _, clean = _probe(bench, _features(dataclasses.replace(conf, shortcut=0.0)))
    _, confounded = _probe(bench, _features(conf))
    assert clean >= 3 * chance, (clean, chance)
    assert confounded < clean - 0.1, (confounded, clean)
