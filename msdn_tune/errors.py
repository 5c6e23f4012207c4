"""User-facing errors.

Anything a user can cause by what they type or by the files they give us raises a subclass of
:class:`MsdnTuneError`. The CLI turns these into one clear message and exit code 2, with no
traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MsdnTuneError(Exception):
    """A problem with the user's input (file, key, value) that they can fix."""


class DataError(MsdnTuneError):
    """A benchmark store or source file is missing, corrupt or inconsistent."""


class ConfigError(MsdnTuneError):
    """A configuration key or value is unknown, of the wrong type, or out of range."""


class SpaceError(ConfigError):
    """A search-space file is invalid; the message starts with the key path."""


class TrackingError(MsdnTuneError):
    """The MLflow tracking store cannot be reached or used."""


class ClusterError(MsdnTuneError):
    """A Ray cluster or job submission problem the user can fix."""


class DivergenceError(RuntimeError):
    """Training produced NaN/inf loss or logits.

    Not a user error: callers (the CLI, the Tune trainable) catch it and report the run as
    diverged instead of crashing the surrounding study.
    """

    def __init__(self, epoch: int, step: int, what: str) -> None:
        super().__init__(f"training diverged at epoch {epoch}, step {step}: {what} is not finite")
        self.epoch = epoch
        self.step = step
        self.what = what
