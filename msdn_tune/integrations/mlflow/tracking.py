"""MLflow tracking for msdn-tune: stores, study/trial runs, the champion model, plots, the UI.

Layout in MLflow (docs/search.md D): one experiment per study, one *parent* run per study
(a resumed study reopens it), one *child* run per Tune trial, linked by the ``mlflow.parentRunId``
tag. The driver owns the parent (:class:`StudyTracker`); every trial creates or continues its own
child from inside its worker process (:class:`TrialTracker`), because Ray's
``MLflowLoggerCallback`` runs on the driver and cannot nest runs (ray-project/ray#19978).

Everything goes through :class:`mlflow.MlflowClient` with an explicit tracking URI instead of the
fluent ``mlflow.*`` globals: a Ray worker runs many trials in one process, and global "active run"
state would leak between them. The few MLflow calls that only exist in fluent form (model
logging and registration) run inside :func:`_scoped_mlflow_uris`, which restores the globals.

Robustness: tracking is a side channel. In a trial, every MLflow call retries briefly and then the
tracker *degrades* -- one warning, then no-ops -- so a dead tracking server never fails a trial.
On the driver, :meth:`StudyTracker.start` is strict (a study should not start untracked by
accident) and the rest degrades the same way.

This module must not import Ray: the Tune layer imports it, not the other way round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from msdn_tune.errors import ConfigError, TrackingError

if TYPE_CHECKING:
    import torch
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's own limits (mlflow/utils/validation.py in 3.17): longer values are rejected or cut.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_TAG_VALUE = 8000
MAX_ERROR_TAG = 5000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

CHAMPION_ALIAS = "champion"
UNREACHABLE_HINT = (
    "start one with `msdn-tune ui` (local SQLite store) or "
    "`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, "
    "or pass another --tracking-uri"
)
DEGRADED_MESSAGE = "tracking server unreachable, continuing without tracking"

TRIAL_STATUSES = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "failed": "FAILED",
    "killed": "KILLED",
}
_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MlflowException codes that mean "this request is wrong", not "the server is gone": retrying
# cannot help, and they must not switch tracking off for the rest of the trial.
_CLIENT_ERRORS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "BAD_REQUEST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)


# --- store URIs ----------------------------------------------------------------------------------


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths resolved against the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(raw) if raw.startswith("/") else Path.cwd() / raw


def default_tracking_uri(cwd: Path | None = None) -> str:
    """``sqlite:///<abs cwd>/mlflow.db``: MLflow 3's own default, made absolute.

    Absolute because Ray runs each trial in its own working directory: a relative SQLite path
    would give every trial a private, empty database.
    """
    base = (cwd or Path.cwd()).resolve()
    return f"sqlite:///{base / 'mlflow.db'}"


def _normalise_uri(uri: str) -> str:
    uri = uri.strip()
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        path, sep, query = rest.partition("?")
        if not path.startswith("/"):
            path = str((Path.cwd() / path).resolve())
        return f"sqlite:///{path}{sep}{query}"
    if "://" in uri or uri.startswith("file:"):
        allow_files = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")
        if uri.startswith("file:") and not allow_files:
            raise TrackingError(
                f"tracking URI {uri!r}: MLflow >= 3.13 refuses the file store; use "
                "sqlite:///path/to/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)"
            )
        return uri.rstrip("/") if _is_http(uri) else uri
    # a bare path: a *.db file means SQLite; a directory would be the refused file store
    if uri.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{(Path.cwd() / uri).resolve()}"
    raise TrackingError(
        f"tracking URI {uri!r}: expected sqlite:///path/mlflow.db, http(s)://host:port or a "
        "database URI; a plain directory would be MLflow's file store, which MLflow >= 3.13 refuses"
    )


def resolve_tracking_uri(cli: str | None = None, space: str | None = None) -> str:
    """The tracking URI to use: ``cli`` > the space file's value > ``$MLFLOW_TRACKING_URI`` >
    :func:`default_tracking_uri`.

    Relative SQLite paths are made absolute against the current directory (see
    :func:`default_tracking_uri` for why); a relative path in a space file is therefore relative
    to where ``msdn-tune`` is run, not to the space file.
    """
    for candidate in (cli, space, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate and candidate.strip():
            return _normalise_uri(candidate)
    return default_tracking_uri()


@contextlib.contextmanager
def _quick_http(timeout_s: float = 10.0, max_retries: int = 0) -> Iterator[None]:
    """Make MLflow's HTTP client fail in seconds instead of its default ~4 minutes of retries.

    MLflow reads these variables on every request (mlflow/utils/rest_utils.py), so setting them
    around a call is enough. Values the user set explicitly are respected.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
    }
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, pw = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and pw:
        import base64

        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    return {}


