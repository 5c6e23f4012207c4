"""Running `msdn-tune space ...` in-process, and what a refusal must look like (issue 14): exit 2,
one line starting with `error:`, no traceback, bounded length."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from msdn_tune.cli.main import main


def space(command: str, path: Path | str) -> Result:
    """`msdn-tune space COMMAND PATH` in this process."""
    return CliRunner().invoke(main, ["space", command, str(path)])


def assert_refused(result: Result, *expected: str) -> str:
    """Exit 2 with exactly one `error:` line (each of `expected` in it), nothing unbounded."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[:2000]
    # the file name, a key path and ~80 characters of value and explanation: never megabytes
    assert len(lines[0]) < 1500, lines[0][:300]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def assert_outcome(result: Result) -> None:
    """Either accepted (exit 0, an `ok:` line) or refused as above: never anything else."""
    if result.exit_code == 0:
        assert result.exception is None and result.output.startswith("ok: "), result.output
    else:
        assert_refused(result)
