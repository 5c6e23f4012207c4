"""Orchestration overhead of a real study: `msdn-tune run` vs. the trials' own run time.

Runs the real CLI (local Ray, Optuna TPE, no early stopping so every trial runs in full, MLflow
tracking to a local SQLite store as by default) on a synthetic benchmark sized so that one epoch
takes about a second (the demo preset with more images and channels), with the epoch count
calibrated so that one trial takes about --trial-seconds: realistic trials report and checkpoint
a handful of times, not hundreds. Prints, from the same run:

- the study's wall time, from launching the command to its exit;
- the sum of the trials' own run times (Tune's time_total_s) divided by the concurrency, i.e. the
  wall time a perfect orchestrator would need;
- their ratio (target <= 1.15);
- when the first trial started, counted from launching the command (target <= 10 s): when its
  first epoch began. Result rows carry whole-second timestamps, so that is known to within a
  second: after Tune marked the trial RUNNING (the experiment state has that to the
  millisecond) and after the floored timestamp of its first result minus the epoch's duration,
  and before that plus one second. The target is judged on the upper bound. The breakdown
  line's trial phase and wind-down are to within a second too.

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


def make_store(work: Path, n_images: int, channels: int) -> Path:
    """The demo preset's structure with more images and channels (about 1 s per epoch)."""
    import dataclasses

    from msdn_tune.data.synth import PRESETS, generate

    spec = dataclasses.replace(PRESETS["demo"], name="orchestration", n_images=n_images,
                               channels=channels)
    return generate(spec, work / "store", progress=False)


def study_doc(
    name: str, data: str, epochs: int, trials: int, concurrent: int, storage: Path
) -> dict:
    """The space file of a benchmark study: two searched params, TPE, every trial in full.

    No early stopping, so each trial runs the calibrated epochs and the trials' own run times
    are what a perfect orchestrator would need. Shared with benchmarks/tracking.py.
    """
    return {
        "version": 1,
        "name": name,
        "data": data,
        "fixed": {"dataset": "synthetic", "epochs": epochs, "threads": 1, "device": "cpu"},
        "params": {
            "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
            "lambda_d": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        },
        "objective": {"metric": "best/H", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0},
        "scheduler": {"type": "none"},
        "num_samples": trials,
        "max_concurrent_trials": concurrent,
        "resources": {"cpu": 1},
        "storage_path": str(storage),
    }


def calibrate(store: Path | str, seconds: float) -> tuple[int, float]:
    """Epochs that make one single-threaded trial last about `seconds`."""
    import torch

    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import Trainer

    torch.set_num_threads(1)
    bench = open_benchmark(store)
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


def running_since(exp: Path) -> dict[str, float]:
    """When Tune marked each trial RUNNING (epoch seconds), by trial id, from the experiment state.

    Tune sets it (`run_metadata.start_time`) once the trial's actor is up; the trial function
    starts on the first `train()` call after that, so it is a lower bound on the first epoch.
    """
    from msdn_tune.integrations.ray.experiment import trial_states

    return {config["trial_id"]: meta["start_time"] for config, meta in trial_states(exp)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--trial-seconds", type=float, default=10.0)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--no-tracking", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msdn-orch-"))
    store = make_store(work, args.images, args.channels)
    epochs, per_epoch = calibrate(store, args.trial_seconds)
    print(f"calibration: {per_epoch:.3f} s/epoch ({args.images} images x {args.channels} "
          f"channels, 1 thread) -> {epochs} epochs per trial")
    space = study_doc("orchestration", str(store), epochs, args.trials, args.concurrent,
                      work / "results")
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

    exp = work / "results" / "orchestration"
    running = running_since(exp)
    totals, ends, starts_lo, starts_hi = [], [], [], []
    for progress in sorted(exp.glob("*/progress.csv")):
        rows = list(csv.DictReader(progress.open()))
        totals.append(float(rows[-1]["time_total_s"]))
        ends.append(float(rows[-1]["timestamp"]) + 0.5)  # the middle of its second
        first = rows[0]
        began = float(first["timestamp"]) - float(first["time_this_iter_s"])  # floored: early
        starts_lo.append(max(began, running[first["trial_id"]]))
        starts_hi.append(began + 1.0)
    first_start = min(starts_hi)
    ideal = sum(totals) / args.concurrent
    trial_phase = max(ends) - min(starts_lo)
    print(f"trials: {len(totals)} (each {min(totals):.1f}-{max(totals):.1f} s, "
          f"mean {sum(totals) / len(totals):.1f} s), {args.concurrent} concurrent, "
          f"tracking {'off' if args.no_tracking else 'sqlite'}")
    print(f"study wall time (command launch to exit):   {wall:8.1f} s")
    print(f"sum of trial run times / concurrency:       {ideal:8.1f} s")
    print(f"overhead ratio:                              {wall / ideal:8.3f}  (target <= 1.15)")
    print(f"first trial started after:                   {first_start - launched:8.1f} s"
          f"  (target <= 10 s; its first epoch began {min(starts_lo) - launched:.1f}-"
          f"{min(starts_hi) - launched:.1f} s after launch)")
    print("breakdown: start-up (launch to first trial) "
          f"{first_start - launched:.1f} s; trial phase {trial_phase:.1f} s "
          f"(ratio to ideal {trial_phase / ideal:.3f}); wind-down (last result to exit: "
          f"parquet, plots, champion model, Ray shutdown) {launched + wall - max(ends):.1f} s")
    print(f"results kept in {work}")


if __name__ == "__main__":
    main()
