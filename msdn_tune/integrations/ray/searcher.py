"""OptunaSearch that tells Optuna the truth about early-stopped and diverged trials.

Ray's OptunaSearch reports a trial that ASHA stopped as COMPLETE with its last low-fidelity
value (docs/search.md B5), so `study.best_trial`, TPE's good/bad split and warm starts would mix
partial and full runs. Here a trial whose last `epoch` is below its `epochs_total` is told
PRUNED (its per-epoch values were reported as intermediate values, which TPE ranks by step), and
a trial that reported `trial/diverged` is told FAIL. Intermediate values use our `epoch` counter
as the step, because Tune's `training_iteration` restarts at 1 when a study is resumed
(docs/search.md B2).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from msdn_tune.trials import trial_outcome

log = logging.getLogger(__name__)


class MsdnOptunaSearch(OptunaSearch):
    """OptunaSearch with honest PRUNED/FAIL states and epoch-stepped intermediate values.

    It reaches into OptunaSearch's private state (`_ot_study`, `_ot_trials`,
    `_completed_trials`), checked against ray 2.60.0: Ray offers no public way to tell Optuna
    another state or to hand it finished trials.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress bar reports trials
        super().__init__(*args, **kwargs)

    def add_finished_trials(self, trials: list[Any]) -> None:
        """Give the sampler an earlier study's finished Optuna trials (warm start)."""
        study: Any = self._ot_study  # set by OptunaSearch's constructor, typed Optional there
        study.add_trials(trials)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        value = result.get(self.metric)
        step = int(result.get("epoch", 0))
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or value is None or not math.isfinite(float(value)):
            return
        with warnings.catch_warnings():
            # A resumed trial re-reports the epoch of its checkpoint; Optuna keeps the first.
            warnings.simplefilter("ignore", UserWarning)
            ot_trial.report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        outcome = trial_outcome(result, error)
        if outcome == "completed" or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        state = TrialState.FAIL if outcome == "failed" else TrialState.PRUNED
        study: Any = self._ot_study  # set by OptunaSearch's constructor, typed Optional there
        try:
            study.tell(ot_trial, state=state)
        except Exception as exc:  # noqa: BLE001 - Optuna refuses e.g. a second tell; keep going
            log.warning("optuna refused to record trial %s as %s: %s", trial_id, state, exc)
        self._completed_trials.add(trial_id)
