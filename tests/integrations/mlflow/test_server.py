"""Studies tracked by a real `mlflow server`: the real CLI, the shared Ray head, MlflowClient.

One server per module (127.0.0.1, free port, one worker, no job runner) serves a main study in
which one trial's worker process is killed mid-trial (Ray restarts the trial from its checkpoint),
then the champion, evaluation, report, reproduce and champion-rule checks. A second, dedicated
server is killed in the middle of another study. Both are stopped by PID and checked gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from msdn_tune.integrations.mlflow.registry import CHAMPION_ALIAS
from msdn_tune.integrations.mlflow.runs import TRIAL_STATUSES, StudyTracker, TrialTracker
from msdn_tune.integrations.mlflow.store import ensure_experiment
from msdn_tune.integrations.mlflow.ui import start_ui, stop_ui, wait_ui
from msdn_tune.train.config import TrainConfig
from tests.helpers.raynodes import free_port, pids_matching, stop_by_marker
from tests.helpers.study import CLI, STUDY_WAIT_S, _run, _space, driver, wait_for_checkpoints

pytestmark = pytest.mark.slow

MODEL = "msdn-synthetic"
EPOCHS = 4
N_TRIALS = 4
# batch_size 2 makes a tiny-preset epoch last ~0.5-1 s, long enough to kill a trial mid-way
FIXED = {"dataset": "synthetic", "epochs": EPOCHS, "device": "cpu", "threads": 1, "batch_size": 2}
PARAMS = {
    "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
    "lambda_d": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


def _trial_space(tmp: Path, name: str, **over) -> Path:
    doc = dict(
        fixed=FIXED,
        params=PARAMS,
        num_samples=N_TRIALS,
        scheduler={"type": "asha", "grace_period": 2, "max_t": EPOCHS, "reduction_factor": 2},
    )
    doc.update(over)
    return _space(tmp, name, **doc)


def _kill_one_trial_worker(proc: subprocess.Popen, exp: Path,
                           deadline_s: float = STUDY_WAIT_S) -> str:
    """SIGKILL the Ray worker process of a trial that has persisted its first checkpoint but not
    its second (so it is mid-way through epoch 2); returns its trial id.

    The pid comes from the trial's own checkpoint (trial.json), which the worker writes straight
    to the study folder; Tune's result.json there is only synced now and then.
    """
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        for first in exp.glob("*/checkpoint_000000/trial.json"):
            if (first.parent.parent / "checkpoint_000001").exists():
                continue
            try:
                meta = json.loads(first.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being written
            pid = int(meta["pid"])
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert cmd.startswith(b"ray::"), cmd  # a Ray worker, not something else
            os.kill(pid, signal.SIGKILL)
            return meta["trial_id"]
        if proc.poll() is not None:
            pytest.fail("study ended before a trial could be killed:\n" + proc.stdout.read())
        time.sleep(0.05)
    pytest.fail("no trial reached its first checkpoint")


class _Server:
    """A real `mlflow server` (one worker, no job runner) with its own SQLite store and cwd,
    in its own process group; started at once, waited for with `ready`."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / "server.log"
        self.proc = start_ui(f"sqlite:///{root / 'srv.db'}", port=port, cwd=root, log=self.log)

    def ready(self) -> _Server:
        try:
            wait_ui(self.proc, self.url, timeout_s=120)
        except Exception:
            self.stop()
            raise AssertionError(self.log.read_text()[-3000:]) from None
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM to the process group, SIGKILL after 3 s (at once with ``kill``); check that
        all of it is gone."""
        if kill:
            os.killpg(self.proc.pid, signal.SIGKILL)
        stop_ui(self.proc, timeout_s=3)
        assert self.proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(self.proc.pid, 0)


@pytest.fixture(scope="module")
def server_started(tmp_path_factory):
    srv = _Server(tmp_path_factory.mktemp("mlflow_srv"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def server(server_started, ray_address):
    """The module's server, ready; it boots while the session's Ray head starts."""
    return server_started.ready()


@pytest.fixture(scope="module")
def main_study(server, ray_address, tmp_path_factory):
    """The main study on the server; one trial's worker is killed after its first epoch."""
    tmp = tmp_path_factory.mktemp("srv_study")
    space = _trial_space(tmp, "srv")
    args = ["run", "--space", str(space), "--address", ray_address, "--tracking-uri", server.url]
    with driver(args, cwd=tmp) as proc:
        killed = _kill_one_trial_worker(proc, tmp / "results" / "srv")
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    rows = pq.read_table(tmp / "results" / "srv" / "trials.parquet").to_pylist()
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("srv")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {
        "tmp": tmp,
        "out": out,
        "rows": rows,
        "killed": killed,
        "runs": runs,
        "client": client,
        "uri": server.url,
    }


