"""Does MSDN++'s causal attention help? MSDN against MSDN++ on data built to test the claim.

MSDN++ adds a counterfactual intervention on the attention maps (random, uniform or shuffled
attention), effect logits (factual minus counterfactual) and a causal loss on them (docs/model.md).
The claim is that this keeps attention on regions that carry the attributes instead of on
context that merely predicts the training classes. The `confounded` synthetic preset plants
exactly such context (msdn_tune/data/synth.py): a class-specific pattern over every region that
names the class of seen-class images and points to a wrong class for unseen ones, at a strength
`shortcut`; strength 0 is the `demo` benchmark, byte for byte.

For each shortcut strength, each method (MSDN, and MSDN++ with each intervention at each
lambda_causal) and each seed, one model is trained at equal epochs with `selection: clean`
(trained on `train`, selected on the validation split, scored once on the test split). Printed:
unseen accuracy (zsl), U, S and H with standard errors over seeds, and each method's paired
difference in H to MSDN with the same seed (mean +/- standard error, and wins). `--plot FILE`
saves H against shortcut strength, one line per method.

A run can be split: `--json OUT` saves every result, `--pool A.json B.json ...` merges saved
results (no training) and prints the same report.

Usage: python benchmarks/causal.py [--strengths 0 0.5 1 2] [--seeds 0 1 2 3 4] [--epochs N]
                                   [--lambdas 0.3 1 3] [--interventions random uniform shuffle]
                                   [--json OUT] [--plot docs/img/causal.png]
       python benchmarks/causal.py --pool A.json B.json --plot docs/img/causal.png
       python benchmarks/causal.py --smoke      # tiny sizes, 1 seed, 1 epoch: that it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METRICS = ("zsl_acc", "U", "S", "H")
BASELINE = "MSDN"


def methods(interventions: list[str], lambdas: list[float]) -> list[tuple[str, str, float]]:
    """(name, intervention, lambda_causal): MSDN first, then MSDN++ per intervention and lambda."""
    out = [(BASELINE, "none", 0.0)]
    out += [(f"MSDN++ {i} λ={lam:g}", i, lam) for i in interventions for lam in lambdas]
    return out


def train_one(store: Path, intervention: str, lambda_causal: float, seed: int, epochs: int,
              threads: int) -> dict[str, float]:
    """One model at the synthetic recipe, `selection: clean`; its test metrics."""
    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import Trainer

    cfg = TrainConfig.from_dict({
        "dataset": "synthetic", "epochs": epochs, "device": "cpu", "threads": threads,
        "seed": seed, "selection": "clean", "intervention": intervention,
        "lambda_causal": lambda_causal})
    out = Trainer(cfg, open_benchmark(store)).fit()
    return {k: float(out[f"test/{k}"]) for k in METRICS}


def run_grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train every (strength, method, seed); one result row each, printed as it ends."""
    from msdn_tune.data.synth import PRESETS, generate

    base = PRESETS["confounded-tiny" if args.smoke else "confounded"]
    grid = methods(args.interventions, args.lambdas)
    total = len(args.strengths) * len(grid) * len(args.seeds)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msdn-causal-") as tmp:
        for strength in args.strengths:
            spec = dataclasses.replace(base, shortcut=float(strength))
            store = generate(spec, Path(tmp) / f"s{strength:g}", progress=False)
            for name, intervention, lam in grid:
                for seed in args.seeds:
                    metrics = train_one(store, intervention, lam, seed, args.epochs,
                                        args.threads)
                    rows.append({"shortcut": float(strength), "method": name, "seed": seed,
                                 "epochs": args.epochs, **metrics})
                    done = len(rows)
                    eta = (time.perf_counter() - t0) / done * (total - done)
                    print(f"[{done}/{total}, {eta / 60:.0f} min left] shortcut {strength:g} "
                          f"{name} seed {seed}: H {100 * metrics['H']:.1f} "
                          f"zsl {100 * metrics['zsl_acc']:.1f}", flush=True)
    return rows


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def report(rows: list[dict[str, Any]]) -> str:
    """The table: per shortcut strength and method, metrics in % with standard errors, and the
    paired difference in H to MSDN with the same seed."""
    lines = []
    names = list(dict.fromkeys(r["method"] for r in rows))
    for strength in sorted({r["shortcut"] for r in rows}):
        at = [r for r in rows if r["shortcut"] == strength]
        base = {r["seed"]: r["H"] for r in at if r["method"] == BASELINE}
        lines.append(f"\nshortcut {strength:g}" + (" (the demo benchmark)" if strength == 0
                                                    else ""))
        lines.append(f"{'method':<24}{'n':>3}  " + "  ".join(f"{m:>12}" for m in METRICS)
                     + f"  {'ΔH vs MSDN':>14}  wins")
        for name in names:
            mine = [r for r in at if r["method"] == name]
            if not mine:
                continue
            cells = []
            for m in METRICS:
                mu, se = mean_se([100 * r[m] for r in mine])
                cells.append(f"{mu:6.1f} ± {se:3.1f}")
            diff = [100 * (r["H"] - base[r["seed"]]) for r in mine if r["seed"] in base]
            paired = ""
            if name != BASELINE and diff:
                mu, se = mean_se(diff)
                paired = f"  {mu:+6.1f} ± {se:3.1f}  {sum(d > 0 for d in diff)}/{len(diff)}"
            lines.append(f"{name:<24}{len(mine):>3}  " + "  ".join(f"{c:>12}" for c in cells)
                         + paired)
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """H (test, %) against shortcut strength, one line per method, standard errors as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["method"] for r in rows):
        xs, ys, es = [], [], []
        for strength in sorted({r["shortcut"] for r in rows}):
            h = [100 * r["H"] for r in rows if r["method"] == name and r["shortcut"] == strength]
            if h:
                mu, se = mean_se(h)
                xs.append(strength)
                ys.append(mu)
                es.append(se)
        style = {"linewidth": 2.5, "color": "black"} if name == BASELINE else {"alpha": 0.8}
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name, **style)
    ax.set_xlabel("shortcut strength (context per region, feature units)")
    ax.set_ylabel("test H (%)")
    ax.set_title("MSDN vs MSDN++ on the confounded benchmark (mean ± s.e. over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=30)  # the demo study's and CUB's
    ap.add_argument("--interventions", nargs="+", default=["random", "uniform", "shuffle"])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="save every result here")
    ap.add_argument("--pool", type=Path, nargs="+", help="report saved results; no training")
    ap.add_argument("--plot", type=Path, help="save H against shortcut strength here")
    ap.add_argument("--smoke", action="store_true",
                    help="confounded-tiny, 1 seed, 1 epoch, one lambda: that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.epochs, args.lambdas = args.seeds[:1], 1, [1.0]
        args.strengths = [0.0, 1.0]
    if args.pool:
        rows = [r for path in args.pool for r in json.loads(path.read_text())["rows"]]
    else:
        rows = run_grid(args)
        if args.json:
            args.json.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
            print(f"results: {args.json} (merge with --pool)")
    print(report(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    print("reproduce: python benchmarks/causal.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
