"""msdn-tune's MLflow adapter: the only package that imports mlflow.

Code outside it imports these names from here, not from the modules inside, so the package is
free to arrange its modules. Its modules, lowest first: ``guard`` (how a call fails: quickly,
then raised or degraded), ``store`` (URIs, reachability, new SQLite stores, experiments),
``params`` (what MLflow accepts), ``runs`` (the study's parent run and the trials' child runs),
``registry`` (the champion model), ``history`` (trials read back), ``ui`` (the MLflow server
and the addresses of a study's pages).

Importing this package imports mlflow (about 1 s): `msdn-tune run` does it in the thread that
works while Ray starts, so nothing on its start-up path imports it at module level.
"""

from msdn_tune.integrations.mlflow.history import (
    NOT_A_TRIAL_RUN,
    TrialRun,
    trial_rows_from_experiment,
    trial_run,
)
from msdn_tune.integrations.mlflow.reconcile import Reconciliation, reconcile_trials
from msdn_tune.integrations.mlflow.registry import (
    load_model,
    log_champion,
    prepare_model_logging,
    register_imported,
)
from msdn_tune.integrations.mlflow.runs import StudyTracker, TrialTracker, log_files
from msdn_tune.integrations.mlflow.store import check_tracking, resolve_tracking_uri
from msdn_tune.integrations.mlflow.ui import (
    Champion,
    LatestStudy,
    latest_study,
    model_version_page,
    runs_page,
    serve_ui,
    start_ui,
    stop_ui,
    wait_ui,
)

__all__ = [
    "NOT_A_TRIAL_RUN",
    "Champion",
    "LatestStudy",
    "Reconciliation",
    "StudyTracker",
    "TrialRun",
    "TrialTracker",
    "check_tracking",
    "latest_study",
    "load_model",
    "log_champion",
    "log_files",
    "model_version_page",
    "prepare_model_logging",
    "reconcile_trials",
    "register_imported",
    "resolve_tracking_uri",
    "runs_page",
    "serve_ui",
    "start_ui",
    "stop_ui",
    "trial_rows_from_experiment",
    "trial_run",
    "wait_ui",
]
