"""End to end: the real `msdn-tune run` CLI through real Ray, Optuna, ASHA and MLflow (SQLite)."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.study import STUDY_WAIT_S, _run, _space, driver, wait_for_checkpoints

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_address):
    """One tiny study shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("study")
    space = _space(tmp, "e2e")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    res = _run(["run", "--space", str(space), "--address", ray_address, "--tracking-uri", uri],
               cwd=tmp, timeout=600)
    return tmp, res, uri


def test_run_completes_and_prints_next_steps(study):
    tmp, res, _ = study
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "best completed trial" in out
    assert "results:" in out and "--resume" in out and "retrain best: msdn-tune train" in out


def test_parquet_has_one_row_per_trial_and_asha_stopped_some(study):
    tmp, res, _ = study
    table = pq.read_table(tmp / "results" / "e2e" / "trials.parquet").to_pylist()
    assert len(table) == 8
    assert len({r["trial_id"] for r in table}) == 8
    statuses = [r["status"] for r in table]
    assert "completed" in statuses
    assert "early_stopped" in statuses, statuses  # ASHA stopped at least one
    for r in table:
        if r["status"] == "early_stopped":
            assert r["epochs_run"] < r["epochs_total"]
        if r["status"] == "completed":
            assert r["epochs_run"] == r["epochs_total"] == 4
        # Conditional parameter: lambda_causal exists only with an intervention.
        if r["intervention"] == "none":
            assert r.get("lambda_causal") is None
        else:
            assert 0.1 <= r["lambda_causal"] <= 1.0


def test_results_and_best_commands(study):
    tmp, _, _ = study
    res = _run(["results", str(tmp / "results" / "e2e"), "--parquet", str(tmp / "t.parquet")])
    assert res.returncode == 0, res.stderr
    assert pq.read_table(tmp / "t.parquet").num_rows == 8
    best = _run(["best", "e2e", "--storage-path", str(tmp / "results")])
    assert best.returncode == 0, best.stderr
    assert "checkpoint:" in best.stdout


def test_trials_keep_tunes_csv_and_json_logs_but_write_no_tensorboard_files(study):
    tmp, _, _ = study
    trial_dirs = [d for d in (tmp / "results" / "e2e").iterdir() if (d / "params.json").exists()]
    assert len(trial_dirs) == 8
    for d in trial_dirs:
        assert (d / "progress.csv").stat().st_size > 0 and (d / "result.json").stat().st_size > 0
    assert not list((tmp / "results" / "e2e").rglob("events.out.tfevents*"))


def test_mlflow_has_parent_and_one_child_per_trial(study):
    from mlflow.tracking import MlflowClient

    tmp, _, uri = study
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status != "RUNNING" for r in runs)
    trial_ids = {r.data.tags.get("msdn_tune.trial_id") for r in children}
    assert len(trial_ids) == 8
    some = children[0]
    hist = client.get_metric_history(some.info.run_id, "val/H")
    assert [m.step for m in hist] == list(range(1, len(hist) + 1))
    assert "lr" in some.data.params


def _recorded(exp: Path) -> list[tuple[str, str, Path]]:
    """(trial id, Tune status, recorded checkpoint) of each trial whose latest checkpoint the
    study folder's experiment state names."""
    from msdn_tune.integrations.ray.experiment import recorded_checkpoint, trial_states

    out = []
    for config, meta in trial_states(exp):
        recorded = recorded_checkpoint(exp, config, meta)
        if recorded is not None:
            out.append((config["trial_id"], config["status"], recorded))
    return out


