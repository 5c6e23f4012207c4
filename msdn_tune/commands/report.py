"""`msdn-tune report`: a finished (or interrupted) study's plots, on demand.

The same plots a study logs when it ends (optimisation history, parameter importances, parallel
coordinates, Pareto front for several objectives), rebuilt from the study folder alone: after
more trials were added by a resume, for a study whose tracking server was away at the end, or
just to get the files locally. They are written to a folder and logged to the study's parent
MLflow run (artifact folder ``plots/``), whose store and id the study folder remembers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from msdn_tune.errors import MsdnTuneError, TrackingError
from msdn_tune.integrations.mlflow import check_tracking, log_files
from msdn_tune.integrations.optuna import optuna_study, study_plots
from msdn_tune.integrations.ray.experiment import load_trials
from msdn_tune.trials import read_study_meta, study_space

PLOTS_ARTIFACT_DIR = "plots"


@dataclass
class Report:
    """What `study_report` produced."""

    study: Path
    out: Path
    plots: list[Path]
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    logged: list[str] = field(default_factory=list)


def study_report(
    study: str | Path,
    *,
    out_dir: str | Path | None = None,
    storage_path: str | Path | None = None,
    log: bool = True,
) -> Report:
    """Render the study's plots into ``out_dir`` (default ``<study>/plots``) and log them.

    Raises :class:`MsdnTuneError` for a folder that is not an msdn-tune study or a study without
    a completed trial (nothing to plot), and :class:`TrackingError` when the plots were written
    but the study's tracking store cannot take them (the message says where they are).
    """
    path, space = study_space(study, storage_path)
    meta = read_study_meta(path)
    rows = load_trials(path)
    if not any(r.status == "completed" for r in rows):
        raise MsdnTuneError(f"{path}: no completed trial yet ({len(rows)} trials), nothing to plot")
    out = Path(out_dir) if out_dir is not None else path / PLOTS_ARTIFACT_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MsdnTuneError(f"--out {out}: cannot create the folder ({exc})") from None
    plots = study_plots(
        optuna_study(space, rows), out, objective_names=[o.metric for o in space.objectives]
    )
    report = Report(
        study=path,
        out=out,
        plots=plots,
        tracking_uri=meta.get("tracking_uri"),
        parent_run_id=meta.get("parent_run_id"),
    )
    if log and plots and report.tracking_uri and report.parent_run_id:
        report.logged = log_plots(report)
    return report


def log_plots(report: Report) -> list[str]:
    """Log ``report.plots`` to the study's parent run under ``plots/``; returns their paths."""
    assert report.tracking_uri and report.parent_run_id
    try:
        check_tracking(report.tracking_uri)
        return log_files(
            report.tracking_uri, report.parent_run_id, report.plots, PLOTS_ARTIFACT_DIR
        )
    except TrackingError as exc:
        raise TrackingError(
            f"the plots are in {report.out} but were not logged to MLflow run "
            f"{report.parent_run_id}: {exc}"
        ) from None
