"""The `msdn-tune ui` use case: which MLflow store to browse, and serving a UI for it.

A tracking server (an http(s) URI) already is a UI, so nothing is started for it; a local store
(SQLite, a folder) gets an MLflow UI process in the foreground. The URI is resolved the same way
a study resolves it, so `msdn-tune ui` with no option shows the store `msdn-tune run` wrote to.
Besides the UI's address, :func:`study_pages` gives the addresses of the latest study's runs
table and of its benchmark's champion: MLflow 3.17's UI opens an experiment on a GenAI overview
of traces, and hides the model registry, until its GenAI / Model training switch is turned, so
these addresses go straight to the pages a study is looked at for.
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


@dataclass(frozen=True)
class StudyPages:
    """The latest study's pages in the UI: what `msdn-tune ui` prints besides the UI itself."""

    study: str
    experiment: str
    runs: str
    """The runs table of the study's experiment: the parent run, with its trials nested."""
    champion: str | None
    """The champion of the study's benchmark, e.g. "msdn-synthetic version 3"; None if none."""
    champion_study: str | None
    """The study that registered the champion (maybe an earlier one of the same benchmark)."""
    champion_page: str | None


def study_pages(ui_url: str) -> StudyPages | None:
    """The latest study's runs table and champion as addresses on the UI at ``ui_url``.

    The server at ``ui_url`` is read, so the addresses name what that UI shows: the local store's
    UI once it answers, or a tracking server as it is. None when it holds no study; raises
    :class:`TrackingError` when it cannot be read.
    """
    latest = tracking.latest_study(ui_url)
    if latest is None:
        return None
    champ = latest.champion
    return StudyPages(
        study=latest.study,
        experiment=latest.experiment_name,
        runs=tracking.runs_page(ui_url, latest.experiment_id),
        champion=None if champ is None else f"{champ.name} version {champ.version}",
        champion_study=None if champ is None else champ.study,
        champion_page=(None if champ is None
                       else tracking.model_version_page(ui_url, champ.name, champ.version)),
    )
