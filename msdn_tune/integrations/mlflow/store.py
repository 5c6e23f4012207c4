"""The tracking store: which URI, whether it answers, a new SQLite file, the study's experiment.

Everything msdn-tune does in MLflow starts here: :func:`resolve_tracking_uri` picks the store
(made absolute, because Ray runs each trial in its own working directory), :func:`check_tracking`
fails in seconds with a hint when it cannot be used, :func:`seed_sqlite_store` starts a new SQLite
file from a cached migrated schema instead of MLflow's 2 s of migrations, and
:func:`ensure_experiment` finds or creates the study's experiment with an explicit artifact
location. What needs no MLflow call (the URI's precedence, normalisation, scheme and SQLite
folder) is msdn_tune.integrations.tracking_uri, re-exported here, so that `msdn-tune run` can
check a URI before Ray starts without importing MLflow.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from msdn_tune.cache import cache_root
from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.guard import quick_http
from msdn_tune.integrations.tracking_uri import (
    MLFLOW_SCHEMES,
    UNREACHABLE_HINT,
    check_local_store,
    check_server_answers,
    default_tracking_uri,
    is_http,
    probe_http,
    resolve_tracking_uri,
    sqlite_path,
)
from msdn_tune.safeload import shorten

logger = logging.getLogger(__name__)

# --- URIs (text only: msdn_tune.integrations.tracking_uri, which needs no MLflow) ------------

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MLFLOW_SCHEMES",
    "check_local_store",
    "check_tracking",
    "default_tracking_uri",
    "ensure_experiment",
    "is_http",
    "probe_http",
    "resolve_tracking_uri",
    "seed_sqlite_store",
    "slug",
    "sqlite_path",
]


# --- reachability (the probe itself needs no MLflow: msdn_tune.integrations.tracking_uri) -------


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with the URI and a hint, when the tracking store cannot be used.

    http(s): the server must answer ``/health`` (or ``/version``) and one API call within
    ``timeout_s``. SQLite: the database's directory must exist and take a new file (the file
    itself is created on first use; :func:`check_local_store`). Other URIs: their scheme must be
    one MLflow has a store for; the rest is left to MLflow.
    """
    if is_http(uri):
        check_server_answers(uri, timeout_s)
        try:
            with quick_http(timeout_s):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not usable"
            raise TrackingError(
                f"the server at {shorten(uri)} answers /health but its MLflow API failed ({exc}); "
                "is it an MLflow tracking server?"
            ) from exc
        return
    if sqlite_path(uri) is not None:
        check_local_store(uri)
        return
    resolve_tracking_uri(uri)  # an unknown scheme, or the refused file store, raises


# --- a new SQLite store --------------------------------------------------------------------------


def seed_sqlite_store(db: Path) -> bool:
    """Start a new SQLite tracking store as a copy of an empty, fully migrated one.

    MLflow makes a new SQLite store by running every schema migration it has, 130-odd Alembic
    scripts taking about 2 s, on the first use of each database file: every new study folder,
    every test. The schema they produce is the same each time for one MLflow and SQLAlchemy, up
    to the order in which one migration writes the CHECK constraints of ``runs`` (Alembic copies
    them from a set, so MLflow's own builds differ in that order too), so it is built once into
    the cache and copied. The copy holds the schema only; MLflow adds its Default experiment,
    with this store's paths, when it first opens it, as for a new file. An existing file is never
    touched, and any failure leaves the new file to MLflow. Returns True when the store was seeded.
    """
    if db.exists():
        return False
    part = db.with_name(f".{db.name}.{os.getpid()}.part")
    try:
        # Imported here, not at the top: only a new SQLite store needs them, never a Ray worker
        # (0.3 s each), nor the start of `msdn-tune run` with a tracking server.
        import sqlalchemy
        from mlflow.store.db.utils import (
            _initialize_tables,  # private API of mlflow, checked against mlflow 3.17.2
        )

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


# --- experiments ---------------------------------------------------------------------------------


def slug(text: str) -> str:
    """``text`` with every run of characters a folder or registry name should not hold as '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "experiment"


# MLflow's UI reads this experiment tag for what kind of work an experiment holds: with
# "genai_development", or none, it may open the experiment on a GenAI overview of traces, which a
# study has none of. Checked against mlflow 3.17.2, whose UI lets its global GenAI / Model
# training switch decide instead (the runs address `msdn-tune ui` prints names that switch);
# the tag is what MLflow's own experiment-kind selector writes, and what a UI without that
# switch goes by.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _artifact_location(uri: str, name: str, artifact_root: Path | str | None) -> str | None:
    """Where a new experiment's artifacts go; None lets an HTTP server decide (proxied)."""
    if artifact_root is None:
        if is_http(uri):
            return None  # the server's --artifacts-destination, reachable from every node
        db = sqlite_path(uri)
        root: Path | str = (db.parent if db else Path.cwd()) / "mlartifacts"
    else:
        root = artifact_root
    if isinstance(root, str) and "://" in root:
        return f"{root.rstrip('/')}/{slug(name)}"
    return (Path(root).resolve() / slug(name)).as_uri()


def ensure_experiment(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The id of experiment ``name``, created if needed (restored if it was deleted).

    Local stores get an explicit artifact location (``<db dir>/mlartifacts/<name>``) because
    MLflow's default is ``./mlruns`` relative to whichever process happens to create it. A new
    SQLite store starts from the cached schema (:func:`seed_sqlite_store`).

    The experiment is marked as model training (:data:`EXPERIMENT_KIND`), also when an
    existing one (a resumed study, an experiment made before the mark) lacks the tag; a kind
    someone chose in the UI is left alone.
    """
    db = sqlite_path(uri)
    if db is not None:
        seed_sqlite_store(db)
    client = MlflowClient(tracking_uri=uri)
    try:
        with quick_http():
            exp = client.get_experiment_by_name(name)
            if exp is None:
                try:
                    return client.create_experiment(
                        name,
                        artifact_location=_artifact_location(uri, name, artifact_root),
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
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
            if EXPERIMENT_KIND_TAG not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
    except Exception as exc:  # noqa: BLE001 - any store failure is a TrackingError
        raise TrackingError(
            f"MLflow experiment {name!r} at {uri} cannot be created or read ({exc}); "
            f"{UNREACHABLE_HINT}"
        ) from exc
