"""The MLflow UI: a light ``mlflow server`` for a local store, started, awaited and stopped.

``msdn-tune ui`` serves a SQLite store in the foreground (:func:`serve_ui`); tests and the tracking
benchmark run servers in the background (:func:`start_ui`, :func:`wait_ui`, :func:`stop_ui`).
The server runs in its own process group, one worker, no job runner, artifacts proxied next to
the database, so that stopping it leaves no process behind and every node reaches the artifacts
through it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.store import check_tracking, is_http, probe_http, sqlite_path


def ui_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a light ``mlflow server``: no job runner (5.8 s to ready, 0.5 GB, vs
    17 s and 2 GB by default; docs/search.md S4)."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def start_ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """argv of ``mlflow server`` for the store ``uri``: one worker, artifacts proxied.

    For SQLite, proxied artifacts go to ``<db dir>/mlartifacts`` whatever the server's cwd.
    Run it with :func:`ui_env`. An http(s) URI is already a server: :class:`TrackingError`.
    """
    if is_http(uri):
        raise TrackingError(f"{uri} is already a tracking server; open it in a browser")
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(int(port)),
        "--workers",
        "1",
    ]
    db = sqlite_path(uri)
    if db is not None:
        argv += ["--artifacts-destination", str(db.parent / "mlartifacts")]
    return argv


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_ui(
    uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    cwd: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen:
    """Start ``mlflow server`` in its own process group (so :func:`stop_ui` can end all of it)."""
    if not _port_free(host, port):
        raise TrackingError(f"port {port} on {host} is already in use; pass another --port")
    out: IO[bytes] | None = open(log, "ab") if log is not None else None  # noqa: SIM115
    try:
        return subprocess.Popen(
            start_ui_command(uri, host, port),
            cwd=cwd,
            env=ui_env(),
            stdout=out if out is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor


def wait_ui(proc: subprocess.Popen, url: str, timeout_s: float = 90.0) -> None:
    """Wait for ``url``/health; :class:`TrackingError` if the server exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(
                f"mlflow server exited with code {proc.returncode} before {url} answered"
            )
        if probe_http(url, 2.0) is None:
            return
        time.sleep(0.3)
    raise TrackingError(f"mlflow server at {url} did not answer within {timeout_s:.0f} s")


def stop_ui(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; wait briefly for the rest of its group
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    proc.wait(timeout=5)


def ui_url(host: str, port: int) -> str:
    """The address to open in a browser for a server bound to ``host`` (any interface: local)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def serve_ui(
    uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    on_ready: Callable[[str], None] = print,
) -> int:
    """Run the MLflow UI for ``uri`` in the foreground until Ctrl-C; returns the exit code.

    SIGTERM and SIGHUP (a process manager, a closed terminal) stop it like Ctrl-C: the server
    runs in its own process group, so it would otherwise outlive this process.
    """
    check_tracking(uri)
    url = ui_url(host, port)
    proc = start_ui(uri, host, port)
    saved: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for stop_signal in (signal.SIGTERM, signal.SIGHUP):
            saved[stop_signal] = signal.signal(stop_signal, _interrupt)
    try:
        wait_ui(proc, url)
        on_ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            stop_ui(proc)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
