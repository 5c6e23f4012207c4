"""Property-based fuzzing of hostile input (issue 14): `--set` values, meta.json, checkpoints.

Each property feeds random input to the real code and asserts what a user must see: the CLI
exits 0 or 2, never with a traceback, prints exactly one `error:` line when it refuses, and
leaves every file that existed before byte for byte as it was. In-process calls may only raise
our own ConfigError.

- `--set` values: names from TrainConfig's fields (and some others), values drawn as text from
  huge and negative integers, NaN/inf/tiny floats, dates, lists, mappings and free strings,
  through `parse_set_options` + `TrainConfig` (what `train`, `evaluate` and `reproduce` do).
- meta.json: mutations of a real tiny store's meta.json (keys dropped, values replaced by other
  types, nested, huge or negative numbers) written into a copy of the store, through
  `msdn-tune data info`.
- checkpoints: mutations of a real one-epoch checkpoint (keys dropped, types swapped, tensors
  reshaped or retyped) saved with torch.save, through `msdn-tune evaluate`.

The default budget keeps the module under about 60 s on 2 cores. Set MSDN_TUNE_FUZZ_SCALE to
multiply the number of examples, e.g. ``MSDN_TUNE_FUZZ_SCALE=20 pytest
tests/train/test_fuzz_inputs.py`` for a long run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msdn_tune.cli import main
from msdn_tune.data.resolve import resolve_benchmark
from msdn_tune.data.store import BenchmarkStore
from msdn_tune.errors import ConfigError
from msdn_tune.train.config import BOUNDS, TrainConfig, parse_set_options
from msdn_tune.train.trainer import Trainer
from tests.train.usererror import assert_ok_or_user_error, checksums

# Property-based fuzzing: part of the full suite (.ci/run), not of the fast tier.
pytestmark = pytest.mark.slow

SCALE = float(os.environ.get("MSDN_TUNE_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """Hypothesis settings: `examples` times MSDN_TUNE_FUZZ_SCALE, no deadline (the machine is
    shared), no example database written into the repository."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------ values

HUGE_INTS = st.sampled_from([2**31, 2**32, 2**63, 2**64, 2**70, -(2**63) - 1, 10**400, -1, 0])
INTS = st.integers(min_value=-(2**80), max_value=2**80) | HUGE_INTS
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [5e-324, 1e-310, 1e308, -0.0, 1e-6, 1e6])
TEXT = st.text(max_size=40)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT


def plain_values() -> st.SearchStrategy[Any]:
    """JSON-like values, nested a little."""
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(TEXT, inner, max_size=4), max_leaves=8)


def _yaml_float(x: float) -> str:
    if math.isnan(x):
        return ".nan"
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    return repr(x)


SET_TEXT = st.one_of(
    INTS.map(str),
    FLOATS.map(_yaml_float),
    FLOATS.map(repr),
    st.sampled_from(["2024-13-01", "2024-02-30", "2024-01-01", "2024-01-01 10:00:00",
                     "1" + "0" * 400, "9" * 5000, "0x_", "!!bool maybe", "!!float 1e",
                     "&a [*a, *a]", "[1, 2]", "{a: 1}", "~", "yes", "cuda:0", "cuda:99999",
                     "rmsprop", "random", "clean", "bf16"]),
    TEXT,
    plain_values().map(lambda v: json.dumps(v) if _dumpable(v) else "x"),
)


def _dumpable(v: Any) -> bool:
    try:
        json.dumps(v)
    except ValueError:  # an integer past Python's 4,300-digit str limit
        return False
    return True


@fuzz(300)
@given(st.lists(st.tuples(st.sampled_from(TrainConfig.field_names()) | TEXT, SET_TEXT),
                min_size=1, max_size=4))
def test_set_values_give_a_valid_config_or_a_config_error(pairs):
    try:
        cfg = TrainConfig.from_dict(parse_set_options([f"{k}={v}" for k, v in pairs]),
                                    dataset="synthetic")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
        return
    for name, (low, high, low_open, high_open) in BOUNDS.items():
        value = getattr(cfg, name)
        assert math.isfinite(value)
        assert (low < value if low_open else low <= value), name
        assert (value < high if high_open else value <= high), name
    # what the trainer does with the numbers that have a bound downstream
    torch.Generator().manual_seed(cfg.seed * 100003 + cfg.epochs)
    np.random.default_rng([cfg.seed, cfg.epochs])


