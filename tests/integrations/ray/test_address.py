"""A Ray address is probed before `ray.init` gets it: nothing listening, something that is not a
GCS, or no answer at all is one line (exit 2 from the CLI) in seconds instead of Ray's minutes of
retries; a real GCS (the session's Ray head) passes."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading

import pytest

from msdn_tune.errors import ClusterError
from msdn_tune.integrations.ray.address import host_port, probe_ray_address
from tests.helpers.raynodes import free_port
from tests.helpers.study import CLI, _space


def test_address_forms():
    assert host_port("head:6379") == ("head", 6379)
    assert host_port("ray://10.0.0.1:10001") == ("10.0.0.1", 10001)
    assert host_port("[::1]:6379") == ("::1", 6379)
    for resolved_by_ray in ("auto", "local", ""):
        assert host_port(resolved_by_ray) is None
    for bad in ("head", "head:port", "head:99999", "head:6379/x", ":6379"):
        with pytest.raises(ClusterError, match="expected HOST:PORT"):
            host_port(bad)


@pytest.mark.slow  # a real server or Ray head: the fast tier starts none
def test_the_sessions_ray_head_passes(ray_address):
    probe_ray_address(ray_address)
    probe_ray_address(None)  # the local Ray a study starts itself: nothing to probe


def test_nothing_listening_is_refused_naming_the_address():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError, match=rf"--address '{address}': cannot connect \("):
        probe_ray_address(address)


def test_a_listener_that_never_answers_is_refused_after_the_stated_timeout():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepts the connection in the kernel, never reads or writes
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(ClusterError, match="no answer within 0.5 s"):
            probe_ray_address(address, timeout_s=0.5)


def test_an_http_server_such_as_the_dashboard_is_not_a_gcs():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ClusterError, match="not a Ray cluster's GCS.*not the dashboard's"):
            probe_ray_address(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_with_ray_tls_on_only_the_connection_is_checked(monkeypatch):
    """A TLS GCS expects a handshake, not HTTP/2 in the clear: a listener is enough there, and
    nothing listening is still refused."""
    monkeypatch.setenv("RAY_USE_TLS", "1")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        probe_ray_address(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=0.5)
    with pytest.raises(ClusterError, match="cannot connect"):
        probe_ray_address(f"127.0.0.1:{free_port()}")


def test_run_with_an_address_where_nothing_listens_is_one_line_and_exit_2(tmp_path):
    space = _space(tmp_path, "unreached", num_samples=1)
    address = f"127.0.0.1:{free_port()}"
    res = subprocess.run(CLI + ["run", "--space", str(space), "--address", address,
                                "--no-tracking"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"--address '{address}': cannot connect" in res.stderr
    assert "Traceback" not in res.stderr and "GCS" not in res.stdout
    assert not (tmp_path / "results").exists()  # nothing started, nothing written
