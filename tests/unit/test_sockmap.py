"""The kernel relay (epollmux/sockmap.py) on real loopback sockets, no daemon: what the kernel does
with a paired socket and what the caller has to do about it, one behaviour per test.

The tests that relay a whole exchange drive epollmux.relay.kernel itself (`Relayed`: a real reactor,
a stand-in connection): end a connection whose kernel backlog passed the limit when the ring says it moved,
pass EOF on once `pending` is 0, and treat an error as a reset. Skipped where the maps cannot be loaded (not root, no
sockmap in the kernel)."""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from support.daemon import REPO
from epollmux.relay import kernel as kernelrelay
from epollmux.relay import bpf
from epollmux.relay import sockmap as sm
from epollmux.relay.kernel import KernelRelay
from epollmux.reactor import Reactor

MiB = 1 << 20
NOTIFY = 1 * MiB


@pytest.fixture(scope="module")
def maps():
    try:
        m = sm.Sockmap.load(notify=NOTIFY)
    except sm.SockmapUnavailable as exc:
        pytest.skip(f"sockmap unavailable: {exc.reason}")
    yield m
    m.close()


@pytest.fixture
def conns():
    """conns(family) -> (client_peer, C, B, backend_peer): C accepted from the client peer, B
    connected to the backend peer; C and B are the daemon's two sockets."""
    made = []

    def make(host: str = "127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as lst:
            lst.bind((host, 0))
            lst.listen(4)
            client_peer = socket.create_connection(lst.getsockname()[:2])
            c, _ = lst.accept()
            b = socket.create_connection(lst.getsockname()[:2])
            backend_peer, _ = lst.accept()
        socks = (client_peer, c, b, backend_peer)
        for s in socks:
            s.settimeout(20)
        made.extend(socks)
        return socks

    yield make
    for s in made:
        s.close()


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def read_into(sock: socket.socket, out: bytearray, delay: float = 0.0, size: int = MiB) -> threading.Thread:
    def run():
        try:
            while data := sock.recv(size):
                out.extend(data)
                if delay:
                    time.sleep(delay)
        except OSError:          # closed under it at the end of a test
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def write_from(sock: socket.socket, data: bytes, rng: random.Random | None = None, shut: bool = True):
    def run():
        view, i = memoryview(data), 0
        while i < len(data):
            n = rng.choice((1, 100, 1500, 65536, 300000)) if rng else 1 << 16
            try:
                sock.sendall(view[i:i + n])
            except (BrokenPipeError, ConnectionResetError):     # the test shut it down under us
                return
            i += n
        if shut:
            sock.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


# --- the daemon's relay on one pair ----------------------------------------------------------------

class Conn:
    """What kernelrelay.KernelRelay needs of a connection (connection.py in the daemon): `dispatch`
    runs a handler and the first close reason it returns ends the connection, `touch` records
    activity; the two sockets' events go to `socket_event`. Errors raise here instead of closing, so a test sees them."""

    def __init__(self, relay: KernelRelay):
        self.relay, self.reason, self.last_active = relay, None, 0.0

    def touch(self, now: float) -> None:
        self.last_active = now

    def dispatch(self, handler, *args) -> None:
        if self.reason is None:
            reason = handler(*args)
            if isinstance(reason, str):
                self.reason = reason

    def on_event(self, fd: int, events: int) -> None:
        self.dispatch(self.relay.socket_event, self, fd, events)


class Relayed:
    """One client/backend pair in the hands of epollmux.relay.kernel, driven by a real reactor: the
    ring and the sockets' RDHUP/errors wake it, a short timer runs while a direction is passing EOF on. `run()` returns the close reason ("eof", "reset", "timeout")."""

    def __init__(self, maps: sm.Sockmap, c: socket.socket, b: socket.socket, limit: int = kernelrelay.LIMIT):
        self.maps, self.reactor = maps, Reactor()
        self.relay = KernelRelay(self.reactor, "sockmap", limit=limit, maps=maps)
        self.conn = Conn(self.relay)
        for sock in (c, b):
            sock.setblocking(False)                    # as the daemon's sockets are
            self.reactor.register(sock.fileno(), kernelrelay.PAIRED_EVENTS, self.conn)
        assert self.relay.take(self.conn, c, b)
        self.pair = self.relay.links[self.conn].pair

    def run(self, timeout: float = 60.0) -> str:
        timer = self.reactor.call_later(timeout, lambda: setattr(self.conn, "reason", "timeout"))
        try:
            while self.conn.reason is None:
                self.reactor.run_once()
        finally:
            timer.cancel()
        return self.conn.reason

    def release(self) -> tuple[int, int]:
        """Out of the maps, as before the daemon closes; (up, down) bytes moved."""
        counts = self.relay.release(self.conn)
        self.reactor.forget(self.maps.fileno())       # the maps outlive this reactor
        self.reactor.close()
        return counts


# --- the program and its loading -----------------------------------------------------------------

def test_assembler_resolves_labels_in_slots():
    prog = bpf.assemble([bpf.jump(bpf.JEQ, "end", bpf.R1, imm=0), bpf.load_map(bpf.R1, 7), "end", bpf.exit_()])
    assert len(prog) == 4 * 8
    code, regs, off, imm = struct.unpack_from("<BBhi", prog, 0)
    assert (code, regs & 0xF, off, imm) == (bpf.JMP | bpf.JEQ | bpf.K, bpf.R1, 2, 0)   # skips both map slots
    assert len(bpf.verdict_program(3, 4, 5, 20)) % 8 == 0


def test_load_gives_maps_and_program(maps):
    assert set(maps.fds) == {"targets", "sources", "usage", "ring", "prog"}
    assert maps.notify == NOTIFY


CHILD = """
import ctypes, os, struct, sys
sys.path.insert(0, {repo!r})
from epollmux.relay import sockmap     # imported first: the interpreter may live where nobody can read
mode = sys.argv[1]
if mode == "nobody":
    os.setgid(65534); os.setuid(65534)
else:   # root without CAP_SYS_ADMIN(21), CAP_NET_ADMIN(12), CAP_PERFMON(38), CAP_BPF(39)
    libc = ctypes.CDLL(None, use_errno=True)
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(24)
    assert libc.capget(hdr, data) == 0
    eff0, perm0, inh0, eff1, perm1, inh1 = struct.unpack("<6I", data.raw)
    lo, hi = ~((1 << 21) | (1 << 12)) & 0xFFFFFFFF, ~((1 << 6) | (1 << 7)) & 0xFFFFFFFF
    new = struct.pack("<6I", eff0 & lo, perm0 & lo, inh0 & lo, eff1 & hi, perm1 & hi, inh1 & hi)
    assert libc.capset(hdr, new) == 0, ctypes.get_errno()
try:
    sockmap.Sockmap.load()
except sockmap.SockmapUnavailable as exc:
    print("unavailable:", exc.reason)
else:
    print("loaded")
"""


@pytest.mark.parametrize("mode", ["nobody", "no-caps"])
def test_load_fails_cleanly_without_privileges(maps, mode):
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("unavailable: "), out.stdout
    assert "Operation not permitted" in out.stdout and "CAP_BPF" in out.stdout


# --- what a paired socket does -------------------------------------------------------------------
def watch(mask: int, *socks) -> select.epoll:
    """An epoll watching socks for mask: what the worker would be woken by."""
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), mask)
    return ep


