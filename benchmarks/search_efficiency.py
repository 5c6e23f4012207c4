"""Search efficiency on the demo benchmark: TPE + ASHA vs. random search without early stopping.

Both searches run `search_spaces/demo.yaml` as shipped (its data, parameters, epochs, TPE and ASHA
settings) through the real study driver (Ray Tune + Optuna, no tracking); random search swaps in
Optuna's RandomSampler and no scheduler. Both get the same number of trials, for several seeds.

Every reported epoch of every trial is one trial-epoch of compute. The "best H reached" after k
trial-epochs is the best `best/H` any trial had reported by then, in the order the epochs finished
(two trials run at a time). The headline, per seed: the trial-epochs TPE + ASHA needed to reach
random search's final best H, as a fraction of random search's total (target <= 1/3).

Seeds are independent between the two methods: TPE draws its first `n_startup_trials` with a
RandomSampler of its own seed, so equal seeds would hand both methods the same first trials and
credit TPE with whatever random search found there.

Also printed: how well ASHA's rungs rank trials (the Spearman correlation, over random search's
full-length trials, between best/H at each rung and at the end), each method's spend (its
trial-epochs over random search's) and the best H among trials that ran all their epochs, which
is what `msdn-tune best` reports and the champion model is chosen from (an ASHA-stopped trial's
checkpoint is a partly trained model).

Across seeds it also prints the mean curves (a finished search stays at its final best): the
trial-epochs TPE + ASHA's mean curve needs to reach random search's mean final best, the reading
used where HPO methods are compared over seeds, beside the per-seed count. `--json OUT` saves every
seed's curves, so runs on different seeds can be pooled with `--pool A.json B.json ...` (no
training; prints the same summary over all their seeds).

Usage: python benchmarks/search_efficiency.py [--trials N] [--seeds 0 1 2] [--keep] [--json OUT]
       python benchmarks/search_efficiency.py --pool A.json B.json
(a seed takes about 6 minutes on 2 cores at the demo's 64 trials x 30 epochs).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
RANDOM_SEED_OFFSET = 10_000  # random search's sampler seed is seed + this (see the docstring)


@dataclass
class Search:
    """One finished search: best-so-far per trial-epoch, and its completed trials' best."""

    curve: list[float]
    per_trial: list[list[float]]  # best/H after each epoch, one list per trial
    best_completed: float
    completed: int
    trials: int
    wall_s: float


def trial_epochs(exp_dir: Path) -> list[list[tuple[float, float]]]:
    """(timestamp, best/H) of every reported epoch, one list per trial in epoch order."""
    out = []
    for progress in sorted(exp_dir.glob("*/progress.csv")):
        with progress.open() as f:
            rows = sorted(csv.DictReader(f), key=lambda r: float(r["epoch"]))
        out.append([(float(r["timestamp"]), float(r["best/H"])) for r in rows])
    return out


def rung_fidelity(per_trial: list[list[float]], rungs: list[int]) -> dict[int, float]:
    """Spearman correlation of best/H at each rung with the final best/H (full-length trials)."""
    from scipy.stats import spearmanr

    full = [c for c in per_trial if len(c) >= max(rungs, default=0) + 1]
    final = [c[-1] for c in full]
    return {r: float(spearmanr([c[r - 1] for c in full], final)[0]) for r in rungs}


def best_so_far(values: list[float]) -> list[float]:
    """Best H reached after 1, 2, ... trial-epochs."""
    out, best = [], 0.0
    for h in values:
        best = max(best, h)
        out.append(best)
    return out


def value_at(curve: list[float], k: int) -> float:
    """Best H after k trial-epochs; a search that ended before k stays at its final best."""
    return curve[min(k, len(curve)) - 1]


def reached(curve: list[float], target: float) -> int | None:
    """Trial-epochs a best-so-far curve needs to reach `target` (None: never)."""
    return next((i + 1 for i, h in enumerate(curve) if h >= target), None)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    return m, ((sum((v - m) ** 2 for v in values) / (n - 1) / n) ** 0.5 if n > 1 else 0.0)


