"""Real MLflow stores for the adapter's tests: a SQLite file per module, one shared server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.store import default_tracking_uri
from msdn_tune.integrations.mlflow.ui import start_ui, stop_ui, wait_ui
from tests.helpers.raynodes import free_port


class MlflowServer:
    """A real `mlflow server` (one worker, no job runner) in its own cwd and process group."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc = start_ui(f"sqlite:///{root / 'srv.db'}", port=self.port, cwd=root, log=self.log)
        try:
            wait_ui(self.proc, self.url, timeout_s=120)
        except TrackingError:
            self.stop()
            raise AssertionError(self.log.read_text()[-3000:]) from None

    def stop(self) -> None:
        stop_ui(self.proc)
        assert self.proc.poll() is not None
        with pytest.raises(ProcessLookupError):  # the whole process group is gone
            os.killpg(self.proc.pid, 0)


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    """One server for every test of this folder that needs one (each start costs 6-20 s)."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    return default_tracking_uri(tmp_path_factory.mktemp("mlflow_sqlite"))
