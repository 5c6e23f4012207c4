"""Output folders a user names with ``--out``: never overwrite or append to a file we did not write.

A command that writes files *into* a folder (``train``, ``report``) first leaves a small marker,
:data:`MARKER`, naming the command, a format version and every file it is about to write (the
name is recorded before the file is written, so a crash never leaves one of ours unlisted). On a
later run the marker tells our files from a user's: ours may be replaced, nothing else ever is.

The rules, the same for every command (:func:`inspect`):

* a missing or empty folder is new: it is created and marked;
* a folder holding our marker for the same command is ours: the command goes on (its own rules,
  such as train's ``--resume``, apply), replacing only files the marker lists;
* any other non-empty folder is refused (exit 2) unless ``--force``; with ``--force`` the
  command writes its files *next to* what is there, and only when none of the names it writes is
  taken, so ``--force`` still never deletes or overwrites a file msdn-tune did not write.

Commands that replace a whole folder at once (``data synth`` and ``data import`` publish a store
by renaming a finished temporary folder onto ``--out``) use :func:`check_replace` instead: with
``--force`` they replace only a folder that holds nothing but their own files.

Only :mod:`msdn_tune.errors` is imported, so every layer may use this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msdn_tune.errors import ConfigError, MsdnTuneError

MARKER = ".msdn-tune.json"
"""The marker file of an output folder msdn-tune wrote into."""

MARKER_FORMAT = 1
"""Version of the marker's content; a marker of another version is not trusted as ours."""

_MAX_MARKER_BYTES = 1 << 20
_MAX_KEY_FILE_BYTES = 16 << 20
_SHOWN = 3
"""How many file names a message lists before it says how many more there are."""


def _names(names: Collection[str]) -> str:
    """`a, b, c (+2 more)`: a bounded list of file names for a one-line message."""
    ordered = sorted(names)
    shown = ", ".join(_short(n) for n in ordered[:_SHOWN])
    return shown + (f" (+{len(ordered) - _SHOWN} more)" if len(ordered) > _SHOWN else "")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(option: str, path: Path) -> str:
    return f"{option} {_short(str(path), 200)}"


def _entries(path: Path, option: str, error: type[MsdnTuneError]) -> list[str]:
    """The names in folder `path` ([] when it does not exist); one-line errors otherwise."""
    try:
        if not path.exists():
            return []
        if not path.is_dir():
            raise error(f"{_where(option, path)}: is a file, expected a folder")
        return os.listdir(path)
    except OSError as exc:
        raise error(f"{_where(option, path)}: cannot be read ({exc.strerror or exc})") from None


def _read_json_object(path: Path, limit: int) -> dict[str, Any] | None:
    """`path` as a JSON object, or None when it is missing, too large, or not one (no raise)."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of `folder` when it is one of ours (right format, a command, a file list)."""
    data = _read_json_object(folder / MARKER, _MAX_MARKER_BYTES)
    if data is None or data.get("format") != MARKER_FORMAT:
        return None
    files = data.get("files")
    if not isinstance(data.get("command"), str) or not isinstance(files, list):
        return None
    if not all(isinstance(f, str) for f in files):
        return None
    return data


