"""What MLflow tracking costs a study: local SQLite store vs. a local `mlflow server` vs. none.

Runs the same small study with the real CLI (Optuna TPE, no early stopping, 2 trials at a time,
epochs calibrated so one trial lasts about --trial-seconds) three ways, interleaved, --repeats
times each, all against one Ray head started here so that Ray's start-up is not part of the
comparison:

- tracking to a local SQLite store (the default),
- tracking to a local `mlflow server` (one worker, no job runner; started here, stopped by PID),
- --no-tracking.

Prints each study's wall time (command launch to exit), the median per variant and the ratio
server / SQLite (target <= 1.10). Every tracked study also logs its parent run, plots and the
champion model, so the end-of-study cost is included.

Usage: python benchmarks/tracking.py [--trials 8] [--concurrent 2] [--trial-seconds 3]
                                     [--repeats 2] [--preset demo]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.orchestration import calibrate, study_doc  # noqa: E402
from msdn_tune.integrations.mlflow import start_ui, stop_ui, wait_ui  # noqa: E402
from tests.helpers.raynodes import free_port, start_head, stop_by_marker  # noqa: E402


def trial_seconds(study: Path) -> float:
    """Mean of the trials' own run times (Tune's time_total_s): tracking inside the trials."""
    totals = []
    for progress in study.glob("*/progress.csv"):
        rows = list(csv.DictReader(progress.open()))
        totals.append(float(rows[-1]["time_total_s"]))
    return sum(totals) / max(1, len(totals))


def run_study(work: Path, name: str, doc: dict, address: str, tracking: list[str]) -> float:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cmd = [
        sys.executable,
        "-m",
        "msdn_tune.cli",
        "run",
        "--space",
        str(path),
        "--address",
        address,
        *tracking,
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:])
        raise SystemExit(f"study {name} failed with exit code {res.returncode}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--trial-seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = ap.parse_args()

    epochs, per_epoch = calibrate(args.preset, args.trial_seconds)
    print(
        f"calibration: {per_epoch:.3f} s/epoch on {args.preset} with 1 thread -> "
        f"{epochs} epochs per trial; {args.trials} trials, {args.concurrent} concurrent"
    )
    work = Path(tempfile.mkdtemp(prefix="msdn-trackbench-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="msdnray-bench-", dir="/tmp"))
    (work / "srv").mkdir()
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    server = start_ui(
        f"sqlite:///{work / 'srv' / 'mlflow.db'}",
        port=port,
        cwd=work / "srv",
        log=work / "srv" / "server.log",
    )
    walls: dict[str, list[float]] = {"sqlite": [], "server": [], "none": []}
    trials: dict[str, list[float]] = {k: [] for k in walls}
    try:
        address = start_head(ray_tmp, num_cpus=args.concurrent)
        wait_ui(server, server_url, timeout_s=120)
        variants = {
            "sqlite": ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"],
            "server": ["--tracking-uri", server_url],
            "none": ["--no-tracking"],
        }
        for rep in range(args.repeats):
            for variant, flags in variants.items():
                name = f"{variant}-{rep}"
                doc = study_doc(
                    name, args.preset, epochs, args.trials, args.concurrent, work / "results"
                )
                wall = run_study(work, name, doc, address, flags)
                walls[variant].append(wall)
                trials[variant].append(trial_seconds(work / "results" / name))
                print(
                    f"  {name:<10} {wall:7.1f} s  (mean trial {trials[variant][-1]:.2f} s)",
                    flush=True,
                )
    finally:
        stop_ui(server, timeout_s=5)
        stop_by_marker(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in walls.items()}
    for k, v in walls.items():
        runs = ", ".join(f"{w:.1f}" for w in v)
        mean_trial = statistics.mean(trials[k])
        print(f"{k:<7} median {med[k]:7.1f} s  (runs: {runs}; mean trial {mean_trial:.2f} s)")
    print(f"server / sqlite:  {med['server'] / med['sqlite']:.3f}  (target <= 1.10)")
    print(f"sqlite / none:    {med['sqlite'] / med['none']:.3f}")
    print(f"server / none:    {med['server'] / med['none']:.3f}")
    if args.keep:
        print(f"results kept in {work}")


if __name__ == "__main__":
    main()
