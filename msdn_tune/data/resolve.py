"""Turn what a user typed (a store directory or a preset name) into an opened benchmark.

Why a cache: a preset such as ``demo`` is generated once per seed and format version into
``<cache>/<preset>-seed<seed>-v<FORMAT_VERSION>`` and then opened like any other store, so every
Ray trial and every later run reuses the same bytes. Several processes may resolve the same preset
at once: they serialise on a lock file, the store is written to a temporary directory and renamed
into place, and whoever loses a race simply uses the winner's store.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from msdn_tune.cache import cache_root
from msdn_tune.data.store import FORMAT_VERSION, BenchmarkStore, StoreExistsError
from msdn_tune.data.synth import PRESETS, generate, get_spec
from msdn_tune.errors import DataError

try:  # POSIX only; elsewhere the atomic rename alone keeps concurrent resolution safe
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_PRESET_RE = re.compile(r"^(?:synth:)?(?P<name>[A-Za-z0-9_-]+)(?:@seed=(?P<seed>\d+))?$")


def default_cache_dir() -> Path:
    """Where generated presets live: ``$MSDN_TUNE_CACHE/benchmarks``.

    ``MSDN_TUNE_CACHE`` is msdn-tune's cache root (default ``$XDG_CACHE_HOME/msdn-tune``, i.e.
    ``~/.cache/msdn-tune``).
    """
    return cache_root() / "benchmarks"


def parse_preset(spec: str) -> tuple[str, int] | None:
    """``"tiny"``, ``"synth:tiny"``, ``"tiny@seed=3"`` -> ``(name, seed)``; None if not a preset."""
    m = _PRESET_RE.match(spec.strip())
    if not m or m["name"] not in PRESETS:
        return None
    seed = int(m["seed"]) if m["seed"] is not None else PRESETS[m["name"]].seed
    return m["name"], seed


def _unknown(spec: str | Path) -> DataError:
    return DataError(
        f"benchmark {str(spec)!r} is neither an existing store directory nor a synthetic preset; "
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
    path = Path(text).expanduser()
    if path.is_dir():
        BenchmarkStore.open(path).close()
        return path.absolute()
    preset = None if isinstance(spec, Path) else parse_preset(text)
    if preset is None:
        if path.exists():
            raise DataError(f"benchmark {text!r} is a file; expected a store directory or preset")
        raise _unknown(spec)
    name, seed = preset
    get_spec(name)  # validates the preset
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
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
            f"cached benchmark {target} for {text!r} is unusable ({exc}); delete the directory "
            "and it will be generated again"
        ) from exc
    return target


def open_benchmark(spec: str | Path, *, cache_dir: str | Path | None = None) -> BenchmarkStore:
    """Open the store that ``spec`` names (see :func:`resolve_benchmark`).

    With an absolute store path (what Ray trials get) this is one cheap open.
    """
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return BenchmarkStore.open(path)
    return BenchmarkStore.open(resolve_benchmark(spec, cache_dir=cache_dir))
