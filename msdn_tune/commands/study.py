"""The study use case: run (or resume) a study to its end, then conclude it.

`run_study` is what `msdn-tune run` does. It is idempotent around one study folder
(`<storage_path>/<name>`): a fresh run refuses to overwrite an existing study, `resume=True`
refuses changed settings, repairs what a killed driver left, restores the study (searcher state
included, docs/search.md B1) and continues to exactly `num_samples` trials. Ray returns normally
after Ctrl-C, so completeness is checked here and an incomplete study is never reported as
finished. The end of a study writes the trials table, logs plots and the champion model, and
closes the MLflow parent run.

How a study runs on Ray is msdn_tune.integrations.ray.tuner; tracking is
msdn_tune.integrations.mlflow; the start-up and wind-down speed-ups are msdn_tune._startup.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from msdn_tune import _startup
from msdn_tune.commands.confirm import run_confirmation, say_failed_confirmations
from msdn_tune.commands.wrapup import StudyOutcome, finish_tracking, reconcile_study
from msdn_tune.data.resolve import open_benchmark, parse_preset, resolve_benchmark
from msdn_tune.errors import MsdnTuneError
from msdn_tune.integrations.ray import SUBMIT_RESUME_ENV
from msdn_tune.integrations.ray.address import probe_ray_address
from msdn_tune.integrations.ray.experiment import (
    load_study_trials,
    load_trials,
    repair_lost_checkpoints,
)
from msdn_tune.integrations.ray.storage import check_cluster_storage, checked_storage
from msdn_tune.integrations.ray.trainable import TrialStatic
from msdn_tune.integrations.ray.tuner import (
    build_tuner,
    can_restore,
    fit,
    init_ray,
    ray_running,
    shutdown_ray,
)
from msdn_tune.integrations.tracking_uri import (
    check_local_store,
    check_server_answers,
    resolve_tracking_uri,
)
from msdn_tune.safeload import shorten
from msdn_tune.space import StudySpec
from msdn_tune.train.config import TrainConfig
from msdn_tune.trials import (
    SEARCH,
    TRIALS_FILE,
    TrialRow,
    check_path_text,
    read_study_meta,
    recommendation,
    study_dir,
    write_parquet,
    write_study_meta,
)

log = logging.getLogger(__name__)


#: What a resumed study keeps from its first run. Ray's `Tuner.restore` reuses the pickled
#: TuneConfig (num_samples, max_concurrent_trials), searcher (params, objective, sampler) and
#: scheduler, while the trainable (data, fixed settings, resources) is rebuilt from the current
#: file: a change to any of them would be ignored, or would train the rest of one study
#: differently from its first trials.
KEPT_ON_RESUME = ("data", "fixed", "params", "objective", "sampler", "scheduler", "num_samples",
                  "max_concurrent_trials", "resources", "confirm")


def _check_resumable(space: StudySpec, meta: dict[str, Any]) -> None:
    """Refuse a resume whose settings differ from the study's own, naming every change.

    A changed num_samples in particular would leave the study judged against a number Ray never
    runs to: never complete, however often it is resumed.
    """
    before = meta.get("space") or {}
    now = json.loads(json.dumps(space.to_dict(), default=str))  # as study.json stores it
    changes: list[str] = []
    for key in KEPT_ON_RESUME:
        if key in before:
            changes += _differences(before[key], now.get(key), key)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8
                                          else "")
        raise MsdnTuneError(
            f"--resume: study {space.name!r} keeps the settings it was started with, and these "
            f"differ now (started with -> given): {shown}. Resume with the original file and "
            f"options; to search with new settings or more trials, start a new study with "
            f"--name NEW --warm-start {space.name}")


def _differences(old: Any, new: Any, where: str) -> list[str]:
    """`where: old -> new` for every leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k, _UNSET), new.get(k, _UNSET), f"{where}.{k}")
        return out
    if old == new:
        return []
    shown = ["(not set)" if v is _UNSET else json.dumps(v) for v in (old, new)]
    return [f"{where}: {shown[0]} -> {shown[1]}"]


_UNSET = object()


