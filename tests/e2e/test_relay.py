"""The relay's choices through the real daemon, outside the relay contract (e2e/test_relay_contract.py
runs that over every variant): a refused backend, and the kernel relay's fallback where it cannot load."""

from __future__ import annotations

import os
import socket

import pytest

from support.daemon import make_config, stats
from support.net import connect, free_port, recv_all, wait_until


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
    wait_until(lambda: d.log_text().count("kernel relay: unavailable pairs=0") > before, 10,
               "the kernel relay's line after SIGUSR1")