def run(method: str, seed: int, trials: int, root: Path) -> Search:
    """Run the demo study with `method` ("tpe+asha": as shipped; "random": no scheduler)."""
    from rich.console import Console

    from msdn_tune.commands.study import run_study
    from msdn_tune.space import load_space, parse_space

    doc = load_space(DEMO).to_dict()
    doc.update(name=f"{method.replace('+', '-')}-s{seed}", num_samples=trials,
               storage_path=str(root))
    if method == "tpe+asha":
        doc["sampler"] = {**doc["sampler"], "seed": seed}
    else:
        doc["sampler"] = {"type": "random", "seed": seed + RANDOM_SEED_OFFSET}
        doc["scheduler"] = {"type": "none"}
    space = parse_space(doc, source=f"{DEMO} ({method}, seed {seed})")
    t0 = time.perf_counter()
    out = run_study(space, tracking=False, console=Console(quiet=True))
    wall = time.perf_counter() - t0
    if not out.complete:
        raise SystemExit(f"{method} seed {seed}: the study did not complete ({out.path})")
    done = [r for r in out.rows if r.status == "completed"]
    epochs = trial_epochs(out.path)
    return Search(curve=best_so_far([h for _, h in sorted(e for t in epochs for e in t)]),
                  per_trial=[[h for _, h in t] for t in epochs],
                  best_completed=max((r.metrics.get("best/H", 0.0) for r in done), default=0.0),
                  completed=len(done), trials=len(out.rows), wall_s=wall)


def report(seed: int, rnd: Search, tpe: Search, rungs: list[int]) -> None:
    """Print one seed's comparison: the curves, spend, and the per-seed headline."""
    target, budget = rnd.curve[-1], len(rnd.curve)
    reach = reached(tpe.curve, target)
    print(f"\nseed {seed}:")
    fidelity = rung_fidelity(rnd.per_trial, rungs)
    print("  ASHA rungs, Spearman(best/H at the rung, final best/H) over random search's trials: "
          + ", ".join(f"epoch {r}: {rho:.2f}" for r, rho in fidelity.items()))
    print("  method     trial-epochs  spend  final best H  best H of completed trials  wall")
    for name, s in (("random", rnd), ("TPE+ASHA", tpe)):
        print(f"  {name:9s}  {len(s.curve):12d}  {len(s.curve) / budget:5.2f}  "
              f"{100 * s.curve[-1]:12.2f}  {100 * s.best_completed:17.2f} ({s.completed:2d} of "
              f"{s.trials})  {s.wall_s:4.0f} s")
    print("  best H reached after k trial-epochs:")
    print("  k (fraction of random's)    random  TPE+ASHA")
    for frac in (1 / 16, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 1):
        k = max(1, round(frac * budget))
        t = value_at(tpe.curve, k)
        print(f"  {k:5d} ({frac:4.2f})              {100 * rnd.curve[k - 1]:6.2f}  {100 * t:8.2f}"
              + ("  (TPE+ASHA finished)" if k > len(tpe.curve) else ""))
    frac = None if reach is None else reach / budget
    print("  TPE+ASHA reached random's final best H "
          + (f"after {reach} trial-epochs = {frac:.2f} of random's budget" if frac is not None
             else f"never (its final best is {100 * (tpe.curve[-1] - target):+.2f} points)"))


def save_runs(path: Path, seeds: list[int], runs: list[dict[str, list[float]]]) -> None:
    """Write the seeds' curves as JSON (gzip-compressed when `path` ends in .gz)."""
    text = json.dumps({"seeds": seeds, "runs": [
        {m: [round(h, 5) for h in c] for m, c in r.items()} for r in runs]}, separators=(",", ":"))
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())


def load_runs(path: Path) -> dict:
    """Read what `save_runs` wrote; anything else exits 2 naming the file and what was wrong."""
    try:
        data = path.read_bytes()
        saved = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
        seeds, runs = saved["seeds"], saved["runs"]
        ok = (isinstance(seeds, list) and isinstance(runs, list) and len(seeds) == len(runs) > 0
              and all(isinstance(r, dict) and r.get("random") and r.get("tpe+asha")
                      for r in runs))
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        print(f"error: --pool {path}: cannot read saved curves ({exc})", file=sys.stderr)
        raise SystemExit(2) from None
    if not ok:
        print(f"error: --pool {path}: expected what --json writes: 'seeds' and 'runs' lists of "
              "equal, non-zero length, each run with non-empty 'random' and 'tpe+asha' curves",
              file=sys.stderr)
        raise SystemExit(2)
    return saved


def mean_curve(curves: list[list[float]], length: int) -> list[float]:
    """Mean best-so-far over seeds, each curve held at its final value once its search ended."""
    return [sum(value_at(c, k) for c in curves) / len(curves) for k in range(1, length + 1)]


