"""The relay contract, written once and run for each relay (splice, copy and the kernel's sockmap),
through the real daemon."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time

import pytest

from support.net import connect, free_port, recv_all
from support.daemon import make_config, stats, tree_rss_kib

RELAYS = ["splice", "copy", "sockmap"]


@pytest.fixture(params=RELAYS)
def proxy(request, daemon, server):
    """Returns start(handle) -> (daemon port, backend server)."""

    def start(handle=None, **global_opts):
        backend = server(handle) if handle else server()
        port = free_port()
        d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay=request.param,
                                         **global_opts), wait=port)
        return port, backend, d

    start.relay = request.param
    return start


def random_chunks(data: bytes, rng: random.Random):
    i = 0
    while i < len(data):
        n = rng.choice((1, 7, 100, 1500, 4096, 65536, 300000))
        yield data[i:i + n]
        i += n


def test_zero_bytes(proxy):
    seen = []

    def handle(sock):
        seen.append(recv_all(sock))
        sock.shutdown(socket.SHUT_WR)

    port, backend, _ = proxy(handle)
    c = connect(port)
    c.shutdown(socket.SHUT_WR)
    assert recv_all(c) == b""
    c.close()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [b""]


def test_one_byte_echo(proxy):
    port, _, _ = proxy()
    c = connect(port)
    c.sendall(b"x")
    assert c.recv(10) == b"x"
    c.shutdown(socket.SHUT_WR)
    assert recv_all(c) == b""


def test_64mib_random_chunks_byte_exact(proxy):
    port, _, _ = proxy()
    rng = random.Random(1234)
    data = rng.randbytes(64 << 20)
    c = connect(port, timeout=60)
    received = []

    def reader():
        received.append(recv_all(c))

    t = threading.Thread(target=reader)
    t.start()
    for chunk in random_chunks(data, rng):
        c.sendall(chunk)
    c.shutdown(socket.SHUT_WR)
    t.join(60)
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(data).digest()


def test_server_answers_after_client_eof(proxy):
    def handle(sock):
        data = recv_all(sock)
        sock.sendall(hashlib.sha256(data).hexdigest().encode())
        sock.shutdown(socket.SHUT_WR)

    port, _, _ = proxy(handle)
    c = connect(port)
    payload = os.urandom(300_000)
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
    assert recv_all(c) == hashlib.sha256(payload).hexdigest().encode()


def test_server_shuts_write_and_keeps_reading(proxy):
    got = []

    def handle(sock):
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        got.append(recv_all(sock))

    port, backend, _ = proxy(handle)
    c = connect(port)
    assert recv_all(c) == b"hello"          # EOF passed on while our side stays open
    c.sendall(b"world" * 1000)
    c.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [b"world" * 1000]
    assert recv_all(c) == b""


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def test_client_reset_reaches_backend(proxy):
    outcome = []

    def handle(sock):
        sock.sendall(b"ready")
        try:
            data = sock.recv(100)
            outcome.append("eof" if data == b"" else data)
        except ConnectionResetError:
            outcome.append("reset")

    port, _, d = proxy(handle)
    c = connect(port)
    assert c.recv(5) == b"ready"
    _reset(c)
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome == ["reset"]
    d.wait_log("reason=reset")


def test_backend_reset_reaches_client(proxy):
    def handle(sock):
        sock.sendall(b"bye")
        time.sleep(0.1)
        _reset(sock)

    port, _, d = proxy(handle)
    c = connect(port)
    assert c.recv(3) == b"bye"
    with pytest.raises(ConnectionResetError):
        c.recv(100)
    d.wait_log("reason=reset")


def test_backend_refused_closes_client(daemon):
    dead = free_port()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{dead}"), wait=port)
    c = connect(port)
    c.sendall(b"hi")
    try:    # unread bytes in the queue make the kernel answer the close with RST
        assert recv_all(c) == b""
    except ConnectionResetError:
        pass
    d.wait_log("reason=backend-refused")
    other = connect(port)   # the daemon keeps serving
    assert recv_all(other) == b""


def test_slow_backend_bounded_memory(proxy):
    """The client pushes 256 MiB at a backend that reads slowly; the daemon must not buffer it."""
    if proxy.relay == "sockmap":
        pytest.skip("the kernel relay ends such a connection over its backlog limit: test_sockmap.py")
    total = 256 << 20
    got = []

    def handle(sock):
        n = 0
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            n += len(data)
            time.sleep(0.001)
        got.append(n)

    port, _, d = proxy(handle, workers=1)
    c = connect(port, timeout=120)
    chunk = b"\xa5" * (1 << 20)
    base = peak = 0
    for i in range(total // len(chunk)):
        c.sendall(chunk)
        if i == 8:              # the worker is up and relaying: what it holds from here on must not grow
            base = tree_rss_kib(d.pid)
        elif i % 16 == 0:
            peak = max(peak, tree_rss_kib(d.pid))
    c.shutdown(socket.SHUT_WR)
    assert recv_all(c) == b""
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == [total]
    # stated bound: the daemon grows by less than 16 MiB whatever it relays (pipes live in the kernel,
    # a copy buffer is pipe_size bytes per direction)
    assert peak - base < 16 * 1024, (base, peak)


def kernel_stats(d) -> dict:
    """The kernel relay's lines of the workers' stats blocks, summed: pairs, overruns, max_backlog, ..."""
    lines = lambda: [x for x in d.log_text().splitlines() if x.startswith("kernel relay: ")]
    before = len(lines())
    stats(d)
    deadline = time.monotonic() + 10
    while len(lines()) <= before:
        assert time.monotonic() < deadline, "no kernel relay line after SIGUSR1"
        time.sleep(0.05)
    time.sleep(0.5)              # every worker answers
    total: dict = {}
    for line in lines()[before:]:
        assert line.split()[2] == "loaded", line
        for k, v in (f.split("=") for f in line.split()[3:]):
            total[k] = total.get(k, 0) + int(v)
    return total


def test_500_concurrent_echo_connections(proxy):
    port, _, d = proxy()
    socks = [connect(port) for _ in range(500)]
    payloads = [os.urandom(random.randint(1, 5000)) for _ in socks]
    for s, p in zip(socks, payloads):
        s.sendall(p)
    for s, p in zip(socks, payloads):
        got = b""
        while len(got) < len(p):
            data = s.recv(65536)
            assert data, "connection closed early"
            got += data
        assert got == p
    if proxy.relay == "sockmap":
        kernel = kernel_stats(d)
        assert kernel["pairs"] == 500 and kernel["fallbacks"] == 0, kernel
    for s in socks:
        s.close()


def test_idle_timeout_closes_quiet_connection(proxy):
    port, _, d = proxy(idle_timeout=0.5)
    c = connect(port)
    c.sendall(b"a")
    assert c.recv(1) == b"a"
    start = time.monotonic()
    assert recv_all(c) == b""
    waited = time.monotonic() - start
    assert 0.3 < waited < 5
    d.wait_log("reason=idle-timeout")


def test_idle_timeout_spares_busy_connection(proxy):
    port, _, d = proxy(idle_timeout=0.6)
    c = connect(port)
    for _ in range(8):          # 1.6 s of traffic, never 0.6 s quiet
        c.sendall(b"b")
        assert c.recv(1) == b"b"
        time.sleep(0.2)
    c.shutdown(socket.SHUT_WR)
    assert recv_all(c) == b""
    assert "idle-timeout" not in d.log_text()


def test_server_closes_first_client_sees_eof_every_time(proxy):
    """200 sequential exchanges where the backend answers and closes at once: each client gets the
    whole answer and then EOF, never a hang (a lost wake-up would leave the backend in CLOSE-WAIT)."""
    answer = b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 3000

    def handle(sock):
        sock.recv(100)
        sock.sendall(answer)

    port, _, _ = proxy(handle)
    for _ in range(200):
        c = connect(port, timeout=5)
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_all(c) == answer
        c.close()


@pytest.mark.parametrize("relay,level", [("sockmap", "WARNING")])
def test_sockmap_unavailable_falls_back_to_splice(daemon, server, relay, level):
    """Without CAP_BPF and friends the maps cannot load: one warning line, and splice relays instead.
    (`relay = auto` does not even try on a kernel outside TESTED_KERNELS: test_sockmap_e2e.py.)"""
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", relay=relay, workers=1), wait=port,
                       wrap=["setpriv", "--bounding-set", "-bpf,-sys_admin,-net_admin,-perfmon", "--"])
    for _ in range(3):
        c = connect(port)
        payload = os.urandom(200_000)
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == payload
        c.close()
    d.wait_log("relays with splice")
    lines = [x for x in d.log_text().splitlines() if "kernel relay (sockmap) unavailable" in x]
    assert len(lines) == 1 and "CAP_BPF" in lines[0], lines
    assert level in lines[0] and ({"WARNING", "INFO"} - {level}).pop() not in lines[0], lines[0]
    assert "Traceback" not in d.log_text()
    before = d.log_text().count("kernel relay: unavailable pairs=0")
    stats(d)
    deadline = time.monotonic() + 10
    while d.log_text().count("kernel relay: unavailable pairs=0") <= before:
        assert time.monotonic() < deadline, "no kernel relay line after SIGUSR1"
        time.sleep(0.05)


def test_server_speaks_first_to_a_silent_client(proxy):
    """A backend that greets first (SSH, SMTP): its bytes reach a client that has sent nothing. The
    connect is done inside connect() on loopback, so the relay starts without pumping the backend and
    relies on the edge its first bytes raise."""
    def handle(sock):
        sock.sendall(b"220 hello\r\n")
        assert recv_all(sock) == b"bye"
        sock.shutdown(socket.SHUT_WR)

    port, backend, _ = proxy(handle)
    for _ in range(20):
        c = connect(port)
        assert c.recv(100) == b"220 hello\r\n"
        c.sendall(b"bye")
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b""
        c.close()
    assert not backend.errors


def test_slow_client_gets_every_byte_of_a_fast_backend(proxy):
    """The backend writes 32 MiB at once to a client that waits before reading: the client's socket
    fills, the relay waits for it to drain (a socket registered without EPOLLOUT gets it then), and
    nothing is lost."""
    data = random.Random(7).randbytes(32 << 20)

    def handle(sock):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    port, _, _ = proxy(handle)
    c = connect(port, timeout=60)
    time.sleep(0.5)                  # the client reads nothing yet: its receive queue fills up
    received = recv_all(c)
    c.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
