"""How msdn-tune makes an MLflow call: fail in seconds, then either raise or degrade.

Tracking is a side channel. In a trial, every MLflow call retries briefly and
then the tracker *degrades* -- one warning, then no-ops -- so a dead tracking server never fails a
trial (:class:`Guard`). On the driver, what must not happen untracked by accident is strict
(:func:`strict`). Both bound MLflow's HTTP client, which otherwise retries for about 4 minutes
(:func:`quick_http`). Every other module of this package calls MLflow through these.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException

from msdn_tune.errors import TrackingError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEGRADED_MESSAGE = "tracking server unreachable, continuing without tracking"

# MlflowException codes that mean "this request is wrong", not "the server is gone": retrying
# cannot help, and they must not switch tracking off for the rest of the trial.
CLIENT_ERRORS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "BAD_REQUEST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)


@contextlib.contextmanager
def quick_http(timeout_s: float = 10.0, max_retries: int = 0) -> Iterator[None]:
    """Make MLflow's HTTP client fail in seconds instead of its default ~4 minutes of retries.

    MLflow reads these variables on every request (mlflow/utils/rest_utils.py), so setting them
    around a call is enough. Values the user set explicitly are respected.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
    }
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class Guard:
    """Runs MLflow calls: a few quick retries, then tracking is switched off with one warning.

    Client errors (a rejected key, a missing run) are logged and skipped without retrying or
    switching off. Anything else -- connection refused, timeouts, "database is locked" after the
    retries -- means the store is unusable for now, and a trial must keep training regardless.
    """

    def __init__(
        self, uri: str, attempts: int = 3, backoff_s: tuple[float, ...] = (0.5, 1.0)
    ) -> None:
        self.uri = uri
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.dead = False

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        if self.dead:
            return None
        last: BaseException | None = None
        for attempt in range(self.attempts):
            try:
                with quick_http():
                    return fn(*args, **kwargs)
            except MlflowException as exc:
                if exc.error_code in CLIENT_ERRORS:
                    logger.warning("MLflow rejected %s: %s", getattr(fn, "__name__", fn), exc)
                    return None
                last = exc
            except Exception as exc:  # noqa: BLE001 - tracking must never fail the trial
                last = exc
            if attempt < self.attempts - 1:
                time.sleep(self.backoff_s[min(attempt, len(self.backoff_s) - 1)])
        self.dead = True
        logger.warning("%s (%s: %s)", DEGRADED_MESSAGE, self.uri, last)
        return None


def strict(uri: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call MLflow; any failure becomes a :class:`TrackingError` naming the store."""
    try:
        with quick_http():
            return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any store failure is a TrackingError
        raise TrackingError(
            f"MLflow call {getattr(fn, '__name__', fn)} at {uri} failed: {exc}"
        ) from exc
