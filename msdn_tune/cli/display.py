"""Console output for studies: trials table, best trial, and the closing "what next" lines."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from msdn_tune.trials import TRIALS_FILE, TrialRow

_SHOWN = ("best/H", "best/U", "best/S", "best/zsl_acc", "eval/H_tuned", "test/H")


def make_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output is piped to a file."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=200)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def trials_rich_table(rows: list[TrialRow], title: str) -> Table:
    """Settings, final/best metrics (in %), status and epochs of every trial."""
    params: list[str] = []
    for r in rows:
        params.extend(k for k in r.params if k not in params)
    metrics = [m for m in _SHOWN if any(m in r.metrics for r in rows)]
    table = Table(title=title)
    for col in ("trial", "status", "epochs", *params, *metrics):
        table.add_column(col, justify="right" if col not in ("trial", "status") else "left")
    for r in rows:
        vals = [_fmt_param(r.params.get(p)) for p in params]
        table.add_row(r.trial_id, r.status + (" ⚠" if r.error else ""),
                      f"{r.epochs_run}/{r.epochs_total}", *vals,
                      *[_pct(r.metrics.get(m)) for m in metrics])
    return table


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def print_best(best: list[TrialRow], console: Console, multi: bool) -> None:
    """The best completed trial (or the Pareto front) with its settings and checkpoint."""
    if not best:
        console.print("[yellow]no trial ran to completion: no best trial[/yellow]")
        return
    title = "Pareto front (completed trials)" if multi else "best completed trial"
    console.print(trials_rich_table(best, title))
    for r in best:
        console.print(f"trial {r.trial_id}: " + ", ".join(
            f"{k}={_fmt_param(v)}" for k, v in r.params.items()))
        console.print(f"  checkpoint: {r.checkpoint}", soft_wrap=True, markup=False)
        if r.mlflow_run_id:
            console.print(f"  mlflow run: {r.mlflow_run_id}")


def print_next_steps(console: Console, *, path: Path, space_file: str | None, name: str,
                     complete: bool, best: TrialRow | None, data: str,
                     fixed: dict[str, Any], tracking_uri: str | None,
                     storage: str | None = None) -> None:
    """Where the results are and the exact commands to resume or retrain.

    `storage` is the study's storage path as configured: for a cloud URI, `path` is only the
    local mirror, which holds no checkpoints, so the resume command must name the URI.
    """
    console.print(f"results:  {path}  (table: {path / TRIALS_FILE})", soft_wrap=True)
    if tracking_uri:
        console.print(f"tracking: {tracking_uri}  (browse: msdn-tune ui --tracking-uri "
                      f"{shlex.quote(tracking_uri)})", soft_wrap=True)
    space_arg = f"--space {shlex.quote(space_file)} " if space_file else ""
    resume = f"msdn-tune run {space_arg}--name {shlex.quote(name)} " \
             f"--storage-path {shlex.quote(storage or str(path.parent))} --resume"
    if not complete:
        console.print(f"[bold yellow]study incomplete[/bold yellow]; resume with:\n  {resume}",
                      soft_wrap=True)
    else:  # a resumed study keeps its num_samples (Tuner.restore): more trials = a new study
        console.print(f"resume:   {resume}  (all trials are done: nothing left to run)",
                      soft_wrap=True, markup=False)
        more = f"msdn-tune run {space_arg}--name NEW --warm-start {shlex.quote(str(path))}"
        console.print(f"more trials: {more} --num-samples N", soft_wrap=True, markup=False)
    if best is not None:
        settings = {**fixed, **{k: v for k, v in best.params.items() if v is not None}}
        sets = " ".join(f"--set {k}={shlex.quote(str(v))}" for k, v in settings.items())
        console.print(f"retrain best: msdn-tune train --data {shlex.quote(data)} {sets}",
                      soft_wrap=True, markup=False)
        if best.mlflow_run_id:
            console.print(f"          or: msdn-tune reproduce {best.mlflow_run_id}")
