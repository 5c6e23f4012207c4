"""The driver-side Tune callbacks: WindDown fires once, when the study's last trial starts."""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass

from msdn_tune.integrations.ray.progress import WindDown

FIRED = threading.Event()
CALLS: list[str] = []


def _prepare() -> None:  # module level: WindDown is pickled with Tune's run config
    CALLS.append(threading.current_thread().name)
    FIRED.set()


@dataclass
class _Trial:
    trial_id: str
    status: str = "PENDING"


def _start(cb: WindDown, trials: list[_Trial], trial: _Trial) -> None:
    # Tune calls on_trial_start with the trial still PENDING, then marks it RUNNING.
    cb.on_trial_start(iteration=0, trials=trials, trial=trial)
    trial.status = "RUNNING"


def test_wind_down_fires_once_when_the_last_trial_starts():
    FIRED.clear()
    CALLS.clear()
    cb = pickle.loads(pickle.dumps(WindDown(3, _prepare)))  # as Tune stores and restores it
    trials = [_Trial("a"), _Trial("b")]  # the searcher has created two of three so far
    _start(cb, trials, trials[0])
    _start(cb, trials, trials[1])
    assert not FIRED.wait(0.2)  # a third trial is still to come
    trials[0].status = "TERMINATED"
    trials.append(_Trial("c"))
    trials.append(_Trial("d"))  # e.g. a retried trial: one is still waiting for a slot
    _start(cb, trials, trials[2])
    assert not FIRED.wait(0.2)
    _start(cb, trials, trials[3])
    assert FIRED.wait(5)
    _start(cb, trials, _Trial("e"))
    assert CALLS == ["wind-down"]
