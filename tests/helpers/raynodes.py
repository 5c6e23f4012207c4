"""Start and stop real Ray nodes for tests, by PID (never `ray stop`, which kills every Ray
instance on the machine, other sessions' included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """Environment for ray processes: our venv first on PATH, no token auth, no usage stats."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
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


def pids_matching(marker: str) -> list[int]:
    """PIDs whose command line contains `marker`, plus all their descendants."""
    found: set[int] = set()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker in cmd and pid != os.getpid():
            found.add(pid)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def stop_by_marker(marker: str, timeout: float = 15.0) -> None:
    """SIGTERM every process of one Ray instance, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_matching(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and pids_matching(marker):
            time.sleep(0.2)
        if not pids_matching(marker):
            return


def kill_by_marker(marker: str) -> list[int]:
    """SIGKILL every process of one Ray node at once, as a crashed machine would vanish."""
    pids = pids_matching(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
