"""benchmarks/causal.py --smoke: the causal-attention benchmark trains, reports and plots.

Its full grid takes hours; the smoke mode runs the same code on the confounded-tiny preset (1
seed, 1 epoch, strengths 0 and 1, one lambda per intervention): about 40 s on the shared 2-core
machine, so it is in the slow tier. `--pool` then reports the saved results without training.
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
SCRIPT = ROOT / "benchmarks" / "causal.py"


def test_smoke_run_reports_every_method_and_pools(tmp_path):
    env_py = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json",
                          str(tmp_path / "r.json"), "--plot", str(tmp_path / "h.png")],
                         capture_output=True, text=True, timeout=900, env=env_py)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    methods = {r["method"] for r in rows}
    assert methods == {"MSDN", "MSDN++ random λ=1", "MSDN++ uniform λ=1",
                       "MSDN++ shuffle λ=1"}
    assert sorted({r["shortcut"] for r in rows}) == [0.0, 1.0] and len(rows) == 8
    assert all(0.0 <= r[m] <= 1.0 for r in rows for m in ("zsl_acc", "U", "S", "H"))
    assert "shortcut 0 (the demo benchmark)" in res.stdout and "ΔH vs MSDN" in res.stdout
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    pooled = subprocess.run([sys.executable, str(SCRIPT), "--pool", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=300, env=env_py)
    assert pooled.returncode == 0, pooled.stderr
    table = res.stdout[res.stdout.index("\nshortcut 0"):res.stdout.index("plot:")]
    assert table.strip() in pooled.stdout
