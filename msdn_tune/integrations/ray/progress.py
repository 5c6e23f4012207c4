"""Driver-side Tune callbacks: live study progress (trials running and finished, best so far),
and the hook that prepares the wrap-up while the last trial trains."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


class StudyProgress(Callback):
    """A rich progress bar fed by Tune's trial events.

    Tune pickles its run config (callbacks included) into the study folder, so the console
    objects are created lazily and dropped from the pickled state.
    """

    def __init__(self, total: int, metric: str, mode: str, label: str = "trials") -> None:
        self.total, self.metric, self.mode = total, metric, mode
        self.label = label
        self._bar: Any = None
        self._task: Any = None
        self._done: set[str] = set()
        self._running: set[str] = set()
        self._best = -math.inf if mode == "max" else math.inf

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_bar"] = state["_task"] = None
        return state

    def _ensure(self) -> None:
        if self._bar is None:
            label = getattr(self, "label", "trials")  # a study pickled before labels: trials
            self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self._task = self._bar.add_task("study", total=self.total, info="")
            self._bar.start()

    def _refresh(self) -> None:
        self._ensure()
        best = "–" if not math.isfinite(self._best) else f"{100 * self._best:.2f}"
        self._bar.update(self._task, completed=len(self._done),
                         info=f"running {len(self._running)} · best {self.metric} {best}")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running.add(trial.trial_id)
        self._refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            better = value > self._best if self.mode == "max" else value < self._best
            if better:
                self._best = float(value)
        self._refresh()

    def _finished(self, trial: Any) -> None:
        self._running.discard(trial.trial_id)
        self._done.add(trial.trial_id)
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
            self._bar = None


class WindDown(Callback):
    """Calls `prepare` once, in a thread, when the study's last trial starts.

    The end of a study needs imports that take seconds (plots, the champion model). Run at the
    start of the study they hold the driver's GIL while Tune starts the first trials; by the time
    the last trial starts there is nothing left to hand out, so they delay no trial's start.
    `prepare` is pickled with the run config: pass a module-level function.
    """

    def __init__(self, total: int, prepare: Callable[[], None]) -> None:
        self.total, self.prepare = total, prepare
        self._fired = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune calls this just before marking `trial` RUNNING, so it is still PENDING here.
        if self._fired or len(trials) < self.total:
            return
        if any(t is not trial and t.status == "PENDING" for t in trials):
            return
        self._fired = True
        threading.Thread(target=self.prepare, name="wind-down", daemon=True).start()