def _parent_children(runs):
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _best_row(rows):
    done = [r for r in rows if r["status"] == "completed"]
    return max(done, key=lambda r: r["best/H"])


def test_one_parent_one_child_per_trial_even_after_a_restart(main_study):
    rows, runs = main_study["rows"], main_study["runs"]
    assert len(rows) == N_TRIALS
    parents, children = _parent_children(runs)
    assert len(parents) == 1
    assert len(children) == N_TRIALS
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    by_trial = {r.data.tags["msdn_tune.trial_id"]: r for r in children}
    assert set(by_trial) == {r["trial_id"] for r in rows}
    assert all(r.info.status != "RUNNING" for r in runs)
    # the killed trial was restarted by Ray and continued its own run
    restarted = [t for t, r in by_trial.items() if r.data.tags.get("msdn_tune.restarts")]
    assert restarted == [main_study["killed"]]
    assert by_trial[main_study["killed"]].data.tags["msdn_tune.restarts"] == "1"


def test_params_and_per_epoch_metrics_match_the_trials(main_study):
    rows, client = main_study["rows"], main_study["client"]
    _, children = _parent_children(main_study["runs"])
    by_trial = {r.data.tags["msdn_tune.trial_id"]: r for r in children}
    statuses = set()
    for row in rows:
        run = by_trial[row["trial_id"]]
        cfg = TrainConfig.from_dict({**FIXED, "lr": row["lr"], "lambda_d": row["lambda_d"]})
        assert (
            TrainConfig.from_dict(
                {k: v for k, v in run.data.params.items() if k in TrainConfig.field_names()}
            )
            == cfg
        )
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/H")]
        assert steps == list(range(1, row["epochs_run"] + 1)), (row["trial_id"], steps)
        assert run.data.metrics["best/H"] == pytest.approx(row["best/H"])
        assert run.data.tags["msdn_tune.status"] == row["status"]
        assert run.info.status == TRIAL_STATUSES[row["status"]]  # ended by the trial itself
        statuses.add(row["status"])
    assert "completed" in statuses


def test_champion_is_the_best_completed_trial(main_study):
    tmp, rows, client = main_study["tmp"], main_study["rows"], main_study["client"]
    best = _best_row(rows)
    version = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert version.tags["trial_id"] == best["trial_id"]
    assert version.tags["study"] == "srv" and version.tags["metric"] == "best/H"
    assert float(version.tags["value"]) == pytest.approx(best["best/H"])
    assert version.tags["run_id"] == best["mlflow_run_id"]
    res = _run(["best", "srv", "--storage-path", str(tmp / "results")])
    assert res.returncode == 0, res.stderr
    assert f"trial {best['trial_id']}:" in res.stdout


