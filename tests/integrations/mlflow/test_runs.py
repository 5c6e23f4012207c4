"""A study's parent run and its trials' child runs, on a server and on SQLite (mlflow/runs)."""

from __future__ import annotations

import logging
import math
import time

import mlflow
import pytest
from mlflow import MlflowClient

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.guard import DEGRADED_MESSAGE
from msdn_tune.integrations.mlflow.params import MAX_ERROR_TAG, MAX_PARAM_VALUE
from msdn_tune.integrations.mlflow.runs import StudyTracker, TrialTracker
from msdn_tune.integrations.mlflow.store import check_tracking, ensure_experiment
from tests.helpers.raynodes import free_port
from tests.integrations.mlflow.conftest import MlflowServer


def _study(uri, name, tmp_path, **kw):
    st = StudyTracker(uri, name)
    space = tmp_path / "space.yaml"
    space.write_text("name: demo\nparams:\n  lr: {type: float, low: 1e-5, high: 1e-3}\n")
    run_id = st.start(
        name,
        space_file=space,
        resolved_config={"dataset": "tiny", "train": {"lr": 1e-4, "epochs": 3}, "path": tmp_path},
        search_settings={"sampler": {"name": "tpe", "seed": 0}, "scheduler": "asha"},
        **kw,
    )
    return st, run_id


def test_unreachable_store_study_is_strict_trial_is_not(caplog):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="127.0.0.1"):
        StudyTracker(uri, "never")
    caplog.set_level(logging.WARNING, logger="msdn_tune.integrations.mlflow")
    tt = TrialTracker(uri, "1", "p", trial_id="t", trial_name="t", study="s", params={"a": 1})
    tt.log_epoch({"val/H": 0.1}, 1)
    tt.finish("completed")
    assert tt.run_id is None and not tt.active
    assert sum(DEGRADED_MESSAGE in r.getMessage() for r in caplog.records) == 1
    assert time.perf_counter() - t0 < 10



