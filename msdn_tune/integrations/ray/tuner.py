"""Ray and Ray Tune for one study: starting or joining Ray, the ASHA scheduler, the Tuner (new or
restored), Tune's loggers, and running it.

The study use case (msdn_tune/commands/study.py) decides what to run; this module is how it runs
on Ray, so that the use case names no Ray object. A resumed study is Ray's `Tuner.restore`
(searcher state included, docs/search.md B1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from msdn_tune.errors import MsdnTuneError
from msdn_tune.integrations.ray.reaper import stop_watching, watch_local_ray
from msdn_tune.space import StudySpec
from msdn_tune.trials import CONFIRM_DIR, TrialRow

# Loggers: TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, see `tune_loggers`.
_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
TRIAL_NICENESS = 0
"""What a study's own Ray adds to its workers' niceness (`worker_niceness`, ray 2.60.0).

Ray's default adds 15, to keep its own daemons responsive. But a study's trials are the work:
at +15, any ordinary process beside them takes the CPU (measured on 2 cores with two
`while True: pass` processes beside a study: its trial worker got 3.9% of a core). Ray adds it
to the niceness its processes inherit from `msdn-tune run`, so with 0 trials run at the
command's priority, and `nice -n 10 msdn-tune run ...` still runs a study in the background."""
MAX_FAILURES = 2
"""Restarts a trial gets after its worker or node fails; its next failure records it failed."""


def init_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; returns True when this call started it."""
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray prestarts a default worker per CPU for the first driver. Tune's trial actors carry
        # a runtime env (env vars), so none of them can use those workers: they would import Ray
        # on the cores Ray's own start-up needs, and be killed unused a few seconds later.
        # `_system_config` and these keys are private Ray API, checked against ray 2.60.0.
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=True,
                 _system_config={"prestart_worker_first_driver": False,
                                 "worker_niceness": TRIAL_NICENESS})
        watch_local_ray()  # its processes go with this one, even after a SIGKILL
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            # jobs.py imports the job SDK (aiohttp): kept off the start-up path of msdn-tune run
            from msdn_tune.integrations.ray.jobs import AUTH_HINT

            hint = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                    f"; if the cluster uses token authentication (Ray's default), {AUTH_HINT}")
            raise MsdnTuneError(f"--address {address}: cannot connect to a Ray cluster "
                                f"({exc}){hint}") from None
    return True


def ray_running() -> bool:
    """Whether this process is already connected to Ray (a caller's own `ray.init`)."""
    return bool(ray.is_initialized())


def shutdown_ray() -> None:
    """Disconnect from Ray, stopping the local Ray this process started (over a second)."""
    ray.shutdown()
    stop_watching()


def can_restore(path: str) -> bool:
    """Whether Ray finds a restorable study at `path` (a folder or a storage URI)."""
    # ray.tune takes seconds to import: kept off the start-up path of `msdn-tune run`
    from ray import tune

    return bool(tune.Tuner.can_restore(path))


def asha_scheduler(space: StudySpec) -> Any:
    """The space's ASHA scheduler (None for `scheduler: {type: none}`), on our `epoch` clock.

    The space has already resolved and validated every option (watched metric and mode, grace
    period, max_t, reduction factor, brackets); they are used as they are.
    """
    # ray.tune takes seconds to import: kept off the start-up path of `msdn-tune run`
    from ray.tune.schedulers import ASHAScheduler

    sch = space.scheduler
    if sch["type"] != "asha":
        return None
    return ASHAScheduler(
        time_attr="epoch", metric=sch["metric"], mode=sch["mode"], max_t=int(sch["max_t"]),
        grace_period=int(sch["grace_period"]), reduction_factor=float(sch["reduction_factor"]),
        brackets=int(sch["brackets"]))


def _trainable(space: StudySpec, static: Any, init_weights: dict[str, Any] | None) -> Any:
    """The study's trainable with its resources, and the `init` weights (the tensors the space's
    `init` names) sent through Ray's object store (`tune.with_parameters`), once."""
    from ray import tune

    from msdn_tune.integrations.ray.trainable import make_trainable

    resources = {k: v for k, v in space.resources.items() if v}
    fn = make_trainable(static)
    if init_weights is not None:
        fn = tune.with_parameters(fn, init_weights=init_weights)
    return tune.with_resources(fn, resources or {"cpu": 1})


def build_tuner(space: StudySpec, static: Any, *, exp_dir: Path, resume: bool,
                warm_rows: list[TrialRow] | None, console: Console,
                init_weights: dict[str, Any] | None = None,
                ray_storage: str | None = None,
                wind_down: Callable[[], None] | None = None) -> Any:
    """The Tuner for a new study, or the restored one for `resume`.

    `static` is the trainable's `TrialStatic`. `ray_storage` is Ray's storage_path when it is
    not `exp_dir.parent` (a cloud URI). `wind_down` (a module-level function: Tune pickles it)
    runs in a thread once the last trial has started. `init_weights` (the tensors the space's
    `init` names) reach the trials through Ray's object store (`tune.with_parameters`), once.
    """
    # ray.tune (and Optuna through the searcher) take seconds to import: kept off the start-up
    # path of `msdn-tune run`, where msdn_tune._startup imports them while Ray starts
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from msdn_tune.integrations.optuna import define_by_run, frozen_trials, make_sampler
    from msdn_tune.integrations.ray.progress import StudyProgress, WindDown
    from msdn_tune.integrations.ray.searcher import MsdnOptunaSearch

    trainable = _trainable(space, static, init_weights)
    if resume:
        where = f"{ray_storage}/{space.name}" if ray_storage else str(exp_dir)
        return tune.Tuner.restore(where, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False)
    metrics = [o.metric for o in space.objectives]
    modes = [o.mode for o in space.objectives]
    searcher = MsdnOptunaSearch(
        space=define_by_run(space), metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0], sampler=make_sampler(space))
    if warm_rows:
        trials = frozen_trials(space, warm_rows)
        searcher.add_finished_trials(trials)
        console.print(f"warm start: {len(trials)} completed trials given to the sampler")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=asha_scheduler(space), num_samples=space.num_samples,
            max_concurrent_trials=space.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=space.name, storage_path=ray_storage or str(exp_dir.parent),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # Tune's CSV and JSON loggers by name, so that `fit` can leave out its default
            # TensorBoard logger (see `tune_loggers`).
            callbacks=[StudyProgress(space.num_samples, metrics[0], modes[0]),
                       CSVLoggerCallback(), JsonLoggerCallback()]
            + ([WindDown(space.num_samples, wind_down)] if wind_down else []),
            verbose=0),
    )


