"""TCP_DEFER_ACCEPT on listeners whose clients speak first (serve/sniffing.py `defers`).

A client that sends its first bytes is accepted with them and routed in its accept turn (no readable edge
spent sniffing: the `sniff_wakeups` event counter stays at zero), while a client that stays silent (a
server-speaks-first client waiting for a banner, a PROXY sender that never sends) still reaches the
`on_timeout` route, or is closed, after probe_timeout counted from its connect: the kernel holds it back for
a second, and that second is subtracted from its deadline. Counters, not timings, prove the wake-ups; the
deadlines are checked within a bound that tells "counted from the connect" (2 s) from "counted from the
deferred accept" (3 s).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from support.daemon import make_config
from support.net import connect, echo, free_port, read_line, wait_until


def named(name: str):
    """A backend that speaks first (its name and a newline), then echoes."""
    def handle(sock: socket.socket) -> None:
        sock.sendall(name.encode() + b"\n")
        echo(sock)
    return handle


def stats(d) -> str:
    """SIGUSR1, then the stats block the (one) worker logs in answer."""
    before = d.log_text().count("stats:\n")
    os.kill(d.pid, signal.SIGUSR1)
    wait_until(lambda: d.log_text().count("stats:\n") > before, timeout=10)
    return d.log_text().split("stats:\n")[-1]


def sniff_wakeups(text: str) -> int:
    m = re.search(r"^sniff_wakeups route=- (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


@pytest.fixture
def backends(server):
    return {name: server(named(name)) for name in ("ssh", "http")}


def config(port: int, backends, **extra) -> str:
    return make_config({"main": {"address": f"127.0.0.1:{port}", "routes": "ssh, http"}},
                       {name: {"probe": name, "backend": f"127.0.0.1:{s.port}"} for name, s in backends.items()},
                       **{"workers": 1, "probe_timeout": 2.0, **extra})


@pytest.mark.timeout(60)
def test_a_client_that_speaks_first_is_routed_in_its_accept_turn(daemon, backends):
    port = free_port()
    d = daemon().start(config(port, backends), ready=True)
    for _ in range(10):
        sock = connect(port)
        # a pause after the handshake: without deferred accept the worker accepts now and finds nothing to
        # read, so the bytes below cost it a second wake-up (a readable edge while sniffing)
        time.sleep(0.2)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_line(sock) == b"http\n"
        sock.close()
    text = stats(d)
    assert "routed route=http 10" in text, text
    assert sniff_wakeups(text) == 0, text


@pytest.mark.timeout(60)
def test_a_silent_client_reaches_on_timeout_after_probe_timeout_from_its_connect(daemon, backends):
    port = free_port()
    d = daemon().start(config(port, backends, on_timeout="ssh"), ready=True)
    waits = []
    for _ in range(2):
        t0 = time.monotonic()
        sock = connect(port)          # a server-speaks-first client: it waits for the banner
        assert read_line(sock) == b"ssh\n"
        waits.append(time.monotonic() - t0)
        sock.sendall(b"after the timeout")
        got = b""
        while len(got) < 17:
            chunk = sock.recv(64)
            assert chunk
            got += chunk
        assert got == b"after the timeout"
        sock.close()
    print(f"on_timeout after {', '.join(f'{w:.3f}' for w in waits)} s (probe_timeout 2.0 s)")
    # counted from the connect: ~2.0 s; from the deferred accept it would be ~3.0 s
    assert all(1.9 <= w < 2.8 for w in waits), waits
    assert "probe_timeouts route=ssh 2" in stats(d)


@pytest.mark.timeout(60)
def test_a_silent_proxy_sender_is_closed_after_probe_timeout_from_its_connect(daemon, backends):
    port = free_port()
    cfg = make_config({"main": {"address": f"127.0.0.1:{port}", "routes": "ssh, http", "proxy_protocol": "v1",
                                "trusted": "127.0.0.1/32"}},
                      {name: {"probe": name, "backend": f"127.0.0.1:{s.port}"} for name, s in backends.items()},
                      workers=1, probe_timeout=2.0)
    d = daemon().start(cfg, ready=True)
    t0 = time.monotonic()
    sock = connect(port)
    try:
        assert sock.recv(64) == b""
    except ConnectionResetError:
        pass
    waited = time.monotonic() - t0
    assert 1.9 <= waited < 2.8, waited
    wait_until(lambda: "reason=proxy-timeout 1" in stats(d), timeout=10, interval=0.3)
