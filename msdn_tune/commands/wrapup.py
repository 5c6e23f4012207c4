"""A study's MLflow record at its end: the trials' runs reconciled with their own results, the
plots, the champion model, the parent run closed.

One concept: the tracking wrap-up, done by `msdn-tune run` when a study ends and again by
`msdn-tune report` for a study whose tracking store was away at that moment
(msdn_tune.commands.report.catch_up_tracking). Its result, :class:`StudyOutcome`, is what a study
run produced.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import MsdnTuneError
from msdn_tune.integrations.ray.experiment import trial_results
from msdn_tune.integrations.ray.trainable import STATE_FILE
from msdn_tune.space import StudySpec
from msdn_tune.train.config import TrainConfig
from msdn_tune.trials import (
    CONFIRM_DIR,
    SEARCH,
    TRIALS_FILE,
    Confirmed,
    TrialRow,
    write_parquet,
)


@dataclass
class StudyOutcome:
    """What a study run produced, for printing and for tests."""

    path: Path
    complete: bool
    rows: list[TrialRow]
    best: list[TrialRow]
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    champion: dict[str, Any] | None = None
    plots: list[Path] = field(default_factory=list)
    resume_command: str | None = None
    confirmed: list[Confirmed] = field(default_factory=list)
    """The confirmation stage's ranking, best mean first (empty without that stage)."""


def reconcile_study(tracker: Any, space: StudySpec, exp_dir: Path, rows: list[TrialRow],
                    console: Console) -> Any:
    """Bring the study's MLflow record in line with its ended trials' own results (runs created,
    epochs filled, runs left RUNNING closed with the trial's outcome: msdn_tune.integrations.
    mlflow.reconcile); `rows` get the run ids of created runs. Prints what it wrote."""
    # MLflow takes seconds to import: kept off the start-up path of `msdn-tune run`
    from msdn_tune.integrations.mlflow import reconcile_trials

    found = {**trial_results(exp_dir), **trial_results(exp_dir / CONFIRM_DIR)}
    done = reconcile_trials(
        tracker, space.name, rows, {t: r.results for t, r in found.items()},
        {r.trial_id: _trial_settings(space, r) for r in rows},
        {t: r.name for t, r in found.items()})
    for row in rows:
        row.mlflow_run_id = done.run_ids.get(row.trial_id, row.mlflow_run_id)
    if done:
        console.print(done.summary(), soft_wrap=True, markup=False)
    return done


def _trial_settings(space: StudySpec, row: TrialRow) -> dict[str, Any]:
    """A trial's full settings as its run logs them (the trainable's TrainConfig)."""
    settings = {**space.fixed, **{k: v for k, v in row.params.items() if v is not None}}
    try:
        return TrainConfig.from_dict(settings).to_dict()
    except MsdnTuneError:  # settings of an older msdn-tune: logged as they are
        return settings


