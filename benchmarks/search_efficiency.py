"""Search efficiency on the demo benchmark: TPE + ASHA vs. random search without early stopping.

Both searches get the same number of trials over the same space (the shipped
search_spaces/demo.yaml params) for several sampler seeds, run through the real study driver
(Ray Tune + Optuna, no tracking). For each, every reported epoch of every trial is one
trial-epoch of compute; the "best H reached" after k trial-epochs is the best `best/H` any trial
had reported by then (in time order). Prints that curve at a few budgets for both methods, and the
headline: the trial-epochs TPE + ASHA needed to reach random search's final best H, as a fraction
of random search's total trial-epochs (target <= 1/3).

Usage: python benchmarks/search_efficiency.py [--trials 24] [--seeds 0 1 2] [--epochs 8]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def curve(exp_dir: Path) -> list[tuple[float, float]]:
    """(timestamp, best/H) of every reported epoch of every trial, in time order."""
    events = []
    for progress in exp_dir.glob("*/progress.csv"):
        for row in csv.DictReader(progress.open()):
            events.append((float(row["timestamp"]), float(row["best/H"])))
    return sorted(events)


def best_after(events: list[tuple[float, float]]) -> list[float]:
    """Best H reached after 1, 2, ... trial-epochs."""
    out, best = [], 0.0
    for _, h in events:
        best = max(best, h)
        out.append(best)
    return out


def run(method: str, seed: int, trials: int, epochs: int, root: Path) -> list[float]:
    from rich.console import Console

    from msdn_tune.space import load_space, parse_space
    from msdn_tune.tune.study import run_study

    demo = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml")
    doc = demo.to_dict()
    doc.update(
        name=f"{method.replace('+', '-')}-s{seed}",
        num_samples=trials,
        max_concurrent_trials=2,
        storage_path=str(root),
    )
    doc["fixed"] = {**doc["fixed"], "epochs": epochs}
    if method == "tpe+asha":
        doc["sampler"] = {"type": "tpe", "seed": seed}
        doc["scheduler"] = {
            "type": "asha",
            "grace_period": 1,
            "max_t": epochs,
            "reduction_factor": 3,
        }
    else:
        doc["sampler"] = {"type": "random", "seed": seed}
        doc["scheduler"] = {"type": "none"}
    space = parse_space(doc, source=f"{method}-s{seed}")
    out = run_study(space, tracking=False, console=Console(quiet=True))
    return best_after(curve(out.path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="msdn-eff-"))
    fractions = []
    try:
        for seed in args.seeds:
            rnd = run("random", seed, args.trials, args.epochs, root)
            tpe = run("tpe+asha", seed, args.trials, args.epochs, root)
            target = rnd[-1]
            reach = next((i + 1 for i, h in enumerate(tpe) if h >= target), None)
            frac = None if reach is None else reach / len(rnd)
            fractions.append(frac)
            print(
                f"\nseed {seed}: random search {len(rnd)} trial-epochs, final best H "
                f"{100 * rnd[-1]:.2f}; TPE+ASHA {len(tpe)} trial-epochs, final best H "
                f"{100 * tpe[-1]:.2f}"
            )
            print("  trial-epochs  random best H  TPE+ASHA best H")
            for k in sorted(
                {len(rnd) // 8, len(rnd) // 4, len(rnd) // 3, len(rnd) // 2, len(tpe), len(rnd)}
            ):
                if k < 1:
                    continue
                r = rnd[min(k, len(rnd)) - 1]
                t = tpe[min(k, len(tpe)) - 1]
                print(f"  {k:12d}  {100 * r:13.2f}  {100 * t:15.2f}")
            print(
                "  TPE+ASHA reached random's final best H after "
                + (
                    "never (within its budget)"
                    if reach is None
                    else f"{reach} trial-epochs = {frac:.2f} of random's budget"
                )
            )
    finally:
        ray.shutdown()
    ok = [f for f in fractions if f is not None]
    print(
        f"\nsummary over seeds {args.seeds}: fraction of random search's trial-epochs "
        f"TPE+ASHA needed = {['never' if f is None else round(f, 2) for f in fractions]} "
        f"(target <= 0.33); median "
        f"{sorted(ok)[len(ok) // 2] if len(ok) == len(fractions) else 'n/a'}"
    )
    print(f"results kept in {root}")


if __name__ == "__main__":
    main()
