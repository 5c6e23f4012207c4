"""The `msdn-tune` command line: the root group, `--version`, the executable's entry point, and
the commands that train, evaluate and search (train, evaluate, import-checkpoint, export, space,
run, results, best, report, reproduce, ui).

Each command parses its options, calls one use case of `msdn_tune.commands` (or the space
loader) and prints, through `msdn_tune.cli.display` where the output is shared or long. User
errors (:class:`msdn_tune.errors.MsdnTuneError`) become one message on stderr and exit code 2.
The `data` commands are in `cli/data.py`, `submit` and `jobs` in `cli/jobs.py`.

Imports beyond click, errors and console are inside the commands: they load torch, Ray, MLflow,
pyarrow or rich, which `msdn-tune --help` and `space validate` must not wait for.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _pkg_version
from pathlib import Path

import click

from msdn_tune import __version__
from msdn_tune._startup import fast_exit
from msdn_tune.cli.data import data_group
from msdn_tune.cli.jobs import jobs_group, submit_cmd
from msdn_tune.errors import MsdnTuneError


class _Group(click.Group):
    """A click group that turns user errors into a clean message and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MsdnTuneError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


def _versions() -> str:
    """The `--version` line: msdn-tune's and the installed versions of the libraries it drives."""
    parts = [f"msdn-tune {__version__}"]
    for dist in ("torch", "ray", "optuna", "mlflow", "pyarrow"):
        try:
            parts.append(f"{dist} {_pkg_version(dist)}")
        except Exception:  # noqa: BLE001 - a missing optional dependency is not an error here
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", message=_versions())
def main() -> None:
    """msdn-tune: distributed hyperparameter search for MSDN++ zero-shot learning."""


main.add_command(data_group)
main.add_command(submit_cmd)
main.add_command(jobs_group)


# --- train / evaluate commands (msdn_tune.commands.train, .evaluate) -----------------------------


@main.command("train")
@click.option("--data", required=True, help="Benchmark store folder or synthetic preset name.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a training setting (repeatable), e.g. --set lr=2e-4.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default runs/...).")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder/checkpoint.")
@click.option("--init", "init", metavar="MODEL_URI_OR_CHECKPOINT",
              help="Start from this model's weights (fine-tune): a checkpoint or run folder, a "
                   "models:/ or runs:/ URI, or a published MSDN .pth. Same as --set init=...")
@click.option("--tracking-uri", help="MLflow store of a models:/ --init (default: "
              "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--force", is_flag=True,
              help="Use a non-empty --out anyway: replace the run msdn-tune trained there, or add "
                   "this run's files next to other files when none of their names "
                   "(checkpoint.pt, config.yaml, final.json, metrics.jsonl) is taken. Never "
                   "deletes, overwrites or appends to a file msdn-tune did not write.")
def train_cmd(data: str, settings: tuple[str, ...], out: str | None, resume: str | None,
              init: str | None, tracking_uri: str | None, force: bool) -> None:
    """Train MSDN++ once and print per-epoch metrics and the checkpoint path.

    The run folder (--out) must be new, empty, or one an earlier `msdn-tune train` wrote (it
    marks its folders with .msdn-tune.json); anything else needs --force.
    """
    from rich.console import Console

    from msdn_tune.cli.display import print_train_run
    from msdn_tune.commands.train import train_command
    from msdn_tune.train.config import parse_set_options

    console = Console()
    overrides = parse_set_options(settings)
    if init is not None:
        overrides["init"] = init
    print_train_run(console, train_command(data, overrides, out, resume, console=console,
                                           force=force, tracking_uri=tracking_uri))


@main.command("evaluate")
@click.argument("checkpoint")
@click.option("--data", required=True, help="Benchmark store folder or synthetic preset name.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Evaluation settings, e.g. --set w1=0.7 --set gamma=0.5.")
@click.option("--tracking-uri", help="MLflow store of a models:/ URI (default: "
              "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
def evaluate_cmd(checkpoint: str, data: str, settings: tuple[str, ...],
                 tracking_uri: str | None) -> None:
    """Evaluate a checkpoint (or models:/NAME@ALIAS) on the test splits."""
    from rich.console import Console

    from msdn_tune.cli.display import metrics_table
    from msdn_tune.commands.evaluate import evaluate_source
    from msdn_tune.train.config import parse_set_options

    metrics = evaluate_source(checkpoint, data, parse_set_options(settings),
                              tracking_uri=tracking_uri)
    Console().print(metrics_table(metrics, f"{checkpoint} on {data} (accuracies in %)"))


@main.command("import-checkpoint")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, type=click.Choice(["CUB", "SUN", "AWA2"],
                                                             case_sensitive=False),
              help="The benchmark the checkpoint was trained on.")
