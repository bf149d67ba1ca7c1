"""The run-time loop guard (serve.backend.OwnBackends): a client that is one of the worker's own backend
sockets is told apart even when several backend sockets share one local address (the kernel keeps only
the 4-tuple unique), closing one of them leaves the others guarded, and a backend socket that was reset
(its 4-tuple given back while the worker still holds it) makes no loop of a newcomer."""

from __future__ import annotations

import socket
import struct
import time
from types import SimpleNamespace

import pytest

from epollmux.serve.backend import OwnBackends

pytestmark = pytest.mark.timeout(30)
TCP_CLOSE = 7


@pytest.fixture
def colliding():
    """Two backend sockets on ONE local address: `other` connected to an ordinary backend, `loop` to a
    listener of "the daemon" (`daemon`); `arrived` is the daemon's accepted end of `loop`, from `src`."""
    opened = []

    def sock():
        s = socket.socket()
        opened.append(s)
        return s

    daemon, elsewhere = sock(), sock()
    for listener in (daemon, elsewhere):
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
    other, loop = sock(), sock()
    for s in (other, loop):        # both may bind the same port: neither listens, both reuse
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("127.0.0.1", 0))
    loop.bind(other.getsockname())
    other.connect(elsewhere.getsockname())
    loop.connect(daemon.getsockname())
    assert other.getsockname() == loop.getsockname()
    arrived, src = daemon.accept()
    opened.append(arrived)
    yield SimpleNamespace(other=other, loop=loop, arrived=arrived, src=src, daemon=daemon, opened=opened)
    for s in opened:
        s.close()


def add(own: OwnBackends, sock) -> None:
    own.add(sock.getsockname()[1], sock)


@pytest.mark.parametrize("order", ["loop first", "other first"])
def test_a_loop_is_seen_whichever_socket_on_its_address_came_last(colliding, order):
    c = colliding
    own = OwnBackends()
    for sock in [c.loop, c.other] if order == "loop first" else [c.other, c.loop]:
        add(own, sock)
    assert own.looped(c.src, c.arrived)


def test_closing_one_socket_on_an_address_keeps_the_others_guarded(colliding):
    c = colliding
    own = OwnBackends()
    add(own, c.loop)
    add(own, c.other)
    own.discard(c.other.getsockname()[1], c.other)
    assert own.looped(c.src, c.arrived)
    own.discard(c.loop.getsockname()[1], c.loop)
    assert not own.looped(c.src, c.arrived)
    assert own.by_port == {} and own.more == {}


def test_a_reused_port_connected_elsewhere_is_not_a_loop(colliding):
    c = colliding
    own = OwnBackends()
    add(own, c.other)
    assert not own.looped(c.src, c.arrived)


def test_a_reset_socket_still_held_makes_no_loop_of_a_newcomer(colliding):
    """Seen in the stress suite (loop-collisions): right after a real loop was cut with RST, ordinary
    clients that got the freed port towards the listener were closed as `loop`."""
    c = colliding
    own = OwnBackends()
    add(own, c.loop)
    listener_address = c.loop.getpeername()
    c.arrived.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.arrived.close()                                # the loop is cut with RST, as the worker does
    deadline = time.monotonic() + 10
    while c.loop.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_CLOSE:
        assert time.monotonic() < deadline, "the RST never arrived"
        time.sleep(0.01)
    newcomer = socket.socket()
    c.opened.append(newcomer)
    newcomer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    newcomer.bind(c.src)
    newcomer.connect(listener_address)               # the same 4-tuple as the reset socket's, alive again
    accepted, src = c.daemon.accept()
    c.opened.append(accepted)
    assert src == c.src
    assert not own.looped(src, accepted)


def test_the_same_port_on_another_local_address_is_not_a_loop():
    """The table is keyed by local port alone: a socket on that port but another local address (127.0.0.2)
    towards the same listener makes no loop of the client from 127.0.0.1, and discarding in any order
    leaves nothing behind."""
    daemon = socket.socket()
    a, b = socket.socket(), socket.socket()
    opened = [daemon, a, b]
    try:
        daemon.bind(("127.0.0.1", 0))
        daemon.listen(4)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        a.bind(("127.0.0.2", 0))
        b.bind(("127.0.0.1", a.getsockname()[1]))
        a.connect(daemon.getsockname())
        own = OwnBackends()
        add(own, a)
        arrived_a, src_a = daemon.accept()
        opened.append(arrived_a)
        assert own.looped(src_a, arrived_a)
        b.connect(daemon.getsockname())
        arrived_b, src_b = daemon.accept()
        opened.append(arrived_b)
        assert src_b[1] == src_a[1] and src_b[0] != src_a[0]
        assert not own.looped(src_b, arrived_b)       # b is not ours
        add(own, b)
        assert own.looped(src_b, arrived_b) and own.looped(src_a, arrived_a)
        own.discard(a.getsockname()[1], a)            # the first on the port goes: b stays guarded
        assert own.looped(src_b, arrived_b) and not own.looped(src_a, arrived_a)
        own.discard(b.getsockname()[1], b)
        assert own.by_port == {} and own.more == {}
    finally:
        for s in opened:
            s.close()