#: The `run` options a study remembers (msdn_study.json, "options"), so that `--resume` alone
#: resumes it as it was started: the study's own num_samples and concurrency (Ray's restore
#: keeps them anyway), its tracking store (where its parent run is), its cluster and storage.
REMEMBERED = ("num_samples", "max_concurrent_trials", "confirm", "address", "storage_shared")


def _remembered(meta: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The options of the study's earlier runs that this run's command line does not give."""
    before = meta.get("options")
    if not isinstance(before, dict):
        return {}
    # confirm: False is `--confirm-top 0`, a choice to remember (elsewhere False is "not given")
    return {k: before[k] for k in REMEMBERED
            if (before.get(k) not in (None, False) or (k == "confirm" and k in before))
            and given.get(k) in (None, False)}


def resume_command(meta: dict[str, Any]) -> str:
    """The exact command that resumes a study, from its record: every option that shapes the
    study or says where it is stored and tracked, spelled out although the study remembers
    them, so that it reads the same from any folder and on any machine of the cluster."""
    space = meta.get("space") or {}
    options = meta.get("options") or {}
    parts = ["msdn-tune", "run"]
    if meta.get("space_file"):
        parts += ["--space", str(meta["space_file"])]
    parts += ["--name", str(meta.get("name", space.get("name"))),
              "--storage-path", str(meta.get("storage_path") or space.get("storage_path"))]
    for key, flag in (("num_samples", "--num-samples"),
                      ("max_concurrent_trials", "--max-concurrent")):
        if space.get(key) is not None:
            parts += [flag, str(space[key])]
    confirm = space.get("confirm")
    if isinstance(confirm, dict):
        parts += ["--confirm-top", str(confirm.get("top_k")),
                  "--confirm-seeds", str(confirm.get("seeds"))]
    elif options.get("confirm") is False:  # run with --confirm-top 0 over a file that has one
        parts += ["--confirm-top", "0"]
    parts += (["--tracking-uri", str(meta["tracking_uri"])] if meta.get("tracking_uri")
              else ["--no-tracking"])
    if options.get("address") not in (None, "", "local"):
        parts += ["--address", str(options["address"])]
    if options.get("storage_shared"):
        parts.append("--storage-shared")
    return " ".join(shlex.quote(p) for p in parts) + " --resume"


def run_study(space: StudySpec, *, space_file: Path | None = None, address: str | None = None,
              resume: bool = False, warm_start: str | None = None,
              tracking_uri: str | None = None, tracking: bool = True,
              force_promote: bool = False, console: Console | None = None,
              resume_if_exists: bool = False, storage_shared: bool = False,
              given: dict[str, Any] | None = None) -> StudyOutcome:
    """Run (or resume) a study to num_samples trials; see the module docstring.

    `resume_if_exists` resumes when the study folder holds a restorable study and starts fresh
    otherwise: the idempotent entrypoint a retried cluster job needs (KubeRay backoffLimit).
    `storage_shared` declares a local storage path shared by all nodes (NFS msdn-tune cannot
    recognise); on a multi-node cluster node-local storage is refused before any trial starts.
    `given` holds the command line's num_samples and max_concurrent_trials (None: not given;
    `space` has them applied already). A resume takes what its command line leaves out from the
    study's record (`REMEMBERED`, and the tracking store), so `--resume` alone suffices.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    given.update(address=address, storage_shared=storage_shared or None)
    store = checked_storage(space.storage_path)  # a path, or a URI mirrored locally (probed)
    _startup.study_environment()
    console = console or Console()
    store.pull(space.name)
    storage = store.local_root
    exp_dir = storage / space.name
    if exp_dir.exists() and not exp_dir.is_dir():
        raise MsdnTuneError(f"study {space.name!r}: {exp_dir} is a file, not a study folder; "
                            "choose another --name or --storage-path")
    meta = read_study_meta(exp_dir) if exp_dir.exists() else {}
    if resume_if_exists:
        resume = can_restore(store.ray_path(space.name))
        console.print(f"study {space.name}: " + ("resuming the existing study" if resume else
                                                 "no restorable study yet, starting it"))
    if resume:
        kept = _remembered(meta, given)
        overrides = {k: kept[k] for k in ("num_samples", "max_concurrent_trials", "confirm")
                     if k in kept}
        if meta.get("space") and "confirm" not in meta["space"] and space.confirm:
            # a study started before msdn-tune had a confirmation stage resumes without one
            overrides["confirm"] = kept["confirm"] = False
        space = space.with_overrides(**overrides)
        address = kept.get("address", address)
        storage_shared = storage_shared or bool(kept.get("storage_shared"))
        if tracking and tracking_uri is None and "tracking_uri" in meta:
            tracking_uri, tracking = meta["tracking_uri"], meta["tracking_uri"] is not None
            kept["tracking"] = tracking_uri or "off"
        if kept:
            console.print("resuming with the study's own " + ", ".join(
                f"{k}={v}" for k, v in kept.items()), soft_wrap=True, markup=False)
    # Every URI and address is checked before Ray starts, each connection within a stated
    # timeout: a refused study starts nothing, in seconds.
    if tracking:
        uri0 = resolve_tracking_uri(tracking_uri, (space.tracking or {}).get("uri"))
        check_local_store(uri0)
        check_server_answers(uri0)
    if not ray_running():
        probe_ray_address(address)
    if warm_start:
        _check_warm_start(warm_start, storage, tracking)
    if resume:
        _check_resumable(space, meta)
        if not can_restore(store.ray_path(space.name)):
            raise MsdnTuneError(f"--resume: no study to resume at {store.ray_path(space.name)} "
                                "(run it once without --resume)")
        if store.uri is None:  # Ray restores from this local folder itself
            for line in repair_lost_checkpoints(exp_dir):
                console.print(line, markup=False, soft_wrap=True)
    elif not resume_if_exists and exp_dir.exists() and (
            meta or list(exp_dir.glob("experiment_state-*.json"))):
        raise MsdnTuneError(f"study {space.name!r} already exists at {exp_dir}; continue it with "
                            "--resume, or choose another --name")
    def setup_tracking() -> tuple[str, Any, str, str]:
        """The study's parent run (checked store, reopened on resume, stale children closed)."""
        # MLflow takes seconds to import: kept off the start-up path of `msdn-tune run`, where
        # this runs in a thread while Ray starts
        from msdn_tune.integrations.mlflow import (
            StudyTracker,
            check_tracking,
            resolve_tracking_uri,
        )

        uri = resolve_tracking_uri(tracking_uri, (space.tracking or {}).get("uri"))
        check_tracking(uri)
        experiment = (space.tracking or {}).get("experiment") or space.name
        tracker = StudyTracker(uri, experiment)
        parent = tracker.start(
            space.name, parent_run_id=meta.get("parent_run_id"), space_file=space_file,
            resolved_config=space.to_dict(),
            search_settings={"sampler": space.sampler, "scheduler": space.scheduler,
                             "num_samples": space.num_samples,
                             "max_concurrent_trials": space.max_concurrent_trials})
        if resume:
            # trials that ended while the store was away get their runs first; what is still
            # RUNNING after that belongs to trials this resume continues
            reconcile_study(tracker, space, exp_dir, load_study_trials(exp_dir), console)
            closed = tracker.close_stale_children()
            if closed:
                console.print(f"closed {closed} trial run(s) left RUNNING as KILLED (their "
                              "trials continue now, in the same runs)")
        return uri, tracker, parent, tracker.experiment_id

    # Ray takes seconds to start, mostly waiting for its own processes. Meanwhile one thread
    # imports what building the Tuner needs and, for a Ray we start here (one local node, whose
    # storage check cannot refuse), sets up the MLflow parent run (msdn_tune._startup, trick 1).
    early = tracking and address in (None, "", "local") and not ray_running()

    def prepare() -> tuple[str, Any, str, str] | None:
        _startup.warm_study_imports()
        return setup_tracking() if early else None

    pending = _startup.in_background(prepare)
    started = init_ray(address)
    try:
        prepared = pending.result()
        # Before anything is written: a refused study leaves nothing behind.
        if space.resources.get("gpu") == "auto":
            from msdn_tune.integrations.ray.gpus import require_gpus  # only for gpu: auto

            require_gpus()
        check_cluster_storage(space.storage_path, space.resources, declared_shared=storage_shared)

        data_path = str(resolve_benchmark(space.data))
        t0 = time.time()
        uri = parent = exp_id = None
        tracker = None
        if tracking:
            uri, tracker, parent, exp_id = prepared or setup_tracking()  # prepared when early
        warm_rows = _warm_start_rows(warm_start, storage, uri) if warm_start else None
        # `tracking_complete` is said by the study's end again: while this run lives, `report`
        # must not take its RUNNING runs for ones an unreachable store left open, and close them
        ongoing = {k: v for k, v in meta.items() if k != "tracking_complete"}
        write_study_meta(exp_dir, {
            **ongoing, "name": space.name, "space_file": str(space_file) if space_file else None,
            "space": space.to_dict(), "data_path": data_path, "tracking_uri": uri,
            "experiment_id": exp_id, "parent_run_id": parent,
            "created": meta.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "storage_path": space.storage_path,
            "options": {**(meta.get("options") or {}),
                        **{k: v for k, v in given.items() if k in REMEMBERED and v is not None},
                        **({"address": address} if address else {}),
                        **({"storage_shared": True} if storage_shared else {})}})
        store.push(space.name)

        # A preset travels by name: each node generates (once, deterministically) its own copy.
        trial_data = space.data if parse_preset(space.data) else data_path
        # gpu: auto becomes a share of a GPU here; the study's own record keeps "auto", so a
        # resume packs for the GPUs it finds then
        run_space = _resolve_gpu_auto(space, data_path, console)
        gpu = float(run_space.resources.get("gpu") or 0)
        static = TrialStatic(data_path=trial_data, fixed=dict(space.fixed), study=space.name,
                             tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent,
                             gpu_fraction=gpu if 0 < gpu < 1 else None)
        init_weights = _study_init(space, uri)  # read once, for the search and confirmation
        confirming = resume and bool((meta.get("confirm") or {}).get("configs"))
        if confirming:  # the search ended before: its Tuner has nothing left to run
            finished = space.num_samples
            console.print(f"study {space.name}: search complete; resuming its confirmation "
                          "stage")
        else:
            tuner = build_tuner(run_space, static, exp_dir=exp_dir, resume=resume,
                                warm_rows=warm_rows,
                                init_weights=init_weights,
                                console=console, ray_storage=store.ray_storage(),
                                wind_down=_startup.warm_wrapup_imports if tracker is not None
                                else None)
            console.print(f"study {space.name}: {space.num_samples} trials, "
                          f"{space.max_concurrent_trials} at a time → {exp_dir}")
            finished = fit(tuner)
        confirm_left = 0
        if space.confirm and finished >= space.num_samples:
            confirm_left = run_confirmation(
                run_space, static, store, exp_dir, resume=confirming, console=console,
                init_weights=init_weights)
    except BaseException:
        if started:
            shutdown_ray()
        raise
    shutdown = None
    if started:
        # Ray takes over a second to stop; nothing below needs it, so it stops alongside.
        shutdown = threading.Thread(target=shutdown_ray, name="ray-shutdown")
        shutdown.start()
    try:
        return _conclude(space, store, exp_dir, finished, parent, uri, tracker, force_promote,
                         console, t0, confirm_left)
    finally:
        if shutdown is not None:
            shutdown.join()


