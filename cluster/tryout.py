#!/usr/bin/env python3
"""A local multi-node Ray cluster for trying msdn-tune's cluster paths on one machine.

    eval "$(python cluster/tryout.py start)"   # head + 2 workers + an MLflow server, free ports
    python cluster/tryout.py kill-node a        # SIGKILL one worker node, as if its machine died
    python cluster/tryout.py stop               # stop this try-out's nodes and server, nothing else

Every port is free when chosen (another Ray on the machine can otherwise answer on 6379 or
8265), each node has its own temp dir under one try-out folder, and a node is its processes
whose command line names its temp dir plus all their descendants, so `kill-node` and `stop`
touch this try-out only (`ray stop` ends every Ray of your user on the machine). The state
(ports, folders, the MLflow server's PID) is in `.msdn-tryout.json` in the current folder.
The standard library only: `python` must be the one whose `ray` and `mlflow` you want (the
project's venv). tests/helpers/raynodes.py uses the process functions below.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STATE = Path(".msdn-tryout.json")
WORKERS = ("a", "b")


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= new
        grew = bool(new)
    return sorted(found)


def signal_marked(marker: str, sig: int) -> list[int]:
    """Send `sig` to every process of `marker`; returns their PIDs."""
    pids = pids_matching(marker)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def stop_marked(marker: str, timeout: float = 15.0) -> None:
    """SIGTERM every process of `marker`, then SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_marked(marker, sig)
        deadline = time.time() + timeout
        while time.time() < deadline and pids_matching(marker):
            time.sleep(0.2)
        if not pids_matching(marker):
            return


def _ray(*args: str) -> None:
    ray = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_worker_niceness", "0")  # trials are the work (see cluster/README.md)
    subprocess.run([str(ray if ray.exists() else "ray"), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=180)


def start(cpus_per_worker: int) -> dict:
    """Start the head (no CPUs: it runs drivers), the workers and an MLflow server."""
    if STATE.exists():
        sys.exit(f"{STATE} exists: a try-out runs from this folder; `stop` it first")
    root = Path(tempfile.mkdtemp(prefix="msdn-tryout-", dir="/tmp"))  # short: Ray's sockets
    gcs, dash = free_port(), free_port()
    state = {"root": str(root), "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}",
             "nodes": {name: str(root / name) for name in ("head", *WORKERS)}}
    STATE.write_text(json.dumps(state, indent=2))
    _ray("start", "--head", f"--port={gcs}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
         f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
         f"--temp-dir={state['nodes']['head']}")
    for name in WORKERS:
        _ray("start", f"--address={state['gcs']}", f"--num-cpus={cpus_per_worker}",
             f"--resources={json.dumps({f'node_{name}': 1})}", "--disable-usage-stats",
             f"--temp-dir={state['nodes'][name]}")
    port = free_port()
    log = open(root / "mlflow.log", "wb")  # noqa: SIM115 - the server keeps writing to it
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{Path.cwd() / 'mlflow.db'}", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state.update(mlflow=f"http://127.0.0.1:{port}", mlflow_pid=server.pid)
    STATE.write_text(json.dumps(state, indent=2))
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(state["mlflow"] + "/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"mlflow server did not start; see {root / 'mlflow.log'}")
            time.sleep(0.5)
    return state


def exports(state: dict) -> str:
    """Shell lines naming the try-out's addresses (not RAY_ADDRESS: a local study would join)."""
    return (f"export MSDN_GCS={state['gcs']} MSDN_DASHBOARD={state['dashboard']} "
            f"MSDN_MLFLOW={state['mlflow']}\n"
            f"echo 'try-out: GCS $MSDN_GCS, dashboard $MSDN_DASHBOARD, MLflow $MSDN_MLFLOW; "
            f"stop it with: python cluster/tryout.py stop'\n")


def _group_ends(pgid: int, timeout: float) -> bool:
    """Whether process group `pgid` is gone within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop(state: dict) -> None:
    """Stop the workers, the head and the MLflow server of this try-out only."""
    for name in (*WORKERS, "head"):
        stop_marked(state["nodes"][name])
    pid = state.get("mlflow_pid")
    if pid:
        try:  # SIGTERM, 15 s to exit, then SIGKILL; returns once the whole group is gone
            os.killpg(pid, signal.SIGTERM)
            if not _group_ends(pid, 15):
                os.killpg(pid, signal.SIGKILL)
                _group_ends(pid, 30)
        except ProcessLookupError:
            pass
    shutil.rmtree(state["root"], ignore_errors=True)
    STATE.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("start", help="start head, workers a and b, MLflow; print exports")
    st.add_argument("--cpus-per-worker", type=int, default=1)
    sub.add_parser("env", help="print the exports of the running try-out again")
    kill = sub.add_parser("kill-node", help="SIGKILL every process of one worker node")
    kill.add_argument("node", choices=WORKERS)
    sub.add_parser("stop", help="stop this try-out's nodes and MLflow server")
    args = parser.parse_args()
    if args.command == "start":
        print(exports(start(args.cpus_per_worker)), end="")
        return
    if not STATE.exists():
        sys.exit(f"no try-out here ({STATE} not found); start one with: "
                 "eval \"$(python cluster/tryout.py start)\"")
    state = json.loads(STATE.read_text())
    if args.command == "env":
        print(exports(state), end="")
    elif args.command == "kill-node":
        marker = state["nodes"][args.node]
        pids = signal_marked(marker, signal.SIGKILL)
        # SIGKILL is delivered, not yet done: "killed" is said once the processes are gone
        # (a process the node spawned in the meantime is killed too)
        deadline = time.time() + 30
        while pids_matching(marker) and time.time() < deadline:
            pids += signal_marked(marker, signal.SIGKILL)
            time.sleep(0.1)
        pids = sorted(set(pids))
        print(f"node {args.node}: killed {len(pids)} processes ({' '.join(map(str, pids))})")
    else:
        stop(state)
        print("try-out stopped")


if __name__ == "__main__":
    main()