def test_bytes_flow_both_ways_without_reading_or_waking(maps, conns):
    cp, c, b, bp = conns()
    pair = maps.add_pair(c, b)
    ep = watch(select.EPOLLIN | select.EPOLLRDHUP, c, b)
    up, down = os.urandom(MiB), os.urandom(MiB)
    got_up, got_down = bytearray(), bytearray()
    readers = [read_into(bp, got_up), read_into(cp, got_down)]
    writers = [write_from(cp, up, shut=False), write_from(bp, down, shut=False)]
    for t in writers:
        t.join(10)
    wait_for(lambda: len(got_up) == len(up) and len(got_down) == len(down))
    assert ep.poll(0.1) == []                      # no event: payload never wakes the process
    assert bytes(got_up) == up and bytes(got_down) == down
    assert sm.unread(c) == 0 and sm.unread(b) == 0
    assert pair.up.redirected() == len(up) and pair.down.redirected() == len(down)
    assert pair.up.moved() == len(up) and pair.down.moved() == len(down)
    cp.shutdown(socket.SHUT_WR)
    bp.shutdown(socket.SHUT_WR)
    for t in readers:
        t.join(0)
    ep.close()


def test_queued_bytes_are_relayed_first(maps, conns):
    """The sniffer peeked the client's first bytes and the backend spoke first (a banner): both
    are still queued when the pair is added, and both arrive first, in order."""
    cp, c, b, bp = conns()
    cp.sendall(b"HELLO ")
    bp.sendall(b"SSH-2.0-banner\r\n")
    wait_for(lambda: sm.unread(c) == 6 and sm.unread(b) == 16)
    assert c.recv(64, socket.MSG_PEEK) == b"HELLO "
    maps.add_pair(c, b)
    assert cp.recv(64) == b"SSH-2.0-banner\r\n"
    cp.sendall(b"world")
    got = b""
    while len(got) < 11:
        got += bp.recv(64)
    assert got == b"HELLO world"