def _check_warm_start(warm_start: str, storage: Path, tracking: bool) -> None:
    """Refuse a --warm-start that cannot name a study, before Ray starts.

    It names a study folder, a study under the storage path or, with tracking, an MLflow
    experiment (looked up once MLflow is imported, while Ray starts); without tracking the study
    must be on disk.
    """
    check_path_text(warm_start, "--warm-start")
    if Path(warm_start).is_file():
        raise MsdnTuneError(f"--warm-start {shorten(warm_start)}: a file, not a study folder or "
                            "name")
    if not tracking:
        study_dir(warm_start, storage, what="--warm-start")


def _warm_start_rows(warm_start: str, storage: Path, uri: str | None) -> list[TrialRow]:
    """An earlier study's search trials: from its folder (or name under the storage path), else
    from the MLflow experiment of that name in the tracking store. Its confirmation trials are
    left out: they re-ran configurations the sampler is given already."""
    try:
        return load_trials(study_dir(warm_start, storage))
    except MsdnTuneError:
        if uri is None:
            raise
    # MLflow takes seconds to import: kept off the start-up path of `msdn-tune run`
    from msdn_tune.integrations.mlflow import trial_rows_from_experiment

    return [r for r in trial_rows_from_experiment(uri, warm_start) if r.stage == SEARCH]


