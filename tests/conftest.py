"""Test-session settings: private local Ray without token auth, quiet libraries, own caches."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_address():
    """One real Ray head for the whole test session, stopped by PID at the end.

    CLI drivers started by tests connect to it with --address, so no test pays for its own
    Ray start (about 4-8 s each on 2 cores).
    """
    from tests.helpers.raynodes import start_head, stop_by_marker

    temp = Path(tempfile.mkdtemp(prefix="msdnray-", dir="/tmp"))
    address = start_head(temp, num_cpus=2)
    try:
        yield address
    finally:
        stop_by_marker(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
