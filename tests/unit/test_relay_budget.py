"""The pump's byte budget and what a direction holds when a pump stops, on real sockets (no daemon)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import struct
import termios
import threading
import time

import pytest

from epollmux.relay import direction as relay
from epollmux.relay.channels import BUFFER_MAX, KEEP_IDLE_BYTES, ChannelPool
from epollmux.relay.endpoints import PlainEndpoint
from epollmux.relay.direction import Direction, State

SIZE = 65536


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    return a, b


@pytest.fixture
def pairs():
    """src_peer -> src  [relay]  dst -> dst_peer, all TCP on loopback; the relay's ends non-blocking."""
    made = []

    def make():
        src_peer, src = tcp_pair()
        dst, dst_peer = tcp_pair()
        for s in (src, dst):
            s.setblocking(False)
        made.extend((src_peer, src, dst, dst_peer))
        return src_peer, src, dst, dst_peer

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("kind", ["splice", "copy", "adaptive"])
def test_a_pump_stops_at_its_byte_budget_with_the_channel_empty(pairs, kind, monkeypatch):
    """A source with more queued than the budget: the pump moves its budget (plus at most one channel's
    worth) and says BUSY with nothing in flight; pumped again until EOF, every byte arrives once, in order.
    The budget is made small so that the socket queues can hold more than it."""
    monkeypatch.setattr(relay, "BUDGET", 4 * SIZE)
    total = 40 * relay.BUDGET + 12345
    data = os.urandom(total)
    src_peer, src, dst, dst_peer = pairs()
    pool = ChannelPool(kind, SIZE, 4)
    d = Direction(PlainEndpoint(src), PlainEndpoint(dst), pool)
    got = bytearray()

    def write():
        src_peer.sendall(data)
        src_peer.shutdown(socket.SHUT_WR)

    def read():
        while chunk := dst_peer.recv(1 << 20):
            got.extend(chunk)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    busy = 0
    try:
        while d.state is not State.DONE:
            deadline = time.monotonic() + 0.2        # let the writer queue more than one budget's worth
            while threads[0].is_alive() and queued(src) <= relay.BUDGET + SIZE and time.monotonic() < deadline:
                time.sleep(0.0005)
            before = d.moved
            assert d.pump() is None
            moved = d.moved - before
            assert moved <= relay.BUDGET + pool.size, moved
            if d.state is State.BUSY:
                busy += 1
                assert moved >= relay.BUDGET and d.pending == 0, (moved, d.pending)
    finally:
        for t in threads:
            t.join(30)
    assert busy >= 1
    assert d.moved == total and (d.spliced == total) == (kind == "splice")
    if kind == "adaptive":             # the first pump copies, moves its budget (> BIG): splice from then on
        assert 0 < d.spliced < total and pool.to_splice == 1 and pool.copied + pool.spliced == total
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert pool.lent == 0