@dataclass
class OutDir:
    """An output folder checked by :func:`inspect`: where a command may write, and what.

    Nothing is written until :meth:`create`; then :meth:`claim` records each file in the marker
    before the caller writes it.
    """

    path: Path
    command: str
    ours: set[str] = field(default_factory=set)
    """Files recorded in the marker: written by this command before, so replaceable."""
    marked: bool = False
    """Whether the folder already holds our marker for this command."""

    def create(self) -> None:
        """Create the folder (and parents) and write the marker, before any other file."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_marker()
        except OSError as exc:  # /proc, a read-only or full file system, a name too long
            raise ConfigError(f"{_short(str(self.path))}: cannot write there "
                              f"({exc.strerror or _short(str(exc))})") from None
        self.marked = True

    def claim(self, name: str) -> Path:
        """Record `name` as ours (in the marker) and return its path, for the caller to write."""
        if name not in self.ours:
            self.ours.add(name)
            self._write_marker()
        return self.path / name

    def _write_marker(self) -> None:
        tmp = self.path / (MARKER + ".tmp")
        tmp.write_text(json.dumps({"format": MARKER_FORMAT, "command": self.command,
                                   "files": sorted(self.ours)}, indent=1) + "\n")
        os.replace(tmp, self.path / MARKER)


def inspect(
    path: str | Path,
    *,
    command: str,
    owns: Callable[[str], bool],
    force: bool,
    option: str = "--out",
    force_help: str = "",
    adopt: bool = False,
    also_ours: Collection[str] = (),
) -> OutDir:
    """Check that `command` may write into `path` (module doc); writes nothing.

    ``owns(name)`` says whether the command may write a file of that name (the marker and its
    temporary file count as owned). ``adopt``: a folder without a marker whose every entry is
    owned is taken as ours (folders written before the marker existed). ``also_ours``: names
    another msdn-tune command writes into the folder before handing it over (not owned, never
    touched, but they do not make the folder someone else's). ``force_help`` ends the message of
    a refused non-empty folder (default: what ``--force`` does).

    Raises :class:`ConfigError`: a file at `path`, a folder that is someone else's without
    ``force``, or one where a name the command writes is taken by a file it did not write.
    """
    folder = Path(path)
    entries = _entries(folder, option, ConfigError)
    out = OutDir(folder, command)

    def owned(name: str) -> bool:
        return name in (MARKER, MARKER + ".tmp") or owns(name)

    marker = read_marker(folder) if MARKER in entries else None
    if marker is not None and marker["command"] == command:
        out.ours, out.marked = set(marker["files"]), True
    elif entries and adopt and marker is None and all(owned(e) or e in also_ours
                                                      for e in entries):
        out.ours = {e for e in entries if owned(e)}
    elif any(e not in also_ours for e in entries) and not force:
        made_by = (f"was made by msdn-tune {_short(marker['command'], 40)}, not {command}"
                   if marker is not None
                   else f"was not made by msdn-tune {command} (no {MARKER} in it)")
        raise ConfigError(
            f"{_where(option, folder)}: the folder is not empty and {made_by}; choose a new or "
            f"empty folder, or pass --force "
            + (force_help or "to write this command's files next to what is there (it never "
               "overwrites a file msdn-tune did not write)")
        )
    mine = {MARKER, MARKER + ".tmp"} if out.marked else set()
    taken = sorted(e for e in entries if owned(e) and e not in out.ours | mine)
    if taken:
        were = "was" if len(taken) == 1 else "were"
        raise ConfigError(
            f"{_where(option, folder)}: {_names(taken)} there {were} not written by msdn-tune "
            f"{command}, and msdn-tune never overwrites such files (not even with --force); "
            "move them away or choose another folder"
        )
    return out


def check_replace(
    path: str | Path,
    *,
    what: str,
    files: Collection[str],
    key_file: str,
    key_field: str,
    force: bool,
    error: type[MsdnTuneError],
    option: str = "--out",
) -> bool:
    """Check that a folder published as a whole (a store) may be written at `path`.

    Returns False for a new folder or an empty one, True for one of ours that ``force`` lets the
    command replace: a folder holding only `files`, among them `key_file`, a JSON object with
    `key_field` (what our writer puts there). Anything else is refused with `error`, and
    ``--force`` never replaces it, because replacing the folder would delete what is in it.
    """
    folder = Path(path)
    entries = _entries(folder, option, error)
    if not entries:
        return False
    foreign = sorted(set(entries) - set(files))
    key = _read_json_object(folder / key_file, _MAX_KEY_FILE_BYTES)
    if not foreign and key is not None and key_field in key:
        if not force:
            raise error(f"{_where(option, folder)}: already exists (a {what}); pass --force to "
                        "replace it, or choose another folder")
        return True
    why = (f"it holds {_names(foreign)}, which msdn-tune did not write" if foreign
           else f"its {key_file} is not one msdn-tune wrote")
    raise error(
        f"{_where(option, folder)}: already exists and is not a {what} ({why}); choose a new or "
        f"empty folder (--force replaces only a {what} and never deletes other files)"
    )
