"""Interrupt a subprocess at a known point, from the test side (no hook in production code).

A driver script run with ``python -c`` (cwd: the repository root) calls :func:`interrupt_after`
before it starts an import or an extraction; the process then sends itself a real signal right
after the n-th call of a step function returns, e.g. after the 3rd chunk written to the store.
No timing is involved: the point is counted in calls, and the signal goes to the main thread
itself (``pthread_kill``), which is where Python raises KeyboardInterrupt. A signal sent to the
process could be taken by any of its threads (a reader thread, torch's pool), and on a loaded
machine that thread may not run before the main thread has finished the whole job.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any


def interrupt_after(owner: Any, name: str, calls: int, sig: int = signal.SIGKILL) -> None:
    """Wrap ``owner.name`` so that the process gets ``sig`` right after call number ``calls``.

    For SIGINT, Python's own Ctrl-C handler is put back first: a process started in the
    background (``cmd &``, as a CI runner may start the suite) inherits SIGINT *ignored*, and
    then the signal would do nothing, whereas a real Ctrl-C only ever reaches a foreground
    process, which has the handler.
    """
    if sig == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    original = getattr(owner, name)
    done = 0

    @functools.wraps(original)
    def step(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        result = original(*args, **kwargs)
        done += 1
        if done == calls:
            if sig == signal.SIGKILL:
                os.kill(os.getpid(), sig)
            else:
                signal.pthread_kill(threading.main_thread().ident or 0, sig)
        return result

    setattr(owner, name, step)
