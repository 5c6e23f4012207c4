"""`msdn-tune report`: a finished (or interrupted) study's plots, on demand.

The same plots a study logs when it ends (optimisation history, parameter importances, parallel
coordinates, Pareto front for several objectives), rebuilt from the study folder alone: after
more trials were added by a resume, for a study whose tracking server was away at the end, or
just to get the files locally. They are written to a folder and logged to the study's parent
MLflow run (artifact folder ``plots/``), whose store and id the study folder remembers. For a
study whose tracking store was away when it ended, `report` also does what that end could not
(:func:`catch_up_tracking`): the trials' runs made whole from their own results, the champion
model, the parent run closed.

The default folder, ``<study>/plots``, is the study's own: its plots are replaced as `run`
replaces them. A folder named with ``--out`` follows :mod:`msdn_tune.outdir`: new, empty or an
earlier report's (marked), else ``--force``, which adds the plots next to what is there when no
plot's name is taken; a file msdn-tune did not write is never overwritten.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from msdn_tune import outdir
from msdn_tune.commands.wrapup import StudyOutcome, finish_tracking
from msdn_tune.errors import ConfigError, MsdnTuneError, TrackingError
from msdn_tune.integrations.mlflow import StudyTracker, check_tracking, log_files
from msdn_tune.integrations.optuna import optuna_study, study_plots
from msdn_tune.integrations.ray.experiment import load_study_trials, load_trials
from msdn_tune.trials import read_study_meta, recommendation, study_space, write_study_meta

PLOTS_ARTIFACT_DIR = "plots"

_PLOT_NAME = re.compile(
    r"(?:(?:history|parallel_coordinate|param_importances)(?:_.*)?|pareto_front)\.(?:png|html)"
    r"|\.msdn-tune-report\.tmp.*",
    re.DOTALL,
)
"""The names a report may write into --out: the plots of `study_plots` (a suffix per objective)
and its temporary folder. A file of such a name that a report did not write is never replaced."""

FORCE_HELP = ("to add the plots next to what is there (refused when a plot's name, e.g. "
              "history.png, is taken: --force never overwrites a file msdn-tune did not write)")
"""What `report --force` does: the end of the message of a refused folder, and its --help."""


def is_plot_name(name: str) -> bool:
    """Whether a report may write a file called `name` (see :data:`_PLOT_NAME`)."""
    return _PLOT_NAME.fullmatch(name) is not None


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
    force: bool = False,
) -> Report:
    """Render the study's plots into ``out_dir`` (default ``<study>/plots``) and log them.

    Raises :class:`MsdnTuneError` for a folder that is not an msdn-tune study or a study without
    a completed trial (nothing to plot), and :class:`TrackingError` when the plots were written
    but the study's tracking store cannot take them (the message says where they are).
    ``out_dir`` other than the study's own ``plots`` folder is checked as the module doc says
    (:class:`ConfigError` when it is someone else's); ``force`` as ``report --force``.
    """
    path, space = study_space(study, storage_path)
    meta = read_study_meta(path)
    rows = load_trials(path)
    if not any(r.status == "completed" for r in rows):
        raise MsdnTuneError(f"{path}: no completed trial yet ({len(rows)} trials), nothing to plot")
    own = path / PLOTS_ARTIFACT_DIR
    out = Path(out_dir) if out_dir is not None else own
    names = [o.metric for o in space.objectives]
    if out.absolute() == own.absolute():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MsdnTuneError(f"--out {out}: cannot create the folder ({exc})") from None
        plots = study_plots(optuna_study(space, rows), out, objective_names=names)
    else:  # checked before the plots are drawn
        target = outdir.inspect(out, command="report", owns=is_plot_name, force=force,
                                force_help=FORCE_HELP)
        plots = _plots_into(target, optuna_study(space, rows), names)
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


def _plots_into(target: outdir.OutDir, study: Any, names: list[str]) -> list[Path]:
    """Draw the plots in a temporary folder inside `target`, then move each into place.

    The names the plots get are only known once drawn, so each is recorded in the folder's
    marker and checked against what is there before it is moved: a file a report did not write
    is never replaced, even one whose name the pattern of :func:`is_plot_name` missed.
    """
    try:
        target.create()
        tmp = Path(tempfile.mkdtemp(prefix=".msdn-tune-report.tmp", dir=target.path))
    except OSError as exc:
        raise MsdnTuneError(f"--out {target.path}: cannot write there ({exc.strerror or exc})"
                            ) from None
    try:
        drawn = study_plots(study, tmp, objective_names=names)
        taken = sorted(p.name for p in drawn
                       if (target.path / p.name).exists() and p.name not in target.ours)
        if taken:
            raise ConfigError(f"--out {target.path}: {', '.join(taken[:3])} there was not "
                              "written by msdn-tune report, and msdn-tune never overwrites such "
                              "files (not even with --force); move it away or choose another "
                              "folder")
        plots = []
        for p in drawn:
            dest = target.claim(p.name)
            p.replace(dest)
            plots.append(dest)
        return plots
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def catch_up_tracking(report: Report, console: Console) -> bool:
    """Finish the study's tracking if the store was away when the study ended; True if it did.

    What the study's own end could not log (its `msdn_study.json` says `tracking_complete:
    false`) is logged now, exactly as the study's end would have: trial runs reconciled with the
    trials' own results (created, filled, closed with their true outcome), plots, the champion
    model of a complete study, and the parent run closed. Raises TrackingError when the store
    still does not answer.
    """
    meta = read_study_meta(report.study)
    if meta.get("tracking_complete") is not False or not report.tracking_uri \
            or not report.parent_run_id:
        return False
    check_tracking(report.tracking_uri)
    space = study_space(report.study)[1]
    tracker = StudyTracker(report.tracking_uri,
                           (space.tracking or {}).get("experiment") or space.name)
    tracker.parent_run_id = report.parent_run_id
    tracker.finish_grace_s = 0.0  # no trial runs now: a run still RUNNING is left over
    rows = load_study_trials(report.study)
    best, confirmed = recommendation(rows, [(o.metric, o.mode) for o in space.objectives])
    outcome = StudyOutcome(
        path=report.study, complete=bool(meta.get("complete")), rows=rows, best=best,
        parent_run_id=report.parent_run_id, tracking_uri=report.tracking_uri,
        confirmed=confirmed)
    kept = finish_tracking(tracker, space, outcome, False, console, meta)
    write_study_meta(report.study, {**meta, **kept})
    if outcome.champion:
        console.print(f"model: {outcome.champion.get('name')} v{outcome.champion.get('version')}",
                      markup=False)
    return bool(kept.get("tracking_complete"))


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
