"""Sniffing costs O(bytes) per connection, and each sniffing connection has an edge budget.

A legal ClientHello drip-fed in 1-byte TLS records (18 KB on the wire) used to be reassembled and parsed
again on every readable edge, quadratic in its size: about half a CPU-second per connection.  Now the
worker's HelloReader takes each edge's new bytes only, and a client that spends more than
`max_probe_edges` readable edges before its protocol is decided is closed (sniff-budget).
"""

from __future__ import annotations

import socket
import time

from support.daemon import closed_count, make_config, stats, tree_cpu_seconds
from support.net import connect, free_port
from support.hello_builder import build_client_hello, records

def config(port: int, backend: int, edges: int) -> str:
    return make_config(port, {"tls": {"probe": "tls", "backend": f"127.0.0.1:{backend}"}},
                       workers=1, probe_timeout=60, max_probe_edges=edges)

HELLO = build_client_hello(sni="drip.example", alpn=("h2",), pad_to=3000)
HS = HELLO[5:]                                   # one record: its handshake bytes
DRIP = records(HS, split=list(range(1, len(HS))))   # one byte per record


def _drip(port: int, pause: float = 0.0, stop_on_close: bool = False) -> socket.socket:
    """Send DRIP one record per send() (TCP_NODELAY: a segment each)."""
    c = connect(port)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(DRIP), 6):
        try:
            c.send(DRIP[i:i + 6])
        except (BrokenPipeError, ConnectionResetError):
            assert stop_on_close
            return c
        if pause:
            time.sleep(pause)
    return c


def test_a_drip_fed_hello_costs_about_what_a_whole_one_costs(daemon, server):
    assert len(DRIP) == 6 * len(HS) and len(DRIP) <= 18432
    backend = server()
    port = free_port()
    d = daemon().start(config(port=port, backend=backend.port, edges=1000000), wait=port)
    before = tree_cpu_seconds(d.pid)
    costs = []
    for _ in range(3):
        c = _drip(port, pause=0.0005)
        assert c.recv(len(DRIP), socket.MSG_WAITALL) == DRIP    # routed to tls: the echo sends it back
        c.close()
        after = tree_cpu_seconds(d.pid)
        costs.append(after - before)
        before = after
    print(f"daemon CPU-s per drip-fed hello ({len(DRIP)} bytes in {len(HS)} records): {costs}")
    assert min(costs) < 0.15, costs            # was 0.4-0.5 CPU-s per connection


def test_a_client_past_the_edge_budget_is_closed(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(config(port=port, backend=backend.port, edges=20), wait=port)
    c = _drip(port, pause=0.01, stop_on_close=True)     # ~3000 segments, 10 ms apart: far more than 20 edges
    c.settimeout(10)
    try:
        assert c.recv(1) == b""
    except ConnectionResetError:
        pass
    block = stats(d)
    assert closed_count(block, "-", "sniff-budget") == 1, block


def test_a_whole_hello_is_routed_within_a_small_budget(daemon, server):
    backend = server()
    port = free_port()
    daemon().start(config(port=port, backend=backend.port, edges=1), wait=port)
    c = connect(port)
    c.sendall(HELLO)
    assert c.recv(len(HELLO), socket.MSG_WAITALL) == HELLO
