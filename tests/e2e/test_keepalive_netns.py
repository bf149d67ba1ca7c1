"""TCP keepalive reaps a peer that vanished without a FIN or RST, on either leg.

The vanishing peer lives in a network namespace made here, joined to this one by a veth pair; taking the
link down inside the namespace makes it disappear mid-connection (the cable pulled: its process still
holds the socket, nothing is sent, probes are dropped).  With tcp_keepalive_idle = 1, _interval = 1 and
_count = 2 the daemon must close the connection with reason `timeout` within a few seconds and pass a
reset on to the other, live leg.  A live peer that is merely idle is not cut.
Everything made here is deleted at the end; processes are ended by their own PID.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from support.daemon import closed_count, stats
from support.net import connect, free_port

KEEPALIVE = "tcp_keepalive_idle = 1\ntcp_keepalive_interval = 1\ntcp_keepalive_count = 2"
CONFIG = """
[global]
workers = 1
{keepalive}
[listen]
  [[main]]
  address = {listen}
[routes]
  [[all]]
  probe = any
  backend = {backend}
"""

PEER = textwrap.dedent("""
    import socket, sys, time
    role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "client":
        c = socket.create_connection((host, port), timeout=10)
        c.sendall(b"hello")
        assert c.recv(5, socket.MSG_WAITALL) == b"hello"
    else:
        s = socket.socket()
        s.bind((host, port))
        s.listen(4)
        print("listening", flush=True)
        c, _ = s.accept()
        c.sendall(c.recv(5, socket.MSG_WAITALL))
    print("ready", flush=True)
    time.sleep(120)
""")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def vanishing():
    """A namespace behind a veth pair: yields (run(args) -> Popen inside it, cut() takes its link down,
    here, there) where here/there are this side's and the namespace's addresses."""
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (CI runs as root)")
    tag = os.getpid() % 250 + 1
    ns, here_dev = f"emka{os.getpid()}", f"emka{os.getpid() % 100000}"
    here, there = f"10.79.{tag}.1", f"10.79.{tag}.2"
    procs: list[subprocess.Popen] = []
    ip("netns", "add", ns)
    try:
        ip("link", "add", here_dev, "type", "veth", "peer", "name", "vk", "netns", ns)
        ip("addr", "add", f"{here}/30", "dev", here_dev)
        ip("link", "set", here_dev, "up")
        ip("-n", ns, "addr", "add", f"{there}/30", "dev", "vk")
        ip("-n", ns, "link", "set", "vk", "up")
        ip("-n", ns, "link", "set", "lo", "up")

        def run(*args: str) -> subprocess.Popen:
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PEER, *args],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            return p

        def cut() -> None:
            ip("-n", ns, "link", "set", "vk", "down")

        yield run, cut, here, there
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        subprocess.run(["ip", "link", "del", here_dev], capture_output=True, timeout=10)
        ip("netns", "del", ns)


def wait_line(p: subprocess.Popen, want: str) -> None:
    line = p.stdout.readline().strip()    # the peer prints within seconds or dies (its own timeouts)
    assert line == want, (line, p.poll())


def wait_closed(d, reason: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        block = stats(d)
        if closed_count(block, "all", reason) == 1:
            return block
        assert time.monotonic() < deadline, block
        time.sleep(0.5)


def test_a_vanished_client_is_reaped_and_the_backend_reset(daemon, server, vanishing):
    run, cut, here, _ = vanishing
    ended: list[tuple[float, str]] = []

    def echo_then_watch(sock: socket.socket) -> None:
        sock.sendall(sock.recv(5, socket.MSG_WAITALL))
        sock.settimeout(60)
        try:
            what = "eof" if sock.recv(1) == b"" else "data"
        except ConnectionResetError:
            what = "reset"
        except TimeoutError:
            what = "timeout"
        ended.append((time.monotonic(), what))

    backend = server(echo_then_watch)
    port = free_port()
    d = daemon().start(CONFIG.format(keepalive=KEEPALIVE, listen=f"{here}:{port}",
                                     backend=f"127.0.0.1:{backend.port}"), wait=port)
    client = run("client", here, str(port))
    wait_line(client, "ready")
    cut_at = time.monotonic()
    cut()
    wait_closed(d, "timeout")
    took = time.monotonic() - cut_at
    deadline = time.monotonic() + 10
    while not ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended and ended[0][1] == "reset", ended
    print(f"vanished client reaped after {took:.1f}s (keepalive idle 1 + 2 x 1 s)")
    assert took < 20


def test_a_vanished_backend_is_reaped_and_the_client_reset(daemon, vanishing):
    run, cut, _, there = vanishing
    bport = 40000 + os.getpid() % 20000
    backend = run("server", there, str(bport))
    wait_line(backend, "listening")
    port = free_port()
    d = daemon().start(CONFIG.format(keepalive=KEEPALIVE, listen=f"127.0.0.1:{port}",
                                     backend=f"{there}:{bport}"), wait=port)
    c = connect(port)
    c.sendall(b"hello")
    assert c.recv(5, socket.MSG_WAITALL) == b"hello"
    wait_line(backend, "ready")
    cut_at = time.monotonic()
    cut()
    c.settimeout(30)
    with pytest.raises(ConnectionResetError):
        c.recv(1)
    took = time.monotonic() - cut_at
    wait_closed(d, "timeout")
    print(f"vanished backend reaped after {took:.1f}s")
    assert took < 20


def test_a_live_idle_peer_is_not_cut(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(CONFIG.format(keepalive=KEEPALIVE.replace("count = 2", "count = 1"),
                                     listen=f"127.0.0.1:{port}", backend=f"127.0.0.1:{backend.port}"), wait=port)
    c = connect(port)
    c.sendall(b"a")
    assert c.recv(1) == b"a"
    ticker = threading.Event()
    ticker.wait(3.5)                      # three keepalive rounds, each answered by the live peers
    c.sendall(b"b")
    assert c.recv(1) == b"b"
    assert "timeout" not in stats(d)

