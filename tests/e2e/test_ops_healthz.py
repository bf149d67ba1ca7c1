"""`/healthz` on the metrics listener, for an L4 balancer in front of several epollmux hosts: 200 while the
daemon accepts, 503 from the moment it drains (SIGTERM with a connection still open)."""

from __future__ import annotations

import signal
import socket

import pytest

from support.net import connect, free_port, wait_port
from support.supervision import TaggedBackend, config

pytestmark = pytest.mark.timeout(60)


def http_get(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_healthz_200_while_accepting_503_while_draining(daemon):
    backend = TaggedBackend(b"A")
    try:
        port, metrics = free_port(), free_port()
        text = config(port, backend.port, workers=1, sections=f"[metrics]\naddress = 127.0.0.1:{metrics}\n")
        d = daemon().start(text, ready=True)
        wait_port(metrics)
        assert http_get(metrics, "/healthz") == (200, "accepting\n")
        held = connect(port)                        # keeps the worker draining after SIGTERM
        assert held.recv(1) == b"A"
        d.signal(signal.SIGTERM)
        d.wait_log("stopping: ")
        status, body = http_get(metrics, "/healthz")
        assert (status, body) == (503, "stopping\n")
        assert d.proc.poll() is None               # still draining: the balancer had its warning first
        held.close()
        assert d.wait(30) == 0
    finally:
        backend.close()
