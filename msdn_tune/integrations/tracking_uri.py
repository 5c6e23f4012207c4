"""The MLflow tracking URI as text: which one, made absolute, its scheme and local folder checked,
all without importing MLflow.

`msdn-tune run` must refuse a bad ``--tracking-uri`` before Ray starts, and importing MLflow takes
over a second, which the driver spends while Ray starts instead (msdn_tune._startup, trick 1).
So everything about a URI that needs no MLflow call lives here, and the MLflow adapter
(msdn_tune.integrations.mlflow.store) re-exports it and adds what does (reachability of a server,
experiments). The schemes are the tracking stores MLflow registers itself
(:data:`MLFLOW_SCHEMES`, compared with MLflow's registry by tests/integrations/mlflow/test_store.py)
and those of installed MLflow plugins (entry point group ``mlflow.tracking_store``).
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

from msdn_tune.errors import TrackingError
from msdn_tune.safeload import shorten

MLFLOW_SCHEMES = frozenset({
    "", "file", "http", "https", "databricks", "databricks-uc", "uc",
    "sqlite", "postgresql", "mysql", "mssql",
})
"""The tracking-store schemes MLflow itself registers (mlflow 3.17.2); database schemes may carry
a driver (``postgresql+psycopg2``)."""

PLUGIN_GROUP = "mlflow.tracking_store"

UNREACHABLE_HINT = (
    "start one with `msdn-tune ui` (local SQLite store) or "
    "`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, "
    "or pass another --tracking-uri"
)

#: How long a tracking server gets to answer before a study refuses to start.
PROBE_TIMEOUT_S = 5.0

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
_PATH_MAX = 4095


def is_http(uri: str) -> bool:
    """Whether ``uri`` names a tracking server rather than a database."""
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
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


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register (read from package metadata, no import)."""
    return {ep.name for ep in entry_points(group=PLUGIN_GROUP)}


def _check_scheme(uri: str) -> None:
    match = _SCHEME_RE.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme.split("+", 1)[0] in MLFLOW_SCHEMES or scheme in _plugin_schemes():
        return
    raise TrackingError(
        f"tracking URI {shorten(uri)}: MLflow has no tracking store for the scheme "
        f"{shorten(scheme + ':', 40)}; expected sqlite:///path/mlflow.db, http(s)://host:port, "
        "databricks, or a database URI (postgresql://, mysql://, mssql://)"
    )


def _normalise_uri(uri: str) -> str:
    uri = uri.strip()
    if "\x00" in uri:
        raise TrackingError(f"tracking URI {shorten(uri)}: holds a NUL character")
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        path, sep, query = rest.partition("?")
        if not path.startswith("/"):
            path = str((Path.cwd() / path).resolve())
        return f"sqlite:///{path}{sep}{query}"
    if uri in ("databricks", "databricks-uc"):  # Databricks' default profile
        return uri
    if "://" in uri or uri.startswith("file:"):
        _check_scheme(uri)
        allow_files = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")
        if uri.startswith("file:") and not allow_files:
            raise TrackingError(
                f"tracking URI {shorten(uri)}: MLflow >= 3.13 refuses the file store; use "
                "sqlite:///path/to/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)"
            )
        return uri.rstrip("/") if is_http(uri) else uri
    # a bare path: a *.db file means SQLite; a directory would be the refused file store
    if uri.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{(Path.cwd() / uri).resolve()}"
    raise TrackingError(
        f"tracking URI {shorten(uri)}: expected sqlite:///path/mlflow.db, http(s)://host:port or "
        "a database URI; a plain directory would be MLflow's file store, which MLflow >= 3.13 "
        "refuses"
    )


def resolve_tracking_uri(cli: str | None = None, space: str | None = None) -> str:
    """The tracking URI to use: ``cli`` > the space file's value > ``$MLFLOW_TRACKING_URI`` >
    :func:`default_tracking_uri`.

    Relative SQLite paths are made absolute against the current directory (see
    :func:`default_tracking_uri` for why); a relative path in a space file is therefore relative
    to where ``msdn-tune`` is run, not to the space file. An unknown scheme, or the file store
    MLflow refuses, raises :class:`TrackingError`.
    """
    for candidate in (cli, space, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate and candidate.strip():
            return _normalise_uri(candidate)
    return default_tracking_uri()


def check_local_store(uri: str) -> None:
    """Refuse a SQLite store MLflow could not create or open, naming the file and why.

    The database's folder must exist, the file (if there) must be a regular file, and the folder
    must take a new file: tried by creating and removing a temporary one, because a permission
    check says yes to root everywhere, /proc included. Other URIs are left alone.
    """
    db = sqlite_path(uri)
    if db is None:
        return
    where = f"tracking URI {shorten(uri)}"
    raw = os.fsencode(str(db))
    if len(raw) > _PATH_MAX or any(len(part) > _NAME_MAX for part in raw.split(b"/")):
        raise TrackingError(f"{where}: a name in the path is longer than {_NAME_MAX} bytes")
    try:
        if not db.parent.is_dir():
            raise TrackingError(
                f"{where}: folder {shorten(str(db.parent))} does not exist; create it or pass "
                "another --tracking-uri"
            )
        if db.exists():
            if not db.is_file():
                raise TrackingError(f"{where}: {shorten(str(db))} is not a database file")
            with open(db, "rb"):  # readable; MLflow says itself if it is not a database
                pass
            return
        fd, probe = tempfile.mkstemp(prefix=".msdn-tune-probe-", dir=db.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrackingError(
            f"{where}: cannot create or open the database there ({exc.strerror or exc})"
        ) from None


# --- reachability of a tracking server (plain HTTP, no MLflow) ---------------------------------


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, pw = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and pw:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    return {}


def probe_http(uri: str, timeout_s: float) -> str | None:
    """GET /health, then /version; None when the server answers, else the reason it did not."""
    reason = "no answer"
    for path in ("/health", "/version"):
        try:
            req = urllib.request.Request(uri.rstrip("/") + path, headers=_auth_headers())
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
                if resp.status == 200:
                    return None
                reason = f"HTTP {resp.status} from {path}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} from {path}"
        except (urllib.error.URLError, OSError) as exc:
            return shorten(str(getattr(exc, "reason", exc)), 200)
        except ValueError as exc:  # a malformed host or port (bad IPv6 brackets, IDNA labels)
            return f"not a valid URL ({shorten(str(exc), 120)})"
    return reason


def check_server_answers(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, in one line and within `timeout_s` per request, a tracking server that does not
    answer; a no-op for a URI that is not http(s)."""
    if not is_http(uri):
        return
    reason = probe_http(uri, timeout_s)
    if reason is not None:
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {shorten(uri)} within {timeout_s:g} s "
            f"({reason}); {UNREACHABLE_HINT}")
