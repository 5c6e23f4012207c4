"""Start-up and wind-down speed-ups of the `msdn-tune run` driver process, in one place.

A study's own work is its trials; everything before the first trial starts and after the last
one ends is overhead, measured by benchmarks/orchestration.py (study wall time over the ideal
Σ trial time / concurrency; README, "Orchestration"). The tricks that buy it down, with the
figures measured when each was added:

1. Import warming while Ray starts (`warm_study_imports`, run by `in_background`). Ray takes
   seconds to start, mostly waiting for its own processes; meanwhile one thread imports Ray
   Tune, Optuna and our searcher, callback and trainable (about 2 s) and sets up the MLflow
   parent run. When added: overhead ratio 1.13, first trial after 5.9 s (commit 85cfa02).
2. Wrap-up imports during the last trial (`warm_wrapup_imports`, `WRAPUP_MODULES`). The end of
   a study imports torch, mlflow.pytorch, matplotlib and Optuna's plots with scikit-learn
   (together about 5 s) and builds MLflow's installed-packages map (0.6 s). Run once the last
   trial has started, they overlap its training instead of following it (commit e30d943).
3. A quick exit (`fast_exit`). A study leaves torch, Ray, MLflow, Optuna and matplotlib
   imported; the garbage collector's walk over all their objects at interpreter exit takes
   seconds after the last line is printed. Freezing them skips it (commit 6849375).

   Tricks 2 and 3, with the Ray settings and the SQLite schema copy named below, took the
   benchmark from ratio 1.194 / 1.221 (first trial after 11.3 / 11.9 s, wind-down 7.5 / 7.8 s)
   to 1.108-1.123 in five runs (first trial after 7.5-9.3 s, wind-down 1.5-2.6 s; README).
4. Process defaults for Ray (`study_environment`): not a speed-up by itself, but set here, when
   a study starts, rather than when a module is imported.

Speed-ups that are Ray or Tune settings live with those settings in
msdn_tune/integrations/ray/tuner.py: no prestarted Ray workers (Tune's trial actors cannot use
them) and no TensorBoard logger (it imported torch into the driver before the first trial). A
new SQLite tracking store copied from a cached schema (2 s of MLflow migrations) lives in the
MLflow adapter.

Warming imports by module name keeps this module free of the libraries it warms: importing it
costs nothing, and the adapters stay the only modules that name ray, optuna or mlflow in code.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: Ray-wide defaults for a study's driver (set unless the environment says otherwise): quiet Ray
#: Train migration notes; trials keep the driver's working directory (we pass absolute paths
#: anyway); Ray's own console reporter is off (ours is msdn_tune.integrations.ray.progress).
#: Checkpoints are reported every epoch, so short demo epochs make Tune warn about frequent state
#: snapshots; their cost is measured by benchmarks/orchestration.py instead.
RAY_ENV_DEFAULTS = (
    ("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0"),
    ("RAY_CHDIR_TO_TRIAL_DIR", "0"),
    ("RAY_AIR_NEW_OUTPUT", "0"),
    ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
)

#: What building and running the Tuner imports (trick 1): Ray Tune and Optuna come with them.
STUDY_MODULES = (
    "msdn_tune.integrations.ray.progress",
    "msdn_tune.integrations.ray.searcher",
    "msdn_tune.integrations.ray.trainable",
)

#: What the end of a study imports (trick 2): plots, Optuna's importance plot (scikit-learn),
#: the champion model's logging and the model itself.
WRAPUP_MODULES = (
    "matplotlib.pyplot",
    "mlflow.pytorch",
    "optuna.importance",
    "optuna.visualization.matplotlib",
    "msdn_tune.train.trainer",
)

#: Functions (module, name) the wrap-up calls once to fill process-wide caches ahead of time:
#: the MLflow adapter's map of installed packages that `log_model` checks requirements against.
#: A name a module does not define is skipped, as is any failure: warming only saves time.
WRAPUP_CALLS = (("msdn_tune.integrations.mlflow", "prepare_model_logging"),)

_WRAPUP_LOCK = threading.Lock()


def study_environment() -> None:
    """Set `RAY_ENV_DEFAULTS` where the environment does not set them; called as a study starts,
    before Ray is started, so a local Ray's processes inherit them."""
    for key, value in RAY_ENV_DEFAULTS:
        os.environ.setdefault(key, value)


def in_background(fn: Callable[[], T]) -> Future[T]:
    """Run `fn` in a thread; the future's `.result()` returns its value or raises its error."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msdn-setup")
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def warm_study_imports() -> None:
    """Import `STUDY_MODULES` (about 2 s), meant for a thread while Ray starts.

    One thread, not two: threads importing the same packages at once can trip Python's
    import-deadlock check. A failure is left to the import that needs the module, where it
    belongs.
    """
    _import_all(STUDY_MODULES, ())


def warm_wrapup_imports() -> None:
    """Import `WRAPUP_MODULES` and run `WRAPUP_CALLS` (about 5.6 s the first time).

    Runs in the `WindDown` thread during the last trial, and again in the main thread before the
    wrap-up: the lock makes that wait for the thread instead of importing the same packages
    beside it, which can trip Python's import-deadlock check. The second run finds all imported.
    Must stay a module-level function: Tune pickles it with the run config.
    """
    with _WRAPUP_LOCK:
        if "matplotlib.pyplot" not in sys.modules:  # as study_plots: keep a session's backend
            try:
                importlib.import_module("matplotlib").use("Agg")
            except Exception:  # noqa: BLE001 - a failed warm-up only costs the time it was to save
                pass
        _import_all(WRAPUP_MODULES, WRAPUP_CALLS)


def _import_all(modules: tuple[str, ...], calls: tuple[tuple[str, str], ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a failed warm-up only costs the time it was to save
            pass
    for module, attr in calls:
        try:
            getattr(importlib.import_module(module), attr)()
        except Exception:  # noqa: BLE001 - likewise
            pass


def fast_exit() -> None:
    """Freeze the garbage collector's objects so the interpreter's exit skips walking them.

    For the `msdn-tune` executable only, once its command has returned (trick 3): atexit
    handlers and stream flushing still run as usual. A process that goes on (tests calling
    `main`) must not call it, or it would stop collecting what it already holds.
    """
    gc.freeze()
