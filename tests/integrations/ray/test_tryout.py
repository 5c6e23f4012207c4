"""cluster/tryout.py, the README's local multi-node try-out: free ports, a node killed alone,
and a stop that ends this try-out's processes only (a Ray head of the test session, started
beside it, keeps running). Slow tier: three Ray nodes and an MLflow server."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from msdn_tune.integrations.ray.address import probe_ray_address
from tests.helpers.raynodes import pids_matching, ray_env

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[3] / "cluster" / "tryout.py"


def _tryout(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=ray_env(),
                          capture_output=True, text=True, timeout=600)


def test_start_kill_one_node_and_stop_only_this_tryout(tmp_path, ray_address):
    started = _tryout(tmp_path, "start")
    state = json.loads((tmp_path / ".msdn-tryout.json").read_text())
    try:
        assert started.returncode == 0, started.stderr
        assert f"export MSDN_GCS={state['gcs']}" in started.stdout
        assert state["gcs"] != ray_address and not state["gcs"].endswith(":6379")
        probe_ray_address(state["gcs"])  # a real GCS answers there
        with urllib.request.urlopen(state["dashboard"] + "/api/version", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(state["mlflow"] + "/health", timeout=30) as r:
            assert r.status == 200
        nodes = state["nodes"]
        assert all(pids_matching(nodes[n]) for n in ("head", "a", "b"))

        killed = _tryout(tmp_path, "kill-node", "a")
        assert killed.returncode == 0 and "node a: killed" in killed.stdout, killed.stderr
        assert not pids_matching(nodes["a"])
        assert pids_matching(nodes["head"]) and pids_matching(nodes["b"])
    finally:
        stopped = _tryout(tmp_path, "stop")
    assert stopped.returncode == 0 and "try-out stopped" in stopped.stdout, stopped.stderr
    assert not any(pids_matching(nodes[n]) for n in ("head", "a", "b"))
    assert not (tmp_path / ".msdn-tryout.json").exists()
    assert not _running(state["mlflow_pid"])  # the MLflow server too

    probe_ray_address(ray_address)  # the session's own Ray was not touched
    again = _tryout(tmp_path, "stop")
    assert again.returncode != 0 and "no try-out here" in again.stderr


def _running(pid: int) -> bool:
    """Alive and not a zombie (the server's parent, the script, has exited: init reaps it
    whenever it does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
