"""Bringing a study's MLflow record in line with what its trials did.

A tracking server that goes away in the middle of a study costs the study nothing (trials
degrade to untracked, docs/search.md D), but it leaves the record wrong: trials without a run,
runs still RUNNING whose trials ended long ago, epochs missing from the runs it has. The trials'
own results are complete all the same: Tune's driver writes every reported result to the trial's
folder whatever happens to the server. :func:`reconcile_trials` writes from them what the store
lacks, once the store answers again (at the end of the study, on `msdn-tune report`, on
`--resume`): a run for each ended trial that has none (params, every epoch's metrics at its
step, status), the missing epochs of the runs it has, and the status each trial really had for
runs left RUNNING. It never touches a trial that has not ended (a resumed trial continues its own
run) and never logs an epoch a run already holds, so running it twice changes nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Run, RunTag

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.params import (
    MAX_ERROR_TAG,
    METRICS_PER_BATCH,
    chunks,
    flatten_params,
    log_params,
    now_ms,
    truncate,
)
from msdn_tune.integrations.mlflow.runs import TRIAL_STATUSES, StudyTracker
from msdn_tune.trials import TrialRow, result_metrics, stage_tags

logger = logging.getLogger(__name__)

#: Keys of a reported result that a trial's run logs besides `result_metrics`' prefixed ones.
_COUNTERS = ("epoch", "epochs_total")


@dataclass
class Reconciliation:
    """What :func:`reconcile_trials` wrote; empty when the record was already complete."""

    created: list[str] = field(default_factory=list)  # trial ids given a run
    closed: dict[str, str] = field(default_factory=dict)  # trial id -> outcome, was RUNNING
    epochs: int = 0  # epochs logged that the store lacked
    run_ids: dict[str, str] = field(default_factory=dict)  # trial id -> run, for `created`

    def __bool__(self) -> bool:
        return bool(self.created or self.closed or self.epochs)

    def summary(self) -> str:
        """One line for the console: what was written, from where."""
        parts = []
        if self.created:
            parts.append(f"created {len(self.created)} missing trial run(s)")
        if self.closed:
            parts.append(f"closed {len(self.closed)} run(s) left RUNNING with their trials' "
                         "outcomes (" + ", ".join(sorted(set(self.closed.values()))) + ")")
        if self.epochs:
            parts.append(f"logged {self.epochs} missing epoch(s)")
        return "tracking reconciled from the trials' own results: " + "; ".join(parts)


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The finite metrics one reported result puts in a trial's run, as the trial logs them."""
    out = result_metrics(dict(result))
    out.update({k: float(result[k]) for k in _COUNTERS
                if isinstance(result.get(k), int | float) and not isinstance(result[k], bool)})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def reconcile_trials(tracker: StudyTracker, study: str, rows: Sequence[TrialRow],
                     results: Mapping[str, Sequence[Mapping[str, Any]]],
                     params: Mapping[str, Mapping[str, Any]],
                     names: Mapping[str, str] | None = None) -> Reconciliation:
    """Write what the store lacks of the ended trials in `rows` (see the module docstring).

    `results`: each trial's reported results in order (its result.json); `params`: each trial's
    full settings, as a trial logs them; `names`: run names (Tune's trial names). The tracker's
    parent run must be set. Calls degrade like the tracker's own (one warning, then nothing).
    """
    done = Reconciliation()
    if tracker.parent_run_id is None:
        return done
    client, guard = tracker._client, tracker._guard  # one adapter: the tracker's own client
    runs: dict[str, Run] = {}
    try:  # a partial listing would make a second run for each trial it missed
        children = tracker.child_runs(complete=True)
    except TrackingError as exc:
        logger.warning("tracking not reconciled: the trials' runs cannot be listed (%s)", exc)
        return done
    for child in children:
        runs.setdefault(child.data.tags.get("msdn_tune.trial_id", ""), child)
    for row in rows:
        if row.status not in TRIAL_STATUSES or guard.dead:
            continue  # running or pending: the resumed trial continues its own run
        run: Run | None = runs.get(row.trial_id)
        if run is not None and run.info.status != "RUNNING":
            continue  # closed by its trial (or an earlier reconciliation)
        if run is None:
            created: Run | None = guard(
                client.create_run, tracker.experiment_id,
                run_name=(names or {}).get(row.trial_id, f"trial_{row.trial_id}"),
                tags={"mlflow.parentRunId": tracker.parent_run_id,
                      "msdn_tune.trial_id": row.trial_id, "msdn_tune.study": study,
                      "msdn_tune.kind": "trial", "msdn_tune.status": "running",
                      "msdn_tune.reconciled": "true",
                      **stage_tags(row.stage, row.source_trial_id, row.seed)})
            if created is None:
                break
            run = created
            log_params(guard, client, run.info.run_id,
                       flatten_params(dict(params.get(row.trial_id) or row.params)))
            done.created.append(row.trial_id)
            done.run_ids[row.trial_id] = run.info.run_id
            logged_through = 0
        else:
            history = guard(client.get_metric_history, run.info.run_id, "epoch")
            if history is None:  # not known what it holds: logging all would double epochs
                continue
            logged_through = max((int(m.step) for m in history), default=0)
        run_id = run.info.run_id
        metrics, seen = [], set()
        ts = now_ms()
        for result in results.get(row.trial_id, ()):
            step = int(result.get("epoch", 0) or 0)
            if step <= logged_through or step in seen:
                continue  # a restarted trial reports an epoch again: its first value counts
            seen.add(step)
            metrics += [Metric(k, v, ts, step) for k, v in epoch_metrics(result).items()]
        for batch in chunks(metrics, METRICS_PER_BATCH):
            guard(client.log_batch, run_id, metrics=batch)
        done.epochs += len(seen)
        tags = [RunTag("msdn_tune.status", row.status)]
        if row.error:
            tags.append(RunTag("msdn_tune.error", truncate(row.error, MAX_ERROR_TAG)))
        guard(client.log_batch, run_id, tags=tags)
        guard(client.set_terminated, run_id, TRIAL_STATUSES[row.status])
        if row.trial_id not in done.created:
            done.closed[row.trial_id] = row.status
    return done
