"""`${VAR}` and `${VAR:-default}` in the space file's path-like values, expanded like a shell
does (a default may itself hold references: `${A:-${B:-/x}}`), and paths made absolute and
checked against the file system's limits (Ray runs each trial in its own working directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NoReturn

from msdn_tune.safeload import shorten
from msdn_tune.space.messages import Where, fail

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NESTING = 8
"""Deepest `${A:-${B:-...}}` accepted."""
NAME_MAX = 255
"""Longest file or folder name (bytes) on Linux and macOS file systems."""
PATH_MAX = 4095
"""Longest path (bytes) the kernel opens."""


def expand(value: str, source: str, where: Where) -> str:
    """`value` with ${VAR} / ${VAR:-default} expanded from the environment.

    As in the shell, a default may hold references of its own, expanded only when it is used
    (an unset variable in an unused default is fine), and a variable's value is not expanded
    again.

    Raises:
        SpaceError: for an unset variable without a default, or a malformed reference.
    """
    return _expand(_Text(value, source, where), 0, 0, resolve=True)[0]


class _Text:
    """The value being expanded, and where it is, for messages."""

    def __init__(self, value: str, source: str, where: Where) -> None:
        self.value, self.source, self.where = value, source, where

    def fail(self, message: str) -> NoReturn:
        fail(self.source, self.where, message)

    def unclosed(self) -> NoReturn:
        self.fail(f"unclosed variable reference in {shorten(self.value)}; write ${{NAME}}")


def _expand(text: _Text, pos: int, depth: int, *, resolve: bool) -> tuple[str, int]:
    """Expand from `pos` to the end of the value (depth 0) or to the `}` closing the default
    being read (depth > 0); returns the expansion and where it stopped (at that `}`)."""
    value = text.value
    parts: list[str] = []
    while True:
        start = value.find("${", pos)
        close = value.find("}", pos) if depth else -1
        if depth and close < 0 and start < 0:
            text.unclosed()
        if start < 0 or 0 <= close < start:
            stop = close if depth else len(value)
            parts.append(value[pos:stop])
            return "".join(parts), stop
        parts.append(value[pos:start])
        expanded, pos = _reference(text, start, depth, resolve=resolve)
        parts.append(expanded)


def _reference(text: _Text, start: int, depth: int, *, resolve: bool) -> tuple[str, int]:
    """The value of the reference `${...}` at `start`, and the position after its `}`."""
    value = text.value
    if depth >= MAX_NESTING:
        text.fail(f"variable references nested deeper than {MAX_NESTING} levels")
    match = _NAME_RE.match(value, start + 2)
    pos = match.end() if match else start + 2
    if match is None or not value.startswith((":-", "}"), pos):
        end = value.find("}", start)
        if end < 0:
            text.unclosed()
        text.fail(
            f"bad variable reference {shorten(value[start : end + 1])}; write ${{NAME}} or "
            "${NAME:-default}"
        )
    name = match.group(0)
    env = os.environ.get(name)
    if value.startswith("}", pos):
        if env is None and resolve:
            text.fail(
                f"environment variable {name} is not set (in {shorten(value)}); set it, or give "
                f"a default: ${{{name}:-...}}"
            )
        return env or "", pos + 1
    # like the shell's :- , an empty variable counts as unset
    default, end = _expand(text, pos + 2, depth + 1, resolve=resolve and not env)
    return (env if env else default), end + 1


def check_path(value: str, source: str, where: Where) -> None:
    """A local path the file system can hold: no NUL byte, each name at most 255 bytes, the whole
    at most 4095 (else opening it fails later with `File name too long`). URIs pass."""
    if "\0" in value:
        fail(source, where, f"a path cannot contain a NUL character (got {shorten(value)})")
    if "://" in value:
        return
    encoded = os.fsencode(value) if _encodable(value) else value.encode("utf-8", "replace")
    if len(encoded) > PATH_MAX:
        fail(
            source,
            where,
            f"path of {len(encoded):,} bytes, longer than the {PATH_MAX:,} a file system takes "
            f"(got {shorten(value)})",
        )
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        fail(
            source,
            where,
            f"a file or folder name of {len(longest):,} bytes, longer than the {NAME_MAX} a file "
            f"system takes (got {shorten(value)})",
        )


def _encodable(value: str) -> bool:
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return True


def absolute_if_path(value: str) -> str:
    """Absolute path for anything path-like; preset names (no separator) stay names.

    Ray runs each trial in its own working directory, so a relative data path would break
    inside trials (docs/search.md B13); the driver resolves it once, here.
    """
    if "://" in value:
        return value
    if "/" in value or os.sep in value or value.startswith((".", "~")) or _is_dir(value):
        return os.path.abspath(os.path.expanduser(value))
    return value


def _is_dir(value: str) -> bool:
    try:
        return Path(value).is_dir()
    except (OSError, ValueError):  # a name too long, or unencodable: not a folder here
        return False


def absolute_storage(value: str) -> str:
    """Ray refuses relative storage paths; URIs (s3://, gs://, file://) pass unchanged."""
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))
