"""serve/flows.py driven directly with real loopback sockets: a datagram from another client that sits in a
flow socket's queue (it arrived in the instant between the socket's bind and its connect, or by a lookup
that raced the connect) is never relayed as the flow's own: with several workers it is dropped and counted
as a stray, with one it starts that client's own flow."""

from __future__ import annotations

import socket
import types

from epollmux.observe.stats import Stats
from epollmux.serve import flows


class Reactor:
    now = 0.0

    def clock(self) -> float:
        return 0.0

    def register(self, fd, events, handler) -> None:
        pass

    def forget(self, fd) -> None:
        pass

    def call_later(self, delay, func):
        return types.SimpleNamespace(cancel=lambda: None)


def make(workers: int):
    ctx = types.SimpleNamespace(reactor=Reactor(), stats=Stats(),
                                settings=types.SimpleNamespace(max_flows=100, max_flows_per_source=0,
                                                               source_ipv6_prefix=64, workers=workers,
                                                               probe_timeout=2.0),
                                access=types.SimpleNamespace(enabled=lambda: False))
    table = flows.FlowTable(ctx)
    started = []
    table.datagram = lambda udp, client, local, data: started.append((client, data))
    return ctx, table, started


def racing_flow(workers: int):
    """A relaying flow whose client socket holds a stray datagram (from `other`) queued before its connect."""
    ctx, table, started = make(workers)
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))
    backend.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    listener = types.SimpleNamespace(name="u", access=None, routes=[], probe_table=[], on_timeout=None)
    udp = types.SimpleNamespace(fd=99, listener=listener, family=socket.AF_INET)
    csock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    csock.bind(("127.0.0.1", 0))
    local = csock.getsockname()
    other.sendto(b"not yours", local)               # queued while the flow socket is still unconnected
    csock.connect(client.getsockname())
    client.sendto(b"mine", local)
    flow = flows.Flow(table, udp, client.getsockname(), local, "127.0.0.1")
    flow.csock = csock
    flow.route = types.SimpleNamespace(name="r")
    flow.bsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flow.bsock.connect(backend.getsockname())
    return ctx, flow, backend, other, started, (client, csock)


def test_a_stray_queued_before_connect_is_dropped_with_several_workers():
    ctx, flow, backend, other, started, keep = racing_flow(workers=2)
    flow.client_readable()
    assert backend.recv(100) == b"mine"
    backend.setblocking(False)
    try:
        extra = backend.recv(100)
    except BlockingIOError:
        extra = None
    assert extra is None                            # before the fix: b"not yours" relayed as the flow's
    assert ctx.stats.counters["udp_stray", "-"] == 1 and ctx.stats.datagrams["-"][2] == 1
    assert flow.dgrams_up == 1 and started == []


def test_a_stray_queued_before_connect_starts_its_own_flow_with_one_worker():
    ctx, flow, backend, other, started, keep = racing_flow(workers=1)
    flow.client_readable()
    assert backend.recv(100) == b"mine"
    assert started == [(other.getsockname(), b"not yours")]
    assert flow.dgrams_up == 1
