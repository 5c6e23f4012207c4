"""Tracking URIs, reachability, new SQLite stores and experiments (integrations/mlflow/store)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    check_tracking,
    default_tracking_uri,
    ensure_experiment,
    resolve_tracking_uri,
    seed_sqlite_store,
)
from tests.helpers.raynodes import free_port


def test_uri_precedence_and_normalisation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    here = tmp_path.resolve()
    assert default_tracking_uri() == f"sqlite:///{here}/mlflow.db"
    assert resolve_tracking_uri() == f"sqlite:///{here}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000/")
    assert resolve_tracking_uri() == "http://env:5000"
    assert resolve_tracking_uri(space="sqlite:///rel/s.db") == f"sqlite:///{here}/rel/s.db"
    assert resolve_tracking_uri(cli="http://cli:1", space="http://space:2") == "http://cli:1"
    assert resolve_tracking_uri(cli="runs.db") == f"sqlite:///{here}/runs.db"
    with pytest.raises(TrackingError, match="file store"):
        resolve_tracking_uri(cli="./mlruns")


_TABLE_CONSTRAINT = re.compile(r"(CONSTRAINT|CHECK|FOREIGN KEY|PRIMARY KEY|UNIQUE)\b", re.I)


def _table(sql: str) -> tuple[str, list[str], list[str]]:
    """A CREATE TABLE statement as its head, its columns in order, its constraints sorted.

    The order of a table's constraints is not part of its schema, and MLflow's own builds do not
    agree on it: migration cfd24bdc0731 recreates ``runs`` through Alembic's batch mode, which
    copies the table's constraints from a Python set of objects hashed by identity, so the two
    named CHECKs of ``runs`` come out in either order, build by build, even within one process.
    Comparing the statements' text therefore failed about every other time.
    """
    head, _, body = sql.partition("(")
    items, depth, item = [], 0, ""
    for ch in body[: body.rindex(")")]:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(item.strip())
            item = ""
        else:
            item += ch
    items.append(item.strip())
    constraints = sorted(i for i in items if _TABLE_CONSTRAINT.match(i))
    return head.strip(), [i for i in items if not _TABLE_CONSTRAINT.match(i)], constraints


def _schema(db: Path) -> tuple[list, list]:
    """Tables, indexes and triggers of ``db`` (tables as :func:`_table`), and its revision."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        revision = c.execute("SELECT * FROM alembic_version").fetchall()
    objects = sorted(
        (kind, name, table, _table(sql) if kind == "table" and sql else sql)
        for kind, name, table, sql in rows
    )
    return objects, revision


def test_the_schema_comparison_ignores_only_the_order_of_table_constraints():
    check, unique = "CONSTRAINT a CHECK (x IN (1, 2))", "UNIQUE (y)"
    a = f'CREATE TABLE "t" (\n\tx INT, \n\ty INT, \n\t{check}, \n\t{unique}\n)'
    b = f'CREATE TABLE "t" (\n\tx INT, \n\ty INT, \n\t{unique}, \n\t{check}\n)'
    assert _table(a) == _table(b)
    assert _table(a)[1] == ["x INT", "y INT"]
    assert _table(a) != _table(a.replace("x INT, \n\ty INT", "y INT, \n\tx INT"))  # column order
    assert _table(a) != _table(a.replace("(1, 2)", "(1, 3)"))


def test_a_new_sqlite_store_starts_from_the_cached_schema_exactly_as_mlflow_builds_it(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path / "cache"))
    seeded = tmp_path / "seeded.db"
    exp_id = ensure_experiment(f"sqlite:///{seeded}", "s")
    (template,) = (tmp_path / "cache" / "mlflow").glob("schema-*.db")
    assert not [p.name for p in (*tmp_path.glob(".*"), *template.parent.glob(".*"))]
    own = tmp_path / "own.db"
    MlflowClient(f"sqlite:///{own}").search_experiments()  # MLflow runs its migrations itself
    assert _schema(seeded) == _schema(own)  # up to the order of constraints: see _table
    exps = {e.name: e for e in MlflowClient(f"sqlite:///{seeded}").search_experiments()}
    assert set(exps) == {"Default", "s"}  # MLflow added Default on opening the copy
    assert exps["s"].experiment_id == exp_id
    assert exps["s"].artifact_location == (tmp_path / "mlartifacts" / "s").as_uri()

    built = template.stat().st_mtime_ns
    assert seed_sqlite_store(tmp_path / "second.db")  # copied, not built again
    assert template.stat().st_mtime_ns == built
    assert not seed_sqlite_store(seeded)  # an existing store is never replaced
    assert "s" in {e.name for e in MlflowClient(f"sqlite:///{seeded}").search_experiments()}


