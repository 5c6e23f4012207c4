"""The MLflow UI: a light ``mlflow server`` for a local store, and the addresses of its pages.

``msdn-tune ui`` serves a SQLite store in the foreground (:func:`serve_ui`); tests and the tracking
benchmark run servers in the background (:func:`start_ui`, :func:`wait_ui`, :func:`stop_ui`).
The server runs in its own process group, one worker, no job runner, artifacts proxied next to
the database, so that stopping it leaves no process behind and every node reaches the artifacts
through it. :func:`latest_study` finds the study a person most likely wants to look at, and
:func:`runs_page` / :func:`model_version_page` are the UI's addresses of its runs and champion.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.guard import quick_http
from msdn_tune.integrations.mlflow.registry import CHAMPION_ALIAS, registered_model_name
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


# --- the addresses of a study's pages ------------------------------------------------------------

# The UI's routes, checked against mlflow 3.17.2 (its JS bundle, and in a browser): the UI is a
# hash-routed single page. Its global GenAI / Model training switch, not the experiment's tag,
# decides whether an experiment opens on a GenAI overview of traces or on its runs; the query
# parameter `workflowType` sets that switch for the page it is on, so that the address opens
# the runs table with the model-training side bar (runs, models, model registry).
_MODEL_TRAINING = "workflowType=machine_learning"


def runs_page(base_url: str, experiment_id: str) -> str:
    """The UI's address of an experiment's runs table, on the server at ``base_url``."""
    eid = urllib.parse.quote(experiment_id, safe="")
    return f"{base_url.rstrip('/')}/#/experiments/{eid}/runs?{_MODEL_TRAINING}"


def model_version_page(base_url: str, name: str, version: str) -> str:
    """The UI's address of one registered model version, on the server at ``base_url``."""
    quoted = urllib.parse.quote(name, safe="")
    return (f"{base_url.rstrip('/')}/#/models/{quoted}/versions/"
            f"{urllib.parse.quote(version, safe='')}?{_MODEL_TRAINING}")


@dataclass(frozen=True)
class Champion:
    """The registered model version that holds the alias ``champion``."""

    name: str
    version: str
    study: str | None
    """The study that registered it (its ``study`` tag): maybe another study of the benchmark."""


@dataclass(frozen=True)
class LatestStudy:
    """The study most recently started or ended in a store, and its benchmark's champion."""

    study: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    champion: Champion | None


def _study_parents(client: MlflowClient) -> list[Run]:
    """Every study's parent run (tag ``msdn_tune.kind`` = study) in the store's live experiments."""
    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
        )
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            break
    runs: list[Run] = []
    for start in range(0, len(ids), 100):
        token = None
        while True:
            found = client.search_runs(
                ids[start : start + 100],
                filter_string="tags.msdn_tune.kind = 'study'",
                max_results=1000,
                page_token=token,
            )
            runs.extend(found)
            token = found.token
            if not token:
                break
    return runs


def _champion_of(client: MlflowClient, parent: Run) -> Champion | None:
    """The champion of the benchmark the study registered its best model under.

    That is the registered model of a version the study registered (tag ``study``) or, when it
    registered none (not finished, several objectives), the one its ``fixed.dataset`` names.
    """
    study = parent.data.tags.get("msdn_tune.study", "")
    names: list[str] = []
    if study and "'" not in study and "\\" not in study:  # a filter string cannot quote them
        own = client.search_model_versions(f"tags.study = '{study}'")
        names = [v.name for v in sorted(own, key=lambda v: -int(v.creation_timestamp or 0))]
    dataset = parent.data.params.get("fixed.dataset")
    if dataset:
        names.append(registered_model_name(dataset))
    for name in dict.fromkeys(names):
        try:
            version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            continue
        tags = dict(version.tags or {})
        return Champion(name=name, version=str(version.version), study=tags.get("study"))
    return None


def latest_study(uri: str, timeout_s: float = 10.0) -> LatestStudy | None:
    """The study whose parent run started or ended last in the store ``uri``; None without one.

    A study is found by its parent run rather than its experiment: MLflow moves an experiment's
    ``last_update_time`` only when the experiment is created, renamed, deleted or restored, not
    when runs are written, and several studies may share one experiment. Raises
    :class:`TrackingError` when the store cannot be read.
    """
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        with quick_http(timeout_s):
            parents = _study_parents(client)
            if not parents:
                return None
            parent = max(
                parents, key=lambda r: max(r.info.start_time or 0, r.info.end_time or 0)
            )
            experiment = client.get_experiment(parent.info.experiment_id)
            champion = _champion_of(client, parent)
    except Exception as exc:  # noqa: BLE001 - any store failure is one TrackingError
        raise TrackingError(f"cannot read the studies in {uri} ({exc})") from exc
    return LatestStudy(
        study=parent.data.tags.get("msdn_tune.study", parent.info.run_name or "?"),
        experiment_id=parent.info.experiment_id,
        experiment_name=experiment.name,
        parent_run_id=parent.info.run_id,
        champion=champion,
    )
