"""MLflow tracking against a real SQLite store and real `mlflow server` processes."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from msdn_tune.cli import main
from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow import tracking
from msdn_tune.integrations.mlflow.tracking import (
    DEGRADED_MESSAGE,
    StudyTracker,
    TrialTracker,
    check_tracking,
    default_tracking_uri,
    ensure_experiment,
    load_model,
    log_champion,
    resolve_tracking_uri,
    seed_sqlite_store,
    start_ui_command,
)
from msdn_tune.integrations.optuna import study_plots
from msdn_tune.model.msdn import MSDN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A real `mlflow server` (one worker, no job runner) in its own cwd and process group."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc = tracking.start_ui(
            f"sqlite:///{root / 'srv.db'}", port=self.port, cwd=root, log=self.log
        )
        try:
            tracking.wait_ui(self.proc, self.url, timeout_s=120)
        except TrackingError:
            self.stop()
            raise AssertionError(self.log.read_text()[-3000:]) from None

    def stop(self) -> None:
        tracking.stop_ui(self.proc)
        assert self.proc.poll() is not None
        with pytest.raises(ProcessLookupError):  # the whole process group is gone
            os.killpg(self.proc.pid, 0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = _Server(tmp_path_factory.mktemp("mlflow_server"))
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    return default_tracking_uri(tmp_path_factory.mktemp("mlflow_sqlite"))


def _tiny_msdn() -> MSDN:
    torch.manual_seed(0)
    return MSDN(torch.rand(6, 5), None, channels=8, vec_dim=4)


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


# --- URIs and reachability --------------------------------------------------------------------


def test_uri_precedence_and_normalisation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    here = tmp_path.resolve()
    assert default_tracking_uri() == f"sqlite:///{here}/mlflow.db"
    assert resolve_tracking_uri() == f"sqlite:///{here}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000/")
    assert resolve_tracking_uri() == "http://env:5000"
    assert resolve_tracking_uri(space="sqlite:///rel/s.db") == f"sqlite:///{here}/rel/s.db"
    assert resolve_tracking_uri(cli="http://cli:1", space="http://space:2") == "http://cli:1"
    assert resolve_tracking_uri(cli="runs.db") == f"sqlite:///{here}/runs.db"
    with pytest.raises(TrackingError, match="file store"):
        resolve_tracking_uri(cli="./mlruns")


def _schema(db: Path) -> tuple[list, list]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        return (sorted(c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
                c.execute("SELECT * FROM alembic_version").fetchall())


def test_a_new_sqlite_store_starts_from_the_cached_schema_exactly_as_mlflow_builds_it(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path / "cache"))
    seeded = tmp_path / "seeded.db"
    exp_id = ensure_experiment(f"sqlite:///{seeded}", "s")
    (template,) = (tmp_path / "cache" / "mlflow").glob("schema-*.db")
    assert not [p.name for p in (*tmp_path.glob(".*"), *template.parent.glob(".*"))]
    own = tmp_path / "own.db"
    MlflowClient(f"sqlite:///{own}").search_experiments()  # MLflow runs its migrations itself
    assert _schema(seeded) == _schema(own)
    exps = {e.name: e for e in MlflowClient(f"sqlite:///{seeded}").search_experiments()}
    assert set(exps) == {"Default", "s"}  # MLflow added Default on opening the copy
    assert exps["s"].experiment_id == exp_id
    assert exps["s"].artifact_location == (tmp_path / "mlartifacts" / "s").as_uri()

    built = template.stat().st_mtime_ns
    assert seed_sqlite_store(tmp_path / "second.db")  # copied, not built again
    assert template.stat().st_mtime_ns == built
    assert not seed_sqlite_store(seeded)  # an existing store is never replaced
    assert "s" in {e.name for e in MlflowClient(f"sqlite:///{seeded}").search_experiments()}


def test_a_store_that_cannot_be_seeded_is_left_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "m.db"
    assert not seed_sqlite_store(db)
    assert not db.exists() and not list(tmp_path.glob(".*"))
    ensure_experiment(f"sqlite:///{db}", "x")
    assert "x" in {e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()}


def test_check_tracking_fails_fast_with_a_clear_error(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(TrackingError) as err:
        check_tracking(uri)
    assert time.perf_counter() - t0 < 10
    assert uri in str(err.value) and "msdn-tune ui" in str(err.value)
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # writable directory: fine


def test_unreachable_store_study_is_strict_trial_is_not(caplog):
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="127.0.0.1"):
        StudyTracker(uri, "never")
    caplog.set_level(logging.WARNING, logger="msdn_tune.integrations.mlflow.tracking")
    tt = TrialTracker(uri, "1", "p", trial_id="t", trial_name="t", study="s", params={"a": 1})
    tt.log_epoch({"val/H": 0.1}, 1)
    tt.finish("completed")
    assert tt.run_id is None and not tt.active
    assert sum(DEGRADED_MESSAGE in r.getMessage() for r in caplog.records) == 1
    assert time.perf_counter() - t0 < 10


def test_start_ui_command_is_light():
    argv = start_ui_command("sqlite:////data/x/mlflow.db", port=5123)
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    joined = " ".join(argv)
    assert "--workers 1" in joined and "--host 127.0.0.1" in joined and "--port 5123" in joined
    assert "--backend-store-uri sqlite:////data/x/mlflow.db" in joined
    assert "--artifacts-destination /data/x/mlartifacts" in joined
    assert tracking.ui_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    with pytest.raises(TrackingError):
        start_ui_command("http://127.0.0.1:5000")


def test_cli_ui_errors_exit_2(tmp_path):
    runner = CliRunner()
    closed = f"http://127.0.0.1:{_free_port()}"
    res = runner.invoke(main, ["ui", "--tracking-uri", closed])
    assert res.exit_code == 2 and closed in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        res = runner.invoke(main, ["ui", "--tracking-uri", uri, "--port", str(port)])
    assert res.exit_code == 2 and "in use" in res.output


# --- study and trial runs ---------------------------------------------------------------------


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
    assert len(client.get_run(t0.run_id).data.params["nested.k"]) == tracking.MAX_PARAM_VALUE

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
    assert len(run.data.tags["msdn_tune.error"]) == tracking.MAX_ERROR_TAG
    st2.finish(best_metrics=None, best_trial_id=None, artifacts=[tmp_path / "space.yaml"])
    assert client.get_run(parent).info.status == "FINISHED"


def test_trial_survives_a_dead_server(tmp_path, caplog):
    srv = _Server(tmp_path / "doomed")
    try:
        exp = ensure_experiment(srv.url, "doomed")
        tt = TrialTracker(
            srv.url, exp, "no-parent", trial_id="t", trial_name="t", study="s", params={"a": 1}
        )
        tt.log_epoch({"val/H": 0.5}, 1)
        assert tt.active and tt.run_id
    finally:
        srv.stop()
    caplog.set_level(logging.WARNING, logger="msdn_tune.integrations.mlflow.tracking")
    t0 = time.perf_counter()
    for epoch in range(2, 6):
        tt.log_epoch({"val/H": 0.5}, epoch)  # must not raise
    tt.finish("completed", final_metrics={"best/H": 0.5})
    assert time.perf_counter() - t0 < 15
    assert not tt.active
    assert sum(DEGRADED_MESSAGE in r.getMessage() for r in caplog.records) == 1


# --- champion model ---------------------------------------------------------------------------


def _trial_run(uri, exp_id, i):
    tt = TrialTracker(
        uri, exp_id, "p", trial_id=f"t{i}", trial_name=f"trial_{i}", study="s", params={"i": i}
    )
    tt.finish("completed")
    return tt.run_id


def test_champion_alias_logic_and_loading(sqlite_uri):
    exp = ensure_experiment(sqlite_uri, "champions")
    model = _tiny_msdn().eval()

    def champ(i, value, **kw):
        t0 = time.perf_counter()
        res = log_champion(
            sqlite_uri,
            model=model,
            dataset="tiny",
            study="s",
            trial_id=f"t{i}",
            run_id=_trial_run(sqlite_uri, exp, i),
            checkpoint=f"/ckpt/{i}",
            **{"metric": "val/H", "value": value, **kw},
        )
        return res, time.perf_counter() - t0

    r1, secs = champ(1, 0.50)
    print(f"log_champion took {secs:.2f} s")  # reported: ~0.6 s on the sqlite store
    assert secs < 5
    assert r1["promoted"] and r1["previous"] is None and r1["name"] == "msdn-tiny"
    r2, _ = champ(2, 0.40)
    assert not r2["promoted"] and r2["previous"] == r1["version"]
    r3, _ = champ(3, 0.60)
    assert r3["promoted"] and r3["previous"] == r1["version"] and r3["previous_value"] == 0.5
    r4, _ = champ(4, 0.99, metric="val/zsl_acc")  # a different metric is not comparable
    assert not r4["promoted"]
    r5, _ = champ(5, 0.10, force_promote=True)
    assert r5["promoted"]
    r6, _ = champ(6, 0.05, mode="min")  # better under "min" on the same metric
    assert r6["promoted"] and r6["previous"] == r5["version"]
    r7, _ = champ(7, 0.01, mode="min", extra_tags={"benchmark": "tiny-v2"})  # another benchmark
    assert not r7["promoted"] and r7["previous"] == r6["version"]

    client = MlflowClient(sqlite_uri, registry_uri=sqlite_uri)
    mv = client.get_model_version_by_alias("msdn-tiny", "champion")
    assert str(mv.version) == r6["version"]
    assert mv.tags["trial_id"] == "t6" and mv.tags["checkpoint"] == "/ckpt/6"
    assert mv.tags["metric"] == "val/H" and mv.tags["benchmark"] == "tiny"

    loaded = load_model("models:/msdn-tiny@champion", tracking_uri=sqlite_uri)
    assert isinstance(loaded, MSDN)
    x = torch.rand(3, 8, 7)
    with torch.no_grad():
        a, b = model(x), loaded.eval()(x)
    assert torch.equal(a.z_ava, b.z_ava) and torch.equal(a.z_vaa, b.z_vaa)
    # the fluent globals were restored
    assert mlflow.get_tracking_uri() != sqlite_uri
    with pytest.raises(TrackingError, match="msdn-nope"):
        load_model("models:/msdn-nope@champion", tracking_uri=sqlite_uri)


def test_champion_through_the_server(server):
    exp = ensure_experiment(server, "champions-server")
    model = _tiny_msdn().eval()
    t0 = time.perf_counter()
    res = log_champion(
        server,
        model=model,
        dataset="cub",
        study="s",
        trial_id="t1",
        run_id=_trial_run(server, exp, 1),
        metric="val/H",
        value=0.5,
    )
    print(f"log_champion via server took {time.perf_counter() - t0:.2f} s")
    assert res["promoted"]
    loaded = load_model("models:/msdn-cub@champion", tracking_uri=server)
    x = torch.rand(2, 8, 7)
    with torch.no_grad():
        assert torch.equal(model(x).z_ava, loaded.eval()(x).z_ava)


# --- plots ------------------------------------------------------------------------------------


def test_study_plots(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    single = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    single.optimize(lambda t: t.suggest_float("a", 0, 1) - t.suggest_int("b", 0, 3) / 10, 8)
    paths = study_plots(single, tmp_path / "single", objective_names=["val/H"])
    names = {p.name for p in paths}
    assert {"history.png", "parallel_coordinate.png", "param_importances.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)

    multi = optuna.create_study(directions=["maximize", "minimize"])
    multi.optimize(lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), 6)
    names = {p.name for p in study_plots(multi, tmp_path / "multi", objective_names=["H", "t"])}
    assert {"pareto_front.png", "history_H.png", "history_t.png"} <= names

    one_param = optuna.create_study()
    one_param.optimize(lambda t: t.suggest_float("a", 0, 1), 3)
    names = {p.name for p in study_plots(one_param, tmp_path / "one", objective_names=["x"])}
    assert "history.png" in names and not any("importances" in n for n in names)
    assert study_plots(optuna.create_study(), tmp_path / "empty", objective_names=["x"]) == []


def _processes_with(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and text in cmd:
            pids.append(int(proc.name))
    return pids


def test_cli_ui_serves_until_ctrl_c(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "msdn_tune.cli", "ui", "--tracking-uri", "sqlite:///ui.db"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "MLflow UI at" in line:
                break
        assert f"MLflow UI at http://127.0.0.1:{port}" in "".join(lines), "".join(lines)
        assert f"sqlite:///{tmp_path.resolve()}/ui.db" in "".join(lines)
        check_tracking(f"http://127.0.0.1:{port}")
        assert _processes_with(f"--port {port} --workers 1")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert proc.wait(timeout=60) == 0
        assert _processes_with(f"--port {port} --workers 1") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_registered_model_on_a_benchmark_of_other_shapes_exits_2(tmp_path):
    """`evaluate models:/...` names the shape mismatch instead of a torch traceback."""
    import subprocess
    import sys

    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import build_model

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    bench = open_benchmark("tiny")
    cfg = TrainConfig.from_dict({"dataset": "synthetic"})
    model = build_model(cfg, bench)
    model.msdn_tune_config = cfg.to_dict()
    study = StudyTracker(uri, "shapes")
    parent = study.start("shapes", space_file=None, resolved_config={}, search_settings={})
    trial = TrialTracker(uri, study.experiment_id, parent, trial_id="a", trial_name="a",
                         study="shapes", params={})
    log_champion(uri, model=model, dataset="synthetic", study="shapes", trial_id="a",
                 run_id=trial.run_id, metric="best/H", value=0.5)
    res = subprocess.run([sys.executable, "-m", "msdn_tune.cli", "evaluate",
                          "models:/msdn-synthetic@champion", "--data", "demo", "--tracking-uri",
                          uri], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "trained with n_classes=30" in res.stderr and "Traceback" not in res.stderr
