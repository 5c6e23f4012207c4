"""benchmarks/gpu.py --smoke: the GPU benchmark's code paths run on CPU and report every figure.

The script itself is run once on a rented GPU machine that CI cannot reach, so its smoke mode is
what keeps it working: the same driver, worker processes, store generation, Trainer runs,
concurrent rounds behind a barrier, MPS probe and extraction, at tiny shapes on the CPU. One run
is shared by the tests below.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from msdn_tune.train.precision import bf16_supported

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
CPU_BF16 = bf16_supported(torch.device("cpu"))
TORCHVISION = importlib.util.find_spec("torchvision") is not None

# The smoke run starts seven worker processes, each importing torch: 38-46 s on this project's
# 2-core machine while other jobs shared it, so the tests that read it are in the slow tier.
slow = pytest.mark.slow


def positive(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One `--smoke` run from a scratch folder (not the checkout), with one torch thread."""
    out = tmp_path_factory.mktemp("gpu-smoke")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=out,
                          check=False)
    path = out / "gpu-benchmark.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    return proc, results


@slow
def test_the_smoke_run_exits_0_and_writes_the_results(smoke):
    proc, results = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results["mode"] == "smoke"
    assert "== summary (smoke" in proc.stdout
    # the workers ran this checkout's msdn_tune, put on sys.path by the script itself
    assert results["env"]["msdn_tune"] == str(ROOT / "msdn_tune")


@slow
def test_part_a_reports_step_time_and_a_projected_30_epoch_time_in_both_precisions(smoke):
    proc, results = smoke
    fig = results["figures"]
    for p in ("bf16", "fp32"):
        keys = ("step_median_ms", "epoch_train_s", "epoch_eval_s", "wall_30_epochs_s")
        if p == "bf16" and not CPU_BF16:  # the Trainer refuses bf16 on a CPU without it
            assert all(str(fig[f"a.{p}.{k}"]).startswith("skipped: precision: bf16")
                       for k in keys)
            continue
        for key in keys:
            assert positive(fig[f"a.{p}.{key}"]), (p, key, fig[f"a.{p}.{key}"])
        # smoke runs 2 epochs, so the 30-epoch figure is a projection, and says so
        assert fig[f"a.{p}.wall_30_epochs_kind"] == "projected"
        assert f"(a) {p}  30-epoch wall, PROJECTED" in proc.stdout
        assert results["single"][p]["epochs_run"] == 2
        assert results["single"][p]["steps_timed"] >= 5
        assert fig[f"a.{p}.peak_gpu_allocated_gib"] == "not measured: no CUDA"


@slow
def test_part_b_ran_one_and_two_concurrent_trials(smoke):
    _proc, results = smoke
    fig = results["figures"]
    assert fig["b.n_list"] == [1, 2]
    for n in (1, 2):
        assert positive(fig[f"b.n{n}.trial_epochs_per_s"])
        assert positive(fig[f"b.n{n}.ratio_to_n1"])
        assert fig[f"b.n{n}.peak_gpu_allocated_gib_max"] == "not measured: no CUDA"
        trials = results["concurrent"]["rounds"][f"n{n}"]["trials"]
        assert len(trials) == n
        assert all(t["ok"] and t["epochs_done"] == 1 and t["peak_rss_gib"] > 0 for t in trials)
        # started together: every trial's epoch began after the last one was ready
        starts = [t["start"] for t in trials]
        assert max(starts) - min(starts) < 5.0
    assert fig["b.n1.ratio_to_n1"] == 1.0
    reason = ("nvidia-cuda-mps-control not found on PATH"
              if shutil.which("nvidia-cuda-mps-control") is None
              else "no CUDA device in this run")
    assert fig["b.mps"] == f"not available ({reason})"


@slow
def test_part_c_reports_extraction_speed_and_the_parity_check(smoke):
    proc, results = smoke
    fig = results["figures"]
    assert positive(fig["c.extract_images_per_s_fp32"])
    if CPU_BF16:
        assert positive(fig["c.extract_images_per_s_bf16"])
    else:
        assert fig["c.extract_images_per_s_bf16"] == "skipped: cpu has no native bf16"
    if TORCHVISION:
        assert 0 <= fig["c.parity_max_rel_diff"] <= 1e-4
    else:
        assert fig["c.parity_max_rel_diff"] == "skipped: torchvision not installed"
        assert "parity: skipped: torchvision not installed" in proc.stdout


@slow
def test_no_process_of_the_run_imported_ray_optuna_or_mlflow(smoke):
    proc, results = smoke
    seen = results["forbidden_imports"]
    # the driver, info, extract, two single trials and 1 + 2 concurrent trials
    assert len(seen) == 8 and "driver" in seen
    assert all(found == [] for found in seen.values()), seen
    assert "imports: no ray, optuna or mlflow in the driver or any of its 7 worker" in proc.stdout


def test_the_import_check_sees_submodules(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_benchmark", module)  # its dataclasses look it up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the checkout on sys.path
    spec.loader.exec_module(module)
    assert module.forbidden_imports() == sorted(
        m for m in sys.modules if m.split(".")[0] in ("ray", "optuna", "mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.tracking.probe", types.ModuleType("probe"))
    assert "mlflow.tracking.probe" in module.forbidden_imports()