def _conclude(space: StudySpec, store: Any, exp_dir: Path, finished: int,
              parent: str | None, uri: str | None, tracker: Any, force_promote: bool,
              console: Console, t0: float, confirm_left: int = 0) -> StudyOutcome:
    """Results table, best trial, tracking wrap-up and study metadata after `fit`."""
    store.pull(space.name)
    rows = load_study_trials(exp_dir)
    searched = [r for r in rows if r.stage == SEARCH]
    complete = (finished >= space.num_samples and len(searched) >= space.num_samples
                and confirm_left == 0)
    write_parquet(rows, exp_dir / TRIALS_FILE)
    objectives = [(o.metric, o.mode) for o in space.objectives]
    best, confirmed = recommendation(rows, objectives)
    say_failed_confirmations(rows, confirmed, console)
    store.fetch([b.checkpoint for b in best[:1] if b.checkpoint])
    outcome = StudyOutcome(path=exp_dir, complete=complete, rows=rows, best=best,
                           parent_run_id=parent, tracking_uri=uri, confirmed=confirmed)
    meta = read_study_meta(exp_dir)
    tracked: dict[str, Any] = {}
    if tracker is not None:
        _startup.warm_wrapup_imports()  # done already, or being done by the WindDown thread
        tracked = finish_tracking(tracker, space, outcome, force_promote, console, meta)
    meta.update({"complete": complete, "wall_s": meta.get("wall_s", 0.0) + time.time() - t0,
                 **tracked})
    write_study_meta(exp_dir, meta)
    store.push(space.name)
    # a submitted study is resumed by `submit`, from the machine it was submitted from
    outcome.resume_command = os.environ.get(SUBMIT_RESUME_ENV) or resume_command(meta)
    return outcome


