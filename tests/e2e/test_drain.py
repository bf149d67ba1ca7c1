"""Stop, reload and drain through the real daemon: a stopping process stops being a destination at once,
established connections are kept (or cut with a reset, per route), a second SIGTERM stops at once, and
workers orphaned by a killed supervisor release the port."""

from __future__ import annotations

import signal
import socket

import pytest

from support.daemon import make_config
from support.net import assert_echoes, free_port, listening, wait_until

pytestmark = pytest.mark.timeout(60)


def held(port: int) -> socket.socket:
    """A client relayed to the echo backend, proven by one round trip; the test keeps it open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert_echoes(s, b"hello")
    return s


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def reset_seen(s: socket.socket) -> bool:
    """True once the connection ended with RST; fails on a clean EOF."""
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    assert data, "the connection ended with a clean FIN, not a reset"
    return False


def start(daemon, port: int, backend: int, workers: int = 1, routes=None, **global_):
    text = make_config(port, routes or f"127.0.0.1:{backend}", workers=workers, **global_)
    return daemon().start(text, ready=True)


def test_after_sigterm_new_clients_are_refused_at_once_while_old_ones_go_on(daemon, server):
    backend = server()
    port = free_port()
    d = start(daemon, port, backend.port, workers=2)
    client = held(port)
    d.signal(signal.SIGTERM)
    d.wait_log("draining 1 connection")
    wait_until(lambda: not listening(port), what="the listening socket closed")
    assert refused(port)                 # not a handshake that then waits for the daemon to exit
    assert_echoes(client, b"still here")  # the established one is relayed on
    client.close()
    assert d.wait(20) == 0


def test_killed_supervisor_orphans_release_the_port_and_a_new_daemon_binds_it(daemon, server):
    backend = server()
    port = free_port()
    d = start(daemon, port, backend.port, workers=2)
    client = held(port)
    d.wait_workers(2)
    d.proc.kill()                        # SIGKILL, as the OOM killer does
    d.proc.wait(5)
    wait_until(lambda: not listening(port), what="the orphaned workers releasing the port")
    assert refused(port)
    again = start(daemon, port, backend.port)      # binds at once: no "Address already in use"
    assert_echoes(held(port), b"new daemon")
    assert_echoes(client, b"old one lives on")     # the orphan drains its connection
    client.close()
    again.stop()


def test_second_sigterm_stops_at_once_and_resets_the_connections(daemon, server):
    backend = server()
    port = free_port()
    d = start(daemon, port, backend.port, drain_timeout=0)     # 0: a stop never cuts a connection
    client = held(port)
    d.signal(signal.SIGTERM)
    d.wait_log("draining 1 connection")
    assert_echoes(client, b"kept")
    assert "draining 1 connection, stopping (none cut)" in d.log_text()
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0
    client.settimeout(10)
    assert reset_seen(client)
    d.wait_log("hard stop: 1 worker reset their connections")
    assert "hard stop: 1 connection reset" in d.log_text()      # the worker's count
    assert "reason=hard-stop" in d.log_text()


def test_reload_keeps_established_connections_and_counts_them_in_status(daemon, server, notify):
    backend = server()
    port = free_port()
    text = make_config(port, f"127.0.0.1:{backend.port}", workers=1)
    d = daemon().start(text, ready=True, notify=notify)
    client = held(port)
    old = d.wait_workers(1)
    mark = len(notify.messages)
    d.signal(signal.SIGHUP)
    d.wait_log("draining 1 connection")
    wait_until(lambda: any("1 draining (1 connection)" in m.get("STATUS", "")
                           for m in notify.messages[mark:]) or notify.collect(0.2),
               timeout=15, what="STATUS with the draining connection")
    assert not refused(port)                       # the new generation accepts on the same socket
    assert_echoes(client, b"after the reload")    # the old worker keeps it (reload_drain_timeout = 0)
    assert set(old) <= set(d.workers())
    assert "draining 1 connection, retired by a reload (none cut)" in d.log_text()
    client.close()
    d.wait_log("generation 1 finished", timeout=15)
    d.stop()


def test_route_drain_timeout_cuts_its_connections_with_a_reset(daemon, server):
    backend = server()
    port = free_port()
    routes = {"all": {"probe": "any", "backend": f"127.0.0.1:{backend.port}", "drain_timeout": 0.5}}
    d = start(daemon, port, backend.port, routes=routes, drain_timeout=0)
    client = held(port)
    d.signal(signal.SIGTERM)
    client.settimeout(10)
    assert reset_seen(client)          # the route's 0.5 s beats the global "never"
    assert d.wait(10) == 0
    assert "reason=drain-cut" in d.log_text()
