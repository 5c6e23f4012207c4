"""The `msdn-tune` command line: thin click commands over the package.

Each command parses options, calls one function of the package and prints. User errors
(:class:`msdn_tune.errors.MsdnTuneError`) become one message on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _pkg_version

import click

from msdn_tune import __version__
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


# --- data commands (msdn_tune.data) -------------------------------------------------------------


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


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
        ("bytes", f"{_human_bytes(info['feature_bytes'])} ({info['file_bytes']} on disk)"),
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

# --- train / evaluate commands (msdn_tune.train) ------------------------------------------------


@main.command("train")
@click.option("--data", required=True, help="Benchmark store folder or synthetic preset name.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a training setting (repeatable), e.g. --set lr=2e-4.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default runs/...).")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder/checkpoint.")
def train_cmd(data: str, settings: tuple[str, ...], out: str | None, resume: str | None) -> None:
    """Train MSDN++ once and print per-epoch metrics and the checkpoint path."""
    from msdn_tune.train.config import parse_set_options
    from msdn_tune.train.run import train_command

    train_command(data, parse_set_options(settings), out, resume)


@main.command("evaluate")
@click.argument("checkpoint")
@click.option("--data", required=True, help="Benchmark store folder or synthetic preset name.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Evaluation settings, e.g. --set w1=0.7 --set gamma=0.5.")
def evaluate_cmd(checkpoint: str, data: str, settings: tuple[str, ...]) -> None:
    """Evaluate a checkpoint (or models:/NAME@ALIAS) on the test splits."""
    from rich.console import Console

    from msdn_tune.train.config import parse_set_options
    from msdn_tune.train.evaluate import evaluate_source
    from msdn_tune.train.run import metrics_table

    metrics = evaluate_source(checkpoint, data, parse_set_options(settings))
    Console().print(metrics_table(metrics, f"{checkpoint} on {data} (accuracies in %)"))

# --- search commands (msdn_tune.space, msdn_tune.tune) ------------------------------------------


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
@click.option("--warm-start", metavar="STUDY",
              help="Give an earlier study's completed trials to the sampler.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here).")
@click.option("--no-tracking", is_flag=True, help="Do not track in MLflow.")
@click.option("--force-promote", is_flag=True,
              help="Make the best model champion even if the current one is better.")
def run_cmd(space_file: str, num_samples: int | None, max_concurrent: int | None,
            address: str | None, storage_path: str | None, name: str | None, resume: bool,
            warm_start: str | None, tracking_uri: str | None, no_tracking: bool,
            force_promote: bool) -> None:
    """Run a hyperparameter search described by a search-space file."""
    from pathlib import Path

    from msdn_tune.space import load_space
    from msdn_tune.tune.display import (
        make_console,
        print_best,
        print_next_steps,
        trials_rich_table,
    )
    from msdn_tune.tune.study import run_study

    space = load_space(space_file)
    space = space.with_overrides(num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                 storage_path=storage_path, name=name, tracking_uri=tracking_uri)
    console = make_console()
    out = run_study(space, space_file=Path(space_file).resolve(), address=address,
                    resume=resume, warm_start=warm_start, tracking_uri=tracking_uri,
                    tracking=not no_tracking, force_promote=force_promote, console=console)
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
                     data=space.data, fixed=space.fixed, tracking_uri=out.tracking_uri)
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
    from msdn_tune.tune.display import make_console, trials_rich_table
    from msdn_tune.tune.results import load_trials, study_dir, write_parquet

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
    from msdn_tune.space import parse_space
    from msdn_tune.tune.display import make_console, print_best
    from msdn_tune.tune.results import best_trials, load_trials, read_study_meta, study_dir

    path = study_dir(study, storage_path)
    meta = read_study_meta(path)
    if "space" not in meta:
        raise MsdnTuneError(f"{path}: no msdn-tune study metadata (was it made by msdn-tune run?)")
    space = parse_space(meta["space"], source=str(path))
    rows = load_trials(path)
    objectives = [(o.metric, o.mode) for o in space.objectives]
    print_best(best_trials(rows, objectives), make_console(), space.multi_objective)


# --- tracking commands (msdn_tune.tune.tracking) ------------------------------------------------


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
    from msdn_tune.tune import tracking

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

# --- cluster commands (msdn_tune.tune.cluster) --------------------------------------------------


if __name__ == "__main__":
    main()
