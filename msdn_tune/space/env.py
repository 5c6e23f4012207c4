"""`${VAR}` and `${VAR:-default}` in the space file's path-like values, expanded like a shell
does, and paths made absolute (Ray runs each trial in its own working directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from msdn_tune.space.messages import Where, fail

_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_ENV_BODY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def expand(value: str, source: str, where: Where) -> str:
    """`value` with ${VAR} / ${VAR:-default} expanded from the environment.

    Raises:
        SpaceError: for an unset variable without a default, or a malformed reference.
    """

    def sub(match: re.Match[str]) -> str:
        body = _ENV_BODY_RE.fullmatch(match.group(1))
        if body is None:
            fail(
                source,
                where,
                f"bad variable reference {match.group(0)!r}; write ${{NAME}} or ${{NAME:-default}}",
            )
        name, default = body.group(1), body.group(2)
        env = os.environ.get(name)
        if env:  # like the shell's :- , an empty variable counts as unset
            return env
        if default is not None:
            return default
        if env is not None:
            return env
        fail(
            source,
            where,
            f"environment variable {name} is not set (in {value!r}); set it, or give a default: "
            f"${{{name}:-...}}",
        )

    out = _ENV_RE.sub(sub, value)
    if "${" in _ENV_RE.sub("", value):
        fail(source, where, f"unclosed variable reference in {value!r}; write ${{NAME}}")
    return out


def absolute_if_path(value: str) -> str:
    """Absolute path for anything path-like; preset names (no separator) stay names.

    Ray runs each trial in its own working directory, so a relative data path would break
    inside trials (docs/search.md B13); the driver resolves it once, here.
    """
    if "://" in value:
        return value
    if "/" in value or os.sep in value or value.startswith((".", "~")) or Path(value).is_dir():
        return os.path.abspath(os.path.expanduser(value))
    return value


def absolute_storage(value: str) -> str:
    """Ray refuses relative storage paths; URIs (s3://, gs://, file://) pass unchanged."""
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))
