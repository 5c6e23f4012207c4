"""`msdn-tune train` and `msdn-tune evaluate` through the real CLI (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from msdn_tune.cli import main

CLI = [sys.executable, "-m", "msdn_tune.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_train_resume_and_evaluate(tmp_path):
    out = tmp_path / "run"
    res = _run("train", "--data", "tiny", "--set", "epochs=2", "--set", "lr=1e-3",
               "--set", "threads=1", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "checkpoint:" in res.stdout and "best/H" in res.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1.0, 2.0]

    # Same folder again without --resume: refused, nothing overwritten.
    again = _run("train", "--data", "tiny", "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr
    assert "Traceback" not in again.stderr

    res = _run("train", "--data", "tiny", "--resume", str(out), "--set", "epochs=3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1.0, 2.0, 3.0]

    ev = _run("evaluate", str(out / "checkpoint.pt"), "--data", "tiny")
    assert ev.returncode == 0, ev.stderr[-2000:]
    for key in ("test/zsl_acc", "test/H", "test/ausuc", "tuned/w1"):
        assert key in ev.stdout
    final = json.loads((out / "final.json").read_text())
    assert 0.0 < final["best/H"] <= 1.0


def test_bad_inputs_exit_2_without_traceback(tmp_path):
    cases = [
        ("train", "--data", "tiny", "--set", "lrr=1"),
        ("train", "--data", "tiny", "--set", "lr=-3"),
        ("train", "--data", "tiny", "--set", "novalue"),
        ("train", "--data", str(tmp_path / "nope")),
        ("evaluate", str(tmp_path / "missing.pt"), "--data", "tiny"),
        ("evaluate", str(tmp_path), "--data", "tiny"),
    ]
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    cases.append(("evaluate", str(tmp_path / "garbage.pt"), "--data", "tiny"))
    runner = CliRunner()
    for args in cases:
        res = runner.invoke(main, list(args))
        assert res.exit_code == 2, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), args
        assert res.stderr.startswith("error: "), (args, res.stderr)


def test_ctrl_c_prints_the_resume_command(tmp_path):
    """Ctrl-C after the 2nd epoch's checkpoint (counted, not timed): exit 130, the resume line."""
    out = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        import signal, sys
        from msdn_tune.train.trainer import Trainer
        from tests.helpers.interrupt import interrupt_after
        interrupt_after(Trainer, "save", 2, signal.SIGINT)
        from msdn_tune.cli import main
        sys.argv = ["msdn-tune", "train", "--data", "tiny", "--set", "epochs=200",
                    "--set", "threads=1", "--out", {str(out)!r}]
        main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"--resume {out}" in proc.stdout
    assert "interrupted during epoch 3" in proc.stdout


def test_a_new_run_takes_the_recipe_of_its_benchmarks_dataset():
    from msdn_tune.commands.train import dataset_default

    assert [dataset_default(d) for d in ("synthetic:tiny", "CUB", "awa2-subset", "SUN", "other")] \
        == ["synthetic", "cub", "awa2", "sun", "synthetic"]