def _resolve_gpu_auto(space: StudySpec, data_path: str, console: Console) -> StudySpec:
    """`space` with `resources.gpu: auto` replaced by a share of one GPU: as many trials per
    GPU as fit the cluster's GPU memory at this benchmark's shapes (msdn_tune.train.packing)."""
    if space.resources.get("gpu") != "auto":
        return space
    # torch and Ray's task API: only for a study that asks for auto
    from msdn_tune.integrations.ray.gpus import cluster_gpu_memory
    from msdn_tune.train.packing import gpu_fraction, trial_memory, trials_per_gpu
    from msdn_tune.train.trainer import trial_shapes

    gpu_bytes = cluster_gpu_memory()
    cfg = TrainConfig.from_dict(dict(space.fixed))
    with open_benchmark(data_path) as bench:
        mem = trial_memory(trial_shapes(bench, cfg))
    n = trials_per_gpu(gpu_bytes, mem)
    share = gpu_fraction(max(n, 1))
    fits = (f"{n} trials per GPU ({share:g} GPU each)" if n else
            "1 trial per GPU (its features do not all fit: part is read from the host)")
    console.print(f"gpu: auto → {fits}: a trial needs about {mem.total / 1e9:.1f} GB "
                  f"({(mem.train_features + mem.eval_features) / 1e9:.1f} GB of features kept "
                  f"on the GPU) of a {gpu_bytes / 1e9:.0f} GB GPU", soft_wrap=True)
    return dataclasses.replace(space, resources={**space.resources, "gpu": share})


def _study_init(space: StudySpec, uri: str | None) -> dict[str, Any] | None:
    """The weights a space's `fixed: {init: ...}` names, read once by the driver for all trials
    (Ray's object store takes them to the workers): no trial needs MLflow or the file."""
    source = space.fixed.get("init")
    if not source:
        return None
    from msdn_tune.commands.weights import init_weights  # torch: off the start-up path

    return init_weights(str(source), tracking_uri=uri)
