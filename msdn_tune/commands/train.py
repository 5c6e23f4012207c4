"""One training run from the command line: output folder, progress, per-epoch table, resume.

Kept apart from `trainer.py` so the Trainer stays free of printing and file layout; the Tune
trainable uses the Trainer directly.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import ConfigError, DivergenceError, MsdnTuneError
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer, TrainResult, load_checkpoint

_COLUMNS = ("epoch", "train/loss", "val/zsl_acc", "val/U", "val/S", "val/H", "best/H")


def _dataset_default(name: str) -> str:
    """Map a benchmark's dataset label (e.g. `synthetic:tiny`, `CUB`) to a recipe name."""
    low = name.lower()
    if low.startswith("synthetic"):
        return "synthetic"
    for ds in ("cub", "sun", "awa2", "flo"):
        if low.startswith(ds):
            return ds
    return "synthetic"


def _fmt(key: str, value: float) -> str:
    if key == "epoch":
        return str(int(value))
    if key.startswith("train/"):
        return f"{value:.4f}"
    return f"{100 * value:.1f}"


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """A two-column table of metrics; accuracies shown in percent."""
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        val = metrics[key]
        if isinstance(val, float) and any(key.endswith(s) for s in
                                          ("zsl_acc", "/U", "/S", "/H", "ausuc", "_tuned",
                                           "H_best_gamma")):
            table.add_row(key, f"{100 * val:.2f}%")
        elif isinstance(val, float):
            table.add_row(key, f"{val:.4g}")
        else:
            table.add_row(key, str(val))
    return table


def train_command(data: str, overrides: dict[str, Any], out: str | None, resume: str | None,
                  console: Console | None = None) -> TrainResult:
    """Run (or resume) one training run and print progress, a per-epoch table and the result."""
    console = console or Console()
    bench = open_benchmark(data)
    if resume:
        state = load_checkpoint(resume)
        cfg = TrainConfig.from_dict({**state["config"], **overrides})
        out_dir = Path(resume if Path(resume).is_dir() else Path(resume).parent)
    else:
        values = dict(overrides)
        values.setdefault("dataset", _dataset_default(bench.dataset))
        cfg = TrainConfig.from_dict(values)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path(out) if out else Path("runs") / f"train-{cfg.dataset}-{stamp}"
        if (out_dir / "checkpoint.pt").exists():
            raise ConfigError(f"--out {out_dir}: already holds a run; resume it with "
                              f"--resume {out_dir} or choose another folder")
    trainer = Trainer(cfg, bench)
    if resume:  # checked (benchmark, selection) before anything in the run folder changes
        trainer.load_state_dict(state)
        console.print(f"resuming {out_dir} at epoch {trainer.epoch}/{cfg.epochs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))

    table = Table(*_COLUMNS, title=f"{bench.dataset} · {cfg.selection} selection")
    ckpt = out_dir / "checkpoint.pt"
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("batches"), TimeElapsedColumn(), console=console, transient=True)
    with (out_dir / "metrics.jsonl").open("a") as log, bar:
        task = bar.add_task("train", total=None, epoch=trainer.epoch + 1)

        def on_step(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total, epoch=trainer.epoch + 1)

        def on_epoch(m: dict[str, float]) -> None:
            trainer.save(ckpt)
            log.write(json.dumps(m) + "\n")
            log.flush()
            row = [_fmt(k, m.get(k, float("nan"))) for k in _COLUMNS]
            bar.console.print("  ".join(f"{k}={v}" for k, v in zip(_COLUMNS, row, strict=True)))
            table.add_row(*row)

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
    (out_dir / "final.json").write_text(json.dumps(final, indent=2))
    console.print(table)
    console.print(metrics_table(final, "final metrics (accuracies in %)"))
    console.print(f"checkpoint: {ckpt.resolve()}")
    console.print(f"evaluate:   msdn-tune evaluate {shlex.quote(str(ckpt))} "
                  f"--data {shlex.quote(data)}")
    return TrainResult(metrics=final, history=trainer.history, checkpoint=ckpt)
