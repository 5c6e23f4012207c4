"""The Tuner's pieces without a Ray instance: the ASHA scheduler follows the space, and Tune's
default loggers are switched off only around a new study's fit, the environment restored."""

from __future__ import annotations

import os

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
        "Tune restarts it from its last checkpoint (a trial that fails 3 times is recorded "
        "failed)")
    assert record.exc_info is None
    other = logging.LogRecord("x", logging.ERROR, "f", 1, "something else", (), exc_info)
    assert _TrialFailureLine().filter(other) and other.exc_info is exc_info  # left alone
