"""Studies as Ray Jobs: planning, submission, following, and the `msdn-tune jobs` commands.

A study submitted to a cluster fails in ways a local one cannot: a working directory that would
be lost with the job, a relative results path, a dashboard that wants a token. Each is caught
here, before anything is submitted, with a message that names the fix (docs/search.md C2, S2).
`msdn-tune submit` and `msdn-tune jobs ...` are thin wrappers over :func:`plan_job`,
:func:`submit_study`, :func:`follow_job` and :func:`job_client`. The storage and upload-size
checks a plan relies on are in storage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from msdn_tune.errors import ClusterError
from msdn_tune.integrations.ray import SUBMIT_RESUME_ENV
from msdn_tune.integrations.ray.storage import (
    DEFAULT_EXCLUDES,
    UploadReport,
    check_upload_size,
    is_uri,
    scan_working_dir,
)
from msdn_tune.space import confirm_override, load_space

# --- job submission (docs/search.md C2, S2) ------------------------------------------------------

AUTH_HINT = (
    "set RAY_AUTH_MODE=token and provide the cluster's token in RAY_AUTH_TOKEN, in a file named "
    "by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (on the head node, `ray get-auth-token` "
    "prints it); a cluster started with RAY_AUTH_MODE=disabled needs none"
)


def dashboard_url(address: str | None) -> str:
    """The job server's URL from --address (HOST:PORT or http[s]://HOST:PORT) or the env."""
    addr = (
        address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or ""
    ).strip()
    if not addr:
        raise ClusterError(
            "no --address: give the Ray dashboard's address, e.g. "
            "http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)"
        )
    if "://" not in addr:
        addr = "http://" + addr
    parsed = urlparse(addr)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"--address {address}: expected the dashboard's http://HOST:8265 "
            "(Ray jobs are submitted to the dashboard, not to ray:// or the GCS)"
        )
    if parsed.port == 6379:
        raise ClusterError(
            f"--address {address}: 6379 is the GCS port; jobs are submitted to the "
            "dashboard, usually http://HEAD:8265"
        )
    return addr.rstrip("/")


def check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds (not after the OS's TCP timeout) when the dashboard cannot be reached."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ClusterError(
            f"--address {url}: cannot reach the Ray dashboard ({reason}). Is the cluster up and "
            f"port {port} reachable from here (`ray dashboard cluster.yaml`, or "
            "`kubectl port-forward svc/CLUSTER-head-svc 8265:8265`)?"
        ) from None


@contextlib.contextmanager
def ray_api_errors(url: str) -> Iterator[None]:
    """Turn the job SDK's auth, connection and HTTP errors into one clear ClusterError."""
    try:
        yield
    except AuthenticationError as exc:
        text = str(exc)
        if "Authentication failed" in text or "invalid" in text.lower():
            raise ClusterError(
                f"the Ray cluster at {url} rejected the authentication token: "
                f"use that cluster's token; {AUTH_HINT}"
            ) from None
        raise ClusterError(
            f"the Ray cluster at {url} requires token authentication (Ray's default): {AUTH_HINT}"
        ) from None
    except ConnectionError as exc:
        raise ClusterError(f"--address {url}: {exc}") from None
    except RuntimeError as exc:
        text = str(exc)
        if text.startswith("Version check returned"):
            raise ClusterError(
                f"--address {url}: this is not a Ray dashboard (no job API there: {text})"
            ) from None
        if text.startswith("Request failed with status code"):
            raise ClusterError(f"{url}: {text}") from None
        raise


@dataclass(frozen=True)
class JobServer:
    """A connected Ray job server: its URL (for messages) and the SDK client."""

    url: str
    sdk: Any


def job_client(address: str | None, timeout_s: float = 5.0) -> JobServer:
    """Connect to the job server, or raise a ClusterError saying why not (unreachable, auth)."""
    url = dashboard_url(address)
    check_reachable(url, timeout_s)
    with ray_api_errors(url):
        return JobServer(url, JobSubmissionClient(url))


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding pyproject.toml, else cwd."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d
    return here


def job_storage_path(storage_path: str | None, space_doc: Mapping[str, Any]) -> str:
    """The study's storage for a job: must mean the same place on the cluster as here.

    The job runs in a temporary copy of the working directory on the head node, so a relative
    path would put results there and lose them with the job.
    """
    raw = storage_path or space_doc.get("storage_path") or "./msdn_results"
    if is_uri(raw) or raw.startswith(("/", "~", "$")):
        return raw
    raise ClusterError(
        f"storage_path {raw!r} is relative: a job runs in a temporary copy of the working "
        "directory on the head node, so results would be lost with it. Give --storage-path a "
        "shared mount (/mnt/cluster_storage/studies) or a URI (s3://bucket/studies, gs://...)."
    )


