"""The MLflow UI: the server's command line, `msdn-tune ui` and its errors (mlflow/ui)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.store import check_tracking
from msdn_tune.integrations.mlflow.ui import start_ui_command, ui_env
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
        check_tracking(f"http://127.0.0.1:{port}")
        assert _processes_with(f"--port {port} --workers 1")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert proc.wait(timeout=60) == 0
        assert _processes_with(f"--port {port} --workers 1") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
