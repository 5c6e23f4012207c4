"""The Ray Tune function trainable around the MSDN++ Trainer.

Per epoch it reports the trainer's metrics (with our `epoch` counter, which ASHA uses as its
clock so a resumed study does not restart it) and a checkpoint holding the full trainer state
plus the trial's MLflow run id, so a restarted trial continues both its epochs and its run. Data
reaches trials as an absolute store path that each worker memory-maps: no copy per trial.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import DivergenceError
from msdn_tune.train.config import TrainConfig
from msdn_tune.trials import CONFIRM, SEARCH, stage_tags

STATE_FILE = "checkpoint.pt"
TRIAL_FILE = "trial.json"
STAGING_PREFIX = "msdn-ckpt-"
"""A checkpoint is written to a temporary folder ``msdn-ckpt-<pid>-*`` that Tune then persists."""
STALE_STAGING_S = 3600.0
"""A staging folder this old whose process is gone was left by a worker killed mid-save."""


@dataclass(frozen=True)
class TrialStatic:
    """What every trial of a study shares; travels with the trainable, not the config."""

    data_path: str
    fixed: dict[str, Any]
    study: str
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    gpu_fraction: float | None = None
    """Each trial's share of its GPU when trials share one: its CUDA memory is capped at it."""


CONFIRM_KEY = "confirm"
"""The one key of a confirmation trial's Tune config: {source_trial_id, seed, params}."""


def confirm_config(source_trial_id: str, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """A confirmation trial's config: the search trial's parameters, retrained with `seed`.

    Kept under one key, so that Tune's experiment state (and `results`) says which search trial
    each confirmation trial re-runs, with which seed."""
    return {"source_trial_id": source_trial_id, "seed": int(seed), "params": dict(params)}


def stage_settings(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A trial's settings from its Tune config, and the MLflow tags of its stage."""
    confirm = config.get(CONFIRM_KEY)
    if not isinstance(confirm, dict):
        return config, stage_tags(SEARCH)
    return ({**confirm["params"], "seed": confirm["seed"]},
            stage_tags(CONFIRM, confirm["source_trial_id"], confirm["seed"]))


def make_trainable(static: TrialStatic) -> Callable[[dict[str, Any]], None]:
    """The function Ray Tune runs for each trial (a closure over the study's static settings)."""

    def msdn_trial(config: dict[str, Any], init_weights: dict[str, Any] | None = None) -> None:
        run_trial(config, static, init_weights=init_weights)

    return msdn_trial


def sweep_stale_staging(tmp: Path | None = None, *, older_than_s: float = STALE_STAGING_S) -> int:
    """Remove the checkpoint staging folders of trial processes that were killed while saving.

    A worker killed between writing a checkpoint and Tune persisting it (a lost node, a driver
    SIGKILL, `jobs stop`) never runs its `TemporaryDirectory` clean-up, and each such folder holds
    a whole trainer state. Only folders whose writer's pid is dead here and that were last
    touched more than `older_than_s` ago are removed, so neither a live trial's folder nor one of
    another machine sharing this temp folder (another pid namespace) is touched while in use.
    Returns how many were removed.
    """
    tmp = Path(tempfile.gettempdir()) if tmp is None else tmp
    removed = 0
    now = time.time()
    for d in tmp.glob(f"{STAGING_PREFIX}*-*"):
        pid = d.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if now - d.stat().st_mtime < older_than_s:
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed += not d.exists()
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def run_trial(config: dict[str, Any], static: TrialStatic, *,
              init_weights: dict[str, Any] | None = None) -> None:
    """Train one configuration, reporting and checkpointing after every epoch.

    `init_weights`: the model the space's `init` names, read once by the driver.
    """
    # ray.tune and torch take seconds to import and this module is on the start-up path of
    # `msdn-tune run` (TrialStatic): they are imported in the trial's worker, where they run
    from ray import tune

    from msdn_tune.train.trainer import Trainer, load_checkpoint

    sweep_stale_staging()
    config, tags = stage_settings(config)
    settings = {**static.fixed, **{k: v for k, v in config.items() if v is not None}}
    cfg = TrainConfig.from_dict(settings)
    bench = open_benchmark(static.data_path)
    trainer = Trainer(cfg, bench, init_weights=init_weights if cfg.init else None,
                      gpu_memory_fraction=static.gpu_fraction)
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()

    run_id: str | None = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            trainer.load_state_dict(load_checkpoint(Path(d) / STATE_FILE))
            meta = json.loads((Path(d) / TRIAL_FILE).read_text())
            run_id = meta.get("mlflow_run_id")

    tracker = None
    if static.tracking_uri and static.parent_run_id and static.experiment_id:
        # MLflow takes seconds to import: only in a tracked trial's worker, as ray.tune above
        from msdn_tune.integrations.mlflow import TrialTracker

        tracker = TrialTracker(
            static.tracking_uri, static.experiment_id, static.parent_run_id,
            trial_id=trial_id, trial_name=trial_name, study=static.study,
            params=cfg.to_dict(), run_id=run_id, tags={**static.tags, **tags})
        run_id = tracker.run_id
        if restored is not None:  # epochs checkpointed by a worker that died before sending them
            tracker.catch_up(trainer.history)

    status, error = "failed", None
    last: dict[str, Any] = {}
    closed = False
    try:
        if trainer.epoch >= cfg.epochs:  # restored after the final report: report it again
            last = {**trainer.finish(), "epochs_total": float(cfg.epochs)}
            tune.report(_with_ids(last, run_id))
        while trainer.epoch < cfg.epochs:
            metrics = trainer.run_epoch()
            if trainer.epoch >= cfg.epochs:
                metrics.update(trainer.finish())
            metrics["epochs_total"] = float(cfg.epochs)
            last = metrics
            if tracker is not None:
                tracker.log_epoch(metrics, trainer.epoch)
                if trainer.epoch >= cfg.epochs:
                    # Complete before Tune sees the last result: close the run now. Tune may stop
                    # this actor inside the final report, and on a loaded machine the `finally`
                    # below then lost the race with the driver, which closed the run as killed.
                    tracker.finish("completed", final_metrics=_floats(metrics), error=None)
                    closed = True
            with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-") as d:
                trainer.save(Path(d) / STATE_FILE)
                # pid: which worker process wrote it (diagnostics; fault-injection tests)
                (Path(d) / TRIAL_FILE).write_text(json.dumps(
                    {"trial_id": trial_id, "mlflow_run_id": run_id, "epoch": trainer.epoch,
                     "pid": os.getpid()}))
                tune.report(_with_ids(metrics, run_id),
                            checkpoint=tune.Checkpoint.from_directory(d))
        status = "completed"
    except DivergenceError as exc:
        # Recorded as a failed trial with its error; the study goes on (no pointless retries of
        # a deterministic divergence). The searcher tells Optuna FAIL for `trial/diverged`.
        error = str(exc)
        last = {**trainer.best, "epoch": float(trainer.epoch),
                "epochs_total": float(cfg.epochs), "trial/diverged": 1.0, "trial/error": error}
        tune.report(_with_ids(last, run_id))
    except SystemExit:
        # Ray stops a trial inside tune.report with SystemExit: ASHA early, or at max_t after
        # the final epoch, which is a completed trial (same rule as results.trial_outcome)
        status = "completed" if trainer.epoch >= cfg.epochs else "early_stopped"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if tracker is not None and not closed:
            tracker.finish(status, final_metrics=_floats(last), error=error)


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def _with_ids(metrics: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    out = dict(metrics)
    if run_id:
        out["trial/mlflow_run_id"] = run_id
    return out
