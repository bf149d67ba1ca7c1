"""The run-time loop guard (serve.backend.OwnBackends): a client that is one of the worker's own backend
sockets is told apart even when several backend sockets share one local address (the kernel keeps only
the 4-tuple unique), and closing one of them leaves the others guarded."""

from __future__ import annotations

import socket

import pytest

from epollmux.serve.backend import OwnBackends

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def colliding():
    """Two backend sockets on ONE local address: `other` connected to an ordinary backend, `loop` to a
    listener of "the daemon"; `arrived` is the daemon's accepted end of `loop`."""
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
    yield other, loop, arrived, src
    for s in opened:
        s.close()


@pytest.mark.parametrize("order", ["loop first", "other first"])
def test_a_loop_is_seen_whichever_socket_on_its_address_came_last(colliding, order):
    other, loop, arrived, src = colliding
    own = OwnBackends()
    pair = [(loop.getsockname(), loop.getpeername()), (other.getsockname(), other.getpeername())]
    for local, target in pair if order == "loop first" else pair[::-1]:
        own.add(local, target)
    assert own.looped(src, arrived)


def test_closing_one_socket_on_an_address_keeps_the_others_guarded(colliding):
    other, loop, arrived, src = colliding
    own = OwnBackends()
    own.add(loop.getsockname(), loop.getpeername())
    own.add(other.getsockname(), other.getpeername())
    own.discard(other.getsockname(), other.getpeername())
    assert own.looped(src, arrived)
    own.discard(loop.getsockname(), loop.getpeername())
    assert not own.looped(src, arrived)
    assert own.by_local == {}


def test_a_reused_port_connected_elsewhere_is_not_a_loop(colliding):
    other, loop, arrived, src = colliding
    own = OwnBackends()
    own.add(other.getsockname(), other.getpeername())
    assert not own.looped(src, arrived)


def test_the_same_four_tuple_twice_is_counted(colliding):
    """A connect that failed gives its port back while its socket is still open, so a second socket can
    get the same 4-tuple: closing the first keeps the second's entry."""
    _, loop, arrived, src = colliding
    own = OwnBackends()
    own.add(loop.getsockname(), loop.getpeername())
    own.add(loop.getsockname(), loop.getpeername())
    own.discard(loop.getsockname(), loop.getpeername())
    assert own.looped(src, arrived)