def _wait_for_a_recorded_checkpoint(proc, exp, deadline_s=STUDY_WAIT_S):
    """Until the driver's experiment state names a checkpoint of a trial still running.

    Once a trial has a recorded checkpoint every later state names one, so after the kill at
    least one trial has one, whatever the driver wrote in between."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if any(status == "RUNNING" for _, status, _ in _recorded(exp)):
            return
        if proc.poll() is not None:
            pytest.fail("driver ended before it could be killed: " + proc.stdout.read())
        time.sleep(0.3)
    pytest.fail("the experiment state never named a running trial's checkpoint")


def _trial_actors() -> list[int]:
    """PIDs of Ray Tune function-trial actors on this host (their process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::ImplicitFunc"):
                pids.append(int(entry.name))
    return pids


def _wait_for_trials_to_end(deadline_s=STUDY_WAIT_S) -> None:
    """Until Ray has ended the killed driver's trials. Until then a trial may still be writing
    its next checkpoint into the folder that `_lose_recorded_checkpoint` edits (CI once saw that
    folder half-written, so the repair had nothing readable to restore from)."""
    deadline = time.time() + deadline_s
    while _trial_actors():
        if time.time() > deadline:
            pytest.fail(f"trials of the killed driver still running: {_trial_actors()}")
        time.sleep(0.3)


def _lose_recorded_checkpoint(exp: Path) -> str:
    """Make the race a killed driver can leave: the checkpoint Tune's state names is gone (Tune
    deleted it for num_to_keep) and a newer one exists in the trial's folder (written by the
    trial before the state caught up). An unfinished trial is chosen when there is one, so that
    it also continues from the refilled checkpoint; any trial with a recorded checkpoint
    exercises the repair itself. Returns that trial's id."""
    import shutil

    from msdn_tune.integrations.ray.experiment import recorded_checkpoints, trial_states

    # a trial whose recorded checkpoint is still there (it is the newer copy's source), an
    # unfinished one first
    candidates = sorted((r for r in _recorded(exp) if r[2].exists()),
                        key=lambda r: r[1] == "TERMINATED")
    assert candidates, "no trial has a recorded checkpoint on disk after the kill"
    trial_id, _, recorded = candidates[0]
    # the newer one is always a complete copy: a folder the kill left half-written is replaced
    newer = recorded.with_name(f"checkpoint_{int(recorded.name[11:]) + 1:06d}")
    shutil.rmtree(newer, ignore_errors=True)
    shutil.copytree(recorded, newer)
    # Tune deleted every checkpoint the state still counts as kept, as it does when the trial
    # registers num_to_keep newer ones before the driver's next snapshot
    for config, meta in trial_states(exp):
        if config["trial_id"] == trial_id:
            for kept in recorded_checkpoints(exp, config, meta):
                shutil.rmtree(kept, ignore_errors=True)
    return trial_id


def test_interrupt_then_kill_then_resume(tmp_path, ray_address):
    """Ctrl-C: reported incomplete (exit 130); killed: resumable; resumed: exactly num_samples
    trials, no duplicates, one MLflow run per trial, none left RUNNING. A trial whose recorded
    checkpoint the kill left deleted continues from its newer one instead of failing (made so on
    every run: the repair is always exercised)."""
    space = _space(tmp_path, "killed", num_samples=9, max_concurrent_trials=1,
                   scheduler={"type": "none"},
                   fixed={"dataset": "synthetic", "epochs": 6, "device": "cpu"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", "--space", str(space), "--address", ray_address, "--tracking-uri", uri,
            "--num-samples", "6", "--max-concurrent", "2"]  # the file says 9 and 1
    exp = tmp_path / "results" / "killed"
    elsewhere = tmp_path / "elsewhere"  # resumes run from another folder: no ./mlflow.db
    elsewhere.mkdir()

    with driver(args, cwd=tmp_path) as proc:
        wait_for_checkpoints(proc, exp, 2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 130, out[-3000:]
    assert "study incomplete" in out
    # the printed resume command carries every option the study was run with, and is run as is
    printed = out.split("resume with:\n", 1)[1].splitlines()[0].strip()
    for option in ("--num-samples 6", "--max-concurrent 2", f"--tracking-uri {uri}",
                   f"--address {ray_address}", f"--space {space}", "--resume"):
        assert option in printed, printed
    assert shlex.split(printed)[:2] == ["msdn-tune", "run"]

    with driver(shlex.split(printed)[1:], cwd=elsewhere) as proc:
        wait_for_checkpoints(proc, exp, len(list(exp.glob("*/checkpoint_0*"))) + 2)
        _wait_for_a_recorded_checkpoint(proc, exp)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's group, hard
    _wait_for_trials_to_end()
    lost = _lose_recorded_checkpoint(exp)

    # `--resume` alone: the study remembers its options and its tracking store
    res = _run(["run", "--space", str(space), "--resume"], cwd=elsewhere, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming with the study's own num_samples=6, max_concurrent_trials=2" in res.stdout
    assert not (elsewhere / "mlflow.db").exists()
    assert f"trial {lost}: its last recorded checkpoint" in res.stdout, res.stdout[-3000:]
    # the repair ran before Tune looked: no Ray error about the lost checkpoints, no traceback
    printed = res.stdout + res.stderr
    assert "Error handling checkpoint" not in printed and "Traceback" not in printed, printed
    # Tune's TensorBoard logger stays off on resume as on a fresh run
    assert not list(exp.rglob("events.out.tfevents*"))
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    assert len(rows) == 6
    assert len({r["trial_id"] for r in rows}) == 6
    assert all(r["status"] == "completed" for r in rows), [r["status"] for r in rows]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    e = client.get_experiment_by_name("killed")
    runs = client.search_runs([e.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    assert len(children) == 6, [r.data.tags.get("msdn_tune.trial_id") for r in children]
    assert all(r.info.status != "RUNNING" for r in runs)
    for r in children:  # each epoch logged once: restarted trials continued their own run
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/H")]
        assert sorted(steps) == list(range(1, 7)), steps


def test_sigterm_stops_the_study_like_ctrl_c(tmp_path, ray_address):
    """`jobs stop` and schedulers send SIGTERM: the study is stopped and saved as on Ctrl-C
    (exit 130, its resume command printed), never Ray's C++ stack dump mid-write."""
    space = _space(tmp_path, "termed", num_samples=4, scheduler={"type": "none"},
                   fixed={"dataset": "synthetic", "epochs": 6, "device": "cpu"})
    exp = tmp_path / "results" / "termed"
    args = ["run", "--space", str(space), "--address", ray_address, "--no-tracking"]
    with driver(args, cwd=tmp_path) as proc:
        wait_for_checkpoints(proc, exp, 2)
        proc.send_signal(signal.SIGTERM)  # the driver alone, as Ray's job supervisor does
        out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 130, out[-3000:]
    assert "SIGTERM received: stopping the study" in out and "study incomplete" in out
    assert "*** SIGTERM received at" not in out and "Traceback" not in out, out[-3000:]
    assert "--resume" in out


def _nan_store(path: Path) -> Path:
    import numpy as np

    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.data.store import StoreWriter

    src = open_benchmark("tiny")
    with StoreWriter(path, n_images=src.n_images, channels=src.channels, regions=src.regions,
                     dtype="float32") as w:
        feats = src.gather(np.arange(src.n_images)).float().numpy()
        feats[src.splits["trainval"][:3]] = np.nan
        w.write(feats)
        w.finish(labels=src.labels, splits=src.splits, class_attributes=src.class_attributes,
                 attribute_vectors=src.attribute_vectors, class_names=src.class_names,
                 attribute_names=src.attribute_names, dataset="synthetic:nan", source="test")
    return path


def test_diverging_trials_are_recorded_failed_and_the_study_goes_on(tmp_path, ray_address):
    store = _nan_store(tmp_path / "nan-store")
    space = _space(tmp_path, "diverge", data=str(store), num_samples=3,
                   scheduler={"type": "none"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run(["run", "--space", str(space), "--address", ray_address, "--tracking-uri", uri],
               cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "no trial ran to completion" in res.stdout
    rows = pq.read_table(tmp_path / "results" / "diverge" / "trials.parquet").to_pylist()
    assert len(rows) == 3
    assert all(r["status"] == "failed" and "diverged" in r["error"] for r in rows), rows

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    e = client.get_experiment_by_name("diverge")
    children = [r for r in client.search_runs([e.experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3
    assert all(r.info.status == "FAILED" for r in children)
    assert all("diverged" in r.data.tags.get("msdn_tune.error", "") for r in children)


def test_warm_start_feeds_completed_trials_to_the_sampler(study, ray_address):
    tmp, _, _ = study
    done = [r for r in pq.read_table(tmp / "results" / "e2e" / "trials.parquet").to_pylist()
            if r["status"] == "completed"]
    space = _space(tmp, "warm", num_samples=2, scheduler={"type": "none"},
                   fixed={"dataset": "synthetic", "epochs": 2, "device": "cpu"})
    res = _run(["run", "--space", str(space), "--address", ray_address, "--no-tracking",
                "--warm-start", "e2e"], cwd=tmp, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"warm start: {len(done)} completed trials given to the sampler" in res.stdout


def test_existing_study_is_not_overwritten(study):
    tmp, _, uri = study
    res = _run(["run", "--space", str(tmp / "e2e.yaml"), "--tracking-uri", uri], cwd=tmp)
    assert res.returncode == 2
    assert "already exists" in res.stderr and "Traceback" not in res.stderr


def _earlier_study_in_mlflow_only(uri: str, name: str, outcomes: list[str]) -> None:
    """An earlier study as msdn-tune's trackers leave it in the tracking store (a parent run, one
    child run per trial with its outcome tag and metrics), and no study folder anywhere."""
    from msdn_tune.integrations.mlflow import StudyTracker, TrialTracker
    from msdn_tune.train.config import TrainConfig

    study = StudyTracker(uri, name)
    parent = study.start(name, resolved_config={}, search_settings={})
    for i, outcome in enumerate(outcomes):
        cfg = TrainConfig.from_dict({"dataset": "synthetic", "epochs": 4, "device": "cpu",
                                     "lr": 1e-3, "lambda_d": 1e-2 / (i + 1),
                                     "intervention": "random", "lambda_causal": 0.5})
        trial = TrialTracker(uri, study.experiment_id, parent, trial_id=f"t{i}",
                             trial_name=f"trial_{i}", study=name, params=cfg.to_dict())
        epochs = 4 if outcome == "completed" else 2
        trial.log_epoch({"val/H": 0.1 * (i + 1), "best/H": 0.1 * (i + 1),
                         "epoch": float(epochs)}, epochs)
        trial.finish(outcome)
    study.finish(best_metrics=None, best_trial_id=None)


def test_warm_start_from_the_mlflow_experiment_alone(ray_address, tmp_path):
    """The earlier study's folder is not reachable (other storage path): its MLflow experiment
    in the tracking store provides the completed trials.

    The earlier study is written to the store by msdn-tune's own trackers, with known outcomes,
    rather than taken from the module's end-to-end study: whether that study's trials had tagged
    their outcome in MLflow by the time its driver closed their runs depends on how busy the
    machine was (a run still open after the driver's grace period is closed as killed), so the
    number of completed trials MLflow holds could differ from the study folder's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _earlier_study_in_mlflow_only(uri, "earlier",
                                  ["completed", "early_stopped", "completed", "failed",
                                   "completed"])
    space = _space(tmp_path, "warm-mlflow", num_samples=1, scheduler={"type": "none"},
                   fixed={"dataset": "synthetic", "epochs": 1, "device": "cpu"})
    res = _run(["run", "--space", str(space), "--address", ray_address, "--tracking-uri", uri,
                "--warm-start", "earlier"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "warm start: 3 completed trials given to the sampler" in res.stdout, res.stdout[-3000:]


def test_every_trial_starts_from_the_model_fixed_init_names(tmp_path, ray_address):
    """`fixed: {init: ...}`: the driver reads the weights once and every trial starts from them
    (lr 1e-12: after its one epoch a trial still holds them); the trials record the init. The
    confirmation stage's trials too."""
    import torch
    from click.testing import CliRunner

    from msdn_tune.cli import main

    run = tmp_path / "init-run"
    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--out", str(run), "--set",
                                    "epochs=1", "--set", "threads=1", "--set",
                                    "dataset=synthetic", "--set", "seed=5"])
    assert res.exit_code == 0, res.output
    init = torch.load(run / "checkpoint.pt", weights_only=True)
    init = init["best_state"] or init["model"]
    space = _space(tmp_path, "from-init", num_samples=2, scheduler={"type": "none"},
                   params={"lambda_d": {"type": "float", "low": 1e-4, "high": 1e-1,
                                        "log": True}},
                   fixed={"dataset": "synthetic", "epochs": 1, "device": "cpu", "lr": 1e-12,
                          "init": str(run)})
    res = _run(["run", "--space", str(space), "--address", ray_address, "--no-tracking",
                "--confirm-top", "1", "--confirm-seeds", "1"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exp = tmp_path / "results" / "from-init"
    ckpts = sorted([*exp.glob("*/checkpoint_*/checkpoint.pt"),
                    *exp.glob("confirm/*/checkpoint_*/checkpoint.pt")])
    assert len({p.parent.parent for p in ckpts}) == 3, ckpts  # 2 searched, 1 confirmed
    assert "mean ± SD over 1 fresh seeds" in res.stdout
    for path in ckpts:
        state = torch.load(path, weights_only=True)
        assert state["config"]["init"] == str(run)
        for key in ("W_1", "W_2", "W_1_1", "W_2_1", "V"):
            torch.testing.assert_close(state["model"][key], init[key], rtol=0, atol=1e-6)


def test_gpu_auto_on_a_cluster_without_gpus_is_one_line_before_any_trial(tmp_path, ray_address):
    space = _space(tmp_path, "auto-gpu", num_samples=2, resources={"cpu": 1, "gpu": "auto"})
    res = _run(["run", "--space", str(space), "--address", ray_address, "--no-tracking"],
               cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resources.gpu: auto, but the Ray cluster has no GPU" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "results" / "auto-gpu").glob("msdn_trial*"))