@click.option("--data", help="Benchmark store to score it on before registering (its shapes "
              "and seen classes are checked against the checkpoint).")
@click.option("--tracking-uri", help="MLflow store to register it in (default: "
              "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--alias", default="published", show_default=True,
              help="Registry alias given to the new version.")
@click.option("--backbone-out", type=click.Path(dir_okay=False),
              help="Where the checkpoint's ResNet-101 weights go, if it has them (default: "
                   "<file stem>.resnet101.pth here).")
@click.option("--force", is_flag=True, help="Replace an existing --backbone-out file.")
def import_checkpoint_cmd(file: str, dataset: str, data: str | None, tracking_uri: str | None,
                          alias: str, backbone_out: str | None, force: bool) -> None:
    """Register a published MSDN checkpoint (*_MSDN_GZSL.pth / *_CZSL.pth) as msdn-<dataset>.

    Takes the state dicts of both published model classes; reads the training margin from
    `bias` and the seen classes from `mask_bias`; writes ResNet-101 backbone weights, when the
    file holds them, for `data extract --weights`.
    """
    from msdn_tune.cli.display import print_checkpoint_import
    from msdn_tune.commands.checkpoints import import_checkpoint

    print_checkpoint_import(import_checkpoint(file, dataset, data=data, tracking_uri=tracking_uri,
                                              alias=alias, backbone_out=backbone_out,
                                              force=force), data=data)


@main.command("export")
@click.argument("source", metavar="CHECKPOINT_OR_MODEL_URI")
@click.option("--published", "out", required=True, type=click.Path(dir_okay=False),
              metavar="OUT.pth", help="Write a state dict of the published MSDN core class here.")
@click.option("--data", help="Benchmark store that says which classes are seen (needed when the "
              "model does not record it).")
@click.option("--tracking-uri", help="MLflow store of a models:/ URI (default: "
              "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--force", is_flag=True, help="Replace an existing OUT.pth.")
def export_cmd(source: str, out: str, data: str | None, tracking_uri: str | None,
               force: bool) -> None:
    """Export a checkpoint or registered model for the published MSDN code."""
    from msdn_tune.commands.checkpoints import export_published

    res = export_published(source, out, data=data, tracking_uri=tracking_uri, force=force)
    click.echo(f"wrote {res.out}: {res.tensors} tensors in the published core class's layout "
               f"(margin {res.margin:g} as bias, {res.n_seen} seen classes in mask_bias)")
    click.echo(f"load it with: model.load_state_dict(torch.load({str(res.out)!r}))")


# --- search commands (msdn_tune.space, msdn_tune.commands) ---------------------------------------


@main.group("space")
def space_group() -> None:
    """Check and inspect search-space files (search_spaces/*.yaml)."""


@space_group.command("validate")
@click.argument("file")
def space_validate_cmd(file: str) -> None:
    """Validate FILE and print a one-line summary (exit 2 with the key path if invalid).

    Beyond the format, FILE is given to Optuna and its resolved form read back, so a file this
    accepts does not fail once a study runs.
    """
    from msdn_tune.commands.space import (  # imports Optuna: not for --help
        packing_rule,
        validate_space,
    )

    space = validate_space(file)
    click.echo(f"ok: {space.summary()}")
    rule = packing_rule(space)
    if rule:
        click.echo(rule)


@space_group.command("show")
@click.argument("file")
def space_show_cmd(file: str) -> None:
    """Print FILE resolved: defaults filled in, ${VAR} expanded, paths made absolute."""
    from msdn_tune.commands.space import show_space  # imports Optuna: not for --help

    click.echo(show_space(file), nl=False)


# (study commands: run, results, best, report, reproduce, ui)


@main.command("run")
@click.option("--space", "space_file", required=True, metavar="FILE",
              help="Search-space YAML file (see search_spaces/).")
@click.option("--num-samples", type=int, help="Number of trials (overrides the file).")
@click.option("--max-concurrent", type=int, help="Trials at a time (overrides the file).")
@click.option("--address", help="Ray cluster address (auto, HOST:PORT); default: local Ray.")
@click.option("--storage-path", help="Where study folders go (overrides the file).")
@click.option("--name", help="Study name (default: the file's name).")
@click.option("--resume", is_flag=True, help="Continue an interrupted study of this name.")
@click.option("--resume-if-exists", is_flag=True,
              help="Resume the study if it exists, else start it (for retried cluster jobs).")
