"""Study documents (a small real study file, a minimal one) and the `msdn-tune` CLI run as a
subprocess, shared by the study tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "msdn_tune.cli"]

# Generous: a study's first checkpoints took over 300 s on the 2-core machine with two CPU burners,
# a CI run and a benchmark beside it; a driver that died ends a wait at once (proc.poll()).
STUDY_WAIT_S = 1200


def _space(tmp: Path, name: str, **over) -> Path:
    doc = {
        "version": 1,
        "name": name,
        "data": "tiny",
        "fixed": {"dataset": "synthetic", "epochs": 4, "device": "cpu"},
        "params": {
            "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
            "lambda_d": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "intervention": {"type": "categorical", "choices": ["none", "random"]},
            "lambda_causal": {"type": "float", "low": 0.1, "high": 1.0,
                              "when": {"intervention": ["random"]}},
        },
        "objective": {"metric": "best/H", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "max_t": 4, "reduction_factor": 2},
        "num_samples": 8,
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1},
        "storage_path": str(tmp / "results"),
    }
    doc.update(over)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def small_doc(tmp: Path, **over) -> dict:
    """A minimal one-parameter study document (4 trials of 6 epochs on the tiny preset), for
    tests that build a space without running it."""
    doc = {
        "version": 1, "name": "s", "data": "tiny",
        "fixed": {"dataset": "synthetic", "epochs": 6},
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "objective": {"metric": "best/H", "mode": "max"},
        "num_samples": 4, "storage_path": str(tmp / "results"),
    }
    doc.update(over)
    return doc


def _run(args, env_extra=None, **kw):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env_extra or {})}
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, **kw)


@contextmanager
def driver(args, cwd, env_extra=None) -> Iterator[subprocess.Popen]:
    """`msdn-tune` as a study driver in a session of its own, output piped (stderr with stdout).

    Whatever happens in the block, the driver's process group is gone after it: a driver left
    running after a failed wait would keep the session's shared Ray head busy and slow or fail
    every test after it.
    """
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env_extra or {})}
    proc = subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # the whole group ended meanwhile
                pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_checkpoints(proc: subprocess.Popen, exp: Path, n: int,
                         deadline_s: float = STUDY_WAIT_S) -> None:
    """Until the study folder `exp` holds `n` trial checkpoints; fails at once if the driver
    ends first."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if len(list(exp.glob("*/checkpoint_0*"))) >= n:
            return
        if proc.poll() is not None:
            pytest.fail("driver ended before it could be interrupted: " + proc.stdout.read())
        time.sleep(0.3)
    pytest.fail("no checkpoints appeared")
