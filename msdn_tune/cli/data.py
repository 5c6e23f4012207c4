"""`msdn-tune data`: make benchmark stores (synthetic, imported, extracted) and inspect them.

Click commands only: the work is in `msdn_tune.commands.data` and the data layer's importers
and extractor; what a store or an import looks like on screen is in `msdn_tune.cli.display`.
Package imports are inside the commands: the data layer loads numpy, pyarrow, h5py or torch,
which `msdn-tune --help` and `space validate` must not wait for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from msdn_tune.errors import MsdnTuneError

if TYPE_CHECKING:
    from msdn_tune.data.ingest import ImportResult

_F = TypeVar("_F", bound=Callable[..., object])

_DATASET_CHOICE = click.Choice(["CUB", "SUN", "AWA2", "FLO"], case_sensitive=False)


@click.group("data")
def data_group() -> None:
    """Benchmark stores: generate synthetic ones, inspect any."""


@data_group.command("synth")
@click.option("--preset", required=True, help="Synthetic preset: tiny, demo or cub-like.")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False),
    help="Store folder to create (new or empty; with --force, a store to replace).",
)
@click.option("--seed", type=int, default=None, help="Seed (default: the preset's).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16")
@click.option("--force", is_flag=True,
              help="Replace a store msdn-tune wrote at --out. A folder holding anything else is "
                   "never replaced (that would delete its files).")
def data_synth(preset: str, out: str, seed: int | None, dtype: str, force: bool) -> None:
    """Generate a deterministic synthetic ZSL benchmark store."""
    from msdn_tune.cli.display import print_store_summary
    from msdn_tune.commands.data import synthesize

    path, summary = synthesize(preset, out, seed=seed, dtype=dtype, force=force)
    click.echo(str(path))
    print_store_summary(summary)


@data_group.command("info")
@click.argument("benchmark")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--verify", is_flag=True, help="Also read all features and check their CRC-32.")
def data_info(benchmark: str, as_json: bool, verify: bool) -> None:
    """Describe a benchmark store (a directory or a preset name such as 'demo')."""
    from msdn_tune.cli.display import print_store_summary
    from msdn_tune.commands.data import describe

    info = describe(benchmark, verify=verify)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    print_store_summary(info)
    if verify:
        click.echo(f"{'verified:':<16}feature CRC-32 matches meta.json")


# (data import / data extract: real benchmarks, msdn_tune.data.ingest / .extract)


def _import_options(fn: _F) -> _F:
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
                     help="Replace a store msdn-tune wrote at --out / discard an interrupted "
                          "import. A folder holding anything else is never replaced."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted import into --out from the rows it wrote."),
        click.option("--chunk-rows", type=click.IntRange(min=1),
                     help="Images read per step (default: about 64 MiB of features)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]):
        fn = opt(fn)
    return fn


def _interrupted(what: str, out: str) -> NoReturn:
    """Ctrl-C during an import or extraction: what was written is kept; say how to continue."""
    click.secho(f"\ninterrupted: what was written so far is kept; rerun the same {what} "
                f"command with --resume to continue into {out}", fg="yellow", err=True)
    sys.exit(130)


def _print_import_of(result: ImportResult) -> None:
    """Print an import's report and the summary of the store it made."""
    from msdn_tune.cli.display import print_import
    from msdn_tune.commands.data import store_summary

    print_import(result, store_summary(result.path))


@data_group.group("import")
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
    from msdn_tune.data.ingest import import_hdf5

    try:
        result = import_hdf5(file, dataset, out, dtype=dtype, allow_mismatch=allow_mismatch,
                             force=force, resume=resume, chunk_rows=chunk_rows, w2v=w2v,
                             att_splits=att_splits, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("import", out)
    _print_import_of(result)


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
    from msdn_tune.data.ingest import import_mat

    try:
        result = import_mat(dataset, att_splits, res101, features, out, w2v=w2v, dtype=dtype,
                            allow_mismatch=allow_mismatch, force=force, resume=resume,
                            chunk_rows=chunk_rows, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("import", out)
    _print_import_of(result)


@data_group.command("extract")
@click.option("--images", required=True, type=click.Path(file_okay=False),
              help="Image root, e.g. data/CUB (the folder holding CUB_200_2011/images).")
@click.option("--res101", required=True, type=click.Path(dir_okay=False),
              help="xlsa17 res101.mat: image_files (MATLAB paths) and labels.")
@click.option("--dataset", required=True, type=_DATASET_CHOICE,
              help="Which benchmark (sets the MATLAB path prefix rule).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Feature folder to write (input of 'data import mat --features'): new, "
                   "empty, or an earlier extraction's (see --resume, --force).")
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
@click.option("--force", is_flag=True,
              help="Redo the extraction in --out (its own parts are replaced), or write into a "
                   "non-empty folder when none of the names it writes (features.json, "
                   "part-*.npy) is taken. Never deletes or overwrites a file msdn-tune did not "
                   "write; with --store, replaces a store msdn-tune wrote there.")
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

    # Checked before the extraction, not after it when the store is to be built.
    store_splits = att_splits if store else None
    if store and not store_splits:
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
    if not (store and store_splits):
        click.echo(f"next: msdn-tune data import mat --dataset {dataset} --att-splits "
                   f"att_splits.mat --res101 {res101} --features {r.path} --out STORE")
        return
    from msdn_tune.data.ingest import import_mat

    try:
        result = import_mat(dataset, store_splits, res101, r.path, store, w2v=w2v, dtype=dtype,
                            allow_mismatch=allow_mismatch, force=force, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted("import", store)
    _print_import_of(result)
    click.echo(f"the feature folder {r.path} is no longer needed (delete it to free the space)")
