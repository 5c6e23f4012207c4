"""Study results without Ray: trial rows and outcomes, the trials table (parquet), the best trial
or Pareto front, and the study's own metadata file.

The rows come from the study folder's Tune experiment (msdn_tune.integrations.ray.experiment's
`load_trials`) or from an MLflow experiment (warm starts); everything here works on the rows
alone, so it sits below the adapters. Column names equal the Tune config keys (parameters) and
the reported metric names, which are also the MLflow names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msdn_tune.errors import MsdnTuneError
from msdn_tune.space import StudySpec, parse_space

STUDY_FILE = "msdn_study.json"
TRIALS_FILE = "trials.parquet"
_METRIC_PREFIXES = ("train/", "val/", "best/", "test/", "eval/", "time/")


def trial_outcome(result: dict[str, Any] | None, error: bool = False) -> str:
    """completed, early_stopped or failed, from a trial's last result."""
    if error or not result:
        return "failed"
    if result.get("trial/diverged"):
        return "failed"
    epoch = float(result.get("epoch", 0))
    total = float(result.get("epochs_total", math.inf))
    return "completed" if epoch >= total else "early_stopped"


@dataclass
class TrialRow:
    """One trial as the results table shows it."""

    trial_id: str
    status: str  # completed, early_stopped, failed, running, pending
    params: dict[str, Any]
    metrics: dict[str, float]
    epochs_run: int
    epochs_total: int
    error: str | None
    checkpoint: str | None
    mlflow_run_id: str | None

    def as_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"trial_id": self.trial_id, "status": self.status,
                               "epochs_run": self.epochs_run, "epochs_total": self.epochs_total}
        rec.update(self.params)
        rec.update(self.metrics)
        rec.update({"error": self.error, "checkpoint": self.checkpoint,
                    "mlflow_run_id": self.mlflow_run_id})
        return rec


def study_dir(study: str | Path, storage_path: str | Path | None = None) -> Path:
    """Resolve a study given as a folder, or as a name under the storage path."""
    p = Path(study)
    if (p / STUDY_FILE).exists() or list(p.glob("experiment_state-*.json")):
        return p.resolve()
    if storage_path is not None:
        q = Path(storage_path) / str(study)
        if (q / STUDY_FILE).exists():
            return q.resolve()
    raise MsdnTuneError(f"{study}: not a study folder (no {STUDY_FILE} or Ray experiment state "
                        f"there{'' if storage_path is None else f' or under {storage_path}'})")


def read_study_meta(path: Path) -> dict[str, Any]:
    """The study's own metadata written by `msdn-tune run` (space, tracking ids, data)."""
    f = path / STUDY_FILE
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise MsdnTuneError(f"{f}: corrupt study metadata ({exc})") from None


def study_space(study: str | Path, storage_path: str | Path | None = None
                ) -> tuple[Path, StudySpec]:
    """A study's folder and the search space it ran with (from its msdn-tune metadata)."""
    path = study_dir(study, storage_path)
    meta = read_study_meta(path)
    if "space" not in meta:
        raise MsdnTuneError(f"{path}: no msdn-tune study metadata (was it made by msdn-tune run?)")
    return path, parse_space(meta["space"], source=str(path))


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics a trials row keeps from a reported result: numeric values under our metric
    prefixes (train/, val/, best/, test/, eval/, time/), not ids, flags or counters."""
    return {k: float(v) for k, v in result.items()
            if k.startswith(_METRIC_PREFIXES) and isinstance(v, int | float)
            and not isinstance(v, bool)}


def trials_table(rows: list[TrialRow]) -> pa.Table:
    """One row per trial; parameters and metrics as columns."""
    records = [r.as_record() for r in rows]
    keys: list[str] = []
    for rec in records:
        keys.extend(k for k in rec if k not in keys)
    return pa.Table.from_pylist([{k: rec.get(k) for k in keys} for rec in records])


def write_parquet(rows: list[TrialRow], out: str | Path) -> Path:
    """Write the trials table with pyarrow (atomically)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(trials_table(rows), tmp)
    tmp.replace(out)
    return out


def best_trials(rows: list[TrialRow], objectives: list[tuple[str, str]]) -> list[TrialRow]:
    """Best completed trial (single objective) or the Pareto front (several).

    Only trials that ran to the end count: an early-stopped trial's value is a low-fidelity
    estimate and would make the comparison meaningless.
    """
    done = [r for r in rows if r.status == "completed"
            and all(_finite(r.metrics.get(m)) for m, _ in objectives)]
    if not done:
        return []

    def signed(r: TrialRow, m: str, mode: str) -> float:
        v = r.metrics[m]
        return v if mode == "max" else -v

    if len(objectives) == 1:
        m, mode = objectives[0]
        return [max(done, key=lambda r: signed(r, m, mode))]
    front = []
    for r in done:
        dominated = any(
            all(signed(o, m, md) >= signed(r, m, md) for m, md in objectives)
            and any(signed(o, m, md) > signed(r, m, md) for m, md in objectives)
            for o in done)
        if not dominated:
            front.append(r)
    return front


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
