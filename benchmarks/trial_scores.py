"""Which trial score predicts what a configuration gives on fresh seeds? (issue 15, point 3)

A search ranks its trials by one score and recommends the top one. This script draws `--configs`
configurations from `search_spaces/demo.yaml` at random (Optuna's RandomSampler, seed
`--sampler-seed`, disjoint from search_efficiency.py's), trains each with 3 seeds under
`selection: clean`, and asks, for each candidate score of one seed's run (best/H, the shipped
objective; mean/H; the last epoch's H; H at ASHA's rungs, ...): how well does it rank the
configurations by their mean test H over the *other* two seeds, and what does picking the top
one among 20 random configurations give? It also prints the noise floor: how much one
configuration's test H moves from seed to seed.

Usage: python benchmarks/trial_scores.py [--configs 60] [--json OUT] [--load OUT]
(60 configurations x 3 seeds x 30 epochs took 5 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
SEEDS = (1, 2, 3)


def train(settings: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process: its per-epoch validation H, best/H and test H."""
    import torch

    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import Trainer

    torch.set_num_threads(1)
    data = settings.pop("_data")
    with open_benchmark(data) as bench:
        trainer = Trainer(TrainConfig.from_dict(settings), bench)
        out = trainer.fit()
    return {"val_curve": [m["val/H"] for m in trainer.history], "best": out["best/H"],
            "test": out["test/H"]}


def run(n: int, sampler_seed: int) -> dict[str, Any]:
    """Draw `n` configurations and train each with every seed in SEEDS, two at a time."""
    import optuna

    from msdn_tune.integrations.optuna import define_by_run
    from msdn_tune.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(DEMO)
    fixed = {**space.fixed, "selection": "clean", "threads": 1, "device": "cpu"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed),
                                direction="maximize")
    suggest = define_by_run(space)
    configs = []
    for _ in range(n):
        trial = study.ask()
        suggest(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    jobs = [{**fixed, **c, "seed": s, "_data": space.data} for c in configs for s in SEEDS]
    results = []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, r in enumerate(pool.map(train, jobs), 1):
            results.append(r)
            if i % 10 == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} runs", flush=True)
    return {"sampler_seed": sampler_seed, "configs": configs, "results": results}


SCORES: dict[str, Callable[[dict[str, Any]], float]] = {
    "best/H (shipped)": lambda r: r["best"],
    "mean/H": lambda r: float(np.mean(r["val_curve"])),
    "last epoch's H": lambda r: r["val_curve"][-1],
    "mean of last 10": lambda r: float(np.mean(r["val_curve"][-10:])),
    "H at epoch 2": lambda r: r["val_curve"][1],
    "H at epoch 8": lambda r: r["val_curve"][7],
}


def report(saved: dict[str, Any]) -> None:
    """Rank correlations and pick-of-20 quality of each score, and the seed-to-seed noise."""
    from scipy.stats import spearmanr

    n = len(saved["configs"])
    runs = [saved["results"][len(SEEDS) * i:len(SEEDS) * (i + 1)] for i in range(n)]
    rng = np.random.default_rng(0)
    print(f"{n} random configurations of the demo space, {len(SEEDS)} seeds each; a score is "
          "taken from one seed's run and compared with the mean test H of the other two "
          "(every choice of seed, averaged)")
    print(f"  {'score':<18} {'Spearman, all':>14} {'top half':>9} {'pick of 20: test H':>19}")
    for name, score in SCORES.items():
        rho_all, rho_top, picks = [], [], []
        for s in range(len(SEEDS)):
            others = [o for o in range(len(SEEDS)) if o != s]
            x = np.array([score(runs[i][s]) for i in range(n)])
            y = np.array([np.mean([runs[i][o]["test"] for o in others]) for i in range(n)])
            top = y > np.median(y)
            rho_all.append(spearmanr(x, y)[0])
            rho_top.append(spearmanr(x[top], y[top])[0])
            for _ in range(400):
                sub = rng.choice(n, min(20, n), replace=False)
                picks.append(y[sub[np.argmax(x[sub])]])
        print(f"  {name:<18} {np.mean(rho_all):14.2f} {np.mean(rho_top):9.2f} "
              f"{100 * np.mean(picks):19.2f}")
    oracle = []
    for s in range(len(SEEDS)):
        y = np.array([np.mean([runs[i][o]["test"] for o in range(len(SEEDS)) if o != s])
                      for i in range(n)])
        oracle += [y[rng.choice(n, min(20, n), replace=False)].max() for _ in range(400)]
    print(f"  {'(oracle: by test)':<18} {'':>14} {'':>9} {100 * np.mean(oracle):19.2f}")
    test_sd = np.array([np.std([r["test"] for r in runs[i]], ddof=1) for i in range(n)])
    val_sd = np.array([np.std([r["best"] for r in runs[i]], ddof=1) for i in range(n)])
    mean_test = np.array([np.mean([r["test"] for r in runs[i]]) for i in range(n)])
    good = mean_test > np.median(mean_test)
    print(f"noise floor, better half of the configurations: one configuration's test H moves "
          f"by SD {100 * np.median(test_sd[good]):.2f} points from seed to seed (median), its "
          f"best/H by {100 * np.median(val_sd[good]):.2f}")
    gap = np.array([np.mean([r["best"] - r["test"] for r in runs[i]]) for i in range(n)])
    print("what the validation split flatters (better half; Spearman of best/H minus test H "
          "with each setting):")
    for key in ("margin", "lambda_sc", "lambda_d", "lr", "temp_ava", "temp_vaa"):
        x = np.array([float(c[key]) for c in saved["configs"]])
        print(f"  {key:<10} {spearmanr(x[good], gap[good])[0]:+.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=60)
    ap.add_argument("--sampler-seed", type=int, default=123)
    ap.add_argument("--json", type=Path, help="save the runs here")
    ap.add_argument("--load", type=Path, help="report saved runs instead of training")
    args = ap.parse_args()
    if args.load:
        try:
            saved = json.loads(args.load.read_text())
            assert len(saved["results"]) == len(SEEDS) * len(saved["configs"]) > 0
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            print(f"error: --load {args.load}: not what --json writes ({exc})", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        if args.json and not args.json.parent.is_dir():
            print(f"error: {args.json}: folder {args.json.parent} does not exist",
                  file=sys.stderr)
            raise SystemExit(2)
        saved = run(args.configs, args.sampler_seed)
        if args.json:
            args.json.write_text(json.dumps(saved, separators=(",", ":")))
    report(saved)
    if args.json:
        print(f"runs saved: {args.json}; report again: python benchmarks/trial_scores.py "
              f"--load {args.json}")


if __name__ == "__main__":
    main()