def test_fin_reaches_the_source_but_is_not_passed_on(maps, conns):
    cp, c, b, bp = conns()
    pair = maps.add_pair(c, b)
    ep = watch(select.EPOLLIN | select.EPOLLRDHUP, c, b)
    cp.sendall(b"request")
    cp.shutdown(socket.SHUT_WR)
    events = dict(ep.poll(2))
    assert events.get(c.fileno(), 0) & select.EPOLLRDHUP
    assert b.fileno() not in events                  # a bare FIN is dropped by the program: no EPIPE on b
    assert b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    c.setblocking(False)
    assert c.recv(64) == b""                          # the daemon may also see it as recv() == b""
    assert bp.recv(64) == b"request"
    bp.settimeout(0.3)
    with pytest.raises(TimeoutError):                 # ...but the backend does not see it
        bp.recv(64)
    wait_for(lambda: pair.up.pending(eof=True) == 0)
    b.shutdown(socket.SHUT_WR)                        # the daemon passes it on
    bp.settimeout(5)
    assert bp.recv(64) == b""
    bp.sendall(b"late answer")                        # the other direction goes on
    assert cp.recv(64) == b"late answer"
    ep.close()


def test_half_close_both_ways_through_the_relay(maps, conns):
    cp, c, b, bp = conns()
    relay = Relayed(maps, c, b)

    def backend():
        assert bp.recv(64) == b"QUERY"
        assert bp.recv(64) == b""                     # the client's EOF arrived
        bp.sendall(b"ANSWER after your EOF")
        bp.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=backend, daemon=True)
    t.start()
    cp.sendall(b"QUERY")
    cp.shutdown(socket.SHUT_WR)
    assert relay.run(20) == "eof"
    assert relay.release() == (5, 21)
    t.join(5)
    assert cp.recv(64) == b"ANSWER after your EOF"
    assert cp.recv(64) == b""


def test_64mib_each_way_at_once_byte_exact(maps, conns):
    cp, c, b, bp = conns()
    relay = Relayed(maps, c, b)
    rng = random.Random(9)
    up, down = os.urandom(64 * MiB), os.urandom(64 * MiB)
    got_up, got_down = bytearray(), bytearray()
    threads = [read_into(bp, got_up), read_into(cp, got_down),
               write_from(cp, up, rng=random.Random(1)), write_from(bp, down, rng=rng)]
    assert relay.run(60) == "eof"
    assert relay.release() == (len(up), len(down))
    for t in threads:
        t.join(10)
    assert len(got_up) == len(up) and bytes(got_up) == up
    assert len(got_down) == len(down) and bytes(got_down) == down


