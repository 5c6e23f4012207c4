"""The root group: the command listing, exit codes of user errors, and a light `--help`."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from msdn_tune.cli import main

COMMANDS = ["best", "data", "evaluate", "export", "import-checkpoint", "jobs", "report",
            "reproduce", "results", "run", "space", "submit", "train", "ui"]


def test_every_command_is_listed_once_in_the_root_help():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.output.split("Commands:")[1].splitlines() if line]
    assert listed == COMMANDS
    assert sorted(main.commands) == COMMANDS


def test_groups_hold_their_subcommands():
    assert sorted(main.commands["data"].commands) == ["extract", "import", "info", "synth"]
    assert sorted(main.commands["data"].commands["import"].commands) == ["hdf5", "mat"]
    assert sorted(main.commands["jobs"].commands) == ["list", "logs", "status", "stop"]
    assert sorted(main.commands["space"].commands) == ["show", "validate"]


def test_an_option_error_is_checked_before_any_work():
    """`data extract --store` without `--att-splits`: exit 2 before any image is read."""
    res = CliRunner().invoke(main, ["data", "extract", "--images", "nowhere", "--res101", "x.mat",
                                    "--dataset", "CUB", "--out", "feats", "--store", "st"])
    assert res.exit_code == 2
    assert res.stderr == "error: --store needs --att-splits (the class attributes and splits)\n"


def test_help_loads_no_heavy_library():
    """`msdn-tune --help` and `space validate` stay fast: the CLI modules import the rest lazily."""
    code = ("import sys; import msdn_tune.cli; heavy = [m for m in ('torch', 'ray', 'mlflow', "
            "'optuna', 'pyarrow', 'numpy', 'rich') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_python_dash_m_is_the_executable():
    out = subprocess.run([sys.executable, "-m", "msdn_tune.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("msdn-tune ") and "torch " in out.stdout
