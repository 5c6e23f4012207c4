"""What the command line prints about results: stores, training runs, trials, studies.

Shared by several commands, or long enough to keep the command functions short: a benchmark
store's summary, an import's report, a training run's closing tables, the trials table, the best
trial and a study's closing "what next" lines. One-line messages stay with their command.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msdn_tune.console import human_bytes
from msdn_tune.trials import CONFIRM, TRIALS_FILE, Confirmed, TrialRow

if TYPE_CHECKING:
    from msdn_tune.commands.checkpoints import ImportResult as CheckpointImport
    from msdn_tune.commands.train import TrainRun
    from msdn_tune.commands.wrapup import StudyOutcome
    from msdn_tune.data.ingest import ImportResult

_SHOWN = ("best/H", "best/U", "best/S", "best/zsl_acc", "eval/H_tuned", "test/H")


def make_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output is piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def trials_rich_table(rows: list[TrialRow], title: str) -> Table:
    """Settings, final/best metrics (in %), status and epochs of every trial."""
    params: list[str] = []
    for r in rows:
        params.extend(k for k in r.params if k not in params)
    metrics = [m for m in _SHOWN if any(m in r.metrics for r in rows)]
    staged = any(r.stage == CONFIRM for r in rows)  # a study with a confirmation stage
    table = Table(title=title)
    for col in ("trial", *(["stage"] if staged else []), "status", "epochs", *params, *metrics):
        table.add_column(col, justify="right" if col not in ("trial", "stage", "status")
                         else "left")
    for r in rows:
        vals = [_fmt_param(r.params.get(p)) for p in params]
        stage = ([f"confirm {r.source_trial_id}" if r.stage == CONFIRM else r.stage]
                 if staged else [])
        table.add_row(r.trial_id, *stage, r.status + (" ⚠" if r.error else ""),
                      f"{r.epochs_run}/{r.epochs_total}", *vals,
                      *[_pct(r.metrics.get(m)) for m in metrics])
    return table


def confirmed_table(confirmed: list[Confirmed]) -> Table:
    """The confirmation stage's ranking: each re-run configuration's mean +/- SD over its fresh
    seeds, beside the score its search trial was selected with."""
    metric = confirmed[0].metric
    table = Table(title=f"confirmation: {metric} over fresh seeds (in %; ranked by the mean)")
    for col in ("rank", "search trial", "search score", "mean", "± SD", "seeds", "per seed"):
        table.add_column(col, justify="left" if col == "search trial" else "right")
    for i, c in enumerate(confirmed, 1):
        table.add_row(str(i), c.source.trial_id, _pct(c.source.metrics.get(metric)),
                      _pct(c.mean), _pct(c.sd), str(c.n),
                      " ".join(_pct(r.metrics[metric]) for r in c.runs))
    return table


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def print_best(best: list[TrialRow], console: Console, multi: bool,
               confirmed: list[Confirmed] | None = None) -> None:
    """The best completed trial (or the Pareto front) with its settings and checkpoint; with a
    confirmation stage, its ranking and the recommended configuration's best-seed model."""
    if not best:
        console.print("[yellow]no trial ran to completion: no best trial[/yellow]")
        return
    if confirmed:
        top = confirmed[0]
        console.print(confirmed_table(confirmed))
        console.print(f"recommended: the configuration of search trial {top.source.trial_id}, "
                      f"{top.metric} {_pct(top.mean)} ± {_pct(top.sd)} (mean ± SD over "
                      f"{top.n} fresh seeds; its search trial scored "
                      f"{_pct(top.source.metrics.get(top.metric))}). Its model: the seed "
                      f"{best[0].seed} run below.", soft_wrap=True, markup=False)
    title = ("Pareto front (completed trials)" if multi else
             "recommended model (best seed of the best mean)" if confirmed else
             "best completed trial")
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
                     storage: str | None = None, resume: str | None = None) -> None:
    """Where the results are and the exact commands to resume or retrain.

    `resume` is the study's own resume command (msdn_tune.commands.study.resume_command: every
    option it was run with); without it one is built from the name and `storage`, the study's
    storage path as configured: for a cloud URI, `path` is only the local mirror, which holds no
    checkpoints, so the resume command must name the URI.
    """
    console.print(f"results:  {path}  (table: {path / TRIALS_FILE})", soft_wrap=True)
    if tracking_uri:
        console.print(f"tracking: {tracking_uri}  (browse: msdn-tune ui --tracking-uri "
                      f"{shlex.quote(tracking_uri)})", soft_wrap=True)
    space_arg = f"--space {shlex.quote(space_file)} " if space_file else ""
    resume = resume or (f"msdn-tune run {space_arg}--name {shlex.quote(name)} "
                        f"--storage-path {shlex.quote(storage or str(path.parent))} --resume")
    if not complete:
        console.print(f"[bold yellow]study incomplete[/bold yellow]; resume with:\n  "
                      f"{escape(resume)}",
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


def print_study_artifacts(console: Console, out: StudyOutcome) -> None:
    """The registered model (promoted or not) and the plot files a study produced."""
    if out.champion:
        c = out.champion
        state = "promoted to champion" if c.get("promoted") else "kept the existing champion"
        console.print(f"model: {c.get('name')} v{c.get('version')} ({state})")
    for p in out.plots:
        console.print(f"plot: {p}")


_PERCENT_SUFFIXES = ("zsl_acc", "/U", "/S", "/H", "ausuc", "_tuned", "H_best_gamma")


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """A two-column table of metrics; accuracies shown in percent."""
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        val = metrics[key]
        if isinstance(val, float) and key.endswith(_PERCENT_SUFFIXES):
            table.add_row(key, f"{100 * val:.2f}%")
        elif isinstance(val, float):
            table.add_row(key, f"{val:.4g}")
        else:
            table.add_row(key, str(val))
    return table


def print_train_run(console: Console, run: TrainRun) -> None:
    """A finished training run: its epochs, final metrics, checkpoint and how to evaluate it."""
    # commands.train imports torch: loaded already by the run, but not by `results` or `best`.
    from msdn_tune.commands.train import EPOCH_COLUMNS, format_epoch

    table = Table(*EPOCH_COLUMNS, title=f"{run.dataset} · {run.selection} selection")
    for m in run.epochs:
        table.add_row(*format_epoch(m))
    console.print(table)
    console.print(metrics_table(run.metrics, "final metrics (accuracies in %)"))
    console.print(f"checkpoint: {run.checkpoint.resolve()}")
    console.print(f"evaluate:   msdn-tune evaluate {shlex.quote(str(run.checkpoint))} "
                  f"--data {shlex.quote(run.data)}")


def print_store_summary(info: dict[str, Any]) -> None:
    """A benchmark store's summary (`BenchmarkStore.summary()`), one aligned line per field."""
    grid = f" (grid {info['grid'][0]}x{info['grid'][1]})" if info["grid"] else ""
    word = f"yes, dim {info['word_dim']}" if info["word_vectors"] else "no"
    lines = [
        ("path", info["path"]),
        ("dataset", info["dataset"]),
        ("source", info["source"]),
        ("format version", info["format_version"]),
        ("created", info["created"]),
        ("features", f"{info['n_images']} x {info['channels']} x {info['regions']}{grid}"),
        ("dtype", info["dtype"]),
        ("bytes", f"{human_bytes(info['feature_bytes'])} ({info['file_bytes']} on disk)"),
        (
            "classes",
            f"{info['n_classes']} ({info['n_seen']} seen / {info['n_unseen']} unseen; validation "
            f"{info['n_val_seen']} seen / {info['n_val_unseen']} unseen)",
        ),
        ("attributes", info["n_attributes"]),
        ("word vectors", word),
        ("splits", ", ".join(f"{k} {v}" for k, v in info["split_sizes"].items())),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':<16}{value}")


def print_import(result: ImportResult, summary: dict[str, Any]) -> None:
    """What an import did (warnings on stderr), then the new store's summary."""
    click.echo(str(result.path))
    resumed = f", {result.resumed_rows} recovered from the interrupted import" \
        if result.resumed_rows else ""
    click.echo(f"imported {result.n_images} images in {result.seconds:.1f} s "
               f"({result.mb_per_s:.0f} MB/s of source features{resumed})")
    for line in result.mismatches:
        click.secho(f"warning: differs from the published {result.dataset}: {line}",
                    fg="yellow", err=True)
    v = result.validation
    click.echo(f"{'validation:':<16}{v['source']}: {v['val_unseen_classes']} held-out classes "
               f"(val_unseen), {v['val_seen_frac']:.0%} of the other classes' images (val_seen)")
    print_store_summary(summary)


def print_checkpoint_import(result: CheckpointImport, *, data: str | None) -> None:
    """What `import-checkpoint` found and registered, and the commands that use it now."""
    reg = result.registered
    click.echo(f"{result.file}: published MSDN {result.kind} class, sha256 {result.sha256[:16]}...")
    click.echo(f"margin: {result.margin:g} (the checkpoint's bias; scored and trained with it)")
    if result.metrics:
        shown = ", ".join(f"{k.removeprefix('test/')} {100 * v:.1f}%"
                          for k, v in result.metrics.items()
                          if k in ("test/zsl_acc", "test/U", "test/S", "test/H"))
        click.echo(f"scored on {data}: {shown}")
    if result.backbone is not None:
        click.echo(f"backbone: {result.backbone_tensors} ResNet-101 tensors written to "
                   f"{result.backbone}; extract features with the trunk this head was trained "
                   f"on: msdn-tune data extract ... --weights {shlex.quote(str(result.backbone))}")
    click.echo(f"registered {reg['name']} version {reg['version']} with alias {reg['alias']} "
               f"(run {reg['run_id']})")
    data_arg = shlex.quote(data) if data else "STORE"
    click.echo(f"evaluate:  msdn-tune evaluate {reg['model_uri']} --data {data_arg}")
    click.echo(f"fine-tune: msdn-tune train --data {data_arg} --init {reg['model_uri']}")