def finish_tracking(tracker: Any, space: StudySpec, outcome: StudyOutcome,
                    force_promote: bool, console: Console,
                    meta: dict[str, Any]) -> dict[str, Any]:
    """Reconcile the trials' runs, log plots and the champion model (complete studies only),
    close the parent run; returns what the study record (`meta`, as read by the caller, which
    writes it back) keeps of it: `tracking_complete`, the champion.

    The study's results are on disk by now, so a tracking failure here is one warning line, not
    a failed study: a server that went away mid-study is probed once instead of retried per
    call, and the warning says what was not logged and how to log it later (`msdn-tune report`,
    which runs this again). A champion already logged for this study is not logged twice.
    """
    # Optuna takes seconds to import: kept off the start-up path of `msdn-tune run`
    from msdn_tune.integrations.optuna import optuna_study, study_plots

    exp_dir = outcome.path
    artifacts = [exp_dir / TRIALS_FILE]

    def render_plots() -> None:
        try:
            searched = [r for r in outcome.rows if r.stage == SEARCH]  # what Optuna proposed
            outcome.plots = study_plots(optuna_study(space, searched), exp_dir / "plots",
                                        objective_names=[o.metric for o in space.objectives])
        except Exception as exc:  # noqa: BLE001 - plots are a convenience, never fatal
            console.print(f"[yellow]warning: plots failed: {exc}[/yellow]")

    # Plots render beside the champion model's logging (both take a second or two).
    plotter = threading.Thread(target=render_plots, name="study-plots")
    if outcome.complete:
        plotter.start()
    unreachable = tracker.unreachable()
    problem = None
    kept: dict[str, Any] = {"tracking_complete": False}
    if unreachable is None:
        # trials close their own runs as they end; a trial's worker may still be doing so
        tracker.wait_for_children(tracker.finish_grace_s if outcome.complete
                                  else min(3.0, tracker.finish_grace_s))
        if reconcile_study(tracker, space, exp_dir, outcome.rows, console).created:
            write_parquet(outcome.rows, exp_dir / TRIALS_FILE)  # with the new runs' ids
    if outcome.complete:
        if meta.get("champion"):
            outcome.champion = meta["champion"]
        elif unreachable is None and outcome.best and len(space.objectives) == 1:
            try:
                data_path = meta.get("data_path") or space.data
                outcome.champion = promote_best(
                    tracker.uri, space, outcome.best[0], data_path, force_promote=force_promote,
                    confirmed=outcome.confirmed[0] if outcome.confirmed else None)
                if outcome.champion:
                    kept["champion"] = outcome.champion
            except Exception as exc:  # noqa: BLE001 - the study itself succeeded
                problem = f"the best model was not logged ({type(exc).__name__}: {exc})"
        plotter.join()
        if outcome.plots:
            artifacts.append(exp_dir / "plots")
    if unreachable is None:
        best = outcome.best[0] if outcome.best else None
        best_metrics = dict(best.metrics) if best else None
        tags = {}
        if outcome.confirmed and best_metrics is not None:
            top = outcome.confirmed[0]
            best_metrics.update({f"confirm/{top.metric}/mean": top.mean,
                                 f"confirm/{top.metric}/sd": top.sd,
                                 "confirm/seeds": float(top.n)})
            tags["msdn_tune.recommended_trial_id"] = top.source.trial_id
        lost = tracker.finish(best_metrics=best_metrics, tags=tags,
                       best_trial_id=best.trial_id if best else None, artifacts=artifacts,
                       status="FINISHED" if outcome.complete else "KILLED",
                       trial_ids=[r.trial_id for r in outcome.rows] if outcome.complete else None,
                       outcomes={r.trial_id: r.status for r in outcome.rows})
        if lost:
            folders = sorted(str(p) for t in lost for p in exp_dir.glob(f"*{t}*") if p.is_dir())
            console.print(
                f"{len(lost)} trial(s) the killed driver had started before its state recorded "
                f"them ({', '.join(lost)}) were run again under new ids: their MLflow runs are "
                "in the experiment's trash (tagged msdn_tune.status=lost, restorable), their "
                "folders kept" + (f": {', '.join(folders)}" if folders else ""),
                markup=False, soft_wrap=True)
        if tracker.degraded:  # the tracker has said why; what to do about it is said below
            problem = "the tracking store failed during the study's wrap-up (warning above)"
        else:
            kept["tracking_complete"] = problem is None
    else:
        untracked = sum(1 for r in outcome.rows if not r.mlflow_run_id)
        problem = (f"tracking store {tracker.uri} unreachable at the end of the study "
                   f"({unreachable}): not logged: the end of the parent run, the plots"
                   + (", the best model" if outcome.complete else "")
                   + f", and the runs of the trials that ended meanwhile ({untracked} of "
                   f"{len(outcome.rows)} trials have no run at all; others may lack epochs or "
                   "still show RUNNING)")
    if problem:
        console.print(f"warning: {problem}; the study's results are complete in {exp_dir}. "
                      f"Once the store answers, `msdn-tune report {exp_dir}` logs all of it, "
                      "trial runs made from the trials' own results",
                      style="yellow", markup=False, soft_wrap=True)
    return kept


def promote_best(uri: str, space: StudySpec, best: TrialRow, data_path: str, *,
                 force_promote: bool = False,
                 confirmed: Confirmed | None = None) -> dict[str, Any] | None:
    """Log the best completed trial's model and make it champion if it beats the current one.

    With a confirmation stage, `best` is the best seed's run of the configuration with the best
    mean (`confirmed`), and the version's value is that mean over `confirmed.n` seeds (tags
    `seeds`, `sd`): it is compared only with champions measured over as many seeds, since a
    single run's score and a mean over seeds are not the same measurement.
    """
    # MLflow and torch take seconds to import: kept off the start-up path of `msdn-tune run`
    from msdn_tune.integrations.mlflow import log_champion
    from msdn_tune.train.trainer import build_model, load_checkpoint

    if not best.checkpoint or not best.mlflow_run_id:
        return None
    state = load_checkpoint(Path(best.checkpoint) / STATE_FILE)
    cfg = TrainConfig.from_dict(state["config"])
    bench = open_benchmark(data_path)
    model = build_model(cfg, bench)
    model.load_state_dict(state["best_state"] if state.get("best_state") else state["model"])
    model.eval()
    # the settings travel with the logged model (read back by `msdn-tune evaluate`)
    model.__dict__["msdn_tune_config"] = cfg.to_dict()
    model.__dict__["msdn_tune_seen"] = [int(c) for c in bench.seen_classes]  # for `export`
    metric, mode = space.objectives[0].metric, space.objectives[0].mode
    extra: dict[str, Any] = {"benchmark": bench.dataset}
    value = best.metrics[metric]
    if confirmed is not None:
        value = confirmed.mean
        extra.update({"seeds": confirmed.n, "sd": repr(confirmed.sd),
                      "source_trial_id": confirmed.source.trial_id,
                      "seed": best.seed, "seed_value": repr(best.metrics[metric])})
    return log_champion(
        uri, model=model, dataset=cfg.dataset, study=space.name, trial_id=best.trial_id,
        run_id=best.mlflow_run_id, metric=metric, value=value, mode=mode,
        checkpoint=best.checkpoint, extra_tags=extra, force_promote=force_promote)