@click.option("--storage-shared", is_flag=True, envvar="MSDN_TUNE_SHARED_STORAGE",
              help="Declare a local --storage-path shared by all nodes (e.g. an NFS mount).")
@click.option("--warm-start", metavar="STUDY",
              help="Give an earlier study's completed trials to the sampler.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here).")
@click.option("--no-tracking", is_flag=True, help="Do not track in MLflow.")
@click.option("--force-promote", is_flag=True,
              help="Make the best model champion even if the current one is better.")
@click.option("--confirm-top", type=click.IntRange(0), metavar="K",
              help="After the search, re-run its K best configurations with fresh seeds and "
                   "recommend by the mean (overrides the file's confirm.top_k; 0: no "
                   "confirmation).")
@click.option("--confirm-seeds", type=click.IntRange(1), metavar="N",
              help="Fresh seeds per confirmed configuration (overrides confirm.seeds; alone, "
                   "it turns the stage on with the file's or the default top_k, 3).")
def run_cmd(space_file: str, num_samples: int | None, max_concurrent: int | None,
            address: str | None, storage_path: str | None, name: str | None, resume: bool,
            warm_start: str | None, tracking_uri: str | None, no_tracking: bool,
            force_promote: bool, resume_if_exists: bool, storage_shared: bool,
            confirm_top: int | None, confirm_seeds: int | None) -> None:
    """Run a hyperparameter search described by a search-space file."""
    from msdn_tune.cli.display import (
        make_console,
        print_best,
        print_next_steps,
        print_study_artifacts,
        trials_rich_table,
    )
    from msdn_tune.commands.study import run_study
    from msdn_tune.space import confirm_override, load_space

    space = load_space(space_file)
    confirm = confirm_override(space.confirm, confirm_top, confirm_seeds)
    space = space.with_overrides(num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                 storage_path=storage_path, name=name, tracking_uri=tracking_uri,
                                 confirm=confirm)
    console = make_console()
    out = run_study(space, space_file=Path(space_file).resolve(), address=address,
                    resume=resume, warm_start=warm_start, tracking_uri=tracking_uri,
                    tracking=not no_tracking, force_promote=force_promote, console=console,
                    resume_if_exists=resume_if_exists, storage_shared=storage_shared,
                    given={"num_samples": num_samples, "max_concurrent_trials": max_concurrent,
                           "confirm": confirm})
    console.print(trials_rich_table(out.rows, f"study {space.name} (accuracies in %)"))
    print_best(out.best, console, space.multi_objective, out.confirmed)
    print_study_artifacts(console, out)
    print_next_steps(console, path=out.path, space_file=space_file, name=space.name,
                     complete=out.complete, best=out.best[0] if out.best else None,
                     data=space.data, fixed=space.fixed, tracking_uri=out.tracking_uri,
                     storage=space.storage_path, resume=out.resume_command)
    if not out.complete:
        sys.exit(130)


@main.command("results")
@click.argument("study")
@click.option("--parquet", "parquet_out", metavar="FILE",
              help="Also write the table to this parquet file.")
@click.option("--storage-path", default="msdn_results", show_default=True,
              help="Where to look for STUDY when it is a name.")
def results_cmd(study: str, parquet_out: str | None, storage_path: str) -> None:
    """Print the trials of a study (settings, metrics, status, epochs)."""
    from msdn_tune.cli.display import confirmed_table, make_console, trials_rich_table
    from msdn_tune.commands.results import study_trials
    from msdn_tune.trials import check_parquet_out, write_parquet

    if parquet_out is not None:
        check_parquet_out(parquet_out)  # before the table is read: a bad option costs nothing
    found = study_trials(study, storage_path)
    console = make_console()
    console.print(trials_rich_table(found.rows, f"{found.path.name}: {len(found.rows)} "
                                                "trials (accuracies in %)"))
    if found.confirmed:
        console.print(confirmed_table(found.confirmed))
    if parquet_out:
        click.echo(f"wrote {write_parquet(found.rows, parquet_out)}")


@main.command("best")
@click.argument("study")
@click.option("--storage-path", default="msdn_results", show_default=True,
              help="Where to look for STUDY when it is a name.")
def best_cmd(study: str, storage_path: str) -> None:
    """Print the best completed trial (Pareto front when multi-objective)."""
    from msdn_tune.cli.display import make_console, print_best
    from msdn_tune.commands.results import study_best

    best = study_best(study, storage_path)
    print_best(best.rows, make_console(), best.multi_objective, best.confirmed)


