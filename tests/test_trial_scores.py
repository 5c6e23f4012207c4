"""benchmarks/trial_scores.py: the saved 60-configuration run reports without training, a bad
file is refused with exit 2, and a tiny live run trains, saves and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "trial_scores.py"
SAVED = ROOT / "benchmarks" / "results" / "trial_scores-60.json"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


def _run(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_saved_run_reports_every_score_and_the_noise_floor():
    res = _run("--load", str(SAVED))
    assert res.returncode == 0, res.stderr
    assert "60 random configurations" in res.stdout
    for score in ("best/H (shipped)", "mean/H", "H at epoch 2", "H at epoch 8", "oracle"):
        assert score in res.stdout, score
    assert "noise floor" in res.stdout and "margin" in res.stdout


def test_a_file_that_is_not_a_saved_run_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"configs": [{}], "results": []}))
    res = _run("--load", str(bad))
    assert res.returncode == 2 and "error: --load" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_tiny_live_run_trains_saves_and_reports(tmp_path):
    out = tmp_path / "s.json"
    res = _run("--configs", "4", "--json", str(out), cwd=tmp_path, timeout=1200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    saved = json.loads(out.read_text())
    assert len(saved["configs"]) == 4 and len(saved["results"]) == 12
    assert all(len(r["val_curve"]) == 30 and 0 <= r["test"] <= 1 for r in saved["results"])
    assert "4 random configurations" in res.stdout
