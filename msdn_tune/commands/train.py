"""The `msdn-tune train` use case: one training run, its output folder, live progress, resume.

Kept apart from `train/trainer.py` so the Trainer stays a library (no printing, no file layout);
the Tune trainable uses the Trainer directly. What a finished run prints (per-epoch table, final
metrics, where the checkpoint is) is the command line's: see `msdn_tune.cli.display`. The live
output (the progress bar, one line per epoch, the resume and interrupt messages) is printed here,
on the console the caller passes, because it happens while the run goes on.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from msdn_tune import outdir
from msdn_tune.commands.weights import init_weights
from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import ConfigError, DivergenceError, MsdnTuneError
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer, load_checkpoint

EPOCH_COLUMNS = ("epoch", "train/loss", "val/zsl_acc", "val/U", "val/S", "val/H", "best/H")
"""The metrics shown for each epoch, live and in the closing table."""

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
RUN_FILES = frozenset({CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, f"{CHECKPOINT_FILE}.tmp",
                       FINAL_FILE})
"""Every file a run writes into its folder (the Trainer saves through ``checkpoint.pt.tmp``)."""

HANDED_OVER = ("reproduced_from.json",)
"""What `msdn-tune reproduce` writes into a run folder before it hands the folder to train."""

FORCE_HELP = ("to add this run's files (checkpoint.pt, config.yaml, final.json, metrics.jsonl) "
              "next to what is there; --force never overwrites a file msdn-tune did not write, "
              "and in the folder of an earlier train run it replaces only that run's files")
"""What `train --force` does: the end of the message of a refused folder, and its --help."""


@dataclass
class TrainRun:
    """A finished `msdn-tune train` run: the Trainer's result plus what its summary names.

    It has :class:`~msdn_tune.train.trainer.TrainResult`'s fields (metrics, history, checkpoint),
    so callers that read a TrainResult read this too.
    """

    metrics: dict[str, float]
    """The final metrics (also in ``final.json``)."""
    history: list[dict[str, float]]
    """Every epoch's metrics, a resumed run's earlier epochs included."""
    checkpoint: Path
    data: str
    """The benchmark as the user named it (store folder or preset), for the commands printed."""
    dataset: str
    """The benchmark's dataset label, e.g. ``synthetic:tiny`` or ``CUB``."""
    selection: str
    """The model-selection protocol the run used (its config's ``selection``)."""
    epochs: list[dict[str, float]] = field(default_factory=list)
    """The metrics of each epoch this invocation ran (a resumed run's earlier ones excluded)."""


def dataset_default(name: str) -> str:
    """The training recipe for a benchmark's dataset label (e.g. `synthetic:tiny`, `CUB`).

    A new run takes the dataset's recipe unless `--set dataset=...` says otherwise; labels that
    name no known dataset train with the synthetic recipe.
    """
    low = name.lower()
    if low.startswith("synthetic"):
        return "synthetic"
    for ds in ("cub", "sun", "awa2", "flo"):
        if low.startswith(ds):
            return ds
    return "synthetic"


def format_epoch(metrics: dict[str, float]) -> list[str]:
    """One epoch's :data:`EPOCH_COLUMNS` as text: losses to 4 decimals, accuracies in percent."""
    return [_fmt(key, metrics.get(key, float("nan"))) for key in EPOCH_COLUMNS]


def _fmt(key: str, value: float) -> str:
    if key == "epoch":
        return str(int(value))
    if key.startswith("train/"):
        return f"{value:.4f}"
    return f"{100 * value:.1f}"