def test_champion_loads_and_evaluates_from_the_registry(main_study):
    uri = main_study["uri"]
    res = _run(
        ["evaluate", f"models:/{MODEL}@{CHAMPION_ALIAS}", "--data", "tiny", "--tracking-uri", uri],
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    got = float(re.search(r"test/H\s*│\s*([\d.]+)%", res.stdout).group(1))
    # official selection: the registered best-epoch weights give the trial's best/H on test
    assert got == pytest.approx(100 * _best_row(main_study["rows"])["best/H"], abs=0.01)


def test_plots_are_artifacts_of_the_parent_run(main_study):
    client = main_study["client"]
    parents, _ = _parent_children(main_study["runs"])
    parent = parents[0]
    names = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"history.png", "parallel_coordinate.png"} <= names
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.parquet", "srv.yaml", "resolved_config.yaml"} <= top
    assert parent.data.tags["msdn_tune.best_trial_id"] == _best_row(main_study["rows"])["trial_id"]
    assert parent.info.status == "FINISHED"


def test_report_writes_and_logs_the_plots(main_study, tmp_path):
    tmp = main_study["tmp"]
    res = _run(
        ["report", "srv", "--storage-path", str(tmp / "results"), "--out", str(tmp_path / "plots")],
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    printed = [Path(line) for line in res.stdout.splitlines() if line.endswith((".png", ".html"))]
    assert {p.name for p in printed} >= {"history.png", "parallel_coordinate.png"}
    assert all(p.parent == tmp_path / "plots" and p.stat().st_size > 1000 for p in printed)
    assert f"logged {len(printed)} files" in res.stdout


def test_reproduce_retrains_the_logged_configuration(main_study, tmp_path):
    best = _best_row(main_study["rows"])
    run = main_study["client"].get_run(best["mlflow_run_id"])
    out = tmp_path / "again"
    res = _run(
        [
            "reproduce",
            best["mlflow_run_id"],
            "--tracking-uri",
            main_study["uri"],
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    logged = TrainConfig.from_dict(
        {k: v for k, v in run.data.params.items() if k in TrainConfig.field_names()}
    )
    again = TrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert again == logged
    assert again.lr == best["lr"] and again.epochs == EPOCHS
    final = json.loads((out / "final.json").read_text())
    assert final["epoch"] == EPOCHS
    assert final["best/H"] == pytest.approx(best["best/H"], abs=1e-6)  # same seed, same threads
    origin = json.loads((out / "reproduced_from.json").read_text())
    assert origin["run_id"] == best["mlflow_run_id"] and origin["data"] == "tiny"


def test_champion_is_kept_unless_better_or_forced(main_study, ray_address):
    tmp, client = main_study["tmp"], main_study["client"]
    champ = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    worse = dict(
        num_samples=1,
        scheduler={"type": "none"},
        fixed={**FIXED, "epochs": 1, "batch_size": 50},
        params={"lr": {"type": "float", "low": 1e-6, "high": 2e-6, "log": True}},
    )
    base = ["--address", ray_address, "--tracking-uri", main_study["uri"]]

    res = _run(
        ["run", "--space", str(_trial_space(tmp, "worse", **worse)), *base], cwd=tmp, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "kept the existing champion" in res.stdout
    worse_rows = pq.read_table(tmp / "results" / "worse" / "trials.parquet").to_pylist()
    assert worse_rows[0]["best/H"] < float(champ.tags["value"])  # the premise of this test
    now = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert now.version == champ.version
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert any(v.tags.get("study") == "worse" for v in versions)  # registered, not promoted

    res = _run(
        ["run", "--space", str(_trial_space(tmp, "forced", **worse)), *base, "--force-promote"],
        cwd=tmp,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "promoted to champion" in res.stdout
    now = client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS)
    assert now.tags["study"] == "forced" and now.version != champ.version


def test_unreachable_server_fails_fast_before_any_trial(tmp_path, ray_address):
    closed = f"http://127.0.0.1:{free_port()}"
    space = _trial_space(tmp_path, "nowhere")
    t0 = time.perf_counter()
    res = _run(
        ["run", "--space", str(space), "--address", ray_address, "--tracking-uri", closed],
        cwd=tmp_path,
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert closed in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert "within 5 s" in res.stderr  # the stated timeout
    assert not (tmp_path / "results" / "nowhere").exists()  # no study, no trial started
    assert elapsed < 30  # interpreter start and imports included


def test_a_server_that_goes_away_does_not_fail_the_study(tmp_path, ray_address):
    srv = _Server(tmp_path / "doomed").ready()
    space = _trial_space(tmp_path, "doomed", num_samples=3)
    exp = tmp_path / "results" / "doomed"
    args = ["run", "--space", str(space), "--address", ray_address, "--tracking-uri", srv.url]
    try:
        with driver(args, cwd=tmp_path) as proc:
            wait_for_checkpoints(proc, exp, 1)
            srv.stop(kill=True)  # mid-study, abruptly: trials are running and reporting
            out, _ = proc.communicate(timeout=600)
    finally:
        if srv.proc.poll() is None:
            srv.stop()
    assert proc.returncode == 0, out[-4000:]
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    assert len(rows) == 3
    assert all(r["status"] in ("completed", "early_stopped") for r in rows), rows
    assert all(r["epochs_run"] >= 2 for r in rows)
    warnings = [ln for ln in out.splitlines() if "warning" in ln.lower()]
    assert len(warnings) == 1, warnings
    assert srv.url in warnings[0] and "complete" in warnings[0]
    assert "not logged" in warnings[0] and f"msdn-tune report {exp}" in warnings[0]

    # The server comes back (same store, same address): `report` makes the record whole from
    # the trials' own results: one run per trial with its true outcome and every epoch it ran,
    # none left RUNNING, the parent closed, the champion registered.
    back = _Server(tmp_path / "doomed", port=srv.port).ready()
    try:
        res = _run(["report", str(exp)], cwd=tmp_path, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "tracking reconciled from the trials' own results" in res.stdout, res.stdout
        client = MlflowClient(back.url)
        e = client.get_experiment_by_name("doomed")
        runs = client.search_runs([e.experiment_id], max_results=100)
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = {r.data.tags["msdn_tune.trial_id"]: r for r in runs
                    if "mlflow.parentRunId" in r.data.tags}
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
        rows = {r["trial_id"]: r for r in pq.read_table(exp / "trials.parquet").to_pylist()}
        assert set(children) == set(rows)
        for trial_id, run in children.items():
            row = rows[trial_id]
            assert run.info.status == TRIAL_STATUSES[row["status"]], (row, run.info)
            assert run.data.tags["msdn_tune.status"] == row["status"]
            assert row["mlflow_run_id"] == run.info.run_id
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))
            assert steps == list(range(1, row["epochs_run"] + 1)), (trial_id, steps)
            assert "lr" in run.data.params
        versions = client.search_model_versions(f"name = '{MODEL}'")
        assert [v.tags.get("study") for v in versions].count("doomed") == 1
        # a second report has nothing left to do: no run or model added
        again = _run(["report", str(exp)], cwd=tmp_path, timeout=600)
        assert again.returncode == 0 and "reconciled" not in again.stdout, again.stdout
        assert len(client.search_runs([e.experiment_id], max_results=100)) == len(runs)
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == len(versions)
    finally:
        back.stop()


# --- per-epoch metrics: batched, sent in the background, caught up after a restart -------------


def _tracker(uri, exp, **kw):
    return TrialTracker(
        uri, exp, "parent", trial_id="t", trial_name="t", study="s", params={"a": 1}, **kw
    )


def _count_batches(tracker, delay_s=0.0):
    """Count (and optionally slow down) the real log_batch calls of a tracker's client."""
    calls = []
    real = tracker._client.log_batch

    def log_batch(run_id, metrics=(), params=(), tags=(), **kw):
        calls.append(len(metrics))
        time.sleep(delay_s)
        return real(run_id, metrics=metrics, params=params, tags=tags, **kw)

    tracker._client.log_batch = log_batch
    return calls


def test_one_batch_per_epoch_sent_without_blocking_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "batching")
    tt = _tracker(uri, exp)
    calls = _count_batches(tt)
    for epoch in (1, 2, 3):
        tt.log_epoch({"val/H": epoch / 10, "train/loss": 1 / epoch, "epoch": epoch}, epoch)
        assert tt.flush(30)
    assert calls == [3, 3, 3]  # one log_batch per epoch holding all of its metrics

    slow = _tracker(uri, exp)
    calls = _count_batches(slow, delay_s=0.5)  # a store slower than an epoch
    t0 = time.perf_counter()
    for epoch in range(1, 7):
        slow.log_epoch({"val/H": epoch / 10, "epoch": epoch}, epoch)
    assert time.perf_counter() - t0 < 0.4  # training did not wait for the store
    slow.finish("completed", final_metrics={"best/H": 0.6})
    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(slow.run_id, "val/H")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    # epochs queued while a request was in flight went out together (the last call: finish)
    assert sum(calls[:-1]) == 6 and len(calls) - 1 < 6
    assert client.get_run(slow.run_id).info.status == "FINISHED"


def test_a_restarted_trial_catches_up_unsent_epochs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "catch-up")
    first = _tracker(uri, exp)
    history = [{"val/H": e / 10, "epoch": float(e)} for e in (1, 2, 3)]
    for m in history[:2]:
        first.log_epoch(m, int(m["epoch"]))
    assert first.flush(30)
    # the worker dies after checkpointing epoch 3 but before sending it; Ray restarts the trial
    again = _tracker(uri, exp, run_id=first.run_id)
    assert again.run_id == first.run_id
    assert again.catch_up(history) == 1
    again.log_epoch({"val/H": 0.4, "epoch": 4.0}, 4)
    again.finish("completed")
    steps = [m.step for m in MlflowClient(uri).get_metric_history(first.run_id, "val/H")]
    assert steps == [1, 2, 3, 4]


def test_ui_stops_its_server_on_sigterm(tmp_path):
    """`msdn-tune ui` runs the server in its own process group; SIGTERM must not orphan it."""
    port = free_port()
    db = tmp_path / "mlflow.db"
    url = f"http://127.0.0.1:{port}/health"
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    assert resp.status == 200
                break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None and time.time() < deadline, (
                    tmp_path / "ui.log"
                ).read_text()
                time.sleep(0.3)
        assert pids_matching(str(db))  # the server, found by its store path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert pids_matching(str(db)) == []  # the whole server went with it
        with pytest.raises((urllib.error.URLError, OSError)):
            urllib.request.urlopen(url, timeout=2)
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_by_marker(str(db))


def test_runs_of_trials_the_study_lost_go_to_the_trash(tmp_path):
    """A trial running when the driver was killed, before Tune's experiment state recorded it,
    is replaced on resume; its run must not count as a child of the finished study."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = StudyTracker(uri, "lost")
    parent = study.start("lost", resolved_config={}, search_settings={})
    runs = {}
    for t in ("t0", "t1", "gone"):
        tt = TrialTracker(
            uri, study.experiment_id, parent, trial_id=t, trial_name=t, study="lost", params={}
        )
        if t != "gone":
            tt.finish("completed")
        runs[t] = tt.run_id
    study.finish_grace_s = 0.0  # "gone" stays RUNNING: its worker died
    lost = study.finish(best_metrics=None, best_trial_id=None, trial_ids=["t0", "t1"])
    assert lost == ["gone"]  # returned, for the study's end to say so
    client = MlflowClient(uri)
    assert sorted(r.data.tags["msdn_tune.trial_id"] for r in study.child_runs()) == ["t0", "t1"]
    gone = client.get_run(runs["gone"])
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags["msdn_tune.status"] == "lost"
