"""The trainable's clean-up of checkpoint staging folders left by workers killed mid-save."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from msdn_tune.integrations.ray.trainable import STAGING_PREFIX, sweep_stale_staging


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _staging(tmp, pid: int, age_s: float):
    d = tmp / f"{STAGING_PREFIX}{pid}-abc123"
    d.mkdir()
    (d / "checkpoint.pt.tmp").write_bytes(b"x" * 1000)
    old = time.time() - age_s
    os.utime(d, (old, old))
    return d


def test_only_old_folders_of_dead_processes_are_swept(tmp_path):
    dead = _dead_pid()
    stale = _staging(tmp_path, dead, age_s=7200)
    live = _staging(tmp_path, os.getpid(), age_s=7200)
    other = tmp_path / f"{STAGING_PREFIX}notapid"
    other.mkdir()
    os.utime(other, (0, 0))

    assert sweep_stale_staging(tmp_path) == 1
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_a_recent_folder_of_a_dead_process_is_kept(tmp_path):
    """Another machine sharing the temp folder has its own pids: a folder in use there looks
    like a dead process's here, so only age tells them apart."""
    recent = _staging(tmp_path, _dead_pid(), age_s=5)
    assert sweep_stale_staging(tmp_path) == 0
    assert recent.exists()
    assert sweep_stale_staging(tmp_path, older_than_s=1) == 1
    assert not recent.exists()