@pytest.mark.slow  # a real server: the fast tier starts none
def test_parent_children_metrics_params_statuses_on_server(server, tmp_path):
    check_tracking(server)
    st, parent = _study(server, "study-server", tmp_path)
    client = MlflowClient(server)
    prun = client.get_run(parent)
    assert prun.data.tags["msdn_tune.kind"] == "study"
    assert prun.data.tags["msdn_tune.study"] == "study-server"
    assert prun.data.tags["msdn_tune.version.mlflow"] == mlflow.__version__
    assert prun.data.params["train.lr"] == "0.0001" and prun.data.params["search.sampler.name"]
    arts = {a.path for a in client.list_artifacts(parent)}
    assert {"space.yaml", "resolved_config.yaml", "search_settings.yaml"} <= arts

    trials = []
    for i, status in enumerate(("completed", "early_stopped", "killed")):
        tt = TrialTracker(
            server,
            st.experiment_id,
            parent,
            trial_id=f"t{i}",
            trial_name=f"trial_{i}",
            study="study-server",
            params={"lr": 10.0 ** -(i + 3), "model": {"temp": 0.5, "tags": [1, 2]}},
        )
        for epoch in (1, 2, 3):
            tt.log_epoch({"val/H": 0.1 * epoch + i, "train/loss": math.nan, "epoch": epoch}, epoch)
        tt.finish(status, final_metrics={"best/H": 0.3 + i, "val/H": 0.1 * 3 + i})  # a dup
        tt.finish("failed", error="ignored: finish is idempotent")
        trials.append(tt)

    children = {r.info.run_id: r for r in st.child_runs()}
    assert set(children) == {t.run_id for t in trials}
    for i, tt in enumerate(trials):
        run = client.get_run(tt.run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["mlflow.runName"] == f"trial_{i}"
        assert run.data.tags["msdn_tune.trial_id"] == f"t{i}"
        assert run.data.params == {
            "lr": repr(10.0 ** -(i + 3)),
            "model.temp": "0.5",
            "model.tags": "[1, 2]",
        }
        hist = client.get_metric_history(tt.run_id, "val/H")
        assert [(m.step, round(m.value, 6)) for m in hist] == [
            (e, round(0.1 * e + i, 6)) for e in (1, 2, 3)
        ]
        assert "train/loss" not in run.data.metrics  # NaN dropped
        assert run.data.metrics["best/H"] == pytest.approx(0.3 + i)
    statuses = [
        (
            client.get_run(t.run_id).info.status,
            client.get_run(t.run_id).data.tags["msdn_tune.status"],
        )
        for t in trials
    ]
    assert statuses == [
        ("FINISHED", "completed"),
        ("FINISHED", "early_stopped"),
        ("KILLED", "killed"),
    ]
    st.finish(best_metrics={"best/H": 2.3, "bad": math.inf}, best_trial_id="t2")
    prun = client.get_run(parent)
    assert prun.info.status == "FINISHED" and prun.data.tags["msdn_tune.best_trial_id"] == "t2"
    assert prun.data.metrics == {"best/H": 2.3}


def test_resume_closes_stale_children_and_continues_runs(sqlite_uri, tmp_path):
    st, parent = _study(sqlite_uri, "study-resume", tmp_path)
    kw = dict(trial_id="t0", trial_name="trial_0", study="study-resume")
    params = {"lr": 1e-4, "nested": {"k": "x" * 7000}}
    t0 = TrialTracker(sqlite_uri, st.experiment_id, parent, params=params, **kw)
    t0.log_epoch({"val/H": 0.2}, 1)
    # the driver dies here: trial and study are left RUNNING
    client = MlflowClient(sqlite_uri)
    assert client.get_run(t0.run_id).info.status == "RUNNING"
    assert len(client.get_run(t0.run_id).data.params["nested.k"]) == MAX_PARAM_VALUE

    st2 = StudyTracker(sqlite_uri, "study-resume")
    assert st2.experiment_id == st.experiment_id
    assert st2.start("study-resume", parent_run_id=parent, resolved_config={}, search_settings={})
    assert st2.parent_run_id == parent
    assert client.get_run(parent).info.status == "RUNNING"
    assert st2.close_stale_children() == 1
    run = client.get_run(t0.run_id)
    assert run.info.status == "KILLED" and run.data.tags["msdn_tune.status"] == "killed"
    assert client.get_run(parent).data.tags["msdn_tune.resumes"] == "1"
    assert st2.close_stale_children() == 0

    # the restored trial continues its own run: same id, no duplicate, params not re-logged
    t1 = TrialTracker(
        sqlite_uri, st.experiment_id, parent, params={**params, "lr": 5.0}, run_id=t0.run_id, **kw
    )
    assert t1.run_id == t0.run_id
    assert client.get_run(t1.run_id).info.status == "RUNNING"
    t1.log_epoch({"val/H": 0.4}, 2)
    t1.finish("failed", error="RuntimeError: boom\n" + "x" * 9000)
    assert [r.info.run_id for r in st2.child_runs()] == [t0.run_id]
    run = client.get_run(t0.run_id)
    assert run.data.params["lr"] == "0.0001"  # first value kept, no error
    assert [m.step for m in client.get_metric_history(t0.run_id, "val/H")] == [1, 2]
    assert run.info.status == "FAILED" and run.data.tags["msdn_tune.restarts"] == "1"
    assert run.data.tags["msdn_tune.error"].startswith("RuntimeError: boom")
    assert len(run.data.tags["msdn_tune.error"]) == MAX_ERROR_TAG
    st2.finish(best_metrics=None, best_trial_id=None, artifacts=[tmp_path / "space.yaml"])
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.mark.slow  # waits out the trial tracker's retries against a dead server (13 s)
def test_trial_survives_a_dead_server(tmp_path, caplog):
    srv = MlflowServer(tmp_path / "doomed")
    try:
        exp = ensure_experiment(srv.url, "doomed")
        tt = TrialTracker(
            srv.url, exp, "no-parent", trial_id="t", trial_name="t", study="s", params={"a": 1}
        )
        tt.log_epoch({"val/H": 0.5}, 1)
        assert tt.active and tt.run_id
    finally:
        srv.stop()
    caplog.set_level(logging.WARNING, logger="msdn_tune.integrations.mlflow")
    t0 = time.perf_counter()
    for epoch in range(2, 6):
        tt.log_epoch({"val/H": 0.5}, epoch)  # must not raise
    tt.finish("completed", final_metrics={"best/H": 0.5})
    assert time.perf_counter() - t0 < 15
    assert not tt.active
    assert sum(DEGRADED_MESSAGE in r.getMessage() for r in caplog.records) == 1


def test_a_slow_trial_is_closed_with_its_recorded_outcome_never_as_killed(tmp_path):
    """Issue 19 point 6: when the driver ends a study while a trial's worker has not yet closed
    its run (a loaded machine), the run ends with the outcome the study recorded for the trial;
    only a trial with no recorded outcome is called killed."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    st, parent = _study(uri, "slow", tmp_path)
    runs = {}
    for tid in ("done", "stopped", "unknown"):
        tt = TrialTracker(uri, st.experiment_id, parent, trial_id=tid, trial_name=tid,
                          study="slow", params={"lr": 1e-3})
        tt.log_epoch({"val/H": 0.5}, 1)
        tt.flush()
        runs[tid] = tt.run_id  # left RUNNING: the worker never reached its finish
    st.finish_grace_s = 0.0
    st.finish(best_metrics=None, best_trial_id=None,
              outcomes={"done": "completed", "stopped": "early_stopped"})
    client = MlflowClient(uri)
    got = {tid: client.get_run(rid) for tid, rid in runs.items()}
    assert got["done"].info.status == "FINISHED"
    assert got["done"].data.tags["msdn_tune.status"] == "completed"
    assert got["stopped"].info.status == "FINISHED"
    assert got["stopped"].data.tags["msdn_tune.status"] == "early_stopped"
    assert got["unknown"].info.status == "KILLED"
    assert got["unknown"].data.tags["msdn_tune.status"] == "killed"
