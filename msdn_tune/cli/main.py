"""The `msdn-tune` command line: thin click commands over the package.

Each command parses options, calls one function of the package and prints. User errors
(:class:`msdn_tune.errors.MsdnTuneError`) become one message on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _pkg_version

import click

from msdn_tune import __version__
from msdn_tune.console import human_bytes
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


# --- data commands (msdn_tune.data) --------------------------------------------------------------


def _print_store_summary(info: dict) -> None:
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


@main.group()
def data() -> None:
    """Benchmark stores: generate synthetic ones, inspect any."""


@data.command("synth")
@click.option("--preset", required=True, help="Synthetic preset: tiny, demo or cub-like.")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Store directory to create."
)
@click.option("--seed", type=int, default=None, help="Seed (default: the preset's).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16")
@click.option("--force", is_flag=True, help="Replace an existing store at --out.")
def data_synth(preset: str, out: str, seed: int | None, dtype: str, force: bool) -> None:
    """Generate a deterministic synthetic ZSL benchmark store."""
    from msdn_tune.data.store import BenchmarkStore
    from msdn_tune.data.synth import generate

    path = generate(preset, out, seed=seed, dtype=dtype, force=force, progress=True)
    with BenchmarkStore.open(path) as store:
        click.echo(str(path))
        _print_store_summary(store.summary())


@data.command("info")
@click.argument("benchmark")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--verify", is_flag=True, help="Also read all features and check their CRC-32.")
def data_info(benchmark: str, as_json: bool, verify: bool) -> None:
    """Describe a benchmark store (a directory or a preset name such as 'demo')."""
    import json

    from msdn_tune.data.resolve import open_benchmark

    with open_benchmark(benchmark) as store:
        if verify:
            store.verify()
        info = store.summary()
        if as_json:
            click.echo(json.dumps(info, indent=1))
        else:
            _print_store_summary(info)
            if verify:
                click.echo(f"{'verified:':<16}feature CRC-32 matches meta.json")


# (data import / data extract: real benchmarks, msdn_tune.data.importers / .extract)

_DATASET_CHOICE = click.Choice(["CUB", "SUN", "AWA2", "FLO"], case_sensitive=False)


def _import_options(fn: object) -> object:
    """Options shared by `data import hdf5` and `data import mat`."""
    for opt in reversed([
        click.option("--dataset", required=True, type=_DATASET_CHOICE,
                     help="Which benchmark the files are (checked against its published counts)."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Store directory to create (e.g. $MSDN_DATA_ROOT/cub)."),
        click.option("--w2v", type=click.Path(dir_okay=False),
                     help="Attribute word vectors, A x 300 (.pkl of a numpy array, or .npy)."),
        click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
                     show_default=True, help="Feature dtype in the store."),
        click.option("--allow-mismatch", is_flag=True,
                     help="Import even if counts differ from the published dataset (subsets)."),
        click.option("--force", is_flag=True,
                     help="Replace an existing store / discard an interrupted import at --out."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted import into --out from the rows it wrote."),
        click.option("--chunk-rows", type=click.IntRange(min=1),
                     help="Images read per step (default: about 64 MiB of features)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]):
        fn = opt(fn)
    return fn


def _print_import(result: object) -> None:
    from msdn_tune.data.store import BenchmarkStore

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
    with BenchmarkStore.open(result.path) as store:
        _print_store_summary(store.summary())


def _interrupted(what: str, out: str) -> None:
    click.secho(f"\ninterrupted: what was written so far is kept; rerun the same {what} "
                f"command with --resume to continue into {out}", fg="yellow", err=True)
    sys.exit(130)


@data.group("import")
def data_import() -> None:
    """Import a real benchmark (CUB, SUN, AWA2, FLO) into a store."""


@data_import.command("hdf5")
@click.argument("file", type=click.Path(dir_okay=False))
@_import_options
@click.option("--att-splits", type=click.Path(dir_okay=False),
              help="xlsa17 att_splits.mat of the same dataset: class names and the "
                   "train_loc/val_loc validation split.")
def data_import_hdf5(file: str, dataset: str, out: str, w2v: str | None, dtype: str,
                     allow_mismatch: bool, force: bool, resume: bool, chunk_rows: int | None,
                     quiet: bool, att_splits: str | None) -> None:
    """Import a feature-map HDF5 file (feature_map_ResNet_101_<DS>.hdf5, 0-based indices)."""
    from msdn_tune.data.importers import import_hdf5

    try:
        result = import_hdf5(file, dataset, out, dtype=dtype, allow_mismatch=allow_mismatch,
                             force=force, resume=resume, chunk_rows=chunk_rows, w2v=w2v,
                             att_splits=att_splits, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("import", out)
    _print_import(result)


@data_import.command("mat")
@_import_options
@click.option("--att-splits", required=True, type=click.Path(dir_okay=False),
              help="xlsa17 att_splits.mat (1-based indices, attributes A x C).")
@click.option("--res101", required=True, type=click.Path(dir_okay=False),
              help="xlsa17 res101.mat (1-based labels, image_files).")
@click.option("--features", required=True, type=click.Path(),
              help="Feature maps in res101.mat image order: a 'data extract' folder, a store, "
                   "or an HDF5 file with feature_map.")
def data_import_mat(dataset: str, out: str, w2v: str | None, dtype: str, allow_mismatch: bool,
                    force: bool, resume: bool, chunk_rows: int | None, quiet: bool,
                    att_splits: str, res101: str, features: str) -> None:
    """Import the xlsa17 proposed split (.mat files) with extracted feature maps."""
    from msdn_tune.data.importers import import_mat

    try:
        result = import_mat(dataset, att_splits, res101, features, out, w2v=w2v, dtype=dtype,
                            allow_mismatch=allow_mismatch, force=force, resume=resume,
                            chunk_rows=chunk_rows, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("import", out)
    _print_import(result)


@data.command("extract")
@click.option("--images", required=True, type=click.Path(file_okay=False),
              help="Image root, e.g. data/CUB (the folder holding CUB_200_2011/images).")
@click.option("--res101", required=True, type=click.Path(dir_okay=False),
              help="xlsa17 res101.mat: image_files (MATLAB paths) and labels.")
@click.option("--dataset", required=True, type=_DATASET_CHOICE,
              help="Which benchmark (sets the MATLAB path prefix rule).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Feature folder to write (input of 'data import mat --features').")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="ResNet-101 state_dict (default: torchvision's cached resnet101-63fe2227.pth).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=click.IntRange(min=0),
              help="Image-decoding processes (default: 8 on CUDA, 0 on CPU).")
@click.option("--image-size", type=click.IntRange(min=32), default=448, show_default=True,
              help="Resize/crop size (448 as published; grid = size/32).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True)
@click.option("--strip-components", type=click.IntRange(min=0),
              help="Leading MATLAB path components to drop (default: the dataset's rule).")
@click.option("--resume", is_flag=True, help="Continue an interrupted extraction into --out.")
@click.option("--force", is_flag=True, help="Discard what --out holds and start over.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--store", "store", type=click.Path(file_okay=False),
              help="Also build the benchmark store here from the features (needs --att-splits).")
@click.option("--att-splits", type=click.Path(dir_okay=False),
              help="xlsa17 att_splits.mat, for --store.")
@click.option("--w2v", type=click.Path(dir_okay=False),
              help="Attribute word vectors (.npy or pickle, A x 300), for --store.")
@click.option("--allow-mismatch", is_flag=True,
              help="For --store: accept counts that differ from the dataset registry.")
def data_extract(images: str, res101: str, dataset: str, out: str, weights: str | None,
                 batch_size: int, device: str, workers: int | None, image_size: int, dtype: str,
                 strip_components: int | None, resume: bool, force: bool, quiet: bool,
                 store: str | None, att_splits: str | None, w2v: str | None,
                 allow_mismatch: bool) -> None:
    """Extract ResNet-101 layer-4 feature maps from the images listed in res101.mat.

    With --store and --att-splits, one command goes from images to a benchmark store: the
    feature folder (--out) is the resumable staging area, streamed into the store at the end.
    """
    from msdn_tune.data.extract import extract_features

    if store and not att_splits:
        raise MsdnTuneError("--store needs --att-splits (the class attributes and splits)")

    try:
        r = extract_features(images, res101, dataset, out, weights=weights,
                             batch_size=batch_size, device=device, resume=resume, force=force,
                             image_size=image_size, dtype=dtype,
                             strip_components=strip_components, workers=workers,
                             progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("extract", out)
    for line in r.warnings:
        click.secho(f"warning: {line}", fg="yellow", err=True)
    click.echo(str(r.path))
    resumed = f" ({r.resumed_images} done before)" if r.resumed_images else ""
    click.echo(f"extracted {r.extracted} of {r.n_images} images{resumed} on {r.device} in "
               f"{r.seconds:.1f} s ({r.images_per_s:.1f} img/s); image paths: dropped "
               f"{r.strip_components} leading components")
    if not store:
        click.echo(f"next: msdn-tune data import mat --dataset {dataset} --att-splits "
                   f"att_splits.mat --res101 {res101} --features {r.path} --out STORE")
        return
    from msdn_tune.data.importers import import_mat

    try:
        result = import_mat(dataset, att_splits, res101, r.path, store, w2v=w2v, dtype=dtype,
                            allow_mismatch=allow_mismatch, force=force, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("import", store)
    _print_import(result)
    click.echo(f"the feature folder {r.path} is no longer needed (delete it to free the space)")


# --- train / evaluate commands (msdn_tune.train) -------------------------------------------------


@main.command("train")
@click.option("--data", required=True, help="Benchmark store folder or synthetic preset name.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a training setting (repeatable), e.g. --set lr=2e-4.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default runs/...).")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder/checkpoint.")
def train_cmd(data: str, settings: tuple[str, ...], out: str | None, resume: str | None) -> None:
    """Train MSDN++ once and print per-epoch metrics and the checkpoint path."""
    from msdn_tune.commands.train import train_command
    from msdn_tune.train.config import parse_set_options

    train_command(data, parse_set_options(settings), out, resume)


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

    from msdn_tune.commands.evaluate import evaluate_source
    from msdn_tune.commands.train import metrics_table
    from msdn_tune.train.config import parse_set_options

    metrics = evaluate_source(checkpoint, data, parse_set_options(settings),
                              tracking_uri=tracking_uri)
    Console().print(metrics_table(metrics, f"{checkpoint} on {data} (accuracies in %)"))

# --- search commands (msdn_tune.space, msdn_tune.tune) -------------------------------------------


@main.group("space")
def space_group() -> None:
    """Check and inspect search-space files (search_spaces/*.yaml)."""


@space_group.command("validate")
@click.argument("file")
def space_validate_cmd(file: str) -> None:
    """Validate FILE and print a one-line summary (exit 2 with the key path if invalid)."""
    from msdn_tune.space import load_space

    click.echo(f"ok: {load_space(file).summary()}")


@space_group.command("show")
@click.argument("file")
def space_show_cmd(file: str) -> None:
    """Print FILE resolved: defaults filled in, ${VAR} expanded, paths made absolute."""
    from msdn_tune.space import load_space

    click.echo(load_space(file).to_yaml(), nl=False)


# (study commands: run, results, best, report, reproduce)


@main.command("run")
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False),
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
def run_cmd(space_file: str, num_samples: int | None, max_concurrent: int | None,
            address: str | None, storage_path: str | None, name: str | None, resume: bool,
            warm_start: str | None, tracking_uri: str | None, no_tracking: bool,
            force_promote: bool, resume_if_exists: bool, storage_shared: bool) -> None:
    """Run a hyperparameter search described by a search-space file."""
    from pathlib import Path

    from msdn_tune.cli.display import (
        make_console,
        print_best,
        print_next_steps,
        trials_rich_table,
    )
    from msdn_tune.commands.study import run_study
    from msdn_tune.space import load_space

    space = load_space(space_file)
    space = space.with_overrides(num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                 storage_path=storage_path, name=name, tracking_uri=tracking_uri)
    console = make_console()
    out = run_study(space, space_file=Path(space_file).resolve(), address=address,
                    resume=resume, warm_start=warm_start, tracking_uri=tracking_uri,
                    tracking=not no_tracking, force_promote=force_promote, console=console,
                    resume_if_exists=resume_if_exists, storage_shared=storage_shared)
    console.print(trials_rich_table(out.rows, f"study {space.name} (accuracies in %)"))
    print_best(out.best, console, space.multi_objective)
    if out.champion:
        c = out.champion
        state = "promoted to champion" if c.get("promoted") else "kept the existing champion"
        console.print(f"model: {c.get('name')} v{c.get('version')} ({state})")
    for p in out.plots:
        console.print(f"plot: {p}")
    print_next_steps(console, path=out.path, space_file=space_file, name=space.name,
                     complete=out.complete, best=out.best[0] if out.best else None,
                     data=space.data, fixed=space.fixed, tracking_uri=out.tracking_uri,
                     storage=space.storage_path)
    if not out.complete:
        sys.exit(130)


@main.command("results")
@click.argument("study")
@click.option("--parquet", "parquet_out", type=click.Path(dir_okay=False),
              help="Also write the table to this parquet file.")
@click.option("--storage-path", default="msdn_results", show_default=True,
              help="Where to look for STUDY when it is a name.")
def results_cmd(study: str, parquet_out: str | None, storage_path: str) -> None:
    """Print the trials of a study (settings, metrics, status, epochs)."""
    from msdn_tune.cli.display import make_console, trials_rich_table
    from msdn_tune.trials import load_trials, study_dir, write_parquet

    path = study_dir(study, storage_path)
    rows = load_trials(path)
    make_console().print(trials_rich_table(rows, f"{path.name}: {len(rows)} trials "
                                                 "(accuracies in %)"))
    if parquet_out:
        click.echo(f"wrote {write_parquet(rows, parquet_out)}")


@main.command("best")
@click.argument("study")
@click.option("--storage-path", default="msdn_results", show_default=True,
              help="Where to look for STUDY when it is a name.")
def best_cmd(study: str, storage_path: str) -> None:
    """Print the best completed trial (Pareto front when multi-objective)."""
    from msdn_tune.cli.display import make_console, print_best
    from msdn_tune.trials import best_trials, load_trials, study_space

    path, space = study_space(study, storage_path)
    rows = load_trials(path)
    objectives = [(o.metric, o.mode) for o in space.objectives]
    print_best(best_trials(rows, objectives), make_console(), space.multi_objective)


# --- tracking commands (msdn_tune.integrations.mlflow.tracking) ----------------------------------


@main.command("report")
@click.argument("study")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for the plots (default: STUDY/plots).")
@click.option("--storage-path", default="msdn_results", show_default=True,
              help="Where to look for STUDY when it is a name.")
@click.option("--no-log", is_flag=True, help="Only write the files; do not log them to MLflow.")
def report_cmd(study: str, out_dir: str | None, storage_path: str, no_log: bool) -> None:
    """Render the study's plots to PNG (and HTML with plotly) and log them to its parent run."""
    from msdn_tune.commands.report import log_plots, study_report

    rep = study_report(study, out_dir=out_dir, storage_path=storage_path, log=False)
    for path in rep.plots:
        click.echo(str(path))
    if no_log:
        return
    if not (rep.tracking_uri and rep.parent_run_id):
        click.echo("not logged: the study was run without MLflow tracking")
        return
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
    from msdn_tune.commands.reproduce import reproduce
    from msdn_tune.train.config import parse_set_options

    reproduce(run_id, tracking_uri=tracking_uri, data=data, out=out,
              overrides=parse_set_options(settings))



@main.command("ui")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db).",
)
@click.option("--port", default=5000, show_default=True, type=int, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
def ui_cmd(tracking_uri: str | None, port: int, host: str) -> None:
    """Start the MLflow UI for the configured store (foreground, Ctrl-C to stop)."""
    from msdn_tune.integrations import mlflow as tracking

    uri = tracking.resolve_tracking_uri(cli=tracking_uri)
    if uri.startswith(("http://", "https://")):
        tracking.check_tracking(uri)
        click.echo(f"{uri} is already a tracking server: open it in a browser")
        return
    click.echo(f"starting the MLflow UI for {uri} ...")
    code = tracking.serve_ui(
        uri, host, port, on_ready=lambda url: click.echo(f"MLflow UI at {url} (Ctrl-C to stop)")
    )
    sys.exit(code)

# --- cluster commands (msdn_tune.integrations.ray.jobs) ------------------------------------------

_ADDRESS_HELP = ("Ray dashboard (job server), e.g. http://HEAD:8265 "
                 "(default: $RAY_API_SERVER_ADDRESS).")


@main.command("submit")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Search-space YAML file inside the working directory.")
@click.option("--storage-path", help="Shared results storage: s3://..., gs://... or a mount "
              "every node sees (default: the file's, which must then be absolute).")
@click.option("--tracking-uri", help="MLflow server every node reaches, e.g. http://HEAD:5000 "
              "(default: the file's).")
@click.option("--no-tracking", is_flag=True, help="Do not track in MLflow.")
@click.option("--name", help="Study name (default: the file's name).")
@click.option("--num-samples", type=int, help="Number of trials (overrides the file).")
@click.option("--max-concurrent", type=int, help="Trials at a time (overrides the file).")
@click.option("--resume", is_flag=True, help="Continue an interrupted study of this name.")
@click.option("--resume-if-exists", is_flag=True,
              help="Resume the study if it exists in storage, else start it.")
@click.option("--storage-shared", is_flag=True,
              help="Declare a --storage-path mount shared by all nodes (NFS msdn-tune cannot "
                   "recognise).")
@click.option("--working-dir", type=click.Path(file_okay=False, exists=True),
              help="Folder uploaded as the job's working_dir (default: the project holding "
                   "pyproject.toml, else the current folder).")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Also leave these out of the upload (gitignore syntax, repeatable).")
@click.option("--pip", "pip", multiple=True, metavar="REQUIREMENT",
              help="pip-install into the job's environment (repeatable); default: none, the "
                   "cluster's image or venv already has msdn-tune.")
@click.option("--submission-id", help="Job id (default: msdn-<study>-<time>).")
@click.option("--no-wait", is_flag=True, help="Submit and return; do not follow the logs.")
@click.option("--dry-run", is_flag=True, help="Print the job (entrypoint, runtime_env) only.")
def submit_cmd(address: str | None, space_file: str, storage_path: str | None,
               tracking_uri: str | None, no_tracking: bool, name: str | None,
               num_samples: int | None, max_concurrent: int | None, resume: bool,
               resume_if_exists: bool, storage_shared: bool, working_dir: str | None,
               excludes: tuple[str, ...], pip: tuple[str, ...], submission_id: str | None,
               no_wait: bool, dry_run: bool) -> None:
    """Submit a study to a Ray cluster as a Ray Job, follow its logs, exit with its status.

    Exit code 0 when the job succeeded, 1 when it failed or was stopped, 2 for a problem found
    before submitting (upload too large, unreachable cluster, missing token, local storage).
    """
    import json

    from msdn_tune.integrations.ray import jobs as cluster

    plan = cluster.plan_job(
        space_file, working_dir=working_dir, storage_path=storage_path,
        tracking_uri=tracking_uri, tracking=not no_tracking, name=name,
        num_samples=num_samples, max_concurrent=max_concurrent, resume=resume,
        resume_if_exists=resume_if_exists, storage_shared=storage_shared, pip=pip,
        excludes=excludes, submission_id=submission_id)
    for w in plan.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    click.echo(f"upload: {plan.runtime_env['working_dir']} "
               f"({human_bytes(plan.upload.total_bytes)}, {plan.upload.n_files} files)")
    click.echo(f"entrypoint: {plan.entrypoint}")
    if dry_run:
        click.echo(json.dumps({"submission_id": plan.submission_id,
                               "runtime_env": plan.runtime_env, "metadata": plan.metadata},
                              indent=1))
        return
    server = cluster.job_client(address)
    job_id = cluster.submit_study(server, plan)
    click.echo(f"submitted job {job_id} to {server.url}")
    if no_wait:
        click.echo(f"follow it with: msdn-tune jobs logs {job_id} --follow --address {server.url}")
        return
    try:
        status = cluster.follow_job(server, job_id, lambda s: click.echo(s, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job_id} keeps running on the cluster "
                   f"(msdn-tune jobs stop {job_id} --address {server.url})", err=True)
        sys.exit(130)
    click.echo(f"job {job_id}: {status}")
    sys.exit(cluster.job_exit_code(status))


@main.group("jobs")
def jobs_group() -> None:
    """List, inspect, follow and stop Ray jobs (studies submitted with `msdn-tune submit`)."""


@jobs_group.command("list")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
def jobs_list_cmd(address: str | None) -> None:
    """The cluster's jobs, newest first."""
    from rich.table import Table

    from msdn_tune.cli.display import make_console
    from msdn_tune.integrations.ray import jobs as cluster

    rows = cluster.list_jobs(cluster.job_client(address))
    table = Table("submission id", "status", "study", "started", "ended", title="Ray jobs")
    for r in rows:
        table.add_row(r["submission_id"], r["status"], r["study"],
                      cluster.format_time(r["start_time"]), cluster.format_time(r["end_time"]))
    make_console().print(table)


@jobs_group.command("status")
@click.argument("job_id")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
def jobs_status_cmd(job_id: str, address: str | None) -> None:
    """A job's status, message and entrypoint; exit 0 if it succeeded or is still running."""
    from msdn_tune.integrations.ray import jobs as cluster

    info = cluster.job_info(cluster.job_client(address), job_id)
    for key in ("submission_id", "status", "message", "entrypoint"):
        click.echo(f"{key + ':':<15}{info[key]}")
    click.echo(f"{'started:':<15}{cluster.format_time(info['start_time'])}")
    click.echo(f"{'ended:':<15}{cluster.format_time(info['end_time'])}")
    if info["status"] in ("FAILED", "STOPPED"):
        sys.exit(1)


@jobs_group.command("logs")
@click.argument("job_id")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs_cmd(job_id: str, address: str | None, follow: bool) -> None:
    """A job's driver output (the study's progress)."""
    from msdn_tune.integrations.ray import jobs as cluster

    server = cluster.job_client(address)
    if not follow:
        click.echo(cluster.job_logs(server, job_id), nl=False)
        return
    status = cluster.follow_job(server, job_id, lambda s: click.echo(s, nl=False))
    click.echo(f"job {job_id}: {status}")
    sys.exit(cluster.job_exit_code(status))


@jobs_group.command("stop")
@click.argument("job_id")
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)
def jobs_stop_cmd(job_id: str, address: str | None) -> None:
    """Stop a job (its driver gets SIGTERM; `msdn-tune submit --resume` continues the study)."""
    from msdn_tune.integrations.ray import jobs as cluster

    stopped = cluster.stop_job(cluster.job_client(address), job_id)
    click.echo(f"job {job_id}: " + ("stop requested" if stopped else "already ended"))


def entrypoint() -> None:
    """The `msdn-tune` executable: `main`, then a quick exit.

    A study leaves torch, Ray, MLflow, Optuna and matplotlib imported, and tearing their objects
    down one by one at interpreter exit takes seconds after the last line is printed. Freezing the
    garbage collector's objects first skips that walk; atexit handlers and stream flushing still
    run as usual. Tests call `main` itself, so their process keeps collecting.
    """
    try:
        main()
    finally:
        import gc

        gc.freeze()


if __name__ == "__main__":
    entrypoint()
