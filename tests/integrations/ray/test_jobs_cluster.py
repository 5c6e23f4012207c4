"""Studies on Ray clusters: job planning, and real clusters on this host (slow): a worker node
lost mid-study, and `msdn-tune submit` to a head with token auth.

Nodes are separate `ray start` processes with their own temp dirs (the marker that finds their
processes); they share this host's IP, which Ray allows. Everything is stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from msdn_tune.errors import ClusterError
from msdn_tune.integrations.ray.jobs import dashboard_url, plan_job
from tests.helpers.raynodes import (
    free_port,
    kill_by_marker,
    pids_matching,
    start_head,
    start_worker,
    stop_by_marker,
)

CLI = [sys.executable, "-m", "msdn_tune.cli"]
EPOCHS = 8
# The GCS notices a vanished node in ~3 s instead of ~15-30 s.
FAST_HEALTH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def _space(folder: Path, name: str, *, num_samples: int, epochs: int) -> Path:
    doc = {
        "version": 1,
        "name": name,
        "data": "tiny",
        "fixed": {"dataset": "synthetic", "epochs": epochs, "device": "cpu", "threads": 1},
        "params": {"lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}},
        "objective": {"metric": "best/H", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"type": "none"},
        "num_samples": num_samples,
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AUTH_MODE": "disabled"}
    env.pop("MSDN_TUNE_SHARED_STORAGE", None)
    env.update(extra)
    return env


def _children(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _latest_results(head_temp: Path, study: str) -> dict[str, dict]:
    """The driver's newest result per trial (Ray's driver-side result.json, written live)."""
    out = {}
    for f in head_temp.glob(f"session_*/artifacts/*/{study}/driver_artifacts/*/result.json"):
        try:
            lines = f.read_text().strip().splitlines()
            if lines:
                last = json.loads(lines[-1])
                out[last["trial_id"]] = last
        except (OSError, ValueError, KeyError):
            continue  # being written
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A head with no CPUs (it only hosts the driver) and two 1-CPU worker nodes."""
    root = Path(tempfile.mkdtemp(prefix="msdnft-", dir="/tmp"))
    head, w1, w2 = root / "h", root / "w1", root / "w2"
    for d in (head, w1, w2):
        d.mkdir()
    try:
        address = start_head(head, num_cpus=0, env=FAST_HEALTH)
        errors: list[BaseException] = []

        def worker(temp: Path, res: str) -> None:
            try:
                start_worker(address, temp, num_cpus=1, resources=json.dumps({res: 1}))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t, f"node_{t.name}")) for t in (w1, w2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        yield {"address": address, "head": head, "workers": {"w1": w1, "w2": w2}, "root": root}
    finally:
        for d in (w1, w2, head):
            stop_by_marker(str(d))
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_lost_worker_node_trial_resumes_from_checkpoint(ray_cluster, tmp_path):
    address, head = ray_cluster["address"], ray_cluster["head"]
    space = _space(tmp_path, "ft", num_samples=3, epochs=EPOCHS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "results"
    args = [
        "run",
        "--space",
        str(space),
        "--address",
        address,
        "--tracking-uri",
        uri,
        "--storage-path",
        str(storage),
    ]

    # Node-local storage on a 3-node cluster is refused before anything is written or run.
    refused = subprocess.run(
        CLI + args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "storage_path" in refused.stderr and "--storage-shared" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (storage / "ft").exists()

    # Same host, so the tmp path is in fact shared: declare it.
    proc = subprocess.Popen(
        CLI + args,
        cwd=tmp_path,
        env=_env(MSDN_TUNE_SHARED_STORAGE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed_trial = killed_at = None
    deadline = time.time() + 1200  # the whole study; 240 s was too short under heavy load
    try:
        while killed_trial is None and time.time() < deadline and proc.poll() is None:
            for tid, res in _latest_results(head, "ft").items():
                if not 1 <= res.get("epoch", 0) <= EPOCHS - 3:
                    continue  # kill only after a checkpointed epoch, with epochs still to go
                for temp in ray_cluster["workers"].values():
                    if res.get("pid") in pids_matching(str(temp)):
                        kill_by_marker(str(temp))
                        killed_trial, killed_at = tid, int(res["epoch"])
                        break
                if killed_trial:
                    break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=max(10, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_trial is not None, "no trial could be caught mid-run: " + (out or "")[-3000:]
    assert proc.returncode == 0, out[-5000:]
    # the lost trial is one line, not Ray's traceback: the study recovers from it
    assert "Traceback" not in out, out[-5000:]
    assert re.search(rf"msdn_trial_{killed_trial}: \w+: .*; Tune restarts it", out), out[-5000:]

    # The study completed with every trial, each run to its last epoch.
    rows = pq.read_table(storage / "ft" / "trials.parquet").to_pylist()
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    assert all(r["status"] == "completed" and r["epochs_run"] == EPOCHS for r in rows), rows

    # One MLflow run per trial; the interrupted trial kept its run and continued its epochs.
    parents, children = _children(uri, "ft")
    assert len(parents) == 1 and len(children) == 3
    assert len({r.data.tags["msdn_tune.trial_id"] for r in children}) == 3
    assert all(r.info.status == "FINISHED" for r in children)
    restarted = [r for r in children if int(r.data.tags.get("msdn_tune.restarts", "0")) >= 1]
    assert [r.data.tags["msdn_tune.trial_id"] for r in restarted] == [killed_trial]
    hist = MlflowClient(uri).get_metric_history(restarted[0].info.run_id, "val/H")
    steps = [m.step for m in sorted(hist, key=lambda m: (m.timestamp, m.step))]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1)), steps
    assert steps.count(1) == 1, f"restarted from epoch 0: {steps}"
    # At most the epoch in flight when the node died is trained twice; the rest continue.
    assert len(steps) <= EPOCHS + 1, steps
    assert steps[:killed_at] == list(range(1, killed_at + 1)), (steps, killed_at)

    # A retried job re-runs the same command: --resume-if-exists restores, adds nothing.
    again = subprocess.run(
        CLI + args + ["--resume-if-exists"],
        cwd=tmp_path,
        timeout=300,
        env=_env(MSDN_TUNE_SHARED_STORAGE="1"),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming the existing study" in again.stdout
    assert pq.read_table(storage / "ft" / "trials.parquet").num_rows == 3
    parents, children = _children(uri, "ft")
    assert len(parents) == 1 and len(children) == 3


@pytest.mark.slow
def test_submit_study_as_ray_job_with_token_auth(tmp_path):
    """`ray start --head` with the dashboard and token auth (Ray's default), then submit."""
    temp = Path(tempfile.mkdtemp(prefix="msdnjob-", dir="/tmp"))
    project = tmp_path / "project"
    project.mkdir()
    space = _space(project, "job", num_samples=2, epochs=2)
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        start_head(temp, num_cpus=2, dashboard_port=port, env=auth)

        # Without the token: a clear exit 2, no traceback.
        res = subprocess.run(
            CLI + ["jobs", "list", "--address", address],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and "RAY_AUTH_MODE=token" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr

        res = subprocess.run(
            CLI
            + [
                "submit",
                "--address",
                address,
                "--space",
                str(space),
                "--working-dir",
                str(project),
                "--storage-path",
                str(tmp_path / "results"),
                "--tracking-uri",
                uri,
                "--resume-if-exists",
            ],
            env=_env(**auth),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
        assert "SUCCEEDED" in res.stdout
        assert "no restorable study yet, starting it" in res.stdout  # logs were followed
        # the job's driver offers `submit ... --resume` from here, not its own `run` command
        resume = next(ln for ln in res.stdout.splitlines() if "resume:" in ln)
        assert f"msdn-tune submit --space {space.resolve()} --address {address}" in resume, resume

        rows = pq.read_table(tmp_path / "results" / "job" / "trials.parquet").to_pylist()
        assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
        parents, children = _children(uri, "job")
        assert len(parents) == 1 and len(children) == 2

        listed = subprocess.run(
            CLI + ["jobs", "list", "--address", address],
            env=_env(**auth),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout, listed.stderr
        # the submitted job only: not also its driver, which Ray lists as a job of type DRIVER
        assert listed.stdout.count("SUCCEEDED") == 1, listed.stdout
        job_id = next(
            line.split()[2] for line in res.stdout.splitlines() if line.startswith("submitted job")
        )
        status = subprocess.run(
            CLI + ["jobs", "status", job_id, "--address", address],
            env=_env(**auth),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stderr
        logs = subprocess.run(
            CLI + ["jobs", "logs", job_id, "--address", address],
            env=_env(**auth),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "study job: 2 trials" in logs.stdout
    finally:
        stop_by_marker(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


# --- fast checks of msdn_tune.integrations.ray.jobs ----------------------------------------------


def test_too_large_upload_is_refused_naming_the_offenders(tmp_path):
    root = tmp_path / "proj"
    for folder in ("assets", "search_spaces"):
        (root / folder).mkdir(parents=True)
    (root / "pyproject.toml").write_text("x")
    with open(root / "assets" / "huge.bin", "wb") as f:  # sparse: no disk used
        f.truncate(600 * 1024 * 1024)
    space = _space(root / "search_spaces", "big", num_samples=2, epochs=2)
    with pytest.raises(ClusterError, match=r"over Ray's 512\.0 MiB limit.*assets/ \(600\.0 MiB"):
        plan_job(space, working_dir=root, storage_path="/mnt/x")


def test_plan_job_builds_the_entrypoint_and_runtime_env(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "spaces").mkdir(parents=True)
    space = _space(root / "spaces", "plan", num_samples=3, epochs=2)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    plan = plan_job(
        space,
        working_dir=root,
        storage_path="s3://bucket/studies",
        tracking_uri="http://head:5000",
        num_samples=5,
        confirm_top=2,
        resume_if_exists=True,
        pip=["msdn-tune==0.1.0"],
        address="http://head:8265",
    )
    assert plan.entrypoint.split() == [
        "python",
        "-m",
        "msdn_tune.cli",
        "run",
        "--space",
        "spaces/plan.yaml",
        "--address",
        "auto",
        "--storage-path",
        "s3://bucket/studies",
        "--num-samples",
        "5",
        "--confirm-top",
        "2",
        "--tracking-uri",
        "http://head:5000",
        "--resume-if-exists",
    ]
    env = plan.runtime_env
    assert env["working_dir"] == str(root) and "/.venv/" in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://head:5000"
    assert env["env_vars"]["RAY_AUTH_MODE"] == "token"  # passed through to the job's driver
    assert "RAY_AUTH_TOKEN" not in env["env_vars"]  # never ship the secret in job metadata
    assert env["pip"]["packages"] == ["msdn-tune==0.1.0"]
    assert plan.submission_id.startswith("msdn-plan-") and plan.warnings == []
    assert plan.metadata["msdn_tune.study"] == "plan"
    # the job's driver prints this resume command: the submitter's file and cluster, not the
    # copy in the job's temporary folder and `--address auto`
    assert shlex.split(env["env_vars"]["MSDN_TUNE_RESUME_COMMAND"]) == [
        "msdn-tune", "submit", "--space", str(root / "spaces" / "plan.yaml"),
        "--address", "http://head:8265", "--name", "plan",
        "--storage-path", "s3://bucket/studies", "--num-samples", "5", "--confirm-top", "2",
        "--tracking-uri", "http://head:5000", "--working-dir", str(root),
        "--pip", "msdn-tune==0.1.0", "--resume"]

    bad = [
        (dict(working_dir=tmp_path / "elsewhere"), "outside the working directory"),
        (dict(working_dir=root), "is relative"),  # the file's ./msdn_results default
        (
            dict(working_dir=root, storage_path="/mnt/x", tracking_uri="sqlite:///mlflow.db"),
            "relative SQLite",
        ),
    ]
    (tmp_path / "elsewhere").mkdir()
    for kwargs, message in bad:
        with pytest.raises(ClusterError, match=message):
            plan_job(space, **kwargs)
    quiet = plan_job(space, working_dir=root, storage_path="/mnt/x")
    assert "--tracking-uri" not in quiet.entrypoint and "MLFLOW_TRACKING_URI" in quiet.warnings[0]


def test_addresses_are_checked_before_any_request():
    assert dashboard_url("head:8265") == "http://head:8265"
    assert dashboard_url("https://ray.example.org/") == "https://ray.example.org"
    for bad, message in (("head:6379", "GCS port"), ("ray://head:10001", "dashboard")):
        with pytest.raises(ClusterError, match=message):
            dashboard_url(bad)


def test_cli_unreachable_cluster_fails_fast_and_dry_run_prints_the_job(tmp_path):
    t0 = time.time()
    res = subprocess.run(
        CLI + ["jobs", "list", "--address", f"127.0.0.1:{free_port()}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "cannot reach the Ray dashboard" in res.stderr
    assert "Traceback" not in res.stderr and time.time() - t0 < 30
    space = _space(tmp_path, "dry", num_samples=2, epochs=2)
    res = subprocess.run(
        CLI
        + [
            "submit",
            "--space",
            str(space),
            "--working-dir",
            str(tmp_path),
            "--storage-path",
            "gs://b/s",
            "--no-tracking",
            "--dry-run",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "entrypoint: python -m msdn_tune.cli run --space dry.yaml" in res.stdout
    assert "--no-tracking" in res.stdout and '"working_dir"' in res.stdout
