"""The Tuner's pieces without a Ray instance: the ASHA scheduler follows the space, and Tune's
default loggers are switched off only around a new study's fit, the environment restored."""

from __future__ import annotations

import os

import pytest

from msdn_tune.integrations.ray.tuner import asha_scheduler, tune_loggers
from msdn_tune.space import parse_space
from tests.helpers.study import small_doc


def test_asha_uses_the_spaces_metric_mode_and_brackets(tmp_path):
    space = parse_space(small_doc(tmp_path, scheduler={
        "type": "asha", "grace_period": 2, "reduction_factor": 3, "brackets": 2,
        "metric": "val/zsl_acc", "mode": "max"}))
    sched = asha_scheduler(space)
    assert (sched.metric, sched._mode) == ("val/zsl_acc", "max")
    assert len(sched._brackets) == 2 and sched._max_t == 6
    assert asha_scheduler(parse_space(small_doc(tmp_path, scheduler={"type": "none"}))) is None


def test_tune_loggers_are_left_to_tune_only_when_asked_and_the_environment_restored(monkeypatch):
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    monkeypatch.delenv(key, raising=False)
    with tune_loggers(default=False):
        assert os.environ[key] == "1"
    assert key not in os.environ
    with tune_loggers(default=True):
        assert key not in os.environ
    monkeypatch.setenv(key, "0")
    with tune_loggers(default=False):
        assert os.environ[key] == "1"
    assert os.environ[key] == "0"


def test_a_failed_trial_task_is_one_line_without_the_traceback():
    import logging
    import sys

    from msdn_tune.integrations.ray.tuner import _TrialFailureLine

    try:
        raise RuntimeError("The actor is temporarily unavailable: Socket closed\nmore detail")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("ray.tune.execution.tune_controller", logging.ERROR, "f", 1,
                               "Trial task failed for trial %s", ("msdn_trial_abc",), exc_info)
    assert _TrialFailureLine().filter(record)
    assert record.getMessage() == (
        "msdn_trial_abc: RuntimeError: The actor is temporarily unavailable: Socket closed; "
        "Tune restarts it from its last checkpoint, unless this was its failure number 3 "
        "(then it is recorded failed)")
    assert record.exc_info is None
    try:  # an error whose message is only white space is still one line, never an IndexError
        raise RuntimeError("  \n ")
    except RuntimeError:
        blank = logging.LogRecord("ray.tune.execution.tune_controller", logging.ERROR, "f", 1,
                                  "Trial task failed for trial %s", ("msdn_trial_b",),
                                  sys.exc_info())
    assert _TrialFailureLine().filter(blank)
    assert blank.getMessage().startswith("msdn_trial_b: RuntimeError: ; Tune restarts it")
    other = logging.LogRecord("x", logging.ERROR, "f", 1, "something else", (), exc_info)
    assert _TrialFailureLine().filter(other) and other.exc_info is exc_info  # left alone


def test_sigterm_before_tune_handles_its_stop_signal_stops_like_ctrl_c():
    """Tune sets its SIGUSR1 handler only once its run loop starts: a SIGTERM before that is a
    KeyboardInterrupt (the study ends as on Ctrl-C), never SIGUSR1's default action, which
    would kill the driver on the spot."""
    import signal

    from msdn_tune.integrations.ray.tuner import sigterm_stops_tune

    usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    term = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_stops_tune():
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is term  # restored
        got = []
        signal.signal(signal.SIGUSR1, lambda *_: got.append(1))  # as Tune's, once it runs
        with sigterm_stops_tune():
            os.kill(os.getpid(), signal.SIGTERM)
        assert got == [1]
    finally:
        signal.signal(signal.SIGUSR1, usr1)