def queued(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_bytes_in_a_pipe_when_the_destination_fails_are_never_pooled(pairs):
    """Regression guard for the pump's local bookkeeping: a fill succeeds, the drain fails (the
    destination's peer reset); `pending` must still say the pipe holds bytes, so discard() kills it."""
    src_peer, src, dst, dst_peer = pairs()
    dst_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    dst_peer.close()                      # RST: the first splice into dst fails
    src_peer.sendall(b"x" * 1000)
    pool = ChannelPool("splice", SIZE, 4)
    d = Direction(PlainEndpoint(src), PlainEndpoint(dst), pool)
    for _ in range(100):
        reason = d.pump()
        if reason:
            break
        time.sleep(0.01)
    assert reason == "reset"
    assert d.pending == 1000 and d.moved == 0
    d.discard()
    assert pool.pipes == 0 and pool.idle_pipes == 0 and pool.lent == 0


@pytest.mark.parametrize("size", [SIZE, 262144, 1048576])
def test_idle_channels_kept_are_bounded_in_bytes(size):
    """Idle pipes count against the user's pipe pages whatever they hold; idle buffers are RSS."""
    for kind in ("splice", "copy"):
        pool = ChannelPool(kind, size, 200)
        lent = [pool.get(kind == "splice") for _ in range(100)]
        for c in lent:
            pool.put(c)
        kept = pool.idle_pipes if kind == "splice" else len(pool._idle_buffers)
        each = size if kind == "splice" else min(size, BUFFER_MAX)
        assert kept == min(64, KEEP_IDLE_BYTES // each), (kind, size, kept)
        pool.close()


def test_pipes_take_the_pipe_size_and_buffers_at_most_256_kib():
    pool = ChannelPool("splice", 1 << 20, 1)
    pipe, buffer = pool.get(), pool.get()           # past max_pipes: a buffer stands in
    assert pipe.size == 1 << 20                     # root, or within pipe-max-size (1 MiB by default)
    assert len(buffer.buf) == BUFFER_MAX == 256 << 10
    pool.put(pipe)
    pool.put(buffer)
    pool.close()


def test_adaptive_switches_only_with_the_channel_empty_and_back_after_small_pumps(pairs):
    """relay = adaptive mid-stream: a copy pump that moved BIG bytes and stopped on a full destination keeps
    its buffer (bytes in flight) until it is drained, then splices; small pumps later switch it back to copy
    after SMALL_PUMPS of them, and it is then idle (droppable) between exchanges. Byte-exact throughout."""
    src_peer, src, dst, dst_peer = pairs()
    dst_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)     # full after ~200 KB: the pump meets WAIT_DST
    pool = ChannelPool("adaptive", SIZE, 4)
    d = Direction(PlainEndpoint(src), PlainEndpoint(dst), pool)
    data = os.urandom(1 << 20)
    got = bytearray()
    writer = threading.Thread(target=src_peer.sendall, args=(data,))
    writer.start()
    try:
        for _ in range(2000):                         # the destination's reader is not reading yet
            assert d.pump() is None
            if d.state is State.WAIT_DST:
                break
            time.sleep(0.001)
        assert d.state is State.WAIT_DST and d.big and d.pending > 0
        assert pool.to_splice == 1 and pool.copied >= relay.BIG      # copied until BIG, then (buffer empty) spliced
        for _ in range(200000):
            try:
                got.extend(dst_peer.recv(1 << 20, socket.MSG_DONTWAIT))
            except BlockingIOError:
                time.sleep(0.0002)
            if len(got) == len(data):
                break
            assert d.pump() is None
    finally:
        writer.join(30)
    assert got == data and d.spliced > 0 and pool.copied > 0
    big, to_copy = d.big, pool.to_copy     # the stream's trickling tail may have switched it back already
    for i in range(relay.SMALL_PUMPS + 2):           # lock-step small exchanges
        msg = b"small %d" % i
        src_peer.sendall(msg)
        for _ in range(1000):
            if queued(src) >= len(msg):
                break
            time.sleep(0.001)
        assert d.pump(clean=True) is None and d.state is State.WAIT_SRC
        assert dst_peer.recv(100) == msg
        if i >= relay.SMALL_PUMPS - 1:
            assert not d.big, i
    assert pool.to_copy == to_copy + big and d.idle and d.channel is None
    copied = pool.copied
    src_peer.sendall(b"z")
    for _ in range(1000):
        if queued(src):
            break
        time.sleep(0.001)
    assert d.pump(clean=True) is None and pool.copied == copied + 1 and dst_peer.recv(10) == b"z"


def test_copy_once_hands_what_the_destination_refused_to_a_direction_byte_exact(pairs):
    """relay = adaptive's no-Direction path (relay.direction.copy_once): small reads go straight through until
    the destination is full; the bytes it did not take go to a Direction (`hold`, WAIT_DST), whose pumps
    deliver them first and then the rest. A full read, and end of file, hand over to a Direction too."""
    src_peer, src, dst, dst_peer = pairs()
    dst_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pool = ChannelPool("adaptive", SIZE, 4)
    sent, got, rest, moved = bytearray(), bytearray(), b"", 0
    for i in range(5000):                             # small chunks, the reader asleep: the destination fills
        chunk = os.urandom(1000)
        src_peer.sendall(chunk)
        sent += chunk
        for _ in range(1000):
            if queued(src) >= len(chunk):
                break
            time.sleep(0.001)
        n, done, rest = relay.copy_once(src.fileno(), dst.fileno())
        moved += n
        if not done:
            break
    assert rest and moved + len(rest) == len(sent), (i, moved, len(rest))
    d = Direction(PlainEndpoint(src), PlainEndpoint(dst), pool)
    d.hold(rest)
    assert d.state is State.WAIT_DST and d.pending == len(rest)
    tail = os.urandom(100000)                         # more behind it: a full read of copy_once would hand over
    src_peer.sendall(tail)
    src_peer.shutdown(socket.SHUT_WR)
    sent += tail
    for _ in range(100000):
        try:
            got += dst_peer.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.0002)
        if d.state is not State.DONE:
            assert d.pump() is None
        elif len(got) == len(sent):
            break
    assert got == sent and d.state is State.DONE


@pytest.mark.parametrize("pipe_size", [4096, 16384])
def test_what_a_quick_read_left_fits_a_small_pipe_size_buffer(pairs, pipe_size):
    """pipe_size may be as small as 4 KiB, but the no-Direction path reads up to QUICK (32 KiB) at once: the
    part its destination refused must fit in the buffer that holds it (it raised ValueError, an internal error
    that closed the connection), and be delivered first, byte-exact."""
    src_peer, src, dst, dst_peer = pairs()
    pool = ChannelPool("adaptive", pipe_size, 4)
    rest = os.urandom(relay.QUICK - 100)
    d = Direction(PlainEndpoint(src), PlainEndpoint(dst), pool)
    d.hold(rest)
    assert d.state is State.WAIT_DST and d.pending == len(rest) and d.channel.size >= len(rest)
    src_peer.shutdown(socket.SHUT_WR)
    got = bytearray()
    for _ in range(10000):
        if d.state is not State.DONE:
            assert d.pump() is None
        try:
            got += dst_peer.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.001)
        if d.state is State.DONE and len(got) == len(rest):
            break
    assert got == rest and d.state is State.DONE
