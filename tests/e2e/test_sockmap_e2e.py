"""The kernel relay through the real daemon where the relay contract (test_relay_contract.py) does not
reach: IPv6 on both sides, and `relay = auto` where the maps load (its fallback is in test_relay.py)."""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time

import pytest

from support.net import connect, free_port, recv_all
from support.daemon import kernel_stats, make_config
from epollmux.relay import kernel as kernelrelay
from epollmux.relay import sockmap

MiB = 1 << 20


@pytest.fixture(scope="module", autouse=True)
def sockmap_loads():
    try:
        sockmap.Sockmap.load(max_entries=2).close()
    except sockmap.SockmapUnavailable as exc:
        pytest.skip(f"sockmap unavailable here: {exc.reason}")


def recv_exact(c: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = c.recv(size - len(out))
        assert data, "EOF before the whole echo"
        out += data
    return bytes(out)


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


def test_auto_uses_splice_on_a_kernel_not_tested(daemon, server):
    """`relay = auto` takes the kernel relay only on a kernel in TESTED_KERNELS (empty while the duplicated
    segment is unexplained): elsewhere splice, and one info line that says why."""
    assert not kernelrelay.kernel_tested()
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay="auto", workers=1), wait=port)
    for _ in range(3):
        echo_through(port, 1 * MiB)
    line = d.wait_log("not using the kernel relay")
    assert "INFO" in line and "TESTED_KERNELS" in line and "splice" in line, line
    assert d.log_text().count("not using the kernel relay") == 1


def test_tested_kernels_match_on_the_release_number():
    assert not kernelrelay.kernel_tested("0.0.1-test")
    kernelrelay.TESTED_KERNELS, saved = ("6.18.44",), kernelrelay.TESTED_KERNELS
    try:
        assert kernelrelay.kernel_tested("6.18.44-fc-v1147") and not kernelrelay.kernel_tested("6.18.45")
    finally:
        kernelrelay.TESTED_KERNELS = saved


def test_sockmap_on_an_untested_kernel_works_with_a_warning(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay="sockmap", workers=1), wait=port)
    echo_through(port, 1 * MiB)
    line = d.wait_log("relay = sockmap on an untested kernel")
    assert "WARNING" in line, line
    assert kernel_stats(d)["pairs"] == 1


def test_counts_in_the_access_log_are_exact(daemon, server):
    """Each direction's count is the verdict program's own counter, read once at close: equal to what was
    sent, byte for byte, however the ACKs fall (the old acked+SIOCOUTQ sum once logged 8257681 for 8 MiB)."""
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay="sockmap", workers=1), wait=port)
    rng = random.Random(16)
    sizes = [rng.choice((1, 1000, 65483, 65484, MiB + 7, 8 * MiB)) for _ in range(12)]
    for size in sizes:              # the FIN only after the echo: a connection is paired before its EOF
        payload = os.urandom(size)
        c = connect(port, timeout=30)
        got = []
        reader = threading.Thread(target=lambda: got.append(recv_exact(c, size)))
        reader.start()
        c.sendall(payload)
        reader.join(30)
        c.shutdown(socket.SHUT_WR)
        assert got and got[0] == payload and c.recv(1) == b""
        c.close()
    want = sorted(f"up={n} down={n}" for n in sizes)
    deadline = time.monotonic() + 30
    while True:
        got = sorted(re.search(r"up=\d+ down=\d+", x).group(0) for x in d.log_text().splitlines()
                     if "reason=eof" in x)
        if len(got) >= len(sizes) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == want
    kernel = kernel_stats(d)
    assert kernel["pairs"] == len(sizes) and kernel["fallbacks"] == 0, kernel


def test_proxy_header_and_payload_in_one_write_reach_the_backend_once(daemon, server):
    """A PROXY listener reads the header with recv(); in the same skb as the first payload the kernel
    would relay the header again. Such connections stay on splice: the backend gets the payload only."""
    backend = server()
    port = free_port()
    cfg = make_config({"main": {"address": f"127.0.0.1:{port}", "proxy_protocol": "v1", "trusted": "127.0.0.1"}},
                      f"127.0.0.1:{backend.port}", relay="sockmap", workers=1)
    d = daemon().start(cfg, wait=port)
    for size in (5, 70_000, 2 * MiB):
        payload = os.urandom(size)
        c = connect(port, timeout=30)
        got = []
        reader = threading.Thread(target=lambda: got.append(recv_all(c)))
        reader.start()
        c.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 80\r\n" + payload)     # one write, one skb
        c.shutdown(socket.SHUT_WR)
        reader.join(30)
        c.close()
        assert got and got[0] == payload, (size, len(got[0]) if got else None)
    assert "proxy-invalid" not in d.log_text()


def test_a_reader_that_takes_nothing_ends_with_kernel_backlog(daemon, server):
    """No backpressure on this path: past 64 MiB queued in the kernel for one direction the worker ends
    the connection, with its own reason, instead of holding more."""
    gate = threading.Event()

    def handle(sock):
        gate.wait(60)

    backend = server(handle)
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay="sockmap", workers=1), wait=port)
    c = connect(port, timeout=30)
    chunk = b"\x5a" * MiB
    try:
        for _ in range(1024):
            c.sendall(chunk)
    except OSError:
        pass
    line = d.wait_log("reason=kernel-backlog")
    gate.set()
    c.close()
    assert kernel_stats(d)["overruns"] == 1, line
