"""Trials read back from the tracking store alone (mlflow/history)."""

from __future__ import annotations

import pytest

from msdn_tune.errors import ConfigError, TrackingError
from msdn_tune.integrations.mlflow.history import trial_rows_from_experiment, trial_run
from msdn_tune.integrations.mlflow.runs import StudyTracker, TrialTracker


@pytest.fixture(scope="module")
def logged(sqlite_uri):
    """A finished study of two trials, one completed and one failed, in a SQLite store."""
    study = StudyTracker(sqlite_uri, "history")
    parent = study.start("history", resolved_config={"data": "tiny"}, search_settings={})
    runs = {}
    for i, status in enumerate(("completed", "failed")):
        trial = TrialTracker(sqlite_uri, study.experiment_id, parent, trial_id=f"t{i}",
                             trial_name=f"trial_{i}", study="history",
                             params={"dataset": "synthetic", "lr": 0.001 * (i + 1), "epochs": 3})
        trial.log_epoch({"val/H": 0.25 * (i + 1), "epoch": 2}, 2)
        trial.finish(status, error="boom" if status == "failed" else None)
        runs[f"t{i}"] = trial.run_id
    study.finish(best_metrics=None, best_trial_id="t0")
    return {"parent": parent, "runs": runs}


def test_warm_start_rows_come_back_with_their_params_and_outcomes(sqlite_uri, logged):
    rows = {r.trial_id: r for r in trial_rows_from_experiment(sqlite_uri, "history")}
    assert set(rows) == {"t0", "t1"}
    assert rows["t0"].status == "completed" and rows["t1"].status == "failed"
    assert rows["t1"].params["lr"] == pytest.approx(0.002)  # YAML scalars, not text
    assert rows["t0"].epochs_run == 2 and rows["t0"].epochs_total == 3
    assert rows["t1"].error == "boom" and rows["t0"].mlflow_run_id == logged["runs"]["t0"]
    with pytest.raises(TrackingError, match="no-such-study"):
        trial_rows_from_experiment(sqlite_uri, "no-such-study")


def test_a_trial_run_is_read_with_its_study_data(sqlite_uri, logged):
    run = trial_run(sqlite_uri, logged["runs"]["t1"])
    assert run.params["dataset"] == "synthetic" and run.params["lr"] == "0.002"
    assert run.data == "tiny" and run.study == "history" and run.trial_id == "t1"
    assert run.metrics["val/H"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="parent run of study 'history'"):
        trial_run(sqlite_uri, logged["parent"])
    with pytest.raises(TrackingError, match="not found"):
        trial_run(sqlite_uri, "0" * 32)
