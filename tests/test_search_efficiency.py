"""benchmarks/search_efficiency.py --smoke: searches, judges the recommendations, pools and plots.

The full benchmark takes hours; the smoke mode runs the same code on the tiny preset (1 seed, 3
epochs, 6 trials per search): about 90 s on the shared 2-core machine, so it is in the slow
tier. `--pool` then reports the saved records without training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "search_efficiency.py"


def test_smoke_run_judges_every_method_at_every_budget_and_pools(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out),
                          "--plot", str(tmp_path / "p.png")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (record,) = json.loads(out.read_text())["judged"]
    assert set(record["recs"]) == {"random", "tpe+asha", "tpe", "tpe+asha+confirm"}
    assert len(record["default"]) == 3 and all(0 <= h <= 1 for h in record["default"])
    assert record["spent"]["random"] == record["budget"] == 18  # 6 trials x 3 epochs
    # random search's full-budget recommendation exists: a completed trial, retrained 3 times
    full = record["recs"]["random"]["1.0000"]
    assert len(full["test"]) == 3 and full["params"]
    # so does the confirmed one: its search stopped 1 x 2 x 3 trial-epochs early
    assert record["confirm"] == [1, 2]
    assert len(record["recs"]["tpe+asha+confirm"]["1.0000"]["test"]) == 3
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "judged recommendations, seeds [0]" in res.stdout
    pooled = subprocess.run([sys.executable, str(SCRIPT), "--pool", str(out)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert pooled.returncode == 0, pooled.stderr
    table = res.stdout[res.stdout.index("judged recommendations"):res.stdout.index("plot:")]
    assert table.strip() in pooled.stdout
