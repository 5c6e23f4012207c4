"""Turn what a user typed (a store directory or a preset name) into an opened benchmark.

Why a cache: a preset such as ``demo`` is generated once per seed and format version into
``<cache>/<preset>-seed<seed>-v<FORMAT_VERSION>`` and then opened like any other store, so every
Ray trial and every later run reuses the same bytes. Several processes may resolve the same preset
at once: they serialise on a lock file, the store is written to a temporary directory and renamed
into place, and whoever loses a race simply uses the winner's store.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from msdn_tune.cache import cache_root
from msdn_tune.data.store import FORMAT_VERSION, BenchmarkStore, StoreExistsError
from msdn_tune.data.synth import PRESETS, generate, get_spec
from msdn_tune.errors import DataError
from msdn_tune.safeload import shorten

try:  # POSIX only; elsewhere the atomic rename alone keeps concurrent resolution safe
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_PRESET_RE = re.compile(r"^(?:synth:)?(?P<name>[A-Za-z0-9_-]+)(?:@seed=(?P<seed>\d+))?$")
MAX_SEED = 2**32 - 1
"""Largest preset seed: the one range every seeded library (numpy, torch, Optuna) accepts."""
MAX_PATH = 4096
"""Longest store path accepted (Linux's PATH_MAX); each part is checked against NAME_MAX too."""
NAME_MAX = 255


def default_cache_dir() -> Path:
    """Where generated presets live: ``$MSDN_TUNE_CACHE/benchmarks``.

    ``MSDN_TUNE_CACHE`` is msdn-tune's cache root (default ``$XDG_CACHE_HOME/msdn-tune``, i.e.
    ``~/.cache/msdn-tune``).
    """
    return cache_root() / "benchmarks"


def parse_preset(spec: str) -> tuple[str, int] | None:
    """``"tiny"``, ``"synth:tiny"``, ``"tiny@seed=3"`` -> ``(name, seed)``; None if not a preset."""
    m = _PRESET_RE.match(spec.strip()) if len(spec) <= NAME_MAX else None
    if not m or m["name"] not in PRESETS:
        return None
    if m["seed"] is None:
        return m["name"], PRESETS[m["name"]].seed
    if len(m["seed"]) > 10 or int(m["seed"]) > MAX_SEED:
        raise DataError(f"benchmark {shorten(spec)}: the seed must be from 0 to {MAX_SEED}")
    return m["name"], int(m["seed"])


def check_spec(spec: str | Path) -> Path:
    """``spec`` as a path, or DataError when it cannot name a store or a preset at all.

    What a user types for ``--data`` reaches the file system here; a name longer than the file
    system allows, or one with a NUL byte, would otherwise raise OSError or ValueError from the
    first ``stat``.
    """
    text = str(spec)
    if not text.strip():
        raise DataError("benchmark: empty; expected a store directory or a preset name")
    if "\0" in text:
        raise DataError(f"benchmark {shorten(text)}: contains a NUL character")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise DataError(f"benchmark {shorten(text)}: {len(text):,} characters, longer than any "
                        f"path ({MAX_PATH})")
    long = [part for part in Path(text).parts
            if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX]
    if long:
        raise DataError(f"benchmark {shorten(text)}: the name {shorten(long[0], 40)} is "
                        f"longer than the {NAME_MAX} bytes a file name may have")
    return Path(os.path.expanduser(text))


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, with an unreadable path (permissions, a loop) as a DataError."""
    return _stat(path, Path.is_dir)


def _exists(path: Path) -> bool:
    """``path.exists()``, with an unreadable path as a DataError."""
    return _stat(path, Path.exists)


def _stat(path: Path, test: Callable[[Path], bool]) -> bool:
    try:
        return test(path)
    except OSError as exc:
        raise DataError(f"benchmark {shorten(str(path))}: cannot be read "
                        f"({exc.strerror or exc})") from None


def _unknown(spec: str | Path) -> DataError:
    return DataError(
        f"benchmark {shorten(str(spec))} is neither an existing store directory nor a "
        "synthetic preset; "
        f"presets: {', '.join(sorted(PRESETS))} (also 'synth:NAME' and 'NAME@seed=N')"
    )


def resolve_benchmark(
    spec: str | Path, *, cache_dir: str | Path | None = None, progress: bool | None = None
) -> Path:
    """The absolute path of the store that ``spec`` names, generating a preset if needed.

    An existing directory is validated by opening it. A preset is generated once into
    ``cache_dir`` (default :func:`default_cache_dir`); ``progress`` (default: when stderr is a
    terminal) shows a progress bar for presets large enough to take a while. Anything else
    raises DataError naming the spec and listing the presets.
    """
    text = str(spec)
    path = check_spec(spec)
    if _is_dir(path):
        BenchmarkStore.open(path).close()
        return path.absolute()
    preset = None if isinstance(spec, Path) else parse_preset(text)
    if preset is None:
        if _exists(path):
            raise DataError(f"benchmark {shorten(text)} is a file; expected a store directory "
                            "or preset")
        raise _unknown(spec)
    name, seed = preset
    get_spec(name)  # validates the preset
    cache = Path(os.path.expanduser(cache_dir)) if cache_dir is not None else default_cache_dir()
    target = (cache / f"{name}-seed{seed}-v{FORMAT_VERSION}").absolute()
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the benchmark cache {cache}: {exc}") from exc
        lock_path = cache / f".{target.name}.lock"
        with open(lock_path, "a+") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if not target.exists():
                    show = sys.stderr.isatty() if progress is None else progress
                    generate(name, target, seed=seed, progress=show)
            except StoreExistsError:
                pass  # another process finished first: use its store
            finally:
                if fcntl is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    try:
        BenchmarkStore.open(target).close()
    except DataError as exc:
        raise DataError(
            f"cached benchmark {target} for {shorten(text)} is unusable ({exc}); delete the "
            "directory and it will be generated again"
        ) from exc
    return target


def open_benchmark(spec: str | Path, *, cache_dir: str | Path | None = None) -> BenchmarkStore:
    """Open the store that ``spec`` names (see :func:`resolve_benchmark`).

    With an absolute store path (what Ray trials get) this is one cheap open.
    """
    path = check_spec(spec)
    if _is_dir(path):
        return BenchmarkStore.open(path)
    return BenchmarkStore.open(resolve_benchmark(spec, cache_dir=cache_dir))
