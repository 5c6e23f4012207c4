"""A study's runs in MLflow: the driver's parent run and one child run per Tune trial.

One concept: the two sides of one protocol (who creates, reopens, tags, closes
and trashes which run) and the thread a trial's metrics leave by.

Layout in MLflow (docs/search.md D): one experiment per study, one *parent* run per study
(a resumed study reopens it), one *child* run per Tune trial, linked by the ``mlflow.parentRunId``
tag. The driver owns the parent (:class:`StudyTracker`); every trial creates or continues its own
child from inside its worker process (:class:`TrialTracker`), because Ray's
``MLflowLoggerCallback`` runs on the driver and cannot nest runs (ray-project/ray#19978).

Everything goes through :class:`mlflow.MlflowClient` with an explicit tracking URI instead of the
fluent ``mlflow.*`` globals: a Ray worker runs many trials in one process, and global "active run"
state would leak between them.

Robustness (:mod:`.guard`): in a trial, every call degrades -- one warning, then no-ops -- so a
dead tracking server never fails a trial. On the driver, :meth:`StudyTracker.start` is strict (a
study should not start untracked by accident) and the rest degrades the same way. Epoch metrics
leave a trial through a background thread (:class:`_MetricSender`), so a slow store never holds
up training.

This package must not import Ray: the Tune layer imports it, not the other way round.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag

from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.guard import Guard, quick_http, strict
from msdn_tune.integrations.mlflow.params import (
    MAX_ERROR_TAG,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    chunks,
    finite_metrics,
    flatten_params,
    log_params,
    new_params,
    now_ms,
    plain,
    truncate,
)
from msdn_tune.integrations.mlflow.store import (
    check_tracking,
    ensure_experiment,
    is_http,
    probe_http,
)

logger = logging.getLogger(__name__)

TRIAL_STATUSES = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "failed": "FAILED",
    "killed": "KILLED",
}
_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# --- the study (driver side) ---------------------------------------------------------------------


def _package_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "ray", "optuna", "mlflow", "msdn-tune"):
        try:
            out[dist] = _pkg_version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _git_info(cwd: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the git checkout at ``cwd``; empty outside a repo or without git."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    info = {"mlflow.source.git.commit": commit}
    if status is not None:
        info["msdn_tune.git_dirty"] = str(bool(status)).lower()
    return info


class StudyTracker:
    """The study's parent run, owned by the driver; a resumed study reopens the same run."""

    def __init__(self, uri: str, experiment: str, *, artifact_root: Path | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.experiment_id: str = ensure_experiment(uri, experiment, artifact_root)
        self.parent_run_id: str | None = None
        self._client = MlflowClient(tracking_uri=uri)
        self._guard = Guard(uri)
        self.finish_grace_s = 15.0  # see close_stale_children

    @property
    def degraded(self) -> bool:
        """True once a call failed for good; the failure has then been warned about once."""
        return self._guard.dead

    def unreachable(self, timeout_s: float = 5.0) -> str | None:
        """Why the store cannot be used right now, or None when it can.

        Checked before the end-of-study logging: a server that went away during a long study
        then costs one warning and a few seconds instead of a retry loop per call.
        """
        if not is_http(self.uri):
            try:
                check_tracking(self.uri, timeout_s)
            except TrackingError as exc:
                return str(exc)
            return None
        reason = probe_http(self.uri, timeout_s)
        if reason is not None:
            return reason
        try:
            with quick_http(timeout_s):
                self._client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable now"
            return truncate(str(exc), 300)
        return None

    def start(
        self,
        study_name: str,
        *,
        parent_run_id: str | None = None,
        space_file: Path | None = None,
        resolved_config: Mapping[str, Any],
        search_settings: Mapping[str, Any],
    ) -> str:
        """Create (or reopen, given ``parent_run_id``) the parent run and log the study setup.

        Logs the space file, the resolved config (artifact ``resolved_config.yaml`` and flattened
        params), the search settings (``search_settings.yaml`` and ``search.*`` params), package
        versions and the git commit. Reopening sets the run RUNNING again, counts the resume in
        the tag ``msdn_tune.resumes`` and only logs params that are not there yet (MLflow params
        are immutable); call :meth:`close_stale_children` next to close the trial runs the
        crashed driver left RUNNING.
        Strict: an unusable store raises :class:`TrackingError` before any trial starts.
        """
        c, uri = self._client, self.uri
        run: Run | None = None
        if parent_run_id:
            try:
                run = strict(uri, c.get_run, parent_run_id)
            except TrackingError as exc:
                logger.warning(
                    "cannot reopen parent run %s (%s); creating a new one", parent_run_id, exc
                )
        tags = {
            "msdn_tune.study": study_name,
            "msdn_tune.kind": "study",
            **{f"msdn_tune.version.{k}": v for k, v in _package_versions().items()},
            **_git_info(),
        }
        if run is None:
            run = strict(uri, c.create_run, self.experiment_id, run_name=study_name, tags=tags)
            existing: dict[str, str] = {}
        else:
            strict(uri, c.update_run, run.info.run_id, status="RUNNING")
            resumes = int(run.data.tags.get("msdn_tune.resumes", "0")) + 1
            tags["msdn_tune.resumes"] = str(resumes)
            strict(uri, c.log_batch, run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            existing = dict(run.data.params)
        run_id = run.info.run_id
        self.parent_run_id = run_id

        params = {**flatten_params(resolved_config), **flatten_params(search_settings, "search")}
        for chunk in chunks(
            list(new_params(existing, params, f"study {study_name}").items()), PARAMS_PER_BATCH
        ):
            strict(uri, c.log_batch, run_id, params=[Param(k, v) for k, v in chunk])
        dump = yaml.safe_dump
        strict(
            uri,
            c.log_text,
            run_id,
            dump(plain(resolved_config), sort_keys=False),
            "resolved_config.yaml",
        )
        strict(
            uri,
            c.log_text,
            run_id,
            dump(plain(search_settings), sort_keys=False),
            "search_settings.yaml",
        )
        if space_file is not None:
            strict(uri, c.log_artifact, run_id, str(space_file))
        return run_id

    def child_runs(self, *, complete: bool = False) -> list[Run]:
        """All (non-deleted) child runs of the parent, any status, oldest first.

        `complete`: a listing that fails raises TrackingError instead of returning what was
        listed so far (a caller that creates the runs it does not find must see them all).
        """
        if self.parent_run_id is None:
            return []
        runs: list[Run] = []
        token = None
        while True:
            page = (functools.partial(strict, self.uri) if complete else self._guard)(
                self._client.search_runs,
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            if page is None:
                return runs
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def wait_for_children(self, grace_s: float) -> list[Run]:
        """Wait up to ``grace_s`` for the child runs to be closed by their trials; returns those
        still RUNNING then."""
        deadline = time.monotonic() + grace_s
        while True:
            running = [r for r in self.child_runs() if r.info.status == "RUNNING"]
            if not running or time.monotonic() >= deadline or self._guard.dead:
                return running
            time.sleep(0.5)

    def close_stale_children(self, grace_s: float = 0.0,
                             outcomes: Mapping[str, str] | None = None) -> int:
        """End child runs left RUNNING (crashed driver, killed worker); returns how many.

        Call it when no trial of the study runs any more. ``grace_s``: how long to let trials
        end their own runs first -- Tune can report a trial finished while its worker is still
        in the trial's final ``finally`` (sending the last metrics, then ending the run). A run
        whose trial already tagged its outcome ends with that outcome's status; else the
        trial's outcome as the study recorded it (``outcomes``: trial id -> completed,
        early_stopped or failed), so that a trial whose worker was merely slow to close its run
        (a loaded machine) is never recorded as killed; only the others are tagged ``killed``
        and end KILLED.
        """
        running = self.wait_for_children(grace_s)
        n = 0
        for run in running:
            outcome = run.data.tags.get("msdn_tune.status", "running")
            if outcome not in TRIAL_STATUSES:
                known = (outcomes or {}).get(run.data.tags.get("msdn_tune.trial_id", ""))
                outcome = known if known in TRIAL_STATUSES else "killed"
                self._guard(self._client.set_tag, run.info.run_id, "msdn_tune.status", outcome)
            self._guard(self._client.set_terminated, run.info.run_id, TRIAL_STATUSES[outcome])
            n += 0 if self._guard.dead else 1
        return n

    def _trash_lost_children(self, trial_ids: set[str]) -> list[str]:
        """Tag and trash the child runs of trials not in `trial_ids`; returns their trial ids."""
        lost = [
            r for r in self.child_runs() if r.data.tags.get("msdn_tune.trial_id") not in trial_ids
        ]
        for run in lost:
            self._guard(self._client.set_tag, run.info.run_id, "msdn_tune.status", "lost")
            self._guard(self._client.delete_run, run.info.run_id)
        return [] if self._guard.dead else [r.data.tags.get("msdn_tune.trial_id", "?")
                                            for r in lost]

    def finish(
        self,
        *,
        best_metrics: Mapping[str, float] | None,
        best_trial_id: str | None,
        artifacts: Iterable[Path] = (),
        status: str = "FINISHED",
        trial_ids: Iterable[str] | None = None,
        outcomes: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Close stale children, log the best trial's metrics and the result files, end the run;
        returns the trial ids of the runs moved to the trash (see ``trial_ids``).

        ``outcomes``: each trial's outcome as the study recorded it (see
        :meth:`close_stale_children`).

        ``trial_ids``: the study's trials as Tune finally knows them. A child run of any other
        trial belongs to a trial that Tune lost -- it was running when the driver was killed,
        before Tune's experiment state recorded it, and the resumed study replaced it. Such runs
        are tagged ``msdn_tune.status=lost`` and moved to MLflow's trash (restorable), so the
        study keeps exactly one child run per trial.
        """
        if status not in _RUN_STATUSES:
            raise ValueError(f"status must be one of {_RUN_STATUSES}, got {status!r}")
        if self.parent_run_id is None:
            return []
        run_id, c, g = self.parent_run_id, self._client, self._guard
        # an interrupted study's trials were stopped abruptly: wait less for them
        self.close_stale_children(
            grace_s=self.finish_grace_s if status == "FINISHED" else min(3.0, self.finish_grace_s),
            outcomes=outcomes,
        )
        lost = [] if trial_ids is None else self._trash_lost_children({str(t) for t in trial_ids})
        metrics = [Metric(k, v, now_ms(), 0) for k, v in finite_metrics(best_metrics).items()]
        run_tags = [RunTag("msdn_tune.status", status.lower())]
        run_tags += [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        if best_trial_id is not None:
            run_tags.append(RunTag("msdn_tune.best_trial_id", str(best_trial_id)))
        g(c.log_batch, run_id, metrics=metrics[:METRICS_PER_BATCH], tags=run_tags)
        for path in map(Path, artifacts):
            if path.is_dir():
                g(c.log_artifacts, run_id, str(path), path.name)
            elif path.exists():
                g(c.log_artifact, run_id, str(path))
            else:
                logger.warning("study artifact %s does not exist; not logged", path)
        g(c.set_terminated, run_id, status)
        return lost


def log_files(
    uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None
) -> list[str]:
    """Log local files as artifacts of an existing run (finished runs included); strict.

    For ``msdn-tune report``, which adds plots to a study's parent run after the fact. Returns
    the artifact paths written; any failure is a :class:`TrackingError` naming the store.
    """
    client = MlflowClient(tracking_uri=uri)
    strict(uri, client.get_run, run_id)  # a clear error for a wrong or deleted run first
    written = []
    for path in map(Path, paths):
        strict(uri, client.log_artifact, run_id, str(path), artifact_path)
        written.append(f"{artifact_path}/{path.name}" if artifact_path else path.name)
    return written


# --- one trial (worker side) ---------------------------------------------------------------------


class _MetricSender:
    """Sends queued epoch metrics from a daemon thread through the trial's guard.

    What piles up while a request is in flight goes out in the next request (chunked to
    MLflow's batch limit), so a store that is slower than an epoch costs fewer calls, not a
    growing backlog; metrics keep the timestamps of the epochs that produced them.
    """

    def __init__(self, guard: Guard, client: MlflowClient, run_id: str) -> None:
        self._guard, self._client, self._run_id = guard, client, run_id
        self._cv = threading.Condition()
        self._queue: list[Metric] = []
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="msdn-mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: list[Metric]) -> None:
        with self._cv:
            self._queue.extend(metrics)
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return  # closed and drained
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                for chunk in chunks(batch, METRICS_PER_BATCH):
                    self._guard(self._client.log_batch, self._run_id, metrics=chunk)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout_s: float) -> bool:
        """Send what is queued, then end the thread; False if that took longer than allowed."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("MLflow metrics still unsent after %.0f s; not waiting", timeout_s)
            return False
        return True


class TrialTracker:
    """A trial's child run, written from the trial's own process.

    ``run_id`` given: continue that run (a trial restored from a checkpoint keeps one run; params
    already there are not logged again). Otherwise a new child run is created under
    ``parent_run_id``. If the store is unreachable, ``run_id`` stays None and every method is a
    no-op: the trial trains on, untracked. Epoch metrics are sent by a background thread (see
    :meth:`log_epoch`); :meth:`finish` sends what is left before it ends the run.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        *,
        trial_id: str,
        trial_name: str,
        study: str,
        params: Mapping[str, Any],
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        # An inherited MLFLOW_RUN_ID overrides parent_run_id in fluent code (mlflow/mlflow#15713)
        # and would make every trial of a worker write into one run.
        os.environ.pop("MLFLOW_RUN_ID", None)
        self.uri = uri
        self.run_id: str | None = None
        self._client = MlflowClient(tracking_uri=uri)
        self._guard = Guard(uri)
        self._finished = False
        self._last_step = 0
        self._last_logged: dict[str, tuple[int, float]] = {}  # key -> (step, value)
        self._sender: _MetricSender | None = None
        self.flush_timeout_s = 60.0
        self._logged_through = 0  # epochs already in a continued run are not logged again
        flat = flatten_params(params)
        c, g = self._client, self._guard

        if not run_id:
            # A trial interrupted before its first checkpoint restarts without our run id: find
            # its run by trial id so a restart never creates a second child run.
            found = g(
                c.search_runs,
                [experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                f"tags.`msdn_tune.trial_id` = '{trial_id}'",
                max_results=1,
            )
            run_id = found[0].info.run_id if found else None
        if run_id:
            run = g(c.get_run, run_id)
            if run is not None:
                self.run_id = run_id
                history = g(c.get_metric_history, run_id, "epoch") or []
                self._logged_through = max((m.step for m in history), default=0)
                g(c.update_run, run_id, status="RUNNING")
                restarts = int(run.data.tags.get("msdn_tune.restarts", "0")) + 1
                g(
                    c.log_batch,
                    run_id,
                    tags=[
                        RunTag("msdn_tune.restarts", str(restarts)),
                        RunTag("msdn_tune.status", "running"),
                    ],
                )
                log_params(g, c, run_id, new_params(run.data.params, flat, f"trial {trial_name}"))
                return
            if not g.dead:
                logger.warning(
                    "MLflow run %s of trial %s not found; starting a new run", run_id, trial_name
                )

        run_tags = {
            "mlflow.parentRunId": parent_run_id,
            "msdn_tune.trial_id": str(trial_id),
            "msdn_tune.study": study,
            "msdn_tune.kind": "trial",
            "msdn_tune.status": "running",
            **(tags or {}),
        }
        run = g(c.create_run, experiment_id, run_name=trial_name, tags=run_tags)
        if run is not None:
            self.run_id = run.info.run_id
            log_params(g, c, self.run_id, flat)

    @property
    def active(self) -> bool:
        """Whether calls still reach MLflow (False once degraded or finished)."""
        return self.run_id is not None and not self._guard.dead and not self._finished

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Queue one epoch's metrics at ``step=epoch``; NaN/inf and non-numbers are dropped.

        A background thread sends them: one ``log_batch`` per epoch, or one for several epochs
        when the store lags behind, so that a slow or busy tracking server never holds up
        training. Epochs a continued run already holds are skipped.
        """
        epoch = int(epoch)
        self._last_step = epoch
        if not self.active or epoch <= self._logged_through:
            return
        ts = now_ms()
        finite = finite_metrics(metrics)
        self._last_logged.update({k: (epoch, v) for k, v in finite.items()})
        if self._sender is None:
            assert self.run_id is not None
            self._sender = _MetricSender(self._guard, self._client, self.run_id)
        self._sender.put([Metric(k, v, ts, epoch) for k, v in finite.items()])

    def catch_up(self, history: Iterable[Mapping[str, Any]]) -> int:
        """Log the epochs of a restored trainer's ``history`` (metric dicts with an ``epoch``
        key) that a continued run does not hold yet; returns how many.

        Epoch metrics are sent in the background, so a worker that dies right after persisting a
        checkpoint may not have sent that epoch; the restarted trial restores it from the
        checkpoint and does not train it again.
        """
        n = 0
        for metrics in history:
            epoch = int(metrics.get("epoch", 0) or 0)
            if epoch > self._logged_through:
                self.log_epoch(metrics, epoch)
                n += 1
        return n

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until the queued epochs are sent (or dropped by a degraded tracker)."""
        return self._sender is None or self._sender.flush(timeout_s)

    def finish(
        self,
        status: str,
        *,
        final_metrics: Mapping[str, float] | None = None,
        error: str | None = None,
    ) -> None:
        """End the run: ``status`` in completed/early_stopped/failed/killed becomes the tag
        ``msdn_tune.status`` and the MLflow status FINISHED/FINISHED/FAILED/KILLED.

        ``final_metrics`` are logged at the last epoch's step, except values ``log_epoch``
        already logged there. Idempotent: only the first call counts."""
        if status not in TRIAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(TRIAL_STATUSES)}, got {status!r}")
        if self._finished:
            return
        self._finished = True
        if self._sender is not None:  # the epochs first: the final values come after them
            self._sender.close(self.flush_timeout_s)
        if self.run_id is None or self._guard.dead:
            return
        tags = [RunTag("msdn_tune.status", status)]
        if error:
            tags.append(RunTag("msdn_tune.error", truncate(str(error), MAX_ERROR_TAG)))
        ts = now_ms()
        step = self._last_step
        # a final value identical to the one log_epoch just wrote at this step would only add a
        # duplicate point to the metric's history
        # (and a restarted trial re-reporting its last epoch logged it in the earlier attempt)
        metrics = [
            Metric(k, v, ts, step)
            for k, v in finite_metrics(final_metrics).items()
            if self._last_logged.get(k) != (step, v) and step > self._logged_through
        ]
        self._guard(
            self._client.log_batch, self.run_id, metrics=metrics[:METRICS_PER_BATCH], tags=tags
        )
        self._guard(self._client.set_terminated, self.run_id, TRIAL_STATUSES[status])