# ------------------------------------------------------------------------------ stores

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return resolve_benchmark("tiny", cache_dir=tmp_path_factory.mktemp("fuzz-cache"))


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON document (lists by index), the root excluded."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) \
        else []
    for key, value in items:
        out.append((*prefix, key))
        if len(out) < 400:
            out.extend(_paths(value, (*prefix, key))[:50])
    return out


MUTATION = st.tuples(st.integers(min_value=0), st.sampled_from(["drop", "set", "nest"]),
                     plain_values())


def _mutate(doc: Any, mutations: list) -> Any:
    doc = copy.deepcopy(doc)
    for pick, action, value in mutations:
        paths = _paths(doc)
        if not paths:
            break
        *parents, last = paths[pick % len(paths)]
        parent = doc
        for key in parents:
            parent = parent[key]
        if action == "drop":
            del parent[last]
        elif action == "set":
            parent[last] = value
        else:
            parent[last] = [[[{"x": parent[last]}]]] * 3
    return doc


@fuzz(150)
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_meta_json_is_ok_or_one_error_line(tiny, mutations):
    meta = json.loads((tiny / "meta.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(tiny, store)
        doc = _mutate(meta, mutations)
        text = json.dumps(doc) if _dumpable(doc) else '{"n_images": ' + "9" * 5000 + "}"
        (store / "meta.json").write_text(text)
        before = checksums(store)
        res = CliRunner().invoke(main, ["data", "info", str(store)])
        assert_ok_or_user_error(res)
        assert checksums(store) == before


# ------------------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def checkpoint(tiny) -> dict[str, Any]:
    cfg = TrainConfig.from_dict(dict(dataset="synthetic", epochs=1, lr=1e-3, device="cpu",
                                     threads=1, seed=5))
    trainer = Trainer(cfg, BenchmarkStore.open(tiny))
    trainer.run_epoch()
    return trainer.state_dict()


def _tensor_paths(state: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    items = state.items() if isinstance(state, dict) else enumerate(state) \
        if isinstance(state, list | tuple) else []
    for key, value in items:
        if isinstance(value, torch.Tensor):
            out.append((*prefix, key))
        else:
            out.extend(_tensor_paths(value, (*prefix, key)))
    return out


def _copy_tree(x: Any) -> Any:
    """Containers copied, tensors shared (mutations replace tensors, never change them)."""
    if isinstance(x, dict):
        return {k: _copy_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy_tree(v) for v in x]
    return x


TENSORS = st.one_of(
    st.lists(st.integers(0, 5), max_size=3).map(lambda s: torch.zeros(tuple(s))),
    st.sampled_from([torch.tensor(float("nan")), torch.zeros(2, dtype=torch.int64),
                     torch.zeros(3, 3, dtype=torch.float64), torch.ones(0)]),
)
CKPT_MUTATION = st.tuples(
    st.sampled_from(["drop", "swap", "reshape", "retype", "config", "drop-nested"]),
    st.integers(min_value=0), plain_values() | TENSORS)


def _mutate_checkpoint(state: dict[str, Any], mutations: list) -> dict[str, Any]:
    state = _copy_tree(state)
    for action, pick, value in mutations:
        keys = sorted(state)
        if not keys:
            break
        key = keys[pick % len(keys)]
        if action == "drop":
            del state[key]
        elif action == "swap":
            state[key] = value
        elif action in ("reshape", "retype"):
            paths = _tensor_paths(state)
            if not paths:
                continue
            *parents, last = paths[pick % len(paths)]
            parent = state
            for k in parents:
                parent = parent[k]
            old = parent[last]
            if action == "reshape":
                parent[last] = (old.reshape(-1) if old.ndim != 1 else torch.zeros(old.numel() + 1))
            else:
                parent[last] = old.to(torch.float64 if old.is_floating_point() else torch.float32)
        elif action == "config" and isinstance(state.get("config"), dict):
            names = TrainConfig.field_names()
            state["config"][names[pick % len(names)]] = value
        elif isinstance(state[key], dict) and state[key]:
            inner = sorted(state[key], key=str)
            del state[key][inner[pick % len(inner)]]
    return state


@fuzz(60)
@given(st.lists(CKPT_MUTATION, min_size=1, max_size=3))
def test_mutated_checkpoint_is_ok_or_one_error_line(tiny, checkpoint, mutations):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(_mutate_checkpoint(checkpoint, mutations), path)
        before = checksums(path, tiny)
        res = CliRunner().invoke(main, ["evaluate", str(path), "--data", str(tiny),
                                        "--set", "threads=1", "--set", "device=cpu"])
        assert_ok_or_user_error(res)
        assert checksums(path, tiny) == before
