"""benchmarks/search_efficiency.py --smoke: searches, judges the recommendations, pools and plots.

The full benchmark takes hours; the smoke mode runs the same code on the tiny preset (1 seed, 3
epochs, 6 trials per search): about 90 s on the shared 2-core machine, so it is in the slow
tier. `--pool` then reports the saved records without training; pooling records of one seed
from separate runs is tested without training, in the fast tier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "search_efficiency.py"


@pytest.mark.slow
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


def _record(seed, recs, judge=None, budget=18):
    return {"seed": seed, "budget": budget, "judge_seeds": judge or [seed], "confirm": [1, 2],
            "spent": {m: budget for m in recs}, "default": [0.5],
            "recs": {m: {f"{f:.4f}": {"trial": "t", "params": {}, "val": 0.9, "test": [v]}
                         for f in (0.25, 1 / 3, 0.5, 1.0)} for m, v in recs.items()}}


def test_pool_pairs_a_later_variant_run_with_the_same_seeds_random_search():
    """A variant run on tuning seeds (`--methods tpe+asha/meanH`) has no random search of its
    own: pooled, it pairs with the earlier run of the same seed, and mismatched runs are refused."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import search_efficiency as se
    finally:
        sys.path.remove(str(SCRIPT.parent))
    first = [_record(0, {"random": 0.6, "tpe+asha": 0.5}), _record(1, {"random": 0.7,
                                                                         "tpe+asha": 0.8})]
    later = [_record(0, {"tpe+asha/meanH": 0.65}), _record(1, {"tpe+asha/meanH": 0.75})]
    merged = se.merge_records(first + later)
    assert [r["seed"] for r in merged] == [0, 1]
    assert se.methods_in(merged) == ["random", "tpe+asha", "tpe+asha/meanH"]
    table = se.summarise_judged(first + later)
    # paired with random at 1x: +5 on seed 0 and +5 on seed 1 for the variant
    assert "tpe+asha/meanH" in table and "+5.00 ± 0.00  2/2" in table
    # and against the baseline tpe+asha: +15 on seed 0, -5 on seed 1 (mean +5, s.e. 10, 1 win)
    shipped = table[table.index("to tpe+asha (the baseline"):]
    assert "tpe+asha/meanH" in shipped and "+5.00 ± 10.00  1/2" in shipped
    # a method judged on only some seeds is named, not averaged over fewer seeds
    assert "left out, not judged on every seed pooled: tpe+asha/meanH" in se.summarise_judged(
        first + later[:1])
    # the variant alone: nothing to pair with
    assert "no random search on seed(s) [0, 1]" in se.summarise_judged(later)
    with pytest.raises(SystemExit) as exc:
        se.merge_records(first + [_record(0, {"tpe": 0.6}, judge=[99])])
    assert exc.value.code == 2


def test_the_baseline_is_pinned_and_the_shipped_demo_is_the_grace8_variant(tmp_path):
    """The saved records judged "tpe+asha" with rungs at epochs 2 and 8 and 64 random trials;
    the demo now ships the variant that beat it. The benchmark must keep running the baseline
    (or its records stop being reproducible), and the variant must be what the demo ships."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import search_efficiency as se
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from msdn_tune.space import load_space

    base = se.search_space("tpe+asha", 5, 320, tmp_path)
    assert (base.scheduler["grace_period"], base.scheduler["reduction_factor"]) == (2, 4)
    grace8 = se.search_space("tpe+asha/grace8", 5, 160, tmp_path)
    demo = load_space(se.DEMO)
    for key in ("grace_period", "reduction_factor", "max_t"):
        assert grace8.scheduler[key] == demo.scheduler[key], key
    assert se.search_space("random", 5, se.RANDOM_TRIALS, tmp_path).scheduler["type"] == "none"
    assert se.RANDOM_TRIALS * demo.fixed["epochs"] == 1920  # the saved records' budget
