"""Interrupt a subprocess at a known point, from the test side (no hook in production code).

A driver script run with ``python -c`` (cwd: the repository root) calls :func:`interrupt_after`
before it starts an import or an extraction; the process then sends itself a real signal right
after the n-th call of a step function returns, e.g. after the 3rd chunk written to the store.
No timing is involved: the point is counted in calls.
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Any


def interrupt_after(owner: Any, name: str, calls: int, sig: int = signal.SIGKILL) -> None:
    """Wrap ``owner.name`` so that the process gets ``sig`` right after call number ``calls``."""
    original = getattr(owner, name)
    done = 0

    @functools.wraps(original)
    def step(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        result = original(*args, **kwargs)
        done += 1
        if done == calls:
            os.kill(os.getpid(), sig)
        return result

    setattr(owner, name, step)
