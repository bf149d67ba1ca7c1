"""Every client reaches its own route's backend under a mixed load: complete SSH and non-SSH first flights
sent in pieces, mixed with clients that close at once, reset mid-flight or reset while their backend
streams to them, so the worker closes and reuses fd numbers within its epoll batches. A stale event delivered to the wrong socket shows up here as an SSH
client's bytes at the other route's backend (or a complete client never served). Loopback, bounded."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from support.daemon import make_config
from support.net import Server, free_port

pytestmark = pytest.mark.timeout(180)

CLIENTS = 20000
THREADS = 24
LINGER_RESET = struct.pack("ii", 1, 0)


class Recording(Server):
    """A backend that records each connection's whole stream, then answers b"ok"."""

    def __init__(self):
        self.streams: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(self._serve)

    def _serve(self, client: socket.socket) -> None:
        chunks = [client.recv(65536)]
        if chunks[0].startswith(b"STREAM"):
            try:
                for _ in range(2000):       # until the client's reset reaches us
                    client.sendall(b"x" * 16384)
            except OSError:
                pass
            return
        for _ in range(1000):
            data = client.recv(65536)
            if not data:
                break
            chunks.append(data)
        with self.lock:
            self.streams.append(b"".join(chunks))
        client.sendall(b"ok")


def one_client(port: int, i: int, failures: list) -> None:
    kind = i % 5
    s = socket.socket()
    s.settimeout(30)
    try:
        s.connect(("127.0.0.1", port))
        if kind == 2:                       # gone at once, nothing sent
            return
        if kind == 3:                       # a partial SSH banner, then a reset
            s.sendall(b"SS")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            return
        if kind == 4:                       # relayed, the backend streaming, then a reset
            s.sendall(f"STREAM c{i}\n".encode())
            s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            return
        first, rest = (b"SS", f"H-2.0-c{i}\r\n".encode()) if kind == 0 else (b"HEL", f"LO c{i}\n".encode())
        s.sendall(first)                    # the sniffer sees a prefix first, undecided for SSH
        time.sleep(0.001)                   # pacing only: a longer window in which a stale event could hit it
        s.sendall(rest)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        for _ in range(100):
            data = s.recv(16)
            if not data:
                break
            answer += data
        if answer != b"ok":
            failures.append((i, answer))
    except OSError as exc:
        if kind in (0, 1):
            failures.append((i, repr(exc)))
    finally:
        s.close()


def test_every_client_reaches_its_own_routes_backend_under_churn(daemon):
    ssh, other = Recording(), Recording()
    try:
        port = free_port()
        routes = {"ssh": {"probe": "ssh", "backend": f"127.0.0.1:{ssh.port}"},
                  "other": {"probe": "any", "backend": f"127.0.0.1:{other.port}"}}
        d = daemon().start(make_config(port, routes, workers=1), ready=True)
        failures: list = []

        def run(first: int) -> None:
            for i in range(first, CLIENTS, THREADS):
                one_client(port, i, failures)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert not any(t.is_alive() for t in threads), "clients still running: a hang"
        misrouted_ssh = [s for s in other.streams if s.startswith(b"SS")]
        misrouted_other = [s for s in ssh.streams if not s.startswith(b"SSH-")]
        assert not misrouted_ssh and not misrouted_other, (misrouted_ssh[:5], misrouted_other[:5])
        assert sorted(ssh.streams + [s for s in other.streams if s.startswith(b"HELLO")]) == sorted(
            [f"SSH-2.0-c{i}\r\n".encode() for i in range(0, CLIENTS, 5)]
            + [f"HELLO c{i}\n".encode() for i in range(1, CLIENTS, 5)]), "a complete client's bytes went missing"
        assert not failures, failures[:5]
        assert "Traceback" not in d.log_text()
        d.stop()
    finally:
        ssh.close()
        other.close()
