"""Trials read back from the tracking store, for when the study folder is elsewhere or gone.

What :mod:`.runs` wrote is enough to continue work from MLflow alone: ``--warm-start`` seeds a
new study with an earlier study's trials (:func:`trial_rows_from_experiment`), and
``msdn-tune reproduce`` retrains one logged trial (:func:`trial_run`). Both read the layout
:mod:`.runs` describes: child runs tagged ``msdn_tune.kind=trial`` under a parent run tagged
``msdn_tune.kind=study``, whose params hold the study's ``data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from msdn_tune.errors import ConfigError, TrackingError
from msdn_tune.integrations.mlflow.guard import strict
from msdn_tune.trials import SEARCH, TrialRow


def trial_rows_from_experiment(uri: str, experiment: str) -> list[TrialRow]:
    """The trials of an earlier study as results rows, read from its MLflow experiment.

    For `--warm-start` when only the tracking store is left (the study folder was on another
    machine or is gone). Parameters come back as the YAML scalars they were logged as; the
    outcome comes from each child run's `msdn_tune.status` tag.
    """
    client = MlflowClient(tracking_uri=uri)
    exp = strict(uri, client.get_experiment_by_name, experiment)
    if exp is None:
        raise TrackingError(f"--warm-start {experiment}: no study folder and no MLflow "
                            f"experiment of that name in {uri}")
    runs = strict(uri, client.search_runs, [exp.experiment_id],
                  filter_string="tags.`msdn_tune.kind` = 'trial'", max_results=10000)
    rows = []
    for run in runs:
        params: dict[str, Any] = {}
        for key, raw in run.data.params.items():
            try:
                params[key] = yaml.safe_load(raw)
            except yaml.YAMLError:
                params[key] = raw
        tags = run.data.tags
        rows.append(TrialRow(
            trial_id=tags.get("msdn_tune.trial_id", run.info.run_id),
            status=tags.get("msdn_tune.status", "unknown"), params=params,
            metrics=dict(run.data.metrics), epochs_run=int(run.data.metrics.get("epoch", 0)),
            epochs_total=int(params.get("epochs", 0) or 0), error=tags.get("msdn_tune.error"),
            checkpoint=None, mlflow_run_id=run.info.run_id,
            stage=tags.get("msdn_tune.stage", SEARCH),
            source_trial_id=tags.get("msdn_tune.source_trial_id"),
            seed=int(params["seed"]) if isinstance(params.get("seed"), int) else None))
    return rows


@dataclass(frozen=True)
class TrialRun:
    """A trial's run as logged: its params as the text MLflow holds, and its study's data."""

    run_id: str
    tracking_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    data: str | None
    study: str | None
    trial_id: str | None


NOT_A_TRIAL_RUN = ("run {run_id} is not an msdn-tune trial run (no msdn_tune.kind=trial tag or no "
                   "training settings among its parameters)")


def trial_run(uri: str, run_id: str) -> TrialRun:
    """Read trial run ``run_id`` and its study's ``data`` (a store path or preset name).

    Raises :class:`TrackingError` when the store or the run cannot be read and
    :class:`ConfigError` when the run is a study's parent run or not an msdn-tune trial run.
    ``data`` is None when the parent run is gone: the caller must then be told the data.
    """
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(
                f"MLflow run {run_id!r} not found in {uri}; pass the store that "
                "holds it with --tracking-uri"
            ) from None
        raise TrackingError(f"cannot read MLflow run {run_id!r} from {uri}: {exc}") from None
    tags = run.data.tags
    if tags.get("msdn_tune.kind") == "study":
        study = tags.get("msdn_tune.study", "?")
        raise ConfigError(
            f"run {run_id} is the parent run of study {study!r}; reproduce takes a "
            f"trial's run id (`msdn-tune best {study}` prints the best trial's)"
        )
    if tags.get("msdn_tune.kind") != "trial":
        raise ConfigError(NOT_A_TRIAL_RUN.format(run_id=run_id))
    data = None
    parent_id = tags.get("mlflow.parentRunId")
    if parent_id:
        try:
            data = client.get_run(parent_id).data.params.get("data")
        except MlflowException:
            data = None  # the parent was deleted: --data must say it
    return TrialRun(
        run_id=run_id,
        tracking_uri=uri,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        data=data,
        study=tags.get("msdn_tune.study"),
        trial_id=tags.get("msdn_tune.trial_id"),
    )