@main.command("report")
@click.argument("study")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the plots (default: STUDY/plots).")
@click.option("--storage-path", default="msdn_results", show_default=True,
              help="Where to look for STUDY when it is a name.")
@click.option("--no-log", is_flag=True, help="Only write the files; do not log them to MLflow.")
@click.option("--force", is_flag=True,
              help="Use a non-empty --out that no report wrote: add the plots next to what is "
                   "there, refused when a plot's name (e.g. history.png) is taken. Never "
                   "deletes or overwrites a file msdn-tune did not write.")
def report_cmd(study: str, out_dir: str | None, storage_path: str, no_log: bool,
               force: bool) -> None:
    """Render the study's plots to PNG (and HTML with plotly) and log them to its parent run.

    --out must be new, empty, or a folder an earlier report wrote (marked .msdn-tune.json; its
    plots are replaced); anything else needs --force.
    """
    from msdn_tune.cli.display import make_console
    from msdn_tune.commands.report import catch_up_tracking, log_plots, study_report

    rep = study_report(study, out_dir=out_dir, storage_path=storage_path, log=False,
                       force=force)
    for path in rep.plots:
        click.echo(str(path))
    if no_log:
        return
    if not (rep.tracking_uri and rep.parent_run_id):
        click.echo("not logged: the study was run without MLflow tracking")
        return
    catch_up_tracking(rep, make_console())
    logged = log_plots(rep)
    click.echo(f"logged {len(logged)} files to MLflow run {rep.parent_run_id} under plots/ "
               f"({rep.tracking_uri})")


@main.command("reproduce")
@click.argument("run_id")
@click.option("--tracking-uri", help="MLflow store holding RUN_ID (default: "
              "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--data", help="Benchmark store or preset (default: the trial's study's data).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (default runs/reproduce-<run id>).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Change a setting on top of the logged ones, e.g. --set device=cpu.")
def reproduce_cmd(run_id: str, tracking_uri: str | None, data: str | None, out: str | None,
                  settings: tuple[str, ...]) -> None:
    """Retrain the configuration of a logged trial (its MLflow run id) like `msdn-tune train`."""
    from rich.console import Console

    from msdn_tune.cli.display import print_train_run
    from msdn_tune.commands.reproduce import reproduce
    from msdn_tune.train.config import parse_set_options

    console = Console()
    print_train_run(console, reproduce(run_id, tracking_uri=tracking_uri, data=data, out=out,
                                       overrides=parse_set_options(settings), console=console))


@main.command("ui")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db).",
)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
def ui_cmd(tracking_uri: str | None, port: int, host: str) -> None:
    """Start the MLflow UI for the configured store (foreground, Ctrl-C to stop), and print the
    addresses of the latest study's runs and champion."""
    from msdn_tune.commands.ui import serve, ui_store

    store = ui_store(tracking_uri)
    if store.is_server:
        click.echo(f"{store.uri} is already a tracking server: open it in a browser")
        _echo_study_pages(store.uri)
        return
    click.echo(f"starting the MLflow UI for {store.uri} ...")
    sys.exit(serve(store, host, port, on_ready=_ui_ready))


def _ui_ready(url: str) -> None:
    click.echo(f"MLflow UI at {url} (Ctrl-C to stop)")
    _echo_study_pages(url)


def _echo_study_pages(url: str) -> None:
    """The latest study's runs table and champion on the UI at `url`; a store that cannot be
    read costs one line, and the UI stays up."""
    from msdn_tune.commands.ui import study_pages

    try:
        pages = study_pages(url)
    except MsdnTuneError as exc:
        click.echo(f"warning: {exc}", err=True)
        return
    if pages is None:
        click.echo("no study in this store yet (msdn-tune run --space FILE runs one)")
        return
    exp = f" (experiment {pages.experiment})" if pages.experiment != pages.study else ""
    click.echo(f"latest study {pages.study}{exp}, its runs: {pages.runs}")
    if pages.champion is None:
        click.echo("its benchmark has no champion yet (a completed study registers one)")
        return
    other = pages.champion_study and pages.champion_study != pages.study
    by = f", registered by study {pages.champion_study}" if other else ""
    click.echo(f"champion {pages.champion}{by}: {pages.champion_page}")


def entrypoint() -> None:
    """The `msdn-tune` executable: `main`, then a quick exit (msdn_tune._startup.fast_exit).

    Tests call `main` itself, so their process keeps collecting.
    """
    try:
        main()
    finally:
        fast_exit()


if __name__ == "__main__":
    entrypoint()
