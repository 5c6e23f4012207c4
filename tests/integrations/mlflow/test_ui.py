"""The MLflow UI: the server's command line, `msdn-tune ui`, the study pages it names, and its
errors (mlflow/ui)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.registry import log_champion
from msdn_tune.integrations.mlflow.runs import StudyTracker, TrialTracker
from msdn_tune.integrations.mlflow.store import check_tracking
from msdn_tune.integrations.mlflow.ui import start_ui_command, ui_env
from msdn_tune.model.msdn import MSDN
from tests.helpers.raynodes import free_port


def test_start_ui_command_is_light():
    argv = start_ui_command("sqlite:////data/x/mlflow.db", port=5123)
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    joined = " ".join(argv)
    assert "--workers 1" in joined and "--host 127.0.0.1" in joined and "--port 5123" in joined
    assert "--backend-store-uri sqlite:////data/x/mlflow.db" in joined
    assert "--artifacts-destination /data/x/mlartifacts" in joined
    assert ui_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    with pytest.raises(TrackingError):
        start_ui_command("http://127.0.0.1:5000")


def test_cli_ui_errors_exit_2(tmp_path):
    runner = CliRunner()
    closed = f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(main, ["ui", "--tracking-uri", closed])
    assert res.exit_code == 2 and closed in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        res = runner.invoke(main, ["ui", "--tracking-uri", uri, "--port", str(port)])
    assert res.exit_code == 2 and "in use" in res.output



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


@pytest.mark.slow  # a real server or Ray head: the fast tier starts none
def test_cli_ui_serves_until_ctrl_c(tmp_path):
    port = free_port()
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
        assert proc.stdout.readline() == (
            "no study in this store yet (msdn-tune run --space FILE runs one)\n")
        check_tracking(f"http://127.0.0.1:{port}")
        assert _processes_with(f"--port {port} --workers 1")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert proc.wait(timeout=60) == 0
        assert _processes_with(f"--port {port} --workers 1") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _study(uri: str, name: str, experiment: str | None = None, *, parent: str | None = None):
    """A study's parent run as `msdn-tune run` opens it (reopened, given ``parent``)."""
    tracker = StudyTracker(uri, experiment or name)
    tracker.start(name, parent_run_id=parent, resolved_config={"fixed": {"dataset": "ui-bench"}},
                  search_settings={})
    return tracker


@pytest.mark.slow  # a real server or Ray head: the fast tier starts none
def test_cli_ui_names_the_latest_studys_runs_and_champion(server):
    """`msdn-tune ui` on a tracking server: the runs table of the study that started or ended
    last, and the champion of its benchmark, as addresses on that server."""
    training = "workflowType=machine_learning"  # the UI's Model training side, not GenAI
    runs = f"{server}/#/experiments/{{}}/runs?{training}"

    def ui_lines() -> list[str]:
        res = CliRunner().invoke(main, ["ui", "--tracking-uri", server])
        assert res.exit_code == 0, res.output
        return res.output.splitlines()

    first = _study(server, "ui-first")
    trial = TrialTracker(server, first.experiment_id, first.parent_run_id, trial_id="a",
                         trial_name="a", study="ui-first", params={})
    trial.finish("completed")
    torch.manual_seed(0)
    champ = log_champion(server, model=MSDN(torch.rand(6, 5), None, channels=8, vec_dim=4),
                         dataset="ui-bench", study="ui-first", trial_id="a",
                         run_id=trial.run_id, metric="best/H", value=0.5)
    first.finish(best_metrics={"best/H": 0.5}, best_trial_id="a")
    model = f"{server}/#/models/msdn-ui-bench/versions/{champ['version']}?{training}"
    assert ui_lines() == [
        f"{server} is already a tracking server: open it in a browser",
        f"latest study ui-first, its runs: {runs.format(first.experiment_id)}",
        f"champion msdn-ui-bench version {champ['version']}: {model}",
    ]

    time.sleep(0.01)  # MLflow keeps run times in milliseconds
    second = _study(server, "ui-second", "ui-shared")  # running, nothing registered
    assert ui_lines()[1:] == [
        f"latest study ui-second (experiment ui-shared), its runs: "
        f"{runs.format(second.experiment_id)}",
        f"champion msdn-ui-bench version {champ['version']}, registered by study ui-first: "
        f"{model}",
    ]

    time.sleep(0.01)
    resumed = _study(server, "ui-first", parent=first.parent_run_id)  # reopens the same run
    assert resumed.parent_run_id == first.parent_run_id
    resumed.finish(best_metrics=None, best_trial_id=None)  # ended after ui-second started
    assert ui_lines()[1] == f"latest study ui-first, its runs: {runs.format(first.experiment_id)}"