def summarise(seeds: list[int], runs: list[dict[str, list[float]]]) -> None:
    """The per-seed headline count and the mean-curve reading over all `runs` (one per seed)."""
    fractions = []
    for r in runs:
        reach = reached(r["tpe+asha"], r["random"][-1])
        fractions.append(None if reach is None else reach / len(r["random"]))
    met = sum(f is not None and f <= 1 / 3 for f in fractions)
    ordered = sorted(f if f is not None else float("inf") for f in fractions)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else None
    shown = ["never" if f is None else f"{f:.2f}" for f in fractions]
    print(f"\nsummary, seeds {seeds}: fraction of random search's trial-epochs TPE+ASHA "
          f"needed to reach its final best H = {shown}; target <= 0.33 met on {met} of "
          f"{len(fractions)} seeds"
          + (f"; median {'never' if median == float('inf') else f'{median:.2f}'}"
             if median is not None else ""))
    budget = max(len(r["random"]) for r in runs)

    def at(method: str, k: int) -> tuple[float, float]:
        """Mean over seeds of the best H after k trial-epochs, and its standard error."""
        return mean_se([value_at(r[method], k) for r in runs])

    print(f"mean over {len(runs)} seeds (± standard error), best H after k trial-epochs:")
    print("  k (fraction of random's)    random          TPE+ASHA")
    for frac in (1 / 16, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 1):
        k = max(1, round(frac * budget))
        (rm, rs), (tm, ts) = at("random", k), at("tpe+asha", k)
        print(f"  {k:5d} ({frac:4.2f})              {100 * rm:6.2f} ± {100 * rs:4.2f}"
              f"  {100 * tm:6.2f} ± {100 * ts:4.2f}")
    third = round(budget / 3)
    mean, se = mean_se([value_at(r["tpe+asha"], third) - r["random"][-1] for r in runs])
    print(f"  per seed, TPE+ASHA's best H at 1/3 of random's budget minus random's final best H: "
          f"mean {100 * mean:+.2f} ± {100 * se:.2f} (standard error)")
    rnd = mean_curve([r["random"] for r in runs], budget)
    tpe = mean_curve([r["tpe+asha"] for r in runs], budget)
    reach = reached(tpe, rnd[-1])
    print("  TPE+ASHA's mean curve reached random's mean final best H "
          + (f"after {reach / budget:.2f} of random's budget" if reach is not None
             else f"never (it ends {100 * (tpe[-1] - rnd[-1]):+.2f} points from it)")
          + f"; target <= 0.33 {'met' if reach is not None and reach <= budget / 3 else 'not met'}")


def main() -> None:
    from msdn_tune.integrations.ray.tuner import asha_scheduler
    from msdn_tune.space import load_space

    demo = load_space(DEMO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=demo.num_samples,
                    help=f"trials per search (default: the demo's {demo.num_samples})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", action="store_true", help="keep the study folders")
    ap.add_argument("--json", type=Path, help="save every seed's curves to this file")
    ap.add_argument("--pool", type=Path, nargs="+",
                    help="summarise saved --json files together instead of running searches")
    args = ap.parse_args()
    if args.pool:
        saved = [load_runs(p) for p in args.pool]
        summarise([s for d in saved for s in d["seeds"]], [r for d in saved for r in d["runs"]])
        return
    if args.json and not args.json.parent.is_dir():  # found out now, not after the first seed
        print(f"error: --json {args.json}: folder {args.json.parent} does not exist",
              file=sys.stderr)
        raise SystemExit(2)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="msdn-eff-"))
    print(f"demo space: {demo.summary()}")
    # The rungs Ray's ASHA judges at (before max_t, where every trial stops anyway).
    sched = asha_scheduler(demo)
    rungs = sorted(int(m) for m, _ in sched._brackets[0]._rungs if m < sched._max_t)
    runs: list[dict[str, list[float]]] = []
    try:
        for seed in args.seeds:
            searches = {}
            for method in ("random", "tpe+asha"):
                print(f"[seed {seed}] {method}: {args.trials} trials ...", flush=True)
                searches[method] = run(method, seed, args.trials, root)
            report(seed, searches["random"], searches["tpe+asha"], rungs)
            runs.append({m: s.curve for m, s in searches.items()})
            if args.json:
                save_runs(args.json, args.seeds[:len(runs)], runs)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summarise(args.seeds, runs)
    print(f"results {'kept in ' + str(root) if args.keep else 'removed (--keep keeps them)'}")


if __name__ == "__main__":
    main()
