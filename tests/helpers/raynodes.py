"""Start and stop real Ray nodes for tests, by PID (never `ray stop`, which kills every Ray
instance on the machine, other sessions' included)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

# The process functions are the local try-out's (cluster/tryout.py, a standalone script that the
# README tells users to run): one implementation of "a node is its marked processes".
_spec = importlib.util.spec_from_file_location(
    "msdn_tryout", Path(__file__).resolve().parents[2] / "cluster" / "tryout.py")
assert _spec is not None and _spec.loader is not None
_tryout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tryout)
free_port = _tryout.free_port
pids_matching = _tryout.pids_matching
signal_marked = _tryout.signal_marked
stop_marked = _tryout.stop_marked


def ray_env() -> dict[str, str]:
    """Environment for ray processes: our venv first on PATH, no token auth, no usage stats."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # Trial workers at the tests' own priority, as a study's own Ray runs them
    # (integrations/ray/tuner.TRIAL_NICENESS): Ray's default 15 starves them under load.
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0")
    return env


def start_head(temp_dir: Path, *, num_cpus: int = 2, port: int | None = None,
               resources: str | None = None, dashboard_port: int | None = None,
               env: dict[str, str] | None = None) -> str:
    """`ray start --head` with its own temp dir; returns the GCS address.

    `dashboard_port` turns the dashboard (the job server) on, on 127.0.0.1, with its own agent
    port so it cannot collide with another session's Ray. `env` overrides :func:`ray_env`
    (e.g. RAY_AUTH_MODE=token).
    """
    port = port or free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
           f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    if dashboard_port:
        cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--ray-client-server-port={free_port()}"]
    else:
        cmd.append("--include-dashboard=false")
    if resources:
        cmd.append(f"--resources={resources}")
    subprocess.run(cmd, check=True, env={**ray_env(), **(env or {})}, capture_output=True,
                   timeout=120)
    return f"127.0.0.1:{port}"


def start_worker(address: str, temp_dir: Path, *, num_cpus: int = 1,
                 resources: str | None = None, env: dict[str, str] | None = None) -> None:
    """`ray start --address` for one more node on this host (its own temp dir: the marker
    that :func:`kill_by_marker` and :func:`stop_by_marker` use to find its processes)."""
    cmd = [str(Path(sys.executable).parent / "ray"), "start", f"--address={address}",
           f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    if resources:
        cmd.append(f"--resources={resources}")
    subprocess.run(cmd, check=True, env={**ray_env(), **(env or {})}, capture_output=True,
                   timeout=120)


def kill_by_marker(marker: str) -> list[int]:
    """SIGKILL every process of one Ray node at once, as a crashed machine would vanish."""
    return signal_marked(marker, signal.SIGKILL)


def stop_by_marker(marker: str, timeout: float = 15.0) -> None:
    """SIGTERM every process of one Ray instance, then SIGKILL what is left."""
    stop_marked(marker, timeout)
