"""reconcile_trials on a real SQLite store: the record a tracking server that went away leaves
(a run left RUNNING with epochs missing, a trial with no run) made whole from the trials' own
results, and nothing done twice or to a trial that has not ended."""

from __future__ import annotations

from mlflow import MlflowClient

from msdn_tune.integrations.mlflow.reconcile import epoch_metrics, reconcile_trials
from msdn_tune.integrations.mlflow.runs import StudyTracker, TrialTracker
from msdn_tune.trials import TrialRow


def _row(trial_id: str, status: str, epochs: int) -> TrialRow:
    return TrialRow(trial_id=trial_id, status=status, params={"lr": 0.001}, metrics={},
                    epochs_run=epochs, epochs_total=4, error=None, checkpoint=None,
                    mlflow_run_id=None)


def _result(trial_id: str, epoch: int, h: float) -> dict:
    """A reported result as Tune's result.json holds it: our metrics and Tune's own fields."""
    return {"trial_id": trial_id, "epoch": epoch, "epochs_total": 4.0, "val/H": h,
            "train/loss": 1.0 / epoch, "best/H": h, "training_iteration": epoch,
            "time_total_s": 1.5 * epoch, "done": False, "config": {"lr": 0.001},
            "trial/mlflow_run_id": "x", "val/nan": float("nan")}


def _steps(client: MlflowClient, run_id: str, key: str = "epoch") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_missing_runs_epochs_and_outcomes_are_written_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, "study")
    tracker.start("study", resolved_config={"name": "study"}, search_settings={})
    client = MlflowClient(uri)

    def trial(trial_id: str, epochs: int, finish: str | None) -> str:
        tt = TrialTracker(uri, tracker.experiment_id, tracker.parent_run_id or "",
                          trial_id=trial_id, trial_name=f"msdn_trial_{trial_id}", study="study",
                          params={"lr": 0.001})
        for epoch in range(1, epochs + 1):
            tt.log_epoch(epoch_metrics(_result(trial_id, epoch, epoch / 10)), epoch)
        assert tt.flush(30)
        if finish:
            tt.finish(finish)
        assert tt.run_id is not None
        return tt.run_id

    a = trial("a", 2, None)  # its server went away after epoch 2: RUNNING, epochs 3-4 missing
    c = trial("c", 4, "completed")  # closed by its own trial: left alone
    d = trial("d", 1, None)  # still running (a resume continues it): left alone
    rows = [_row("a", "completed", 4), _row("b", "early_stopped", 2),
            _row("c", "completed", 4), _row("d", "running", 1)]
    results = {
        # a restarted trial reports epoch 3 twice: the first value counts
        "a": [_result("a", e, e / 10) for e in (1, 2, 3)] + [_result("a", 3, 9.0),
                                                             _result("a", 4, 0.4)],
        "b": [_result("b", e, e / 10) for e in (1, 2)],
        "c": [_result("c", e, e / 10) for e in (1, 2, 3, 4)],
    }
    params = {r.trial_id: {"lr": 0.001, "epochs": 4} for r in rows}

    done = reconcile_trials(tracker, "study", rows, results, params,
                            {"b": "msdn_trial_b"})

    assert done.created == ["b"] and done.closed == {"a": "completed"} and done.epochs == 4
    assert "created 1 missing trial run" in done.summary()
    run_a = client.get_run(a)
    assert run_a.info.status == "FINISHED" and run_a.data.tags["msdn_tune.status"] == "completed"
    assert _steps(client, a) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert _steps(client, a, "val/H") == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    run_b = client.get_run(done.run_ids["b"])
    assert run_b.info.run_name == "msdn_trial_b"
    assert run_b.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert run_b.data.tags["msdn_tune.trial_id"] == "b"
    assert run_b.data.tags["msdn_tune.status"] == "early_stopped"
    assert run_b.data.tags["msdn_tune.reconciled"] == "true"
    assert run_b.info.status == "FINISHED" and run_b.data.params["epochs"] == "4"
    assert set(run_b.data.metrics) == {"epoch", "epochs_total", "val/H", "train/loss", "best/H"}
    assert _steps(client, done.run_ids["b"]) == [(1, 1.0), (2, 2.0)]
    assert client.get_run(c).info.status == "FINISHED"
    assert client.get_run(d).info.status == "RUNNING"  # not ended: not ours to close

    again = reconcile_trials(tracker, "study", rows, results, params)
    assert not again and again.created == [] and again.epochs == 0
    assert _steps(client, a) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    children = tracker.child_runs()
    assert sorted(r.data.tags["msdn_tune.trial_id"] for r in children) == ["a", "b", "c", "d"]


def test_a_store_that_cannot_list_or_read_a_run_gets_nothing_twice(tmp_path, monkeypatch):
    """A listing that fails (a rejected or dropped request) must not be read as "no runs": each
    trial would get a second run. A run whose history cannot be read is left alone, not given
    every epoch again."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, "study")
    tracker.start("study", resolved_config={"name": "study"}, search_settings={})
    client = MlflowClient(uri)
    tt = TrialTracker(uri, tracker.experiment_id, tracker.parent_run_id or "", trial_id="a",
                      trial_name="msdn_trial_a", study="study", params={"lr": 0.001})
    tt.log_epoch(epoch_metrics(_result("a", 1, 0.1)), 1)
    assert tt.flush(30)
    rows = [_row("a", "completed", 2), _row("b", "completed", 1)]
    results = {"a": [_result("a", e, e / 10) for e in (1, 2)], "b": [_result("b", 1, 0.1)]}
    params = {t: {"lr": 0.001} for t in "ab"}

    def refused(*args, **kwargs):
        raise MlflowException("request rejected", error_code=INVALID_PARAMETER_VALUE)

    with monkeypatch.context() as m:
        m.setattr(tracker._client, "search_runs", refused)
        done = reconcile_trials(tracker, "study", rows, results, params)
    assert not done.created and not done.closed and done.epochs == 0
    with monkeypatch.context() as m:
        m.setattr(tracker._client, "get_metric_history", refused)
        done = reconcile_trials(tracker, "study", rows, results, params)
    assert done.created == ["b"] and "a" not in done.closed  # a: left as it was
    assert _steps(client, tt.run_id) == [(1, 1.0)]
    assert len(tracker.child_runs()) == 2