def _probe_http(uri: str, timeout_s: float) -> str | None:
    """GET /health, then /version; None when the server answers, else the reason it did not."""
    reason = "no answer"
    for path in ("/health", "/version"):
        req = urllib.request.Request(uri.rstrip("/") + path, headers=_auth_headers())
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
                if resp.status == 200:
                    return None
                reason = f"HTTP {resp.status} from {path}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} from {path}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))
    return reason


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with the URI and a hint, when the tracking store cannot be used.

    http(s): the server must answer ``/health`` (or ``/version``) and one API call within
    ``timeout_s``. SQLite: the database's directory must exist and be writable (the file itself
    is created on first use). Other database URIs are left to MLflow.
    """
    if _is_http(uri):
        reason = _probe_http(uri, timeout_s)
        if reason is not None:
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); {UNREACHABLE_HINT}"
            )
        try:
            with _quick_http(timeout_s):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not usable"
            raise TrackingError(
                f"the server at {uri} answers /health but its MLflow API failed ({exc}); "
                "is it an MLflow tracking server?"
            ) from exc
        return
    db = _sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise TrackingError(
                f"tracking URI {uri}: directory {db.parent} does not exist; create it or pass "
                "another --tracking-uri"
            )
        target = db if db.exists() else db.parent
        if not os.access(target, os.W_OK):
            raise TrackingError(f"tracking URI {uri}: {target} is not writable")
        return
    if uri.startswith("file:"):
        _normalise_uri(uri)  # raises unless the file store is explicitly allowed


# --- experiments ---------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "experiment"


def _artifact_location(uri: str, name: str, artifact_root: Path | str | None) -> str | None:
    """Where a new experiment's artifacts go; None lets an HTTP server decide (proxied)."""
    if artifact_root is None:
        if _is_http(uri):
            return None  # the server's --artifacts-destination, reachable from every node (B9)
        db = _sqlite_path(uri)
        root: Path | str = (db.parent if db else Path.cwd()) / "mlartifacts"
    else:
        root = artifact_root
    if isinstance(root, str) and "://" in root:
        return f"{root.rstrip('/')}/{_slug(name)}"
    return (Path(root).resolve() / _slug(name)).as_uri()


def seed_sqlite_store(db: Path) -> bool:
    """Start a new SQLite tracking store as a copy of an empty, fully migrated one.

    MLflow makes a new SQLite store by running every schema migration it has, 130-odd Alembic
    scripts taking about 2 s, on the first use of each database file: every new study folder,
    every test. The schema they produce is the same each time for one MLflow and SQLAlchemy, so
    it is built once into the cache and copied. The copy holds the schema only; MLflow adds its
    Default experiment, with this store's paths, when it first opens it, as for a new file. An
    existing file is never touched, and any failure leaves the new file to MLflow. Returns True
    when the store was seeded.
    """
    if db.exists():
        return False
    part = db.with_name(f".{db.name}.{os.getpid()}.part")
    try:
        import sqlite3

        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables

        from msdn_tune.cache import cache_root

        versions = (f"{mlflow.__version__}-sqlalchemy{sqlalchemy.__version__}"
                    f"-sqlite{sqlite3.sqlite_version}")
        template = cache_root() / "mlflow" / f"schema-{versions}.db"
        if not template.exists():
            template.parent.mkdir(parents=True, exist_ok=True)
            tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
            try:
                engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
                try:
                    _initialize_tables(engine)
                finally:
                    engine.dispose()
                os.replace(tmp, template)  # whole or absent, whoever finishes first
            finally:
                tmp.unlink(missing_ok=True)
        shutil.copyfile(template, part)
        os.link(part, db)  # fails if another process made the store meanwhile: theirs stands
        return True
    except Exception as exc:  # noqa: BLE001 - MLflow then builds the store itself
        logger.debug("not seeding %s from the cached MLflow schema: %s", db, exc)
        return False
    finally:
        part.unlink(missing_ok=True)


