"""What a refused hostile input must look like from the command line (issue 14)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import Result


def assert_user_error(res: Result, *needles: str) -> str:
    """Exit 2, no traceback, exactly one short `error:` line (returned) containing each needle."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    assert len(errors[0]) < 400, errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_ok_or_user_error(res: Result) -> None:
    """Exit 0, or a user error as :func:`assert_user_error` says: never a traceback."""
    if res.exit_code == 0:
        assert res.exception is None, repr(res.exception)
        assert "Traceback" not in res.output
        return
    assert_user_error(res)


def checksums(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under `roots` (files or folders), by path."""
    out: dict[str, str] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
