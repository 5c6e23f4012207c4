"""The `msdn-tune results` and `msdn-tune best` use cases: a study's trials, read back from disk.

Both work on a study folder alone (no Ray cluster, no MLflow), found by name under a storage
path or given as a path, so they also serve a study that is still running or was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from msdn_tune.errors import MsdnTuneError
from msdn_tune.integrations.ray.experiment import load_study_trials
from msdn_tune.trials import (
    CONFIRM,
    Confirmed,
    TrialRow,
    recommendation,
    study_dir,
    study_space,
)


@dataclass(frozen=True)
class StudyTrials:
    """Every trial of one study folder."""

    path: Path
    rows: list[TrialRow]
    confirmed: list[Confirmed] = field(default_factory=list)
    """The confirmation stage's ranking, best mean first (empty without that stage, or when
    the folder has no msdn-tune metadata to name the objective)."""


@dataclass(frozen=True)
class BestTrials:
    """A study's best completed trial, or its Pareto front when it has several objectives."""

    rows: list[TrialRow]
    """Empty when no trial ran to completion."""
    multi_objective: bool
    confirmed: list[Confirmed] = field(default_factory=list)
    """The confirmation stage's ranking, best mean first (empty without that stage); `rows`
    is then the best seed's run of its first configuration."""


def study_trials(study: str, storage_path: str) -> StudyTrials:
    """The trials of `study` (a folder, or a name under `storage_path`) with their status:
    its search trials, then its confirmation trials."""
    path = study_dir(study, storage_path)
    rows = load_study_trials(path)
    confirmed: list[Confirmed] = []
    if any(r.stage == CONFIRM for r in rows):
        try:
            space = study_space(path)[1]
        except MsdnTuneError:  # a bare Tune folder: the trials, without a ranking
            space = None
        if space is not None:
            _, confirmed = recommendation(rows, [(o.metric, o.mode) for o in space.objectives])
    return StudyTrials(path=path, rows=rows, confirmed=confirmed)


def study_best(study: str, storage_path: str) -> BestTrials:
    """What `study` recommends: by the confirmation stage's mean over fresh seeds when it has
    one, else its best completed trial (or Pareto front) by the objectives it was run with."""
    path, space = study_space(study, storage_path)
    objectives = [(o.metric, o.mode) for o in space.objectives]
    best, confirmed = recommendation(load_study_trials(path), objectives)
    return BestTrials(rows=best, multi_objective=space.multi_objective, confirmed=confirmed)
