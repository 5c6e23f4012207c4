"""What MLflow accepts: configs flattened into params, finite metrics, values cut to its limits.

A study's config is nested and holds Paths, tuples and numpy scalars; MLflow takes flat string
params of bounded length, keys of a restricted alphabet, and batches of bounded size, and rejects
a whole batch for one bad entry. The run modules send only what passed through here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Param

from msdn_tune.integrations.mlflow.guard import Guard

logger = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's own limits (mlflow/utils/validation.py in 3.17): longer values are rejected or cut.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_TAG_VALUE = 8000
MAX_ERROR_TAG = 5000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def clean_key(key: str) -> str:
    """``key`` with characters MLflow refuses in a key replaced, and no empty path parts."""
    key = re.sub(r"[^\w.\- :/]", "_", key)
    key = re.sub(r"/+", "/", key).strip("/")
    return key


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with '...' when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain(value: Any) -> Any:
    """Turn config values (Paths, numpy scalars, tuples...) into YAML/JSON-safe plain types."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and callable(value.item):
        try:
            return plain(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts flattened with '.', values as strings cut to MLflow's 6000 characters.

    Keys are cleaned to MLflow's allowed characters; keys longer than MLflow's limit are dropped
    with a warning rather than cut, since two cut keys could collide.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, full))
            continue
        flat = plain(value)
        text = flat if isinstance(flat, str) else json.dumps(flat)
        k = clean_key(full)
        if not k or len(k) > MAX_KEY:
            logger.warning(
                "param key %r is empty or longer than %d characters; not logged", full, MAX_KEY
            )
            continue
        out[k] = truncate(text, MAX_PARAM_VALUE)
    return out


def finite_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Numeric, finite metrics only: MLflow stores NaN/inf, but charts and sorting break on them."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[clean_key(str(key))] = v
    return out


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``size``: MLflow's batch limits."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def now_ms() -> int:
    """The current time as MLflow timestamps it: milliseconds since the epoch."""
    return int(time.time() * 1000)


def log_params(guard: Guard, client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log ``params`` in batches MLflow accepts, through a trial's guard."""
    items = [Param(k, v) for k, v in params.items()]
    for chunk in chunks(items, PARAMS_PER_BATCH):
        guard(client.log_batch, run_id, params=chunk)


def new_params(
    existing: Mapping[str, str], wanted: Mapping[str, str], what: str
) -> dict[str, str]:
    """Params not logged yet. MLflow params are immutable: a changed value cannot be re-logged."""
    changed = [k for k, v in wanted.items() if k in existing and existing[k] != v]
    if changed:
        logger.warning(
            "%s: params %s already logged with other values; MLflow keeps the first values",
            what,
            changed[:10],
        )
    return {k: v for k, v in wanted.items() if k not in existing}
