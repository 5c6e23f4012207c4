"""The local Ray a driver starts is gone after the driver is SIGKILLed (ray 2.60's dashboard and
runtime-env agents otherwise stay for good), and a normal shutdown leaves no watcher behind.

A real driver process with a real local Ray: slow tier (a Ray start takes 5-20 s on 2 cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.raynodes import ray_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]

DRIVER = textwrap.dedent("""
    import sys, time
    from msdn_tune.integrations.ray.reaper import watcher_pid
    from msdn_tune.integrations.ray.tuner import init_ray, shutdown_ray
    init_ray(None)
    print("watcher", watcher_pid(), flush=True)
    if sys.argv[1] == "nice":
        import os, ray
        print("worker nice", ray.get(ray.remote(lambda: os.nice(0)).remote()), flush=True)
        shutdown_ray()
    elif sys.argv[1] == "shutdown":
        shutdown_ray()
        print("shut down", flush=True)
    else:
        time.sleep(600)
""")


def _descendants(pid: int) -> dict[int, str]:
    """PID -> command line of every descendant of `pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = (Path(f"/proc/{child}/cmdline").read_bytes()
                                .replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
            todo.append(child)
    return found


def _alive(pids) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()
            and "(Z)" not in _state(p)]


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "(Z)"
    return f"({stat.rsplit(')', 1)[1].split()[0]})"


def _driver(mode: str, nice: int = 0) -> subprocess.Popen:
    env = {**ray_env(), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_worker_niceness")  # what the driver's own Ray does, not the tests' setting
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: os.nice(nice))


def test_a_sigkilled_drivers_local_ray_is_gone_agents_included():
    proc = _driver("kill")
    try:
        line = proc.stdout.readline()
        assert line.startswith("watcher "), line + proc.stdout.read()
        watcher = int(line.split()[1])
        deadline = time.time() + 120
        while True:  # the agents start a few seconds after ray.init returns
            ray_procs = _descendants(proc.pid)
            if any("RuntimeEnvAgent" in c for c in ray_procs.values()) and any(
                    "DashboardAgent" in c for c in ray_procs.values()):
                break
            assert time.time() < deadline, ray_procs
            time.sleep(0.5)
        time.sleep(2)  # the watcher polls once a second
        # The driver alone, as the OOM killer does; its Ray is the watcher's to end. (Killing
        # its whole group would end Ray's processes too, and hide a watcher that does nothing.)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 120
        while _alive(ray_procs) or _alive([watcher]):
            assert time.time() < deadline, {p: ray_procs[p] for p in _alive(ray_procs)}
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_normal_shutdown_stops_the_watcher():
    proc = _driver("shutdown")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "shut down" in out, out
    watcher = int(out.split("watcher ", 1)[1].split()[0])
    assert not _alive([watcher])


def test_a_studys_own_ray_runs_trials_at_the_drivers_priority():
    """Ray's default worker niceness is 15: beside two busy processes a trial got 3.9% of a core.
    A study's own Ray runs its workers at the niceness of the command that started it."""
    proc = _driver("nice", nice=3)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "worker nice 3" in out, out