def _new_run_dir(cfg: TrainConfig, out: str | None, force: bool) -> outdir.OutDir:
    """The folder of a new run (`out`, else a timestamped one under runs/), checked, not made.

    Refused: a folder holding a run (unless `force`, which replaces that run's files), and any
    other non-empty folder not marked as a train run's (unless `force`, which adds the run's
    files next to what is there when none of their names is taken): see :mod:`msdn_tune.outdir`.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path("runs") / f"train-{cfg.dataset}-{stamp}"
    run_dir = outdir.inspect(out_dir, command="train", owns=RUN_FILES.__contains__, force=force,
                             also_ours=HANDED_OVER,
                             force_help=f"{FORCE_HELP} (or --resume this folder if it holds a "
                                        "run to continue)")
    if (out_dir / CHECKPOINT_FILE).exists() and not force:
        raise ConfigError(f"--out {out_dir}: already holds a run; resume it with "
                          f"--resume {out_dir}, replace it with --force, or choose another "
                          "folder")
    return run_dir


def _resume_dir(resume: str, force: bool) -> outdir.OutDir:
    """The folder of a resumed run, checked, not changed.

    A folder written before runs were marked is taken as a run's when it holds nothing but a
    run's files; otherwise the marker must say it is a train run's.
    """
    path = Path(resume)
    folder = path if path.is_dir() else path.parent
    return outdir.inspect(folder, command="train", owns=RUN_FILES.__contains__, force=force,
                          option="--resume", adopt=True, also_ours=HANDED_OVER,
                          force_help=FORCE_HELP)


def train_command(data: str, overrides: dict[str, Any], out: str | None, resume: str | None,
                  console: Console | None = None, *, force: bool = False,
                  tracking_uri: str | None = None) -> TrainRun:
    """Run (or resume) one training run, printing its progress live on `console`.

    `data` is a store folder or preset name; `overrides` are the `--set` settings (on top of the
    defaults, or of the resumed run's config). Every finished epoch is checkpointed and appended
    to ``metrics.jsonl`` in the run folder, so Ctrl-C loses at most the current epoch: it prints
    the resume command and exits 130. A diverging run is the user's to fix: one message (exit 2).
    The run folder never gets a file over or appended to one msdn-tune did not write: `force`
    only lets a new run into a non-empty folder on those terms (:mod:`msdn_tune.outdir`).
    A new run with `init` set starts from that model's weights (`tracking_uri`: the MLflow
    store of a models:/ URI); a resumed one continues from its own.
    """
    console = console or Console()
    bench = open_benchmark(data)
    if resume:
        state = load_checkpoint(resume)
        cfg = TrainConfig.from_dict({**state["config"], **overrides})
        run_dir = _resume_dir(resume, force)
    else:
        values = dict(overrides)
        values.setdefault("dataset", dataset_default(bench.dataset))
        cfg = TrainConfig.from_dict(values)
        run_dir = _new_run_dir(cfg, out, force)
    out_dir = run_dir.path
    init = init_weights(cfg.init, tracking_uri=tracking_uri) if cfg.init and not resume else None
    trainer = Trainer(cfg, bench, init_weights=init)
    if init is not None:
        console.print(f"starting from the weights of {cfg.init}", markup=False, soft_wrap=True)
    if resume:  # checked (benchmark, selection) before anything in the run folder changes
        trainer.load_state_dict(state)
        console.print(f"resuming {out_dir} at epoch {trainer.epoch}/{cfg.epochs}")
    # config.yaml keeps what the user wrote (auto); this line says what runs
    choice = trainer.precision_choice
    console.print(f"precision {choice.precision} ({choice.reason})", markup=False,
                  highlight=False, soft_wrap=True)
    run_dir.create()  # the marker first: every file below is recorded in it before it is written
    if not resume and FINAL_FILE in run_dir.ours:  # a replaced run's result, not this one's
        (out_dir / FINAL_FILE).unlink(missing_ok=True)
    run_dir.claim(CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))

    epochs: list[dict[str, float]] = []
    ckpt = run_dir.claim(CHECKPOINT_FILE)
    run_dir.claim(f"{CHECKPOINT_FILE}.tmp")
    # The product's one progress factory (msdn_tune.console) is to replace this bar.
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("batches"), TimeElapsedColumn(), console=console, transient=True)
    # A resumed run appends to its own log; a new one (or a replaced run) starts it afresh.
    with run_dir.claim(METRICS_FILE).open("a" if resume else "w") as log, bar:
        task = bar.add_task("train", total=None, epoch=trainer.epoch + 1)

        def on_step(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total, epoch=trainer.epoch + 1)

        def on_epoch(m: dict[str, float]) -> None:
            trainer.save(ckpt)
            log.write(json.dumps(m) + "\n")
            log.flush()
            epochs.append(m)
            row = format_epoch(m)
            bar.console.print("  ".join(f"{k}={v}" for k, v in zip(EPOCH_COLUMNS, row,
                                                                    strict=True)))

        try:
            final = trainer.fit(on_epoch=on_epoch, progress=on_step)
        except DivergenceError as exc:
            # The settings (or the data) made training blow up: the user's to fix, so one clear
            # message (exit 2), and the checkpoint of the last finite epoch stays as it was.
            kept = f"; the last finite epoch is in {ckpt}" if ckpt.exists() else ""
            raise MsdnTuneError(f"{exc} (try a lower lr, or check the data for NaN/inf)"
                                f"{kept}") from None
        except KeyboardInterrupt:
            # Every finished epoch is checkpointed; say how to continue instead of a traceback.
            bar.stop()
            console.print(f"interrupted during epoch {trainer.epoch + 1}; the last finished "
                          f"epoch ({trainer.epoch}) is in {ckpt}", soft_wrap=True)
            console.print(f"resume with: msdn-tune train --data {shlex.quote(data)} --resume "
                          f"{shlex.quote(str(out_dir))}", soft_wrap=True, markup=False)
            raise SystemExit(130) from None
    trainer.save(ckpt)
    run_dir.claim(FINAL_FILE).write_text(json.dumps(final, indent=2))
    return TrainRun(metrics=final, history=trainer.history, checkpoint=ckpt, data=data,
                    dataset=bench.dataset, selection=cfg.selection, epochs=epochs)
