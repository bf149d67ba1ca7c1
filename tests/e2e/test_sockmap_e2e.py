"""The kernel relay through the real daemon where the relay contract (test_relay_contract.py) does not
reach: IPv6 on both sides, and `relay = auto` where the maps load (its fallback is in test_relay.py)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from support.net import connect, free_port, recv_all
from support.daemon import kernel_stats, make_config
from epollmux.relay import sockmap

MiB = 1 << 20


@pytest.fixture(scope="module", autouse=True)
def sockmap_loads():
    try:
        sockmap.Sockmap.load(max_entries=2).close()
    except sockmap.SockmapUnavailable as exc:
        pytest.skip(f"sockmap unavailable here: {exc.reason}")


def echo_through(port: int, size: int, host: str = "127.0.0.1") -> None:
    """Send size random bytes, half-close, and check the echo is byte-exact and ends in EOF."""
    payload = os.urandom(size)
    c = connect(port, host=host, timeout=30)
    got = []
    reader = threading.Thread(target=lambda: got.append(recv_all(c)))
    reader.start()
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
    reader.join(30)
    c.close()
    assert got and len(got[0]) == size and got[0] == payload


def test_ipv6_both_sides_relayed_in_the_kernel(daemon, server):
    try:
        backend = server(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = free_port("::1")
    d = daemon().start(make_config(f"[::1]:{port}", f"[::1]:{backend.port}", relay="sockmap", workers=1),
                       ready=True)
    echo_through(port, 8 * MiB, host="::1")
    line = d.wait_log("reason=eof")
    assert "client=[::1]:" in line and f"up={8 * MiB} down={8 * MiB}" in line, line   # counts from the kernel
    kernel = kernel_stats(d)
    assert kernel["pairs"] == 1 and kernel["fallbacks"] == 0, kernel


def test_auto_uses_the_kernel_where_the_maps_load(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay="auto", workers=1), wait=port)
    for _ in range(3):
        echo_through(port, 1 * MiB)
    kernel = kernel_stats(d)
    assert kernel["pairs"] == 3 and kernel["fallbacks"] == 0, kernel
    assert "unavailable" not in d.log_text()
