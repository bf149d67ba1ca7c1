"""Relay pieces alone (no daemon)."""

from __future__ import annotations

import gc
import select
import socket
import weakref

import pytest

from epollmux.relay.channels import ChannelPool
from epollmux.relay.endpoints import PlainEndpoint
from epollmux.relay.direction import Direction, State


class Endpoint(PlainEndpoint):
    """A PlainEndpoint that can be weakly referenced (no __slots__), to see when its directions go."""


def test_discarded_directions_are_freed_without_the_cyclic_gc():
    """Regression: up.other/down.other kept closed connections (and their TLS engines) alive until a GC
    pass, which the worker's raised GC thresholds made rare: RSS grew 51 -> 125 MB under TLS load."""
    a, b = socket.socketpair()
    pool = ChannelPool("splice", 65536, 4)
    ea, eb = Endpoint(a), Endpoint(b)
    up = Direction(ea, eb, pool)
    down = Direction(eb, ea, pool)
    up.other, down.other = down, up
    refs = [weakref.ref(ea), weakref.ref(eb)]
    del ea, eb
    gc.disable()
    try:
        up.discard()
        down.discard()
        del up, down
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
        a.close()
        b.close()
        pool.close()


# --- a short copy read on a clean edge ends the pump (relay.Direction.pump) ----------------------------------
class CountingEndpoint(PlainEndpoint):
    """A PlainEndpoint that counts its reads, to see whether a pump made the read that only raises EAGAIN."""
    reads = 0

    def readinto(self, view):
        self.reads += 1
        return super().readinto(view)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


@pytest.fixture
def copy_direction():
    """(direction from s1 to d1, pool, peer of the source s0, peer of the destination d0)."""
    s0, s1 = tcp_pair()
    d1, d0 = tcp_pair()
    pool = ChannelPool("copy", 65536, 0)
    yield Direction(CountingEndpoint(s1), CountingEndpoint(d1), pool), pool, s0, d0
    for sock in (s0, s1, d0, d1):
        sock.close()


def wait_readable(sock: socket.socket, size: int) -> None:
    """Until sock holds at least size bytes (a pump must find them all queued)."""
    for _ in range(500):
        select.select([sock], [], [], 0.01)
        try:
            if len(sock.recv(size, socket.MSG_PEEK)) >= size:
                return
        except BlockingIOError:
            pass
    raise AssertionError(f"{size} bytes did not arrive")


def pump_after(direction, peer: socket.socket, data: bytes, clean: bool) -> None:
    """peer sends data; once it is all queued at the direction's source, one pump."""
    peer.sendall(data)
    wait_readable(direction.src.sock, len(data))
    assert direction.pump(clean=clean) is None


def test_clean_short_read_skips_the_eagain_read_and_gives_the_buffer_back(copy_direction):
    direction, pool, s0, d0 = copy_direction
    pump_after(direction, s0, b"hello", clean=True)
    assert direction.src.reads == 1 and direction.state is State.WAIT_SRC
    assert direction.channel is None and pool.lent == 0       # an idle direction holds no buffer
    d0.setblocking(True)
    assert d0.recv(10) == b"hello"
    pump_after(direction, s0, b"again", clean=True)     # a later segment: its own edge, its own pump
    assert d0.recv(10) == b"again"


def test_edge_with_rdhup_or_resumed_pump_reads_on_to_eagain_or_eof(copy_direction):
    direction, pool, s0, d0 = copy_direction
    pump_after(direction, s0, b"hello", clean=False)
    assert direction.src.reads == 2 and direction.state is State.WAIT_SRC
    s0.sendall(b"bye")
    s0.shutdown(socket.SHUT_WR)               # data and FIN queued together: the caller passes clean=False
    wait_readable(direction.src.sock, 3)
    assert direction.pump(clean=False) is None and direction.state is State.DONE
    d0.setblocking(True)
    assert d0.recv(10) == b"hellobye" and d0.recv(10) == b""


def test_clean_short_read_whose_drain_blocks_leaves_the_rest_to_a_full_pump(copy_direction):
    """The drain blocks (WAIT_DST): the writable edge's pump (clean=False) must read what came meanwhile."""
    direction, pool, s0, d0 = copy_direction
    d1 = direction.dst.sock
    d1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filler = b"f" * (1 << 20)
    while True:                               # fill the destination until it takes no more
        try:
            d1.send(filler)
        except BlockingIOError:
            break
    pump_after(direction, s0, b"first", clean=True)
    assert direction.state is State.WAIT_DST
    s0.sendall(b"second")                     # its edge finds the direction waiting: it is not pumped
    wait_readable(direction.src.sock, 6)
    got = bytearray()
    for _ in range(500):                      # the destination's reader takes bytes; each writable edge pumps
        select.select([d0], [], [], 0.01)
        try:
            got += d0.recv(1 << 22)
        except BlockingIOError:
            pass
        if direction.state is State.WAIT_DST:
            assert direction.pump(clean=False) is None
        if got.endswith(b"firstsecond"):
            break
    assert got.endswith(b"firstsecond") and direction.state is State.WAIT_SRC
