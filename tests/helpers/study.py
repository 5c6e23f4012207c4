"""Study documents (a small real study file, a minimal one) and the `msdn-tune` CLI run as a
subprocess, shared by the study tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

CLI = [sys.executable, "-m", "msdn_tune.cli"]


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
