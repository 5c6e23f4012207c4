"""Benchmarks: the on-disk store, the synthetic generator and name resolution.

``open_benchmark("demo")`` or ``open_benchmark("/abs/path/to/store")`` is all a trainer needs.
"""

from msdn_tune.data.resolve import default_cache_dir, open_benchmark, resolve_benchmark
from msdn_tune.data.store import (
    FORMAT_VERSION,
    SPLIT_NAMES,
    BenchmarkStore,
    StoreExistsError,
    StoreWriter,
)
from msdn_tune.data.synth import PRESETS, SynthSpec, generate

__all__ = [
    "FORMAT_VERSION",
    "PRESETS",
    "SPLIT_NAMES",
    "BenchmarkStore",
    "StoreExistsError",
    "StoreWriter",
    "SynthSpec",
    "default_cache_dir",
    "generate",
    "open_benchmark",
    "resolve_benchmark",
]