def ensure_experiment(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The id of experiment ``name``, created if needed (restored if it was deleted).

    Local stores get an explicit artifact location (``<db dir>/mlartifacts/<name>``) because
    MLflow's default is ``./mlruns`` relative to whichever process happens to create it. A new
    SQLite store starts from the cached schema (:func:`seed_sqlite_store`).
    """
    db = _sqlite_path(uri)
    if db is not None:
        seed_sqlite_store(db)
    client = MlflowClient(tracking_uri=uri)
    try:
        with _quick_http():
            exp = client.get_experiment_by_name(name)
            if exp is None:
                try:
                    return client.create_experiment(
                        name, artifact_location=_artifact_location(uri, name, artifact_root)
                    )
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # lost a creation race
                        raise
                    exp = client.get_experiment_by_name(name)
                    assert exp is not None
            if exp.lifecycle_stage == "deleted":
                logger.warning(
                    "restoring deleted MLflow experiment %r (id %s)", name, exp.experiment_id
                )
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
    except Exception as exc:  # noqa: BLE001 - any store failure is a TrackingError
        raise TrackingError(
            f"MLflow experiment {name!r} at {uri} cannot be created or read ({exc}); "
            f"{UNREACHABLE_HINT}"
        ) from exc


# --- params and metrics --------------------------------------------------------------------------


def _clean_key(key: str) -> str:
    key = re.sub(r"[^\w.\- :/]", "_", key)
    key = re.sub(r"/+", "/", key).strip("/")
    return key


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """Turn config values (Paths, numpy scalars, tuples...) into YAML/JSON-safe plain types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and callable(value.item):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts flattened with '.', values as strings cut to MLflow's 6000 characters.

    Keys are cleaned to MLflow's allowed characters; keys longer than MLflow's limit are dropped
    with a warning rather than cut, since two cut keys could collide.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, full))
            continue
        plain = _plain(value)
        text = plain if isinstance(plain, str) else json.dumps(plain)
        k = _clean_key(full)
        if not k or len(k) > MAX_KEY:
            logger.warning(
                "param key %r is empty or longer than %d characters; not logged", full, MAX_KEY
            )
            continue
        out[k] = _truncate(text, MAX_PARAM_VALUE)
    return out


def _finite_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Numeric, finite metrics only: MLflow stores NaN/inf, but charts and sorting break on them."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[_clean_key(str(key))] = v
    return out


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- robustness ----------------------------------------------------------------------------------


class _Guard:
    """Runs MLflow calls: a few quick retries, then tracking is switched off with one warning.

    Client errors (a rejected key, a missing run) are logged and skipped without retrying or
    switching off. Anything else -- connection refused, timeouts, "database is locked" after the
    retries -- means the store is unusable for now, and a trial must keep training regardless.
    """

    def __init__(
        self, uri: str, attempts: int = 3, backoff_s: tuple[float, ...] = (0.5, 1.0)
    ) -> None:
        self.uri = uri
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.dead = False

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        if self.dead:
            return None
        last: BaseException | None = None
        for attempt in range(self.attempts):
            try:
                with _quick_http():
                    return fn(*args, **kwargs)
            except MlflowException as exc:
                if exc.error_code in _CLIENT_ERRORS:
                    logger.warning("MLflow rejected %s: %s", getattr(fn, "__name__", fn), exc)
                    return None
                last = exc
            except Exception as exc:  # noqa: BLE001 - tracking must never fail the trial
                last = exc
            if attempt < self.attempts - 1:
                time.sleep(self.backoff_s[min(attempt, len(self.backoff_s) - 1)])
        self.dead = True
        logger.warning("%s (%s: %s)", DEGRADED_MESSAGE, self.uri, last)
        return None


