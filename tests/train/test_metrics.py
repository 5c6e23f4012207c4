"""ZSL/GZSL metrics against hand-computed cases and a brute-force reference."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from msdn_tune.errors import ConfigError, DataError
from msdn_tune.train.metrics import (
    EvalLogits,
    default_gamma_grid,
    evaluate_logits,
    gamma_sweep,
    gzsl_metrics,
    harmonic_mean,
    per_class_accuracy,
    tune_eval_settings,
    zsl_accuracy,
)

# --- a slow, obviously-correct reference -------------------------------------------------


def _ref_per_class(pred, y, classes):
    accs = []
    for c in classes:
        idx = [i for i, t in enumerate(y) if t == c]
        if idx:
            accs.append(sum(pred[i] == c for i in idx) / len(idx))
    return sum(accs) / len(accs)


def _ref_gzsl(zs, ys, zu, yu, seen, unseen, gamma, candidates=None):
    n_cols = zs.shape[1]
    allowed = list(range(n_cols)) if candidates is None else sorted(candidates)
    shift = np.array([gamma if c in set(unseen) else 0.0 for c in range(n_cols)])

    def predict(z):
        out = []
        for row in z + shift:
            out.append(max(allowed, key=lambda c, r=row: (r[c], -c)))  # first index wins ties
        return out

    u = _ref_per_class(predict(zu), list(yu), unseen)
    s = _ref_per_class(predict(zs), list(ys), seen)
    return u, s


def _random_case(seed=0, n_cls=12, n_seen=7, n=300):
    rng = np.random.default_rng(seed)
    seen = np.arange(n_seen)
    unseen = np.arange(n_seen, n_cls)
    ys = rng.choice(seen, size=n)
    yu = rng.choice(unseen, size=n // 2)
    zs = rng.normal(size=(n, n_cls))
    zu = rng.normal(size=(n // 2, n_cls))
    zs[np.arange(n), ys] += 1.5  # informative but imperfect
    zu[np.arange(n // 2), yu] += 1.0
    return zs, ys, zu, yu, seen, unseen


# --- per-class accuracy and H ---------------------------------------------------------------------


def test_per_class_mean_differs_from_per_sample_mean():
    y = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0])
    assert np.mean(pred == y) == pytest.approx(0.75)  # per-sample would say 0.75
    assert per_class_accuracy(pred, y, [0, 1]) == pytest.approx(0.5)  # (1 + 0) / 2


def test_per_class_skips_absent_classes_and_ignores_other_labels():
    y = np.array([0, 0, 1, 5, 5])
    pred = np.array([0, 1, 1, 5, 0])
    # class 2 has no sample: skipped; label 5 is not a target class: ignored
    assert per_class_accuracy(pred, y, [0, 1, 2]) == pytest.approx((0.5 + 1.0) / 2)
    assert np.isnan(per_class_accuracy(pred, y, [3, 4]))


def test_per_class_matches_reference_and_accepts_torch():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, size=500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 10, size=500))
    classes = [1, 3, 4, 8]
    expected = _ref_per_class(list(pred), list(y), classes)
    assert per_class_accuracy(pred, y, classes) == pytest.approx(expected)
    assert per_class_accuracy(
        torch.from_numpy(pred), torch.from_numpy(y), torch.tensor(classes)
    ) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("u", "s", "h"),
    [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.7, 0.0), (0.5, 0.5, 0.5), (0.6, 0.3, 0.4)],
)
def test_harmonic_mean(u, s, h):
    assert harmonic_mean(u, s) == pytest.approx(h)


# --- ZSL ------------------------------------------------------------------------------------------


def test_zsl_restricts_argmax_to_unseen_columns():
    # seen = {0, 1}, unseen = {2, 3}; the seen column 0 is the overall argmax everywhere
    logits = np.array(
        [
            [9.0, 0.0, 2.0, 1.0],  # y=2: right among unseen columns
            [9.0, 0.0, 1.0, 2.0],  # y=3: right
            [9.0, 0.0, 1.0, 2.0],  # y=2: wrong (3 wins among unseen)
        ]
    )
    y = np.array([2, 3, 2])
    assert zsl_accuracy(logits, y, [2, 3]) == pytest.approx((0.5 + 1.0) / 2)
    # over all columns every prediction would be class 0
    assert per_class_accuracy(logits.argmax(1), y, [2, 3]) == 0.0
    # a constant on the unseen columns (the margin) changes nothing
    shifted = logits + np.array([0.0, 0.0, 5.0, 5.0])
    assert zsl_accuracy(shifted, y, [2, 3]) == zsl_accuracy(logits, y, [2, 3])


# --- GZSL -----------------------------------------------------------------------------------------


def test_gzsl_hand_case_and_gamma_added_to_unseen_columns():
    seen, unseen = [0, 1], [2, 3]
    zs = np.array([[2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.5, 0.0]])  # y = 0, 1
    zu = np.array([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 3.0]])  # y = 2, 3
    ys, yu = np.array([0, 1]), np.array([2, 3])
    r0 = gzsl_metrics(zs, ys, zu, yu, seen, unseen)
    # seen: sample 0 -> 0 (right), sample 1 -> 2 (wrong); unseen: 0 -> 0 (wrong), 1 -> 3 (right)
    assert (r0["S"], r0["U"]) == pytest.approx((0.5, 0.5))
    assert r0["H"] == pytest.approx(0.5)
    # gamma = 0.6: unseen sample 0 flips to class 2 (0.5 + 0.6 > 1.0); seen sample 0 stays (2 > 1.6)
    r1 = gzsl_metrics(zs, ys, zu, yu, seen, unseen, gamma=0.6)
    assert (r1["S"], r1["U"]) == pytest.approx((0.5, 1.0))
    # gamma = -0.6: seen sample 1 flips back to class 1 (1.0 > 1.5 - 0.6); unseen 0 stays wrong
    r2 = gzsl_metrics(zs, ys, zu, yu, seen, unseen, gamma=-0.6)
    assert (r2["S"], r2["U"]) == pytest.approx((1.0, 0.5))
    assert r2["H"] == pytest.approx(2 * 0.5 / 1.5)


@pytest.mark.parametrize("gamma", [-1.0, 0.0, 0.4, 2.0])
def test_gzsl_matches_bruteforce_argmax(gamma):
    zs, ys, zu, yu, seen, unseen = _random_case(seed=1)
    r = gzsl_metrics(zs, ys, zu, yu, seen, unseen, gamma=gamma)
    u, s = _ref_gzsl(zs, ys, zu, yu, list(seen), list(unseen), gamma)
    assert (r["U"], r["S"]) == pytest.approx((u, s))
    assert r["H"] == pytest.approx(harmonic_mean(u, s))
    # torch tensors give the same numbers
    rt = gzsl_metrics(*(torch.from_numpy(a) for a in (zs, ys, zu, yu, seen, unseen)), gamma=gamma)
    assert rt == pytest.approx(r)


def test_positive_gamma_moves_predictions_to_unseen_monotonically():
    zs, ys, zu, yu, seen, unseen = _random_case(seed=2)
    gammas = np.linspace(-8, 8, 41)
    rows = [gzsl_metrics(zs, ys, zu, yu, seen, unseen, gamma=g) for g in gammas]
    u = np.array([r["U"] for r in rows])
    s = np.array([r["S"] for r in rows])
    assert np.all(np.diff(u) >= 0) and np.all(np.diff(s) <= 0)
    assert u[0] == 0.0 and s[-1] == 0.0  # extremes: everything seen / everything unseen
    assert u[-1] > 0.3 and s[0] > 0.5  # chance levels: 1/5 unseen, 1/7 seen
    assert u[-1] > u[20] > u[0] and s[0] > s[20] > s[-1]


def test_candidates_exclude_columns_from_the_argmax():
    # seen {0,1}, validation-unseen {2}, test-unseen {3}: column 3 must never be predicted
    zs, ys, zu, yu, _, _ = _random_case(seed=4, n_cls=4, n_seen=2)
    yu = np.full(yu.shape, 2)
    zs[:, 3] += 10.0
    zu[:, 3] += 10.0
    cand = [0, 1, 2]
    full = gzsl_metrics(zs, ys, zu, yu, [0, 1], [2])
    assert full["S"] == 0.0  # column 3 wins everywhere without the restriction
    r = gzsl_metrics(zs, ys, zu, yu, [0, 1], [2], gamma=0.3, candidates=cand)
    u, s = _ref_gzsl(zs, ys, zu, yu, [0, 1], [2], 0.3, candidates=cand)
    assert (r["U"], r["S"]) == pytest.approx((u, s))
    assert r["S"] > 0.3


def test_gzsl_rejects_overlapping_class_sets():
    zs, ys, zu, yu, seen, unseen = _random_case()
    with pytest.raises(ValueError, match="overlap"):
        gzsl_metrics(zs, ys, zu, yu, [0, 1, 7], unseen)


# --- gamma sweep and AUSUC ------------------------------------------------------------------------


def test_ausuc_of_a_perfect_classifier_is_one():
    seen, unseen = [0, 1], [2, 3]
    ys, yu = np.array([0, 1, 1]), np.array([2, 3])
    zs = np.eye(4)[ys] * 5.0
    zu = np.eye(4)[yu] * 5.0
    sw = gamma_sweep(zs, ys, zu, yu, seen, unseen, n=21)
    assert sw["ausuc"] == pytest.approx(1.0)
    assert sw["best_H"] == pytest.approx(1.0)
    assert sw["U"][0] == 0.0 and sw["S"][-1] == 0.0  # grid spans both extremes


def test_ausuc_and_best_gamma_of_a_hand_case():
    # seen {0}, unseen {1}. gaps (max seen - max unseen): seen samples 1 and 3, unseen 0 and 2.
    seen, unseen = [0], [1]
    zs = np.array([[1.0, 0.0], [3.0, 0.0]])
    zu = np.array([[0.0, 0.0], [2.0, 0.0]])
    ys, yu = np.array([0, 0]), np.array([1, 1])
    sw = gamma_sweep(zs, ys, zu, yu, seen, unseen, n=11)
    # operating points (U, S): (0,1) (.5,1) (.5,.5) (1,.5) (1,0) -> area .5*1 + .5*.5 = .75
    assert sw["ausuc"] == pytest.approx(0.75)
    # best H = 2/3 first reached for gamma in (0, 1): the midpoint 0.5
    assert sw["best_H"] == pytest.approx(2 / 3)
    assert sw["best_gamma"] == pytest.approx(0.5)
    assert sw["gammas"][0] < 0.0 and sw["gammas"][-1] > 3.0
    assert len(sw["gammas"]) == len(sw["U"]) == len(sw["S"]) == len(sw["H"]) == 11


def test_sweep_exact_curve_agrees_with_single_gamma_evaluations():
    zs, ys, zu, yu, seen, unseen = _random_case(seed=5, n=120)
    sw = gamma_sweep(zs, ys, zu, yu, seen, unseen, n=51)
    # independent AUSUC: evaluate gzsl_metrics between every pair of switching gaps
    gaps = []
    for z in (zs, zu):
        gaps.append(z[:, seen].max(1) - z[:, unseen].max(1))
    g = np.unique(np.concatenate(gaps))
    probe = np.concatenate([[g[0] - 1], (g[:-1] + g[1:]) / 2, [g[-1] + 1]])
    rows = [gzsl_metrics(zs, ys, zu, yu, seen, unseen, gamma=x) for x in probe]
    u = np.array([r["U"] for r in rows])
    s = np.array([r["S"] for r in rows])
    assert sw["ausuc"] == pytest.approx(float(np.sum(np.diff(u) * (s[1:] + s[:-1]) / 2)))
    assert sw["best_H"] == pytest.approx(max(r["H"] for r in rows))
    at_best = gzsl_metrics(zs, ys, zu, yu, seen, unseen, gamma=sw["best_gamma"])
    assert at_best["H"] == pytest.approx(sw["best_H"])
    assert sw["best_H"] >= sw["H"].max() - 1e-12  # the exact optimum is never below the grid's
    assert 0.0 < sw["ausuc"] < 1.0


def test_sweep_is_fast_on_a_full_size_eval_set():
    rng = np.random.default_rng(0)
    n_cls, n_seen = 717, 645  # SUN-sized
    zs = rng.normal(size=(5000, n_cls)).astype(np.float32)
    zu = rng.normal(size=(3000, n_cls)).astype(np.float32)
    ys = rng.integers(0, n_seen, 5000)
    yu = rng.integers(n_seen, n_cls, 3000)
    t0 = time.perf_counter()
    sw = gamma_sweep(zs, ys, zu, yu, np.arange(n_seen), np.arange(n_seen, n_cls))
    assert time.perf_counter() - t0 < 5.0  # milliseconds in practice; generous for shared CPUs
    assert np.isfinite(sw["ausuc"])


# --- stored logits, evaluation and eval-only tuning --------------------------------------


def _planted_eval(w_star=0.7, margin=1.0, scale=1.0, noise=10.0, seed=0, candidates=None):
    """AVA = S + N and VAA = S - N*w/(1-w): the noise cancels exactly at w1 = w_star."""
    rng = np.random.default_rng(seed)
    n_cls, n_seen = 10, 6
    seen, unseen = np.arange(n_seen), np.arange(n_seen, n_cls)
    ys = np.repeat(seen, 8)
    yu = np.repeat(unseen, 8)

    def pair(y):
        sig = np.eye(n_cls)[y] * scale
        nz = rng.normal(size=sig.shape) * noise
        return (sig + nz).astype(np.float32), (sig - nz * w_star / (1 - w_star)).astype(np.float32)

    a_s, v_s = pair(ys)
    a_u, v_u = pair(yu)
    return EvalLogits(a_s, v_s, ys, a_u, v_u, yu, seen, unseen, margin, candidates)


def test_evaluate_logits_fuses_with_margin():
    ev = _planted_eval(seed=1, noise=1.0)
    w1 = 0.8
    m = np.where(np.isin(np.arange(10), ev.unseen), ev.margin, -ev.margin)
    zs = w1 * ev.z_ava_seen.astype(np.float64) + (1 - w1) * ev.z_vaa_seen + m
    zu = w1 * ev.z_ava_unseen.astype(np.float64) + (1 - w1) * ev.z_vaa_unseen + m
    got = evaluate_logits(ev, w1, gamma=0.3)
    want = gzsl_metrics(zs, ev.y_seen, zu, ev.y_unseen, ev.seen, ev.unseen, gamma=0.3)
    assert {k: got[k] for k in ("U", "S", "H")} == pytest.approx(want)
    assert got["zsl_acc"] == pytest.approx(zsl_accuracy(zu, ev.y_unseen, ev.unseen))
    with pytest.raises(ConfigError, match="w1"):
        evaluate_logits(ev, 1.5)


def test_eval_logits_save_load_round_trip(tmp_path):
    for cand in (None, np.arange(9)):
        ev = _planted_eval(candidates=cand, margin=0.75)
        path = tmp_path / "sub" / "eval.npz"
        ev.save(path)
        back = EvalLogits.load(path)
        for name in EvalLogits._ARRAYS:
            np.testing.assert_array_equal(getattr(back, name), getattr(ev, name))
            assert getattr(back, name).dtype == getattr(ev, name).dtype
        assert back.margin == 0.75
        if cand is None:
            assert back.candidates is None
        else:
            np.testing.assert_array_equal(back.candidates, cand)
        assert evaluate_logits(back, 0.9) == evaluate_logits(ev, 0.9)
    assert [p.name for p in path.parent.iterdir()] == ["eval.npz"]  # no temp files left


def test_eval_logits_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        EvalLogits.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, y_seen=np.arange(3))
    with pytest.raises(DataError, match="missing arrays"):
        EvalLogits.load(partial)


def test_tune_eval_settings_finds_the_planted_w1():
    ev = _planted_eval(w_star=0.7, scale=5.0)
    best = tune_eval_settings(ev)
    assert best["w1"] == pytest.approx(0.7)
    assert best["H"] == pytest.approx(1.0) and best["zsl_acc"] == pytest.approx(1.0)
    assert best["gamma"] == 0.0  # a flat optimum keeps no extra calibration
    assert best["ausuc"] == pytest.approx(1.0)
    for w1 in (0.6, 0.8, 1.0):
        assert evaluate_logits(ev, w1)["H"] < 0.9
    assert set(best) == {"w1", "gamma", "H", "U", "S", "zsl_acc", "ausuc"}
    assert tune_eval_settings(ev, metric="zsl_acc")["w1"] == pytest.approx(0.7)


def test_tune_eval_settings_uses_negative_gamma_when_the_margin_overshoots():
    # signal 1, margin 1: at gamma 0 every seen sample goes to an unseen class (0 - 1 < 0 + 1);
    # only gamma in (-3, -1) gets both right, which the default grid reaches with -2*margin.
    ev = _planted_eval(w_star=0.7, scale=1.0, margin=1.0)
    assert -2.0 in default_gamma_grid(1.0)
    best = tune_eval_settings(ev)
    assert best["gamma"] == pytest.approx(-2.0) and best["H"] == pytest.approx(1.0)
    only_positive = tune_eval_settings(ev, gamma_grid=(0, 0.5, 1, 2, 3, 4))
    assert only_positive["H"] < 0.5
    with pytest.raises(ConfigError, match="metric"):
        tune_eval_settings(ev, metric="accuracy")
