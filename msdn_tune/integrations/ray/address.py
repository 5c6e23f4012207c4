"""Probing a Ray cluster address before `ray.init` is given it.

`ray.init(address=...)` with nothing listening retries its connection to the cluster's GCS for
minutes (822 s measured with ray 2.60.0 on `127.0.0.1:1`), printing a warning line per retry, and
with something listening that is not a GCS (the dashboard's port given instead of the GCS's, a
common slip) it can wait as long. A study must instead refuse a wrong address in seconds, in one
line. So the address is probed first, with plain sockets: a TCP connection within a stated
timeout, then the first bytes of HTTP/2, which a GCS (a gRPC server, as is Ray Client's
`ray://` server) answers with a SETTINGS frame and an HTTP/1 server such as the dashboard does
not. A cluster with TLS on (`RAY_USE_TLS=1`) expects a TLS handshake first: there only the TCP
connection is checked.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from msdn_tune.errors import ClusterError
from msdn_tune.safeload import shorten

#: How long the address gets to accept a connection and answer, each.
PROBE_TIMEOUT_S = 5.0

# The client connection preface of HTTP/2 (RFC 9113, section 3.4), then an empty SETTINGS frame.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 0x04  # frame type of the server's first frame


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `HOST:PORT`, `[IPV6]:PORT` or `ray://HOST:PORT` address; None for the
    forms Ray resolves itself (`auto`, `local`, empty). Raises ClusterError for any other text."""
    if address in ("", "auto", "local"):
        return None
    text = address if "://" in address else f"gcs://{address}"
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number or out of range, bad IPv6 brackets
        host = port = None
    if not host or port is None or parts.path not in ("", "/"):
        raise ClusterError(f"--address {shorten(address)}: expected HOST:PORT (the head node's "
                           "GCS port, 6379 unless `ray start --head --port` chose another), "
                           "ray://HOST:PORT or auto")
    return host, port


def probe_ray_address(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, in one line within about `timeout_s` seconds, an address where no Ray cluster
    answers. `auto`, `local` and no address are left to Ray (`auto` reads RAY_ADDRESS or the
    address file of a Ray started on this machine, and fails fast without one)."""
    where = host_port(address or "")
    if where is None:
        return
    host, port = where
    what = f"--address {shorten(address)}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if _ray_tls():
                return
            sock.settimeout(timeout_s)
            sock.sendall(_PREFACE)
            head = _read(sock, 9)
    except TimeoutError:
        raise ClusterError(f"{what}: no answer within {timeout_s:g} s; is a Ray head node "
                           f"running there (`ray start --head`) and reachable from here?"
                           ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"{what}: cannot connect ({reason}); start a head node with "
                           "`ray start --head`, or give the address it printed") from None
    if len(head) < 9 or head[3] != _SETTINGS:
        raise ClusterError(
            f"{what}: something answers there but it is not a Ray cluster's GCS (no gRPC); "
            "give the GCS address `ray start --head` printed (port 6379 by default), not the "
            "dashboard's (8265)")


def _ray_tls() -> bool:
    """Whether Ray's gRPC connections use TLS here (Ray reads RAY_USE_TLS as 0 or 1)."""
    return os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")


def _read(sock: socket.socket, n: int) -> bytes:
    """Up to `n` bytes, fewer if the peer closes first."""
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got
