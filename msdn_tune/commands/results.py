"""The `msdn-tune results` and `msdn-tune best` use cases: a study's trials, read back from disk.

Both work on a study folder alone (no Ray cluster, no MLflow), found by name under a storage
path or given as a path, so they also serve a study that is still running or was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msdn_tune.integrations.ray.experiment import load_trials
from msdn_tune.trials import TrialRow, best_trials, study_dir, study_space


@dataclass(frozen=True)
class StudyTrials:
    """Every trial of one study folder."""

    path: Path
    rows: list[TrialRow]


@dataclass(frozen=True)
class BestTrials:
    """A study's best completed trial, or its Pareto front when it has several objectives."""

    rows: list[TrialRow]
    """Empty when no trial ran to completion."""
    multi_objective: bool


def study_trials(study: str, storage_path: str) -> StudyTrials:
    """The trials of `study` (a folder, or a name under `storage_path`) with their status."""
    path = study_dir(study, storage_path)
    return StudyTrials(path=path, rows=load_trials(path))


def study_best(study: str, storage_path: str) -> BestTrials:
    """The best completed trials of `study`, ranked by the objectives it was run with."""
    path, space = study_space(study, storage_path)
    objectives = [(o.metric, o.mode) for o in space.objectives]
    return BestTrials(rows=best_trials(load_trials(path), objectives),
                      multi_objective=space.multi_objective)
