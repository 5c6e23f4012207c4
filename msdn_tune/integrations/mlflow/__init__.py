"""msdn-tune's MLflow adapter: the only package that imports mlflow.

Code outside it imports these names from here, not from the modules inside, so the package is
free to arrange its modules.
"""

from msdn_tune.integrations.mlflow.tracking import (
    StudyTracker,
    TrialTracker,
    check_tracking,
    load_model,
    log_champion,
    log_files,
    resolve_tracking_uri,
    serve_ui,
    start_ui,
    stop_ui,
    trial_rows_from_experiment,
    wait_ui,
)

__all__ = [
    "StudyTracker",
    "TrialTracker",
    "check_tracking",
    "load_model",
    "log_champion",
    "log_files",
    "resolve_tracking_uri",
    "serve_ui",
    "start_ui",
    "stop_ui",
    "trial_rows_from_experiment",
    "wait_ui",
]
