"""`msdn-tune reproduce RUN_ID`: retrain exactly the configuration a logged trial ran with.

A trial's MLflow run holds every `TrainConfig` setting as a parameter (logged as text, so they
are converted back through `TrainConfig.from_dict`'s coercion), and its study's parent run holds
the study's `data` (a store path or a preset name). That is all `msdn-tune train` needs, so a
trial can be retrained from the tracking store alone, without the study folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from msdn_tune.commands.train import train_command
from msdn_tune.errors import ConfigError
from msdn_tune.integrations.mlflow import (
    NOT_A_TRIAL_RUN,
    check_tracking,
    resolve_tracking_uri,
    trial_run,
)
from msdn_tune.train.config import TrainConfig

ORIGIN_FILE = "reproduced_from.json"


@dataclass(frozen=True)
class LoggedTrial:
    """A trial run as read back from MLflow."""

    run_id: str
    tracking_uri: str
    config: TrainConfig
    data: str | None
    study: str | None
    trial_id: str | None
    metrics: dict[str, float]


def logged_trial(run_id: str, tracking_uri: str | None = None) -> LoggedTrial:
    """Read a trial run's configuration (and its study's data) from the tracking store.

    Raises :class:`TrackingError` when the store or the run cannot be read and
    :class:`ConfigError` when the run is not a trial run of msdn-tune.
    """
    uri = resolve_tracking_uri(cli=tracking_uri)
    check_tracking(uri)
    run = trial_run(uri, run_id)
    settings = {k: v for k, v in run.params.items() if k in TrainConfig.field_names()}
    if "dataset" not in settings:
        raise ConfigError(NOT_A_TRIAL_RUN.format(run_id=run_id))
    try:
        config = TrainConfig.from_dict(settings)
    except ConfigError as exc:
        raise ConfigError(
            f"run {run_id}: its logged parameters are not a valid training "
            f"configuration here ({exc})"
        ) from None
    return LoggedTrial(
        run_id=run_id,
        tracking_uri=uri,
        config=config,
        data=run.data,
        study=run.study,
        trial_id=run.trial_id,
        metrics=run.metrics,
    )


def reproduce(
    run_id: str,
    *,
    tracking_uri: str | None = None,
    data: str | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    console: Console | None = None,
) -> Any:
    """Retrain trial run ``run_id`` with `msdn-tune train`'s machinery; returns its TrainResult.

    ``data`` (a store or preset) defaults to the study's; ``overrides`` change settings on top of
    the logged ones (e.g. ``device`` on a machine without the trial's GPU). The output folder
    (default ``runs/reproduce-<run id>``) also gets ``reproduced_from.json`` naming the source.
    """
    console = console or Console()
    trial = logged_trial(run_id, tracking_uri)
    data = data or trial.data
    if not data:
        raise ConfigError(
            f"run {run_id}: its study's data is not recorded in MLflow; pass --data STORE|PRESET"
        )
    settings = {**trial.config.to_dict(), **(overrides or {})}
    TrainConfig.from_dict(settings)  # reject bad overrides before any folder is made
    out_dir = Path(out) if out else Path("runs") / f"reproduce-{run_id[:12]}"
    if (out_dir / "checkpoint.pt").exists():
        raise ConfigError(f"--out {out_dir}: already holds a run; choose another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        # reproduced_from.json is written before training: never over or beside a user's files
        raise ConfigError(f"--out {out_dir}: not empty; reproduce writes into a new or empty "
                          "folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ORIGIN_FILE).write_text(
        json.dumps(
            {
                "run_id": run_id,
                "tracking_uri": trial.tracking_uri,
                "study": trial.study,
                "trial_id": trial.trial_id,
                "data": data,
                "overrides": overrides or {},
                "logged_metrics": trial.metrics,
            },
            indent=2,
            default=str,
        )
    )
    console.print(
        f"reproducing trial {trial.trial_id} of study {trial.study} (MLflow run "
        f"{run_id}) on {data}",
        soft_wrap=True,
    )
    # an `init` models:/ URI is read from the same store as the trial
    return train_command(data, settings, str(out_dir), None, console=console,
                         tracking_uri=trial.tracking_uri)
