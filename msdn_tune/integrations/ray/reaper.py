"""The local Ray a study starts is gone when the study's driver is, whatever killed it.

`msdn-tune run` without `--address` starts a Ray of its own (`ray.init`). A normal exit, an
error and Ctrl-C stop it (`ray.shutdown`); a driver killed with SIGKILL (the OOM killer, a
scheduler's hard stop, `kill -9`) cannot. Its GCS and raylet notice and exit, but with ray
2.60.0 the node's `ray::DashboardAgent` and `ray::RuntimeEnvAgent` stay running for good
(measured: still alive 60 s after the driver's SIGKILL), holding ports and memory.

So the driver starts a watcher beside its local Ray: a small separate Python process (the
standard library only, in a session of its own so that the terminal's Ctrl-C and a kill of the
driver's process group do not reach it) that records the driver's Ray descendants while the
driver lives (their parent is the driver or its Ray; once the driver is gone they are
re-parented and could no longer be told apart) and, when the driver dies, gives Ray's own
processes a few seconds to exit, then kills what is left of them. A process is identified by
PID and start time, so a PID the system reused is never touched. `shutdown_ray` stops the watcher
after a normal shutdown.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: Seconds Ray's processes get to exit by themselves after the driver died.
GRACE_S = 5.0

_WATCHER = r"""
import os, signal, sys, time

driver, grace = int(sys.argv[1]), float(sys.argv[2])
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
    signal.signal(sig, signal.SIG_IGN)


def started(pid):
    # start time (with the PID, the identity), None once exited: a zombie has exited, unreaped
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def descendants():
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [driver]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    found.discard(os.getpid())  # this watcher is the driver's child too: never its own target
    return found


born, seen, t0 = started(driver), {}, time.monotonic()
while born is not None and started(driver) == born:
    for pid in descendants() - set(seen):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"ray" in cmd:
            seen[pid] = started(pid)
    time.sleep(1.0 if time.monotonic() - t0 < 60 else 3.0)
deadline = time.monotonic() + grace
while time.monotonic() < deadline:
    if not any(t is not None and started(p) == t for p, t in seen.items()):
        sys.exit(0)
    time.sleep(0.5)
for pid, t in seen.items():
    if t is not None and started(pid) == t:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""

_watcher: subprocess.Popen[bytes] | None = None


def watch_local_ray(grace_s: float = GRACE_S) -> None:
    """Start the watcher for the local Ray this process has just started (Linux only: it reads
    /proc; elsewhere nothing is started)."""
    global _watcher
    if not os.path.isdir("/proc/self") or _watcher is not None:
        return
    _watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(os.getpid()), str(grace_s)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


def stop_watching() -> None:
    """Stop the watcher: the local Ray was shut down normally."""
    global _watcher
    if _watcher is None:
        return
    _watcher.kill()
    _watcher.wait()
    _watcher = None


def watcher_pid() -> int | None:
    """The watcher's PID while one runs (for tests and diagnostics)."""
    return _watcher.pid if _watcher is not None else None