def build_confirm_tuner(space: StudySpec, static: Any, *, exp_dir: Path,
                        configs: list[dict[str, Any]], resume: bool,
                        init_weights: dict[str, Any] | None = None,
                        ray_storage: str | None = None) -> Any:
    """The Tuner of a study's confirmation stage (or the restored one for `resume`).

    `configs` are the trials' configs (`trainable.confirm_config`): Tune runs each once, as a
    grid, to the end (no scheduler, no searcher), `max_concurrent_trials` at a time, in
    `<study>/confirm`. The trials are ordinary trials of the study's trainable, so each has its
    MLflow child run under the study's parent run and checkpoints to resume from;
    `init_weights` reach them as they reach the search's trials (`build_tuner`).
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from msdn_tune.integrations.ray.progress import StudyProgress
    from msdn_tune.integrations.ray.trainable import CONFIRM_KEY

    trainable = _trainable(space, static, init_weights)
    root = f"{ray_storage}/{space.name}" if ray_storage else str(exp_dir)
    if resume:
        return tune.Tuner.restore(f"{root}/{CONFIRM_DIR}", trainable=trainable,
                                  resume_unfinished=True, resume_errored=False)
    objective = space.objectives[0]
    return tune.Tuner(
        trainable,
        param_space={CONFIRM_KEY: tune.grid_search(configs)},
        tune_config=tune.TuneConfig(num_samples=1,
                                    max_concurrent_trials=space.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=CONFIRM_DIR, storage_path=root,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            callbacks=[StudyProgress(len(configs), objective.metric, objective.mode,
                                     label="confirmation trials"),
                       CSVLoggerCallback(), JsonLoggerCallback()],
            verbose=0),
    )


def fit(tuner: Any) -> int:
    """Run the Tuner's trials; returns how many ended (terminated or errored).

    Ray returns normally after Ctrl-C too, so the caller judges completeness from this count.
    Tune's automatic loggers stay off for a resumed study too: `Tuner.restore` brings back the
    callbacks the study was started with, its CSV and JSON loggers included (`build_tuner`).
    """
    with tune_loggers(default=False), sigterm_stops_tune(), _one_line_trial_failures():
        grid = tuner.fit()
    return int(grid.num_terminated + grid.num_errors)


class _TrialFailureLine(logging.Filter):
    """Tune logs each failed trial task with Ray's whole traceback (17 lines for a worker node
    that died), although it then restarts the trial from its checkpoint and the study succeeds.
    The record becomes one line: the trial, the error's type and first line, what happens next.
    A trial that fails for good is still reported: in the results table, with its error file."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Trial task failed for trial") and record.exc_info:
            exc = record.exc_info[1]
            first = (str(exc).strip().splitlines() or [""])[0] if exc is not None else ""
            trial = message.rsplit(" ", 1)[-1]
            record.msg = (f"{trial}: {type(exc).__name__}: {first[:200]}; Tune restarts it from "
                          f"its last checkpoint, unless this was its failure number "
                          f"{MAX_FAILURES + 1} (then it is recorded failed)")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


