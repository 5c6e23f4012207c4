"""The `msdn-tune ui` use case: which MLflow store to browse, and serving a UI for it.

A tracking server (an http(s) URI) already is a UI, so nothing is started for it; a local store
(SQLite, a folder) gets an MLflow UI process in the foreground. The URI is resolved the same way
a study resolves it, so `msdn-tune ui` with no option shows the store `msdn-tune run` wrote to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from msdn_tune.integrations import mlflow as tracking


@dataclass(frozen=True)
class UiStore:
    """The MLflow store to browse."""

    uri: str
    is_server: bool
    """An http(s) tracking server, checked reachable: open it in a browser, start nothing."""


def ui_store(tracking_uri: str | None) -> UiStore:
    """Resolve `tracking_uri` (else $MLFLOW_TRACKING_URI, else ./mlflow.db).

    A server is checked at once (raises a clear error when it does not answer); a local store is
    checked by :func:`serve` when it starts the UI.
    """
    uri = tracking.resolve_tracking_uri(cli=tracking_uri)
    is_server = uri.startswith(("http://", "https://"))
    if is_server:
        tracking.check_tracking(uri)
    return UiStore(uri=uri, is_server=is_server)


def serve(store: UiStore, host: str, port: int, *, on_ready: Callable[[str], None]) -> int:
    """Serve the MLflow UI for a local store until Ctrl-C; `on_ready` gets its URL; exit code."""
    return tracking.serve_ui(store.uri, host, port, on_ready=on_ready)