def _strict(uri: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call MLflow; any failure becomes a :class:`TrackingError` naming the store."""
    try:
        with _quick_http():
            return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any store failure is a TrackingError
        raise TrackingError(
            f"MLflow call {getattr(fn, '__name__', fn)} at {uri} failed: {exc}"
        ) from exc


def _log_params(
    guard: _Guard, client: MlflowClient, run_id: str, params: Mapping[str, str]
) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for chunk in _chunks(items, _PARAMS_PER_BATCH):
        guard(client.log_batch, run_id, params=chunk)


def _new_params(
    existing: Mapping[str, str], wanted: Mapping[str, str], what: str
) -> dict[str, str]:
    """Params not logged yet. MLflow params are immutable: a changed value cannot be re-logged."""
    changed = [k for k, v in wanted.items() if k in existing and existing[k] != v]
    if changed:
        logger.warning(
            "%s: params %s already logged with other values; MLflow keeps the first values",
            what,
            changed[:10],
        )
    return {k: v for k, v in wanted.items() if k not in existing}


# --- the study (driver side) ---------------------------------------------------------------------


def _package_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "ray", "optuna", "mlflow", "msdn-tune"):
        try:
            out[dist] = _pkg_version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _git_info(cwd: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the git checkout at ``cwd``; empty outside a repo or without git."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    info = {"mlflow.source.git.commit": commit}
    if status is not None:
        info["msdn_tune.git_dirty"] = str(bool(status)).lower()
    return info


class StudyTracker:
    """The study's parent run, owned by the driver; a resumed study reopens the same run."""

    def __init__(self, uri: str, experiment: str, *, artifact_root: Path | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.experiment_id: str = ensure_experiment(uri, experiment, artifact_root)
        self.parent_run_id: str | None = None
        self._client = MlflowClient(tracking_uri=uri)
        self._guard = _Guard(uri)
        self.finish_grace_s = 15.0  # see close_stale_children

    @property
    def degraded(self) -> bool:
        """True once a call failed for good; the failure has then been warned about once."""
        return self._guard.dead

    def unreachable(self, timeout_s: float = 5.0) -> str | None:
        """Why the store cannot be used right now, or None when it can.

        Checked before the end-of-study logging: a server that went away during a long study
        then costs one warning and a few seconds instead of a retry loop per call.
        """
        if not _is_http(self.uri):
            try:
                check_tracking(self.uri, timeout_s)
            except TrackingError as exc:
                return str(exc)
            return None
        reason = _probe_http(self.uri, timeout_s)
        if reason is not None:
            return reason
        try:
            with _quick_http(timeout_s):
                self._client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable now"
            return _truncate(str(exc), 300)
        return None

    def start(
        self,
        study_name: str,
        *,
        parent_run_id: str | None = None,
        space_file: Path | None = None,
        resolved_config: Mapping[str, Any],
        search_settings: Mapping[str, Any],
    ) -> str:
        """Create (or reopen, given ``parent_run_id``) the parent run and log the study setup.

        Logs the space file, the resolved config (artifact ``resolved_config.yaml`` and flattened
        params), the search settings (``search_settings.yaml`` and ``search.*`` params), package
        versions and the git commit. Reopening sets the run RUNNING again, counts the resume in
        the tag ``msdn_tune.resumes`` and only logs params that are not there yet (MLflow params
        are immutable); call :meth:`close_stale_children` next to close the trial runs the
        crashed driver left RUNNING.
        Strict: an unusable store raises :class:`TrackingError` before any trial starts.
        """
        c, uri = self._client, self.uri
        run: Run | None = None
        if parent_run_id:
            try:
                run = _strict(uri, c.get_run, parent_run_id)
            except TrackingError as exc:
                logger.warning(
                    "cannot reopen parent run %s (%s); creating a new one", parent_run_id, exc
                )
        tags = {
            "msdn_tune.study": study_name,
            "msdn_tune.kind": "study",
            **{f"msdn_tune.version.{k}": v for k, v in _package_versions().items()},
            **_git_info(),
        }
        if run is None:
            run = _strict(uri, c.create_run, self.experiment_id, run_name=study_name, tags=tags)
            existing: dict[str, str] = {}
        else:
            _strict(uri, c.update_run, run.info.run_id, status="RUNNING")
            resumes = int(run.data.tags.get("msdn_tune.resumes", "0")) + 1
            tags["msdn_tune.resumes"] = str(resumes)
            _strict(uri, c.log_batch, run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            existing = dict(run.data.params)
        run_id = run.info.run_id
        self.parent_run_id = run_id

        params = {**flatten_params(resolved_config), **flatten_params(search_settings, "search")}
        for chunk in _chunks(
            list(_new_params(existing, params, f"study {study_name}").items()), _PARAMS_PER_BATCH
        ):
            _strict(uri, c.log_batch, run_id, params=[Param(k, v) for k, v in chunk])
        dump = yaml.safe_dump
        _strict(
            uri,
            c.log_text,
            run_id,
            dump(_plain(resolved_config), sort_keys=False),
            "resolved_config.yaml",
        )
        _strict(
            uri,
            c.log_text,
            run_id,
            dump(_plain(search_settings), sort_keys=False),
            "search_settings.yaml",
        )
        if space_file is not None:
            _strict(uri, c.log_artifact, run_id, str(space_file))
        return run_id

    def child_runs(self) -> list[Run]:
        """All (non-deleted) child runs of the parent, any status, oldest first."""
        if self.parent_run_id is None:
            return []
        runs: list[Run] = []
        token = None
        while True:
            page = self._guard(
                self._client.search_runs,
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            if page is None:
                return runs
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def close_stale_children(self, grace_s: float = 0.0) -> int:
        """End child runs left RUNNING (crashed driver, killed worker); returns how many.

        Call it when no trial of the study runs any more. ``grace_s``: how long to let trials
        end their own runs first -- Tune can report a trial finished while its worker is still
        in the trial's final ``finally`` (sending the last metrics, then ending the run). A run
        whose trial already tagged its outcome ends with that outcome's status; others are
        tagged ``killed`` and end KILLED.
        """
        deadline = time.monotonic() + grace_s
        while True:
            running = [r for r in self.child_runs() if r.info.status == "RUNNING"]
            if not running or time.monotonic() >= deadline or self._guard.dead:
                break
            time.sleep(0.5)
        n = 0
        for run in running:
            outcome = run.data.tags.get("msdn_tune.status", "running")
            if outcome not in TRIAL_STATUSES:
                outcome = "killed"
                self._guard(self._client.set_tag, run.info.run_id, "msdn_tune.status", outcome)
            self._guard(self._client.set_terminated, run.info.run_id, TRIAL_STATUSES[outcome])
            n += 0 if self._guard.dead else 1
        return n

    def _trash_lost_children(self, trial_ids: set[str]) -> None:
        lost = [
            r for r in self.child_runs() if r.data.tags.get("msdn_tune.trial_id") not in trial_ids
        ]
        for run in lost:
            self._guard(self._client.set_tag, run.info.run_id, "msdn_tune.status", "lost")
            self._guard(self._client.delete_run, run.info.run_id)
        if lost and not self._guard.dead:
            logger.warning(
                "moved %d MLflow run(s) of trials the study lost (killed before Tune recorded "
                "them) to the trash: %s",
                len(lost),
                ", ".join(r.data.tags.get("msdn_tune.trial_id", "?") for r in lost),
            )

    def finish(
        self,
        *,
        best_metrics: Mapping[str, float] | None,
        best_trial_id: str | None,
        artifacts: Iterable[Path] = (),
        status: str = "FINISHED",
        trial_ids: Iterable[str] | None = None,
    ) -> None:
        """Close stale children, log the best trial's metrics and the result files, end the run.

        ``trial_ids``: the study's trials as Tune finally knows them. A child run of any other
        trial belongs to a trial that Tune lost -- it was running when the driver was killed,
        before Tune's experiment state recorded it, and the resumed study replaced it. Such runs
        are tagged ``msdn_tune.status=lost`` and moved to MLflow's trash (restorable), so the
        study keeps exactly one child run per trial.
        """
        if status not in _RUN_STATUSES:
            raise ValueError(f"status must be one of {_RUN_STATUSES}, got {status!r}")
        if self.parent_run_id is None:
            return
        run_id, c, g = self.parent_run_id, self._client, self._guard
        # an interrupted study's trials were stopped abruptly: wait less for them
        self.close_stale_children(
            grace_s=self.finish_grace_s if status == "FINISHED" else min(3.0, self.finish_grace_s)
        )
        if trial_ids is not None:
            self._trash_lost_children({str(t) for t in trial_ids})
        metrics = [Metric(k, v, _now_ms(), 0) for k, v in _finite_metrics(best_metrics).items()]
        tags = [RunTag("msdn_tune.status", status.lower())]
        if best_trial_id is not None:
            tags.append(RunTag("msdn_tune.best_trial_id", str(best_trial_id)))
        g(c.log_batch, run_id, metrics=metrics[:_METRICS_PER_BATCH], tags=tags)
        for path in map(Path, artifacts):
            if path.is_dir():
                g(c.log_artifacts, run_id, str(path), path.name)
            elif path.exists():
                g(c.log_artifact, run_id, str(path))
            else:
                logger.warning("study artifact %s does not exist; not logged", path)
        g(c.set_terminated, run_id, status)


def log_files(
    uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None
) -> list[str]:
    """Log local files as artifacts of an existing run (finished runs included); strict.

    For ``msdn-tune report``, which adds plots to a study's parent run after the fact. Returns
    the artifact paths written; any failure is a :class:`TrackingError` naming the store.
    """
    client = MlflowClient(tracking_uri=uri)
    _strict(uri, client.get_run, run_id)  # a clear error for a wrong or deleted run first
    written = []
    for path in map(Path, paths):
        _strict(uri, client.log_artifact, run_id, str(path), artifact_path)
        written.append(f"{artifact_path}/{path.name}" if artifact_path else path.name)
    return written


# --- one trial (worker side) ---------------------------------------------------------------------


class _MetricSender:
    """Sends queued epoch metrics from a daemon thread through the trial's guard.

    What piles up while a request is in flight goes out in the next request (chunked to
    MLflow's batch limit), so a store that is slower than an epoch costs fewer calls, not a
    growing backlog; metrics keep the timestamps of the epochs that produced them.
    """

    def __init__(self, guard: _Guard, client: MlflowClient, run_id: str) -> None:
        self._guard, self._client, self._run_id = guard, client, run_id
        self._cv = threading.Condition()
        self._queue: list[Metric] = []
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="msdn-mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: list[Metric]) -> None:
        with self._cv:
            self._queue.extend(metrics)
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return  # closed and drained
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                for chunk in _chunks(batch, _METRICS_PER_BATCH):
                    self._guard(self._client.log_batch, self._run_id, metrics=chunk)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout_s: float) -> bool:
        """Send what is queued, then end the thread; False if that took longer than allowed."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("MLflow metrics still unsent after %.0f s; not waiting", timeout_s)
            return False
        return True


class TrialTracker:
    """A trial's child run, written from the trial's own process.

    ``run_id`` given: continue that run (a trial restored from a checkpoint keeps one run; params
    already there are not logged again). Otherwise a new child run is created under
    ``parent_run_id``. If the store is unreachable, ``run_id`` stays None and every method is a
    no-op: the trial trains on, untracked. Epoch metrics are sent by a background thread (see
    :meth:`log_epoch`); :meth:`finish` sends what is left before it ends the run.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        *,
        trial_id: str,
        trial_name: str,
        study: str,
        params: Mapping[str, Any],
        run_id: str | None = None,
    ) -> None:
        # An inherited MLFLOW_RUN_ID overrides parent_run_id in fluent code (mlflow/mlflow#15713)
        # and would make every trial of a worker write into one run.
        os.environ.pop("MLFLOW_RUN_ID", None)
        self.uri = uri
        self.run_id: str | None = None
        self._client = MlflowClient(tracking_uri=uri)
        self._guard = _Guard(uri)
        self._finished = False
        self._last_step = 0
        self._last_logged: dict[str, tuple[int, float]] = {}  # key -> (step, value)
        self._sender: _MetricSender | None = None
        self.flush_timeout_s = 60.0
        self._logged_through = 0  # epochs already in a continued run are not logged again
        flat = flatten_params(params)
        c, g = self._client, self._guard

        if not run_id:
            # A trial interrupted before its first checkpoint restarts without our run id: find
            # its run by trial id so a restart never creates a second child run.
            found = g(
                c.search_runs,
                [experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                f"tags.`msdn_tune.trial_id` = '{trial_id}'",
                max_results=1,
            )
            run_id = found[0].info.run_id if found else None
        if run_id:
            run = g(c.get_run, run_id)
            if run is not None:
                self.run_id = run_id
                history = g(c.get_metric_history, run_id, "epoch") or []
                self._logged_through = max((m.step for m in history), default=0)
                g(c.update_run, run_id, status="RUNNING")
                restarts = int(run.data.tags.get("msdn_tune.restarts", "0")) + 1
                g(
                    c.log_batch,
                    run_id,
                    tags=[
                        RunTag("msdn_tune.restarts", str(restarts)),
                        RunTag("msdn_tune.status", "running"),
                    ],
                )
                _log_params(g, c, run_id, _new_params(run.data.params, flat, f"trial {trial_name}"))
                return
            if not g.dead:
                logger.warning(
                    "MLflow run %s of trial %s not found; starting a new run", run_id, trial_name
                )

        tags = {
            "mlflow.parentRunId": parent_run_id,
            "msdn_tune.trial_id": str(trial_id),
            "msdn_tune.study": study,
            "msdn_tune.kind": "trial",
            "msdn_tune.status": "running",
        }
        run = g(c.create_run, experiment_id, run_name=trial_name, tags=tags)
        if run is not None:
            self.run_id = run.info.run_id
            _log_params(g, c, self.run_id, flat)

    @property
    def active(self) -> bool:
        """Whether calls still reach MLflow (False once degraded or finished)."""
        return self.run_id is not None and not self._guard.dead and not self._finished

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Queue one epoch's metrics at ``step=epoch``; NaN/inf and non-numbers are dropped.

        A background thread sends them: one ``log_batch`` per epoch, or one for several epochs
        when the store lags behind, so that a slow or busy tracking server never holds up
        training. Epochs a continued run already holds are skipped.
        """
        epoch = int(epoch)
        self._last_step = epoch
        if not self.active or epoch <= self._logged_through:
            return
        ts = _now_ms()
        finite = _finite_metrics(metrics)
        self._last_logged.update({k: (epoch, v) for k, v in finite.items()})
        if self._sender is None:
            assert self.run_id is not None
            self._sender = _MetricSender(self._guard, self._client, self.run_id)
        self._sender.put([Metric(k, v, ts, epoch) for k, v in finite.items()])

    def catch_up(self, history: Iterable[Mapping[str, Any]]) -> int:
        """Log the epochs of a restored trainer's ``history`` (metric dicts with an ``epoch``
        key) that a continued run does not hold yet; returns how many.

        Epoch metrics are sent in the background, so a worker that dies right after persisting a
        checkpoint may not have sent that epoch; the restarted trial restores it from the
        checkpoint and does not train it again.
        """
        n = 0
        for metrics in history:
            epoch = int(metrics.get("epoch", 0) or 0)
            if epoch > self._logged_through:
                self.log_epoch(metrics, epoch)
                n += 1
        return n

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until the queued epochs are sent (or dropped by a degraded tracker)."""
        return self._sender is None or self._sender.flush(timeout_s)

    def finish(
        self,
        status: str,
        *,
        final_metrics: Mapping[str, float] | None = None,
        error: str | None = None,
    ) -> None:
        """End the run: ``status`` in completed/early_stopped/failed/killed becomes the tag
        ``msdn_tune.status`` and the MLflow status FINISHED/FINISHED/FAILED/KILLED.

        ``final_metrics`` are logged at the last epoch's step, except values ``log_epoch``
        already logged there. Idempotent: only the first call counts."""
        if status not in TRIAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(TRIAL_STATUSES)}, got {status!r}")
        if self._finished:
            return
        self._finished = True
        if self._sender is not None:  # the epochs first: the final values come after them
            self._sender.close(self.flush_timeout_s)
        if self.run_id is None or self._guard.dead:
            return
        tags = [RunTag("msdn_tune.status", status)]
        if error:
            tags.append(RunTag("msdn_tune.error", _truncate(str(error), MAX_ERROR_TAG)))
        ts = _now_ms()
        step = self._last_step
        # a final value identical to the one log_epoch just wrote at this step would only add a
        # duplicate point to the metric's history
        # (and a restarted trial re-reporting its last epoch logged it in the earlier attempt)
        metrics = [
            Metric(k, v, ts, step)
            for k, v in _finite_metrics(final_metrics).items()
            if self._last_logged.get(k) != (step, v) and step > self._logged_through
        ]
        self._guard(
            self._client.log_batch, self.run_id, metrics=metrics[:_METRICS_PER_BATCH], tags=tags
        )
        self._guard(self._client.set_terminated, self.run_id, TRIAL_STATUSES[status])


# --- the champion model --------------------------------------------------------------------------


@contextlib.contextmanager
def _scoped_mlflow_uris(uri: str) -> Iterator[None]:
    """Point MLflow's fluent tracking and registry URIs at ``uri`` for a block, then restore them.

    ``mlflow.pytorch.log_model``/``load_model`` and ``mlflow.register_model`` only read the
    globals. Restoring uses the module variables MLflow keeps them in (3.17) and the env vars
    ``set_tracking_uri`` exports, so a caller's own configuration survives.
    """
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_trk = getattr(trk_utils, "_tracking_uri", None)
    saved_reg = getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        if hasattr(trk_utils, "_tracking_uri"):
            trk_utils._tracking_uri = saved_trk
        if hasattr(reg_utils, "_registry_uri"):
            reg_utils._registry_uri = saved_reg
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise one library logger's level for a block."""
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(saved)


def registered_model_name(dataset: str) -> str:
    """``msdn-<dataset>``, with characters a registry name should not hold replaced by '-'."""
    return f"msdn-{_slug(dataset)}"


def _pip_requirements() -> list[str]:
    # Explicit and short: inferring requirements costs ~4 s per log_model (docs/search.md S4). The
    # msdn_tune code itself travels in code_paths, so only its runtime dependencies are listed.
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _version_tags(version: Any) -> dict[str, str]:
    return dict(getattr(version, "tags", None) or {})


def log_champion(
    uri: str,
    *,
    model: torch.nn.Module,
    dataset: str,
    study: str,
    trial_id: str,
    run_id: str,
    metric: str,
    value: float,
    mode: str = "max",
    checkpoint: str | None = None,
    extra_tags: Mapping[str, Any] | None = None,
    force_promote: bool = False,
) -> dict[str, Any]:
    """Log ``model`` under the trial's run, register it as ``msdn-<dataset>``, maybe promote it.

    The model is saved with ``serialization_format="pickle"`` plus the msdn_tune package in
    ``code_paths``: MSDN's forward takes keyword options and returns a dataclass, which the
    default ``pt2`` (torch.export) format cannot take without an input example. Pickle runs code
    when loaded, which is acceptable here because the user's own study created the model; only
    load registry models you (or your team) logged.

    The alias ``champion`` moves to the new version when there is no champion yet, or the new
    ``value`` is better (``mode``) on the *same* metric and benchmark (the version tag
    ``benchmark``: ``dataset``, or ``extra_tags["benchmark"]`` when given), or ``force_promote``.
    Values of different metrics are never compared. Returns ``{"name", "version", "promoted",
    "previous", "previous_value", "model_uri"}`` (``previous``: the champion version before,
    or None). Not atomic: promote from one process (the driver).
    """
    import mlflow.pytorch

    if mode not in ("max", "min"):
        raise ConfigError(f"champion mode must be 'max' or 'min', got {mode!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"champion {metric} value must be finite, got {value}")
    name = registered_model_name(dataset)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = {
        "study": study,
        "trial_id": str(trial_id),
        "metric": metric,
        "value": repr(value),
        "mode": mode,
        "benchmark": dataset,
        "run_id": run_id,
        **({"checkpoint": checkpoint} if checkpoint else {}),
        **{str(k): str(v) for k, v in (extra_tags or {}).items()},
    }
    tags = {k: _truncate(v, MAX_TAG_VALUE) for k, v in tags.items()}
    benchmark = tags["benchmark"]  # extra_tags may name the benchmark more precisely
    try:
        with _quick_http(timeout_s=60.0), _scoped_mlflow_uris(uri):
            run = client.get_run(run_id)
            # Created explicitly in the run's experiment: without an active fluent run,
            # log_model would file the LoggedModel under the default experiment "0".
            logged = client.create_logged_model(
                run.info.experiment_id,
                name="model",
                source_run_id=run_id,
                tags={"msdn_tune.study": study, "msdn_tune.trial_id": str(trial_id)},
            )
            with warnings.catch_warnings(), _quiet_logger("mlflow.pytorch"):
                # pickle is chosen on purpose (see above): its generic caution is noise here
                warnings.simplefilter("ignore", FutureWarning)
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    serialization_format="pickle",
                    pip_requirements=_pip_requirements(),
                    code_paths=[str(_package_dir())],
                    model_id=logged.model_id,
                    run_id=run_id,
                )
            version = mlflow.register_model(info.model_uri, name, tags=tags)
            try:
                previous = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
                previous = None
            prev_tags = _version_tags(previous)
            try:
                prev_value = float(prev_tags["value"]) if previous is not None else None
            except (KeyError, ValueError):
                prev_value = None
            comparable = (
                previous is not None
                and prev_value is not None
                and prev_tags.get("metric") == metric
                and prev_tags.get("benchmark") == benchmark
            )
            better = comparable and (value > prev_value if mode == "max" else value < prev_value)
            promoted = bool(force_promote or previous is None or better)
            if promoted:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    except MlflowException as exc:
        raise TrackingError(
            f"cannot log or register the champion model {name!r} at {uri}: {exc}"
        ) from exc
    return {
        "name": name,
        "version": str(version.version),
        "promoted": promoted,
        "previous": None if previous is None else str(previous.version),
        "previous_value": prev_value,
        "model_uri": f"models:/{name}/{version.version}",
    }


def load_model(
    model_uri: str, *, tracking_uri: str | None = None, map_location: str | None = "cpu"
) -> torch.nn.Module:
    """Load a logged model, e.g. ``models:/msdn-cub@champion`` or ``runs:/<run_id>/model``.

    Uses ``tracking_uri`` (default :func:`resolve_tracking_uri`) for the store and registry.
    The model is unpickled (see :func:`log_champion`): load only models your own studies logged.
    ``map_location`` defaults to the CPU so a model trained on a GPU loads anywhere.
    """
    import mlflow.pytorch

    uri = tracking_uri or resolve_tracking_uri()
    try:
        with _quick_http(timeout_s=60.0), _scoped_mlflow_uris(uri):
            return mlflow.pytorch.load_model(model_uri, map_location=map_location)
    except MlflowException as exc:
        raise TrackingError(f"cannot load model {model_uri!r} from {uri}: {exc}") from exc


# --- the MLflow UI -------------------------------------------------------------------------------


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
    if _is_http(uri):
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
    db = _sqlite_path(uri)
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
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            start_ui_command(uri, host, port),
            cwd=cwd,
            env=ui_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()  # the child holds its own descriptor


def wait_ui(proc: subprocess.Popen, url: str, timeout_s: float = 90.0) -> None:
    """Wait for ``url``/health; :class:`TrackingError` if the server exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(
                f"mlflow server exited with code {proc.returncode} before {url} answered"
            )
        if _probe_http(url, 2.0) is None:
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
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, _interrupt)
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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- warm starts from an earlier study's MLflow experiment --------------------------------------


def trial_rows_from_experiment(uri: str, experiment: str) -> list[Any]:
    """The trials of an earlier study as results rows, read from its MLflow experiment.

    For `--warm-start` when only the tracking store is left (the study folder was on another
    machine or is gone). Parameters come back as the YAML scalars they were logged as; the
    outcome comes from each child run's `msdn_tune.status` tag.
    """
    from msdn_tune.trials import TrialRow

    client = MlflowClient(tracking_uri=uri)
    exp = _strict(uri, client.get_experiment_by_name, experiment)
    if exp is None:
        raise TrackingError(f"--warm-start {experiment}: no study folder and no MLflow "
                            f"experiment of that name in {uri}")
    runs = _strict(uri, client.search_runs, [exp.experiment_id],
                   filter_string="tags.`msdn_tune.kind` = 'trial'", max_results=10000)
    rows = []
    for run in runs:
        params: dict[str, Any] = {}
        for key, raw in run.data.params.items():
            try:
                params[key] = yaml.safe_load(raw)
            except yaml.YAMLError:
                params[key] = raw
        tags = run.data.tags
        rows.append(TrialRow(
            trial_id=tags.get("msdn_tune.trial_id", run.info.run_id),
            status=tags.get("msdn_tune.status", "unknown"), params=params,
            metrics=dict(run.data.metrics), epochs_run=int(run.data.metrics.get("epoch", 0)),
            epochs_total=int(params.get("epochs", 0) or 0), error=tags.get("msdn_tune.error"),
            checkpoint=None, mlflow_run_id=run.info.run_id))
    return rows