def test_reset_is_an_error_on_the_reset_socket(maps, conns):
    cp, c, b, bp = conns()
    maps.add_pair(c, b)
    ep = watch(select.EPOLLRDHUP, c, b)
    bp.sendall(b"x")
    assert cp.recv(1) == b"x"
    reset(cp)
    events = dict(ep.poll(2))
    assert events[c.fileno()] & (select.EPOLLERR | select.EPOLLHUP) == select.EPOLLERR | select.EPOLLHUP
    assert b.fileno() not in events
    assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    ep.close()


def test_reset_seen_by_the_relay_and_passed_on(maps, conns):
    cp, c, b, bp = conns()
    relay = Relayed(maps, c, b)
    threading.Timer(0.2, reset, (bp,)).start()
    assert relay.run(10) == "reset"
    relay.release()
    reset(c)                                           # what connection.py does: RST the other side
    with pytest.raises(ConnectionResetError):
        cp.recv(10)


# --- memory: the kernel has no backpressure, the limit ends the connection ----------------------------------

def test_slow_reader_unbounded_in_the_kernel(maps, conns):
    """Nothing slows the sender: what the reader does not take piles up in kernel memory that no
    socket is charged for (`ss -m` shows only the destination's own send queue)."""
    cp, c, b, bp = conns()
    pair = maps.add_pair(c, b)
    total = 128 * MiB
    writer = write_from(cp, b"\x5a" * total, shut=False)
    writer.join(20)
    assert not writer.is_alive()                       # all 128 MiB accepted although bp reads nothing
    wait_for(lambda: pair.up.redirected() == total)
    room = 2 * sm.SNDBUF + 16 * MiB                    # b's send queue (add_pair sizes it) and bp's receive queue
    assert pair.up.backlog() > total - room
    charged = sm.unsent(b) + sm.unread(bp) + sm.unread(c)
    assert charged < room                              # what sockets account for: a fraction
    bp.setblocking(True)
    got = 0
    while got < total:
        got += len(bp.recv(MiB))
    assert pair.up.backlog() == 0


def test_slow_reader_within_the_limit_gets_every_byte(maps, conns):
    cp, c, b, bp = conns()
    relay = Relayed(maps, c, b, limit=64 * MiB)
    total = 24 * MiB                                     # less than the limit: never over it
    data = os.urandom(total)
    got = bytearray()
    threads = [read_into(bp, got, delay=0.0005, size=1 << 16), write_from(cp, data), write_from(bp, b"")]
    assert relay.run(90) == "eof"
    assert relay.release() == (total, 0)
    for t in threads:
        t.join(10)
    assert bytes(got) == data


def test_backlog_over_the_limit_ends_the_connection(maps, conns):
    """No backpressure exists on this path: a reader that takes nothing lets the kernel queue grow
    until the worker ends the connection (reason kernel-backlog) instead of holding more."""
    cp, c, b, bp = conns()
    relay = Relayed(maps, c, b, limit=16 * MiB)
    writer = write_from(cp, b"\x5a" * (256 * MiB), shut=False)
    assert relay.run(60) == "kernel-backlog"
    assert relay.relay.overruns == 1 and relay.relay.max_backlog > 16 * MiB
    relay.release()
    cp.shutdown(socket.SHUT_RDWR)      # wakes the writer's blocked sendall (EPIPE) before its fd is closed
    writer.join(10)
    assert not writer.is_alive()
    reset(cp)


def test_socket_read_from_is_refused_and_nothing_is_left(maps, conns):
    """A PROXY header taken with recv() out of the skb that also carries the first payload: the
    kernel would relay the whole skb, header included, so such a socket is never paired."""
    cp, c, b, bp = conns()
    cp.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\npayload")
    wait_for(lambda: sm.tcp_bytes(c)[0] == 39)
    assert c.recv(32) == b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    with pytest.raises(OSError) as caught:
        maps.add_pair(c, b)
    assert caught.value.errno == errno.EOPNOTSUPP
    assert sm.cookie(c) not in maps.flows and sm.cookie(b) not in maps.flows
    assert c.recv(64) == b"payload"


# --- lifecycle -----------------------------------------------------------------------------------