def job_tracking_uri(
    tracking_uri: str | None, space_doc: Mapping[str, Any], tracking: bool
) -> str | None:
    """The MLflow URI for a job: a server (or absolute SQLite file) every node reaches.

    None when neither --tracking-uri nor the space file gives one: the job then uses the
    cluster's own $MLFLOW_TRACKING_URI (the cluster/ configs set it on the head).
    """
    if not tracking:
        return None
    tdoc = space_doc.get("tracking")
    uri = tracking_uri or (tdoc.get("uri") if isinstance(tdoc, dict) else None)
    if not uri:
        return None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise ClusterError(
            f"--tracking-uri {uri}: a relative SQLite path would live in the job's "
            "temporary working directory; use an absolute path "
            "(sqlite:////mnt/...) or an MLflow server (http://HEAD:5000)"
        )
    if uri.startswith(("file:", "./", "/")) or "://" not in uri:
        raise ClusterError(
            f"--tracking-uri {uri}: give an MLflow server (http://HOST:5000) or "
            "a database URI (sqlite:////abs/path/mlflow.db, postgresql://...)"
        )
    return uri


@dataclass
class JobPlan:
    """Everything `submit_study` sends: printed by --dry-run, asserted by tests."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]
    upload: UploadReport
    warnings: list[str]


def _resume_submit(space_path: Path, name: str, *, address: str | None, storage: str,
                   uri: str | None, tracking: bool, working_dir: Path | None,
                   num_samples: int | None, max_concurrent: int | None, storage_shared: bool,
                   pip: Sequence[str], excludes: Sequence[str],
                   confirm: Sequence[tuple[str, int | None]] = ()) -> str:
    """The `submit` command that resumes this study from the submitting machine: the job's own
    `run` command names a copy of the space file in the job's temporary folder."""
    parts = ["msdn-tune", "submit", "--space", str(space_path)]
    if address:
        parts += ["--address", address]
    parts += ["--name", name, "--storage-path", storage]
    for flag, value in (("--num-samples", num_samples), ("--max-concurrent", max_concurrent),
                        *confirm, ("--tracking-uri", uri), ("--working-dir", working_dir)):
        if value is not None:
            parts += [flag, str(value)]
    if not tracking:
        parts.append("--no-tracking")
    if storage_shared:
        parts.append("--storage-shared")
    for flag, values in (("--pip", pip), ("--exclude", excludes)):
        for value in values:
            parts += [flag, value]
    return shlex.join(parts + ["--resume"])


def plan_job(
    space_file: str | Path,
    *,
    working_dir: str | Path | None = None,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    name: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    confirm_top: int | None = None,
    confirm_seeds: int | None = None,
    resume: bool = False,
    resume_if_exists: bool = False,
    storage_shared: bool = False,
    pip: Sequence[str] = (),
    excludes: Sequence[str] = (),
    submission_id: str | None = None,
    address: str | None = None,
) -> JobPlan:
    """Validate a study locally and build its Ray Job: entrypoint, runtime_env, id.

    The entrypoint is `python -m msdn_tune.cli run ... --address auto`: `python` is whatever the
    cluster's PATH gives (the image or the venv that ran `ray start`), which must have msdn-tune
    installed unless `pip` installs it into the job's environment.
    """
    space_path = Path(space_file).resolve()
    space = load_space(space_path)
    space = space.with_overrides(
        num_samples=num_samples, max_concurrent_trials=max_concurrent, name=name,
        confirm=confirm_override(space.confirm, confirm_top, confirm_seeds)
    )
    confirm = (("--confirm-top", confirm_top), ("--confirm-seeds", confirm_seeds))
    wd = Path(working_dir).resolve() if working_dir else project_root()
    if not wd.is_dir():
        raise ClusterError(f"--working-dir {wd}: not a directory")
    try:
        space_rel = space_path.relative_to(wd).as_posix()
    except ValueError:
        raise ClusterError(
            f"--space {space_file}: the file is outside the working directory "
            f"{wd}, so the job would not see it; move it into the project or "
            "pass --working-dir"
        ) from None
    doc = space.source_doc or {}
    storage = job_storage_path(storage_path, doc)
    uri = job_tracking_uri(tracking_uri, doc, tracking)
    all_excludes = DEFAULT_EXCLUDES + list(excludes)
    report = scan_working_dir(wd, all_excludes)
    warnings = check_upload_size(report)
    if tracking and uri is None:
        warnings.append(
            "no --tracking-uri: the job tracks to the cluster's $MLFLOW_TRACKING_URI (set on the "
            "head by cluster/*.yaml); on a cluster without one, runs land in a SQLite file in the "
            "job's temporary working directory and are lost with it"
        )

    args = [
        "python",
        "-m",
        "msdn_tune.cli",
        "run",
        "--space",
        space_rel,
        "--address",
        "auto",
        "--storage-path",
        storage,
    ]
    for flag, value in (
        ("--name", name),
        ("--num-samples", num_samples),
        ("--max-concurrent", max_concurrent),
        *confirm,
        ("--tracking-uri", uri),
    ):
        if value is not None:
            args += [flag, str(value)]
    for flag, on in (
        ("--resume", resume),
        ("--resume-if-exists", resume_if_exists),
        ("--storage-shared", storage_shared),
        ("--no-tracking", not tracking),
    ):
        if on:
            args.append(flag)

    # PYTHONUNBUFFERED: the driver's output reaches `submit`'s log tail as it is printed.
    # RAY_JOB_STOP_WAIT_TIME_S: `jobs stop` sends SIGTERM, on which the driver stops Tune and
    # saves the study (tuner.sigterm_stops_tune); Ray's 3 s default would SIGKILL it first.
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),
                SUBMIT_RESUME_ENV: _resume_submit(
                    space_path, space.name, address=address, storage=storage, uri=uri,
                    tracking=tracking, working_dir=wd if working_dir else None,
                    num_samples=num_samples, max_concurrent=max_concurrent,
                    storage_shared=storage_shared, pip=pip, excludes=excludes,
                    confirm=confirm)}
    if uri:
        env_vars["MLFLOW_TRACKING_URI"] = uri
    for key in ("RAY_AUTH_MODE", "MLFLOW_DISABLE_TELEMETRY"):
        if os.environ.get(key):
            env_vars[key] = os.environ[key]
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": all_excludes,
        "env_vars": env_vars,
    }
    if pip:
        runtime_env["pip"] = {"packages": list(pip), "pip_check": False}
    sid = submission_id or (
        f"msdn-{re.sub(r'[^A-Za-z0-9_-]+', '-', space.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return JobPlan(
        entrypoint=shlex.join(args),
        runtime_env=runtime_env,
        submission_id=sid,
        metadata={"msdn_tune.study": space.name, "msdn_tune.storage": storage},
        upload=report,
        warnings=warnings,
    )


