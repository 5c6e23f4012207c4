"""The `msdn-tune data` use cases that make or inspect a benchmark store: synth, info, summaries.

Each returns the store's summary (`BenchmarkStore.summary()`, a plain dict) for the command line
to print, so opening and reading a store happens here and not in cli/. Importing a real benchmark
and extracting features are the data layer's own functions (`msdn_tune.data.ingest`,
`msdn_tune.data.extract`), which the command line calls directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.data.store import BenchmarkStore
from msdn_tune.data.synth import generate


def store_summary(path: str | Path) -> dict[str, Any]:
    """The summary of the store at `path` (opened and closed again; no feature data read)."""
    with BenchmarkStore.open(path) as store:
        return store.summary()


def synthesize(preset: str, out: str, *, seed: int | None, dtype: str,
               force: bool) -> tuple[Path, dict[str, Any]]:
    """Generate synthetic preset `preset` into a new store at `out` (with a progress bar).

    Returns the store's path and summary. `seed` None means the preset's; `force` replaces a
    store already at `out`.
    """
    path = generate(preset, out, seed=seed, dtype=dtype, force=force, progress=True)
    return path, store_summary(path)


def describe(benchmark: str, *, verify: bool = False) -> dict[str, Any]:
    """The summary of `benchmark` (a store folder or a preset name, generated if need be).

    With `verify`, all features are read first and their CRC-32 checked against meta.json
    (raises :class:`msdn_tune.errors.DataError` when they differ).
    """
    with open_benchmark(benchmark) as store:
        if verify:
            store.verify()
        return store.summary()