def test_socket_with_fin_already_received_is_refused_and_nothing_is_left(maps, conns):
    cp, c, b, bp = conns()
    request = b"GET / HTTP/1.0\r\n\r\n"
    cp.sendall(request)
    cp.shutdown(socket.SHUT_WR)
    wait_for(lambda: sm.tcp_bytes(c)[0] == len(request) + 1)      # data and FIN
    with pytest.raises(OSError) as caught:
        maps.add_pair(c, b)
    assert caught.value.errno == errno.EOPNOTSUPP
    assert sm.cookie(c) not in maps.flows and sm.cookie(b) not in maps.flows
    cp2, c2, b2, bp2 = conns()
    maps.add_pair(c2, b)                                 # b was rolled back: usable again
    cp2.sendall(b"ok")
    assert bp.recv(2) == b"ok"


def test_paired_sockets_get_room_for_the_kernels_sender(maps, conns):
    """The kworker that sends redirected bytes sleeps a jiffy whenever the send queue is full: both
    sockets get a fixed send buffer well past autotuning's 4 MiB (the kernel reports it doubled)."""
    cp, c, b, bp = conns()
    assert c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * sm.SNDBUF
    maps.add_pair(c, b)
    for sock in (c, b):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * sm.SNDBUF


def test_remove_pair_gives_plain_sockets_back(maps, conns):
    cp, c, b, bp = conns()
    pair = maps.add_pair(c, b)
    cp.sendall(b"kernel")
    assert bp.recv(64) == b"kernel"
    maps.remove_pair(pair)
    assert pair.up.key not in maps.flows and pair.down.key not in maps.flows
    cp.sendall(b"process")
    assert c.recv(64) == b"process"
    b.sendall(b"by hand")
    assert bp.recv(64) == b"by hand"


def test_ipv6(maps, conns):
    try:
        cp, c, b, bp = conns("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    maps.add_pair(c, b)
    cp.sendall(b"v6 up")
    assert bp.recv(64) == b"v6 up"
    bp.sendall(b"v6 down")
    assert cp.recv(64) == b"v6 down"


def test_full_map_refuses_and_leaves_nothing(conns):
    try:
        small = sm.Sockmap.load(max_entries=2)
    except sm.SockmapUnavailable as exc:
        pytest.skip(exc.reason)
    try:
        cp, c, b, bp = conns()
        small.add_pair(c, b)
        _, c2, b2, _ = conns()
        with pytest.raises(OSError) as caught:
            small.add_pair(c2, b2)
        assert caught.value.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM)
        assert len(small.flows) == 2
        cp.sendall(b"still relayed")
        assert bp.recv(64) == b"still relayed"
    finally:
        small.close()


def test_ring_names_the_flows_that_moved(maps, conns):
    cp, c, b, bp = conns()
    pair = maps.add_pair(c, b)
    maps.notified()                                      # whatever earlier tests left
    got = bytearray()
    reader = read_into(bp, got)
    cp.sendall(b"\0" * (3 * NOTIFY + 10))
    wait_for(lambda: len(got) == 3 * NOTIFY + 10)
    ep = select.epoll()
    ep.register(maps.fileno(), select.EPOLLIN)
    assert ep.poll(1)
    assert maps.notified() == [pair.up]                 # three crossings, one entry
    assert maps.notified() == []
    cp.shutdown(socket.SHUT_WR)
    reader.join(0)
    ep.close()


def test_tcp_bytes_counts_data_and_fin(conns):
    cp, c, b, bp = conns()
    cp.sendall(b"12345")
    cp.shutdown(socket.SHUT_WR)
    assert c.recv(10) == b"12345" and c.recv(10) == b""
    assert sm.tcp_bytes(c)[0] == 5 + 1                   # the FIN counts as a byte
    c.sendall(b"abc")
    assert cp.recv(10) == b"abc"
    wait_for(lambda: sm.tcp_bytes(c)[1] == 3)


def test_unix_sockets_are_refused_and_nothing_is_left(maps):
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    with a, a_peer, b, b_peer:
        before = dict(maps.flows)
        with pytest.raises(OSError) as caught:
            maps.add_pair(a, b)
        assert caught.value.errno == errno.EOPNOTSUPP
        assert maps.flows == before