def submit_study(server: JobServer, plan: JobPlan) -> str:
    """Submit a planned study as a Ray Job; returns its submission id."""
    with ray_api_errors(server.url):
        return server.sdk.submit_job(
            entrypoint=plan.entrypoint,
            runtime_env=plan.runtime_env,
            submission_id=plan.submission_id,
            metadata=plan.metadata,
        )


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def follow_job(
    server: JobServer, job_id: str, echo: Callable[[str], None], *, poll_s: float = 1.0
) -> str:
    """Stream a job's logs until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED).

    The dashboard's websocket tail is used first; if a proxy drops it, the logs are polled and
    only their new part printed, so nothing is shown twice.
    """
    shown = 0

    async def tail() -> None:
        nonlocal shown
        async for chunk in server.sdk.tail_job_logs(job_id):
            echo(chunk)
            shown += len(chunk)

    with ray_api_errors(server.url):
        tailed = True
        try:
            asyncio.run(tail())
        except (TimeoutError, RuntimeError, OSError):
            tailed = False
        except Exception as exc:  # noqa: BLE001 - aiohttp's own errors; polling still works
            if type(exc).__module__.split(".")[0] != "aiohttp":
                raise
            tailed = False
        while True:
            status = str(server.sdk.get_job_status(job_id))
            if not tailed:
                logs = server.sdk.get_job_logs(job_id)
                if len(logs) > shown:
                    echo(logs[shown:])
                    shown = len(logs)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)


def job_exit_code(status: str) -> int:
    """0 when the job succeeded, 1 when it failed or was stopped."""
    return 0 if status == "SUCCEEDED" else 1


#: Seconds Ray's job supervisor waits for a stopped study to save itself before SIGKILL.
STOP_WAIT_S = 60


def list_jobs(server: JobServer) -> list[dict[str, Any]]:
    """The jobs submitted to the cluster, newest first, as plain dicts.

    Ray lists every driver that ever connected as a job too (`type` DRIVER: a `msdn-tune run
    --address`, even one refused before it started anything, shows as SUCCEEDED); those are not
    jobs anyone submitted, and `jobs logs`/`jobs stop` cannot act on them, so they are left out.
    """
    with ray_api_errors(server.url):
        jobs = [j for j in server.sdk.list_jobs() if str(getattr(j.type, "value", j.type))
                == "SUBMISSION"]
    rows = [
        {
            "submission_id": j.submission_id or j.job_id,
            "status": str(j.status),
            "study": (j.metadata or {}).get("msdn_tune.study", ""),
            "start_time": j.start_time,
            "end_time": j.end_time,
            "entrypoint": j.entrypoint,
            "message": j.message or "",
        }
        for j in jobs
    ]
    return sorted(rows, key=lambda r: -(r["start_time"] or 0))


def job_info(server: JobServer, job_id: str) -> dict[str, Any]:
    """One job's status and details."""
    with ray_api_errors(server.url):
        j = server.sdk.get_job_info(job_id)
    return {
        "submission_id": j.submission_id or j.job_id,
        "status": str(j.status),
        "message": j.message or "",
        "entrypoint": j.entrypoint,
        "start_time": j.start_time,
        "end_time": j.end_time,
        "metadata": j.metadata or {},
    }


def job_logs(server: JobServer, job_id: str) -> str:
    """A job's logs so far."""
    with ray_api_errors(server.url):
        return server.sdk.get_job_logs(job_id)


def stop_job(server: JobServer, job_id: str) -> bool:
    """Ask Ray to stop a job (SIGTERM to the driver, then SIGKILL); False if already ended."""
    with ray_api_errors(server.url):
        return bool(server.sdk.stop_job(job_id))


def format_time(ms: int | None) -> str:
    """Ray's epoch milliseconds as local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
