"""Orchestration overhead of a real study: `msdn-tune run` vs. the trials' own run time.

Runs the real CLI (local Ray, Optuna TPE, no early stopping so every trial runs in full, MLflow
tracking to a local SQLite store as by default) on a synthetic preset, with the epoch count
calibrated so that one trial takes about --trial-seconds. Prints, from the same run:

- the study's wall time, from launching the command to its exit;
- the sum of the trials' own run times (Tune's time_total_s) divided by the concurrency, i.e. the
  wall time a perfect orchestrator would need;
- their ratio (target <= 1.15);
- when the first trial started, counted from launching the command (target <= 10 s).

Usage: python benchmarks/orchestration.py [--trials 16] [--concurrent 2] [--trial-seconds 10]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def calibrate(preset: str, seconds: float) -> tuple[int, float]:
    """Epochs that make one single-threaded trial last about `seconds`."""
    import torch

    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import Trainer

    torch.set_num_threads(1)
    bench = open_benchmark(preset)
    cfg = TrainConfig.from_dict(
        {"dataset": "synthetic", "epochs": 3, "threads": 1, "device": "cpu"}
    )
    trainer = Trainer(cfg, bench)
    trainer.run_epoch()  # warm-up
    t0 = time.perf_counter()
    trainer.run_epoch()
    trainer.run_epoch()
    per_epoch = (time.perf_counter() - t0) / 2
    return max(1, round(seconds / per_epoch)), per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--trial-seconds", type=float, default=10.0)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--no-tracking", action="store_true")
    args = ap.parse_args()

    epochs, per_epoch = calibrate(args.preset, args.trial_seconds)
    print(
        f"calibration: {per_epoch:.3f} s/epoch on {args.preset} with 1 thread "
        f"-> {epochs} epochs per trial"
    )
    work = Path(tempfile.mkdtemp(prefix="msdn-orch-"))
    space = {
        "version": 1,
        "name": "orchestration",
        "data": args.preset,
        "fixed": {"dataset": "synthetic", "epochs": epochs, "threads": 1, "device": "cpu"},
        "params": {
            "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
            "lambda_d": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        },
        "objective": {"metric": "best/H", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0},
        "scheduler": {"type": "none"},
        "num_samples": args.trials,
        "max_concurrent_trials": args.concurrent,
        "resources": {"cpu": 1},
        "storage_path": str(work / "results"),
    }
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    cmd = [sys.executable, "-m", "msdn_tune.cli", "run", "--space", str(work / "space.yaml")]
    if args.no_tracking:
        cmd.append("--no-tracking")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    launched = time.time()
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - launched
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:])
        raise SystemExit(f"study failed with exit code {res.returncode}")

    totals, starts = [], []
    for progress in sorted((work / "results" / "orchestration").glob("*/progress.csv")):
        rows = list(csv.DictReader(progress.open()))
        totals.append(float(rows[-1]["time_total_s"]))
        first = rows[0]
        starts.append(float(first["timestamp"]) - float(first["time_this_iter_s"]))
    ideal = sum(totals) / args.concurrent
    print(
        f"trials: {len(totals)} (each {min(totals):.1f}-{max(totals):.1f} s, "
        f"mean {sum(totals) / len(totals):.1f} s), {args.concurrent} concurrent, "
        f"tracking {'off' if args.no_tracking else 'sqlite'}"
    )
    print(f"study wall time (command launch to exit):   {wall:8.1f} s")
    print(f"sum of trial run times / concurrency:       {ideal:8.1f} s")
    print(f"overhead ratio:                              {wall / ideal:8.3f}  (target <= 1.15)")
    print(
        f"first trial started after:                   {min(starts) - launched:8.1f} s"
        "  (target <= 10 s)"
    )
    print(f"results kept in {work}")


if __name__ == "__main__":
    main()
