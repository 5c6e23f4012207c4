"""What the command line prints for a finished training run and for metrics."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from msdn_tune.cli.display import metrics_table, print_train_run
from msdn_tune.commands.train import TrainRun


def _text(render) -> str:
    console = Console(record=True, width=200)
    render(console)
    return console.export_text()


def test_metrics_table_shows_accuracies_in_percent_and_the_rest_as_is():
    table = metrics_table({"test/H": 0.5, "eval/H_tuned": 0.25, "eval/gamma": 0.7, "epoch": 3,
                           "train/loss": 1.23456}, "t")
    text = _text(lambda c: c.print(table))
    assert "50.00%" in text and "25.00%" in text
    assert "0.7 " in text and "1.235" in text and "123.46%" not in text


def test_a_resumed_run_lists_only_the_epochs_it_ran(tmp_path):
    first = {"epoch": 1.0, "train/loss": 2.0, "val/H": 0.1, "best/H": 0.1}
    second = {"epoch": 2.0, "train/loss": 1.5, "val/H": 0.2, "best/H": 0.2}
    run = TrainRun(metrics={"best/H": 0.2, "epoch": 2}, history=[first, second],
                   checkpoint=tmp_path / "my run" / "checkpoint.pt", data="tiny",
                   dataset="synthetic:tiny", selection="official", epochs=[second])
    text = _text(lambda c: print_train_run(c, run))
    assert "synthetic:tiny · official selection" in text
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows[:1]] == ["2"]  # epoch 1 was the earlier run's
    assert "1.5000" in text and "2.0000" not in text
    assert f"checkpoint: {Path(run.checkpoint).resolve()}" in text
    assert f"msdn-tune evaluate '{run.checkpoint}' --data tiny" in text
