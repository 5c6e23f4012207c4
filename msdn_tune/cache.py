"""msdn-tune's cache folder: things that are slow to make and the same every time.

``$MSDN_TUNE_CACHE``, default ``$XDG_CACHE_HOME/msdn-tune`` (i.e. ``~/.cache/msdn-tune``). Holds
generated benchmark presets (``benchmarks/``), the empty MLflow schema that new SQLite
tracking stores start from (``mlflow/``) and the per-machine bf16/fp32 measurements of
``precision: auto`` (``precision/``). Anything in it can be deleted: it is made again.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here)."""
    root = os.environ.get("MSDN_TUNE_CACHE")
    if root:
        return Path(os.path.expanduser(root))
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.path.expanduser(xdg)) / "msdn-tune"
