"""ZSL / GZSL evaluation: per-class accuracy, U/S/H, calibrated stacking, AUSUC, eval-only tuning.

The protocol is the one in docs/model.md §5: accuracy is computed per ground-truth class
and then averaged without weights, so a frequent class cannot hide a class the model never gets
right. ZSL restricts the argmax to the unseen columns; GZSL takes it over every candidate column.

Logit convention (ARCHITECTURE.md): the logits given to :func:`gzsl_metrics` and
:func:`gamma_sweep` already carry the built-in margin (+margin on unseen, -margin on seen
columns). ``gamma`` is an *extra* calibration added to the unseen columns (Chao et al. 2016,
"calibrated stacking"); adding ``gamma`` to the unseen columns and adding ``-gamma`` to the seen
ones give the same argmax up to a shift of the threshold, so one knob is enough.

Everything works on numpy arrays or torch tensors (moved to CPU numpy) and is vectorised over
samples: an 8k x 717 evaluation takes milliseconds, so the trainer can call it every epoch and
:func:`tune_eval_settings` can search ``w1`` and ``gamma`` from stored logits without retraining.

One concept: the ZSL / GZSL evaluation protocol (docs/model.md §5).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msdn_tune.errors import ConfigError, DataError

ArrayLike = Any  # numpy array, torch tensor, or a sequence numpy can read

__all__ = [
    "EvalLogits",
    "evaluate_logits",
    "gamma_sweep",
    "gzsl_metrics",
    "harmonic_mean",
    "per_class_accuracy",
    "tune_eval_settings",
    "zsl_accuracy",
]


# --- conversion helpers ---------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU.

    Duck-typed on ``detach`` so that this module does not need to import torch itself.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(x: ArrayLike, what: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _logits(x: ArrayLike, what: str) -> np.ndarray:
    # float64: gamma is added to the logits, and comparing float32 sums with float64 gaps would
    # make the sweep and the single-gamma evaluation disagree at ties.
    arr = _to_numpy(x).astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (samples x classes) array, got shape {arr.shape}")
    return arr


def _check_rows(logits: np.ndarray, y: np.ndarray, what: str) -> None:
    if logits.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: {logits.shape[0]} logit rows but {y.shape[0]} labels")


# --- basic metrics -------------------------------------------------------------------------------


def per_class_accuracy(pred: ArrayLike, y: ArrayLike, classes: ArrayLike) -> float:
    """Unweighted mean over ``classes`` of the top-1 accuracy of each ground-truth class.

    Samples whose label is not in ``classes`` are ignored, and classes with no sample in ``y``
    are skipped (they carry no evidence either way). Returns NaN when no sample belongs to any
    of ``classes``: an empty evaluation set is a configuration bug that must stay visible, not a
    silent 0.
    """
    p = _labels(pred, "pred")
    t = _labels(y, "y")
    cls = np.unique(_labels(classes, "classes"))
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} entries but y has {t.shape[0]}")
    mask = np.isin(t, cls)
    if not mask.any():
        return float("nan")
    t, p = t[mask], p[mask]
    size = int(max(t.max(), cls.max())) + 1
    counts = np.bincount(t, minlength=size)
    hits = np.bincount(t, weights=(p == t).astype(np.float64), minlength=size)
    present = counts > 0
    return float(np.mean(hits[present] / counts[present]))


def harmonic_mean(u: float, s: float) -> float:
    """GZSL H = 2US/(U+S); 0 when both are 0 (a model that gets nothing right scores 0)."""
    if u + s == 0:
        return 0.0
    return float(2.0 * u * s / (u + s))


def zsl_accuracy(logits: ArrayLike, y: ArrayLike, unseen: ArrayLike) -> float:
    """Conventional ZSL accuracy: argmax over the unseen columns only, per-class mean.

    A constant margin on the unseen columns cannot change this argmax, so raw or margin-shifted
    logits give the same result.
    """
    z = _logits(logits, "logits")
    t = _labels(y, "y")
    _check_rows(z, t, "zsl_accuracy")
    cols = np.unique(_labels(unseen, "unseen"))
    if cols.size == 0:
        raise ValueError("zsl_accuracy needs at least one unseen class")
    pred = cols[np.argmax(z[:, cols], axis=1)] if z.shape[0] else np.zeros(0, np.int64)
    return per_class_accuracy(pred, t, cols)


# --- GZSL: calibrated stacking ---------------------------------------------------------------


@dataclass(frozen=True)
class _Groups:
    """Candidate columns split into the gamma-shifted group (unseen) and the rest."""

    rest: np.ndarray  # candidates that are not unseen (seen, and any other allowed class)
    shifted: np.ndarray  # candidates that are unseen: these receive +gamma


def _groups(
    n_cols: int, seen: np.ndarray, unseen: np.ndarray, candidates: ArrayLike | None
) -> _Groups:
    if np.intersect1d(seen, unseen).size:
        raise ValueError(
            f"seen and unseen classes overlap: {np.intersect1d(seen, unseen)[:10].tolist()}"
        )
    cand = np.arange(n_cols) if candidates is None else np.unique(_labels(candidates, "candidates"))
    if cand.size and (cand.min() < 0 or cand.max() >= n_cols):
        raise ValueError(f"candidates must be column indices in [0, {n_cols}), got {cand.tolist()}")
    shifted = np.intersect1d(cand, unseen)
    rest = np.setdiff1d(cand, unseen)
    if shifted.size == 0 or rest.size == 0:
        raise ValueError(
            "GZSL needs at least one unseen and one non-unseen candidate column "
            f"(got {shifted.size} unseen and {rest.size} other)"
        )
    return _Groups(rest=rest, shifted=shifted)


@dataclass(frozen=True)
class _Best:
    """Per sample: the best non-unseen column and the best unseen column with their logits.

    The GZSL prediction for any gamma is one of these two, so a whole gamma sweep needs this
    single O(N*C) pass and then only O(N) work per gamma.
    """

    val_rest: np.ndarray
    col_rest: np.ndarray
    val_shift: np.ndarray
    col_shift: np.ndarray

    def predict(self, gamma: float) -> np.ndarray:
        """Argmax of ``logits + gamma * [col is unseen]`` over the candidates.

        Ties go to the lower column index, exactly as ``np.argmax`` over the full row would.
        """
        # Compared as gamma vs gap (not val_shift + gamma vs val_rest) so that a single gamma and
        # the exact sweep in _exact_curve round identically and always agree.
        gap = self.val_rest - self.val_shift
        take_unseen = (gamma > gap) | ((gamma == gap) & (self.col_shift < self.col_rest))
        return np.where(take_unseen, self.col_shift, self.col_rest)


def _best(z: np.ndarray, groups: _Groups) -> _Best:
    zr = z[:, groups.rest]
    zs = z[:, groups.shifted]
    ir = np.argmax(zr, axis=1)
    iu = np.argmax(zs, axis=1)
    rows = np.arange(z.shape[0])
    return _Best(
        val_rest=zr[rows, ir],
        col_rest=groups.rest[ir],
        val_shift=zs[rows, iu],
        col_shift=groups.shifted[iu],
    )


@dataclass(frozen=True)
class _GzslCase:
    """Everything a GZSL evaluation needs, prepared once per set of logits."""

    seen: np.ndarray
    unseen: np.ndarray
    y_seen: np.ndarray
    y_unseen: np.ndarray
    best_seen: _Best
    best_unseen: _Best

    def at(self, gamma: float) -> dict[str, float]:
        u = per_class_accuracy(self.best_unseen.predict(gamma), self.y_unseen, self.unseen)
        s = per_class_accuracy(self.best_seen.predict(gamma), self.y_seen, self.seen)
        return {"U": u, "S": s, "H": harmonic_mean(u, s)}


def _prepare(
    logits_seen: ArrayLike,
    y_seen: ArrayLike,
    logits_unseen: ArrayLike,
    y_unseen: ArrayLike,
    seen: ArrayLike,
    unseen: ArrayLike,
    candidates: ArrayLike | None,
) -> _GzslCase:
    zs = _logits(logits_seen, "logits_seen")
    zu = _logits(logits_unseen, "logits_unseen")
    ys = _labels(y_seen, "y_seen")
    yu = _labels(y_unseen, "y_unseen")
    _check_rows(zs, ys, "seen set")
    _check_rows(zu, yu, "unseen set")
    if zs.shape[1] != zu.shape[1]:
        raise ValueError(f"seen logits have {zs.shape[1]} columns, unseen logits {zu.shape[1]}")
    s_cls = np.unique(_labels(seen, "seen"))
    u_cls = np.unique(_labels(unseen, "unseen"))
    groups = _groups(zs.shape[1], s_cls, u_cls, candidates)
    return _GzslCase(
        seen=s_cls,
        unseen=u_cls,
        y_seen=ys,
        y_unseen=yu,
        best_seen=_best(zs, groups),
        best_unseen=_best(zu, groups),
    )


def gzsl_metrics(
    logits_seen: ArrayLike,
    y_seen: ArrayLike,
    logits_unseen: ArrayLike,
    y_unseen: ArrayLike,
    seen: ArrayLike,
    unseen: ArrayLike,
    gamma: float = 0.0,
    candidates: ArrayLike | None = None,
) -> dict[str, float]:
    """GZSL U (unseen-set accuracy), S (seen-set accuracy) and their harmonic mean H.

    The logits already include the margin; ``gamma`` is added to the unseen columns on top of it,
    so a positive gamma moves predictions toward unseen classes. The argmax runs over all C
    columns, or only over ``candidates`` when given: validation passes the train and validation
    classes there so that the test-unseen classes, which a clean run must never look at, cannot
    be predicted.
    """
    case = _prepare(logits_seen, y_seen, logits_unseen, y_unseen, seen, unseen, candidates)
    return case.at(float(gamma))


def _exact_curve(case: _GzslCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U and S at every distinct operating point of the gamma sweep, and a gamma inside each.

    Each sample switches from its best seen-side column to its best unseen column once, when
    gamma passes its gap ``max_rest - max_unseen``. Sorting the gaps and accumulating each
    switch's change of the per-class accuracy gives the whole curve in O(N log N), with no grid
    that could step over the best point. Returns (gammas, U, S); the first point is "everything
    predicted seen", the last "everything predicted unseen".
    """

    def weights(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
        # weight of one correct sample in the per-class mean: 1 / (n_class * n_present_classes)
        mask = np.isin(y, classes)
        w = np.zeros(y.shape[0])
        if mask.any():
            _, inv, cnt = np.unique(y[mask], return_inverse=True, return_counts=True)
            w[mask] = 1.0 / (cnt[inv] * cnt.size)
        return w

    parts = []
    for best, y, classes, is_u in (
        (case.best_unseen, case.y_unseen, case.unseen, True),
        (case.best_seen, case.y_seen, case.seen, False),
    ):
        w = weights(y, classes)
        before = w * (best.col_rest == y)
        after = w * (best.col_shift == y)
        gap = best.val_rest - best.val_shift
        parts.append((gap, after - before, before, is_u))

    gaps = np.concatenate([p[0] for p in parts])
    d_u = np.concatenate([p[1] if p[3] else np.zeros_like(p[1]) for p in parts])
    d_s = np.concatenate([np.zeros_like(p[1]) if p[3] else p[1] for p in parts])
    u0 = float(parts[0][2].sum())
    s0 = float(parts[1][2].sum())

    order = np.argsort(gaps, kind="stable")
    g_sorted = gaps[order]
    cu = u0 + np.cumsum(d_u[order])
    cs = s0 + np.cumsum(d_s[order])
    # one operating point per distinct gap: the state once every sample with that gap switched
    uniq, counts = np.unique(g_sorted, return_counts=True)
    ends = np.cumsum(counts) - 1
    u = np.concatenate([[u0], cu[ends]]) if gaps.size else np.array([u0])
    s = np.concatenate([[s0], cs[ends]]) if gaps.size else np.array([s0])
    if uniq.size:
        pad = max(1e-6, 1e-3 * float(uniq[-1] - uniq[0]))
        inner = (uniq[:-1] + uniq[1:]) / 2.0
        g = np.concatenate([[uniq[0] - pad], inner, [uniq[-1] + pad]])
    else:
        g = np.array([0.0])
    return g, u, s


def _area(u: np.ndarray, s: np.ndarray) -> float:
    """Trapezoid area under S as a function of U, the curve closed at U=0 and S=0 ends."""
    # Endpoints: gamma=-inf predicts every sample seen (U=0 there by construction) and gamma=+inf
    # predicts every sample unseen (S=0); both are states of the exact curve already, so the
    # area spans the whole trade-off as in Chao et al. 2016.
    return float(np.sum(np.diff(u) * (s[1:] + s[:-1]) / 2.0))


def gamma_sweep(
    logits_seen: ArrayLike,
    y_seen: ArrayLike,
    logits_unseen: ArrayLike,
    y_unseen: ArrayLike,
    seen: ArrayLike,
    unseen: ArrayLike,
    *,
    n: int = 101,
    candidates: ArrayLike | None = None,
) -> dict:
    """The seen-unseen accuracy curve over gamma, its area (AUSUC) and the best H.

    ``gammas``/``U``/``S``/``H`` sample the curve on ``n`` evenly spaced gammas that run from just
    below the smallest per-sample gap ``max_seen - max_unseen`` (everything predicted seen) to
    just above the largest (everything predicted unseen), so the grid adapts to the learned logit
    scale. ``ausuc``, ``best_gamma`` and ``best_H`` are computed from the *exact* curve (every
    operating point, see :func:`_exact_curve`), so they do not depend on ``n``; ``best_gamma``
    lies strictly between two switching points, and ``gzsl_metrics(..., gamma=best_gamma)``
    reproduces ``best_H``.
    """
    if n < 2:
        raise ValueError(f"gamma_sweep needs n >= 2 grid points, got {n}")
    case = _prepare(logits_seen, y_seen, logits_unseen, y_unseen, seen, unseen, candidates)
    g_exact, u_exact, s_exact = _exact_curve(case)
    h_exact = np.array([harmonic_mean(a, b) for a, b in zip(u_exact, s_exact, strict=True)])
    k = int(np.argmax(h_exact))

    lo, hi = float(g_exact[0]), float(g_exact[-1])
    gammas = np.linspace(lo, hi, n) if hi > lo else np.full(n, lo)
    rows = [case.at(float(g)) for g in gammas]
    return {
        "gammas": gammas,
        "U": np.array([r["U"] for r in rows]),
        "S": np.array([r["S"] for r in rows]),
        "H": np.array([r["H"] for r in rows]),
        "ausuc": _area(u_exact, s_exact),
        "best_gamma": float(g_exact[k]),
        "best_H": float(h_exact[k]),
    }


# --- stored logits and eval-only tuning ----------------------------------------------------------


@dataclass(frozen=True)
class EvalLogits:
    """Per-sub-net raw logits of one evaluation, stored so eval-only settings can be re-tuned.

    ``z_*`` are raw logits (no margin, ARCHITECTURE.md); ``margin`` is the margin the model was
    trained with, applied again by :func:`evaluate_logits`. ``candidates`` restricts the GZSL
    argmax (validation logits exclude the test-unseen classes).
    """

    z_ava_seen: np.ndarray
    z_vaa_seen: np.ndarray
    y_seen: np.ndarray
    z_ava_unseen: np.ndarray
    z_vaa_unseen: np.ndarray
    y_unseen: np.ndarray
    seen: np.ndarray
    unseen: np.ndarray
    margin: float
    candidates: np.ndarray | None = None

    _ARRAYS = (
        "z_ava_seen",
        "z_vaa_seen",
        "y_seen",
        "z_ava_unseen",
        "z_vaa_unseen",
        "y_unseen",
        "seen",
        "unseen",
    )

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` atomically (temp file + rename): a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Any: numpy's stub would match these keyword arrays against savez's allow_pickle
        data: dict[str, Any] = {k: _to_numpy(getattr(self, k)) for k in self._ARRAYS}
        data["margin"] = np.asarray(float(self.margin))
        if self.candidates is not None:
            data["candidates"] = _to_numpy(self.candidates)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvalLogits:
        """Read a file written by :meth:`save` (``allow_pickle=False``: plain arrays only)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in (*cls._ARRAYS, "margin") if k not in npz.files]
                if missing:
                    raise DataError(f"{path}: not an EvalLogits file, missing arrays {missing}")
                kw = {k: npz[k] for k in cls._ARRAYS}
                margin = float(npz["margin"])
                cand = npz["candidates"] if "candidates" in npz.files else None
        except DataError:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read stored eval logits ({exc})") from exc
        return cls(**kw, margin=margin, candidates=cand)


def _margin_vector(n_cols: int, seen: np.ndarray, unseen: np.ndarray, margin: float) -> np.ndarray:
    m = np.zeros(n_cols)
    m[seen] = -margin
    m[unseen] = margin
    return m


@dataclass(frozen=True)
class _Fused:
    zsl_acc: float
    case: _GzslCase


def fused_logits(ev: EvalLogits, w1: float) -> tuple[np.ndarray, np.ndarray]:
    """(seen-set, unseen-set) logits ``w1*AVA + (1-w1)*VAA + margin``, as predictions use them."""
    if not 0.0 <= w1 <= 1.0:
        raise ConfigError(f"eval w1 must be in [0, 1] (weight of the AVA sub-net), got {w1}")
    seen = np.unique(_labels(ev.seen, "seen"))
    unseen = np.unique(_labels(ev.unseen, "unseen"))
    n_cols = _to_numpy(ev.z_ava_seen).shape[1]
    m = _margin_vector(n_cols, seen, unseen, float(ev.margin))
    w2 = 1.0 - w1
    zs = w1 * _logits(ev.z_ava_seen, "z_ava_seen") + w2 * _logits(ev.z_vaa_seen, "z_vaa_seen") + m
    zu = (
        w1 * _logits(ev.z_ava_unseen, "z_ava_unseen")
        + w2 * _logits(ev.z_vaa_unseen, "z_vaa_unseen")
        + m
    )
    return zs, zu


def _fuse(ev: EvalLogits, w1: float) -> _Fused:
    zs, zu = fused_logits(ev, w1)
    seen = np.unique(_labels(ev.seen, "seen"))
    unseen = np.unique(_labels(ev.unseen, "unseen"))
    case = _prepare(zs, ev.y_seen, zu, ev.y_unseen, seen, unseen, ev.candidates)
    return _Fused(zsl_acc=zsl_accuracy(zu, ev.y_unseen, unseen), case=case)


def evaluate_logits(ev: EvalLogits, w1: float, gamma: float = 0.0) -> dict[str, float]:
    """ZSL accuracy and GZSL U/S/H of ``w1*AVA + (1-w1)*VAA + margin`` with extra ``gamma``."""
    fused = _fuse(ev, float(w1))
    return {"zsl_acc": fused.zsl_acc, **fused.case.at(float(gamma))}


_METRICS = ("H", "zsl_acc", "ausuc")


def default_gamma_grid(margin: float) -> tuple[float, ...]:
    """Default extra-gamma grid for :func:`tune_eval_settings`.

    Non-negative values (0 .. 4) strengthen the built-in calibration (effective gamma = 2*margin
    + gamma). The negative values ``-margin`` and ``-2*margin`` are included on purpose: the
    learned logit scale decides whether the fixed margin over- or under-corrects the seen bias,
    and ``-2*margin`` brings the total back to 0 (no calibration at all), so the grid spans
    "uncalibrated" to "strongly calibrated" instead of assuming the direction. Evaluating a few
    more gammas costs milliseconds.
    """
    vals = {-2.0 * margin, -1.0 * margin, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0}
    return tuple(sorted(vals))


def tune_eval_settings(
    ev: EvalLogits,
    w1_grid: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    gamma_grid: Sequence[float] | None = None,
    metric: str = "H",
) -> dict:
    """Best fusion weight ``w1`` and extra ``gamma`` from stored logits, without retraining.

    ``metric="H"`` maximises GZSL H over the (w1, gamma) grid. ``"zsl_acc"`` and ``"ausuc"`` do
    not depend on gamma: they choose ``w1``, and gamma is then chosen by H for that ``w1``. Ties
    in w1 keep the first grid value, so list preferred (e.g. published) values first; ties in
    gamma keep the smallest ``|gamma|``, the least extra calibration. Tuning on test
    logits is test-set selection: pass validation logits for an honest number.
    Returns ``{"w1", "gamma", "H", "U", "S", "zsl_acc", "ausuc"}`` for the chosen point.
    """
    if metric not in _METRICS:
        raise ConfigError(f"eval tuning metric must be one of {list(_METRICS)}, got {metric!r}")
    if len(w1_grid) == 0:
        raise ConfigError("eval tuning w1 grid is empty")
    gammas = default_gamma_grid(float(ev.margin)) if gamma_grid is None else tuple(gamma_grid)
    if len(gammas) == 0:
        raise ConfigError("eval tuning gamma grid is empty")

    best: dict | None = None
    for w1 in w1_grid:
        fused = _fuse(ev, float(w1))
        g_exact, u_exact, s_exact = _exact_curve(fused.case)
        ausuc = _area(u_exact, s_exact)
        rows = [(float(g), fused.case.at(float(g))) for g in gammas]
        # ties: the smallest |gamma| (least extra calibration), so a flat optimum reports 0
        g_best, r_best = max(rows, key=lambda gr: (gr[1]["H"], -abs(gr[0])))
        cand = {
            "w1": float(w1),
            "gamma": g_best,
            **r_best,
            "zsl_acc": fused.zsl_acc,
            "ausuc": ausuc,
        }
        if best is None or cand[metric] > best[metric]:
            best = cand
    assert best is not None
    return best