@contextlib.contextmanager
def _one_line_trial_failures() -> Iterator[None]:
    """`_TrialFailureLine` on Tune's controller logger while `fit` runs (ray 2.60.0 logs these
    from `ray.tune.execution.tune_controller`)."""
    target = logging.getLogger("ray.tune.execution.tune_controller")
    line = _TrialFailureLine()
    target.addFilter(line)
    try:
        yield
    finally:
        target.removeFilter(line)


@contextlib.contextmanager
def sigterm_stops_tune() -> Iterator[None]:
    """While Tune runs, SIGTERM stops the study the way Ctrl-C does.

    `msdn-tune jobs stop` (Ray's job supervisor) and schedulers stop a driver with SIGTERM. Ray's
    core worker handles it in C++: a stack dump, and the driver dies wherever it was. Instead,
    Tune is told to stop (SIGUSR1: Tune's own stop signal, handled like its first Ctrl-C), saves
    its experiment state, and the study ends reported incomplete with its resume command. Ray's
    supervisor waits `RAY_JOB_STOP_WAIT_TIME_S` for that (msdn_tune.integrations.ray.jobs sets
    it for submitted studies). Only the main thread can set signal handlers; elsewhere nothing
    changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        print("SIGTERM received: stopping the study as Ctrl-C would; it stays resumable",
              file=sys.stderr, flush=True)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            # Tune sets its SIGUSR1 handler only once its run loop starts (after restoring the
            # experiment and setting up the searcher; ray 2.60.0): before that, SIGUSR1's default
            # action would kill the driver. Stop as Ctrl-C does at that point.
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGUSR1)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


@contextlib.contextmanager
def tune_loggers(*, default: bool) -> Iterator[None]:
    """Let Tune add its default loggers (CSV, JSON, TensorBoard) only when `default` is set.

    The TensorBoard logger imports torch into the driver through tensorboardX, two seconds
    before the first trial can start, and writes an events file per trial that nothing reads:
    trials are tracked in MLflow. A study names its CSV and JSON loggers itself (`build_tuner`),
    and a resumed one keeps them. (A study started by msdn-tune before it named them resumes
    without CSV and JSON logs for its remaining trials; nothing in msdn-tune reads them.)
    """
    before = os.environ.get(_AUTO_LOGGERS)
    if not default:
        os.environ[_AUTO_LOGGERS] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_AUTO_LOGGERS, None)
        else:
            os.environ[_AUTO_LOGGERS] = before