def test_a_store_that_cannot_be_seeded_is_left_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "m.db"
    assert not seed_sqlite_store(db)
    assert not db.exists() and not list(tmp_path.glob(".*"))
    ensure_experiment(f"sqlite:///{db}", "x")
    assert "x" in {e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()}


def _experiment_tags(server: str, experiment_id: str) -> dict[str, str]:
    """An experiment's tags as MLflow's REST API serves them to its UI."""
    url = f"{server}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - our own test server
        experiment = json.load(resp)["experiment"]
    return {t["key"]: t["value"] for t in experiment.get("tags", [])}


@pytest.mark.slow  # a real server or Ray head: the fast tier starts none
def test_a_study_experiment_is_marked_model_training_new_or_reused(server):
    """The UI's experiment-kind tag: set on a new experiment, added to a reused (or restored)
    one that lacks it, and a kind someone chose is kept."""
    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == (
        "mlflow.experimentKind", "custom_model_development")
    new = ensure_experiment(server, "kind-new")
    assert _experiment_tags(server, new)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    client = MlflowClient(server)
    old = client.create_experiment("kind-old")  # as studies made them before the tag
    gone = client.create_experiment("kind-deleted")
    client.delete_experiment(gone)
    chosen = client.create_experiment(
        "kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in _experiment_tags(server, old)
    assert ensure_experiment(server, "kind-old") == old  # a resumed study reuses its experiment
    assert ensure_experiment(server, "kind-deleted") == gone
    assert ensure_experiment(server, "kind-chosen") == chosen
    assert _experiment_tags(server, old)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert _experiment_tags(server, gone)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(gone).lifecycle_stage == "active"
    assert _experiment_tags(server, chosen)[EXPERIMENT_KIND_TAG] == "genai_development"


def test_check_tracking_fails_fast_with_a_clear_error(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(TrackingError) as err:
        check_tracking(uri)
    assert time.perf_counter() - t0 < 10
    assert uri in str(err.value) and "msdn-tune ui" in str(err.value)
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # writable directory: fine


# --- the URI checked as text, before Ray starts (issue 14) --------------------------------------


def test_our_scheme_list_is_the_tracking_stores_mlflow_registers():
    """The text check (integrations/tracking_uri.py, no MLflow import) must accept exactly what
    MLflow's own registry has a store for; private API, checked against mlflow 3.17.2."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from msdn_tune.integrations.tracking_uri import MLFLOW_SCHEMES, _plugin_schemes

    assert set(_tracking_store_registry._registry) == MLFLOW_SCHEMES | _plugin_schemes()


def test_an_unknown_scheme_or_an_unusable_local_store_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "afile").write_text("mine")
    for uri, expected in [
        ("bogus://x", "no tracking store for the scheme 'bogus:'"),
        ("Z" * 500 + "://x", "no tracking store"),
        ("sqlite:////proc/m.db", "cannot create or open"),
        (f"sqlite:///{tmp_path}/afile/m.db", "does not exist"),
        (f"sqlite:///{tmp_path}", "not a database file"),
        (f"sqlite:///{tmp_path}/{'n' * 300}.db", "longer than 255"),
        ("file:///tmp/mlruns", "file store"),
        ("http://[::1", "not a valid URL"),
    ]:
        with pytest.raises(TrackingError) as err:
            check_tracking(resolve_tracking_uri(cli=uri), timeout_s=1)
        text = str(err.value)
        assert expected in text and "\n" not in text and len(text) < 600, (uri, text)
    for uri in ("postgresql+psycopg2://u@h/db", "databricks", "databricks-uc", "https://h:1"):
        assert resolve_tracking_uri(cli=uri)  # accepted as text; reachability is later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # probes leave nothing
