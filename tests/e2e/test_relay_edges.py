"""Edge cases of edge-triggered relaying, through the real daemon: each would hang (a lost wake-up) or lose
bytes if a pump stopped reading on the wrong evidence.

A copy pump (plain copy relay, TLS) ends without the read that only returns EAGAIN when a short read on a
clean readable edge proved the socket empty (relay.Direction.pump). These tests attack that rule: small
writes with random pauses both ways, data with the FIN right behind it (RDHUP on the same edge), data with
close_notify right behind it and no FIN, RST after data, TLS records cut across segments, 64 MiB byte-exact.
Each test runs per relay: copy, TLS (terminated, plain backend) and splice with 64 KiB pipes (16 slots: many
splices come back short with bytes still queued, so a pump that trusted them would hang).
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import threading
import time

import pytest

from support.net import connect, free_port, recv_all
from support.daemon import stats

VARIANTS = ["copy", "tls", "splice"]
STEP = 10.0        # seconds any single receive may wait: a lost wake-up fails here, not at the test timeout


def _config(port: int, backend: int, relay: str, leaf=None) -> str:
    route = f"  probe = any\n  backend = 127.0.0.1:{backend}\n"
    if leaf is not None:
        route = f"  probe = tls\n  tls_cert = {leaf.chain}\n  tls_key = {leaf.key}\n  backend = 127.0.0.1:{backend}\n"
    relay = "relay = copy\n" if relay == "copy" else "relay = splice\npipe_size = 65536\n"   # 16 slots: short splices
    return (f"[global]\nworkers = 1\nlog_level = info\n{relay}"
            f"[listen]\n  [[main]]\n  address = 127.0.0.1:{port}\n[routes]\n  [[all]]\n{route}")


class PlainPeer:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def end(self, data: bytes = b"", fin: bool = True) -> None:
        """data, then the end of our stream, in as few segments as the kernel makes."""
        self.sock.sendall(data)
        self.sock.shutdown(socket.SHUT_WR)

    def recv(self, size: int = 65536) -> bytes:
        return self.sock.recv(size)


class TLSPeer:
    """A TLS client over MemoryBIOs: the test decides which ciphertext goes out in which segment."""

    def __init__(self, sock: socket.socket, ca):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = ssl.create_default_context(cafile=str(ca))
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="edge.example")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    sock.sendall(self.outgoing.read())
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                self.incoming.write(data)
        if self.outgoing.pending:
            sock.sendall(self.outgoing.read())

    def records(self, data: bytes) -> bytes:
        view = memoryview(data)
        for i in range(0, len(data), 1 << 20):
            self.tls.write(view[i:i + (1 << 20)])
        return self.outgoing.read()

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.records(data))

    def close_notify(self) -> bytes:
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        return self.outgoing.read()

    def end(self, data: bytes = b"", fin: bool = True) -> None:
        """data and close_notify in one sendall; then the FIN unless fin=False."""
        self.sock.sendall(self.records(data) + self.close_notify())
        if fin:
            self.sock.shutdown(socket.SHUT_WR)

    def recv(self, size: int = 65536) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""


class Relayed:
    """A daemon with one route to a backend thread; open() -> a peer (plain or TLS) through it."""

    def __init__(self, variant: str, daemon, server, ca):
        self.variant, self.daemon, self.server, self.ca = variant, daemon, server, ca

    def start(self, handle) -> "Relayed":
        self.backend = self.server(handle)
        self.port = free_port()
        leaf = self.ca.issue("edge.example") if self.variant == "tls" else None
        self.d = self.daemon().start(_config(self.port, self.backend.port, self.variant, leaf), wait=self.port)
        return self

    def open(self):
        sock = connect(self.port, timeout=STEP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return TLSPeer(sock, self.ca.cert) if self.variant == "tls" else PlainPeer(sock)


@pytest.fixture(params=VARIANTS)
def relayed(request, daemon, server, tls_ca):
    return Relayed(request.param, daemon, server, tls_ca)


def recv_exact(peer, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = peer.recv(n - len(got))
        assert chunk, f"stream ended after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def recv_to_end(peer) -> bytes:
    got = bytearray()
    while chunk := peer.recv(1 << 20):
        got += chunk
    return bytes(got)


def chatty_echo(sock: socket.socket) -> None:
    """Echo each read back in two pieces with random pauses: many small segments, both ways."""
    rng = random.Random(sock.fileno())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := sock.recv(65536):
        cut = rng.randrange(len(data) + 1)
        time.sleep(rng.choice((0, 0, 0.0005, 0.002)))
        sock.sendall(data[:cut])
        time.sleep(rng.choice((0, 0, 0.0005, 0.002)))
        sock.sendall(data[cut:])
    sock.shutdown(socket.SHUT_WR)


def digest_at_eof(sock: socket.socket) -> None:
    """Read to EOF, then answer with the SHA-256 of it all and close: the answer needs the EOF relayed."""
    sock.sendall(hashlib.sha256(recv_all(sock)).digest())
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.timeout(90)
def test_small_writes_with_random_pauses_both_ways(relayed):
    relayed.start(chatty_echo)
    rng = random.Random(6)
    peer = relayed.open()
    for _ in range(300):         # ping-pong: each answer waits on the wake-up of the last segment
        msg = rng.randbytes(rng.choice((1, 5, 100, 1400, 3000, 20000)))
        peer.send(msg)
        assert recv_exact(peer, len(msg)) == msg
        time.sleep(rng.choice((0, 0, 0.0003, 0.001)))
    sent = []

    def writer():                # streaming: small writes with pauses while the echo flows back
        wrng = random.Random(7)
        for _ in range(400):
            msg = wrng.randbytes(wrng.choice((1, 10, 500, 1500, 4000)))
            sent.append(msg)
            peer.send(msg)
            if wrng.random() < 0.3:
                time.sleep(wrng.choice((0.0002, 0.001, 0.003)))

    t = threading.Thread(target=writer)
    if relayed.variant == "tls":  # one SSLObject, no concurrent use: write it all (~0.5 MB fits the buffers)
        writer()
    else:
        t.start()
    total = bytearray()
    while t.is_alive() or len(total) < sum(map(len, sent)):
        chunk = peer.recv(65536)
        assert chunk, "echo ended early"
        total += chunk
    expected = b"".join(sent)
    assert total == expected
    peer.end()
    assert recv_to_end(peer) == b""


@pytest.mark.timeout(90)
def test_data_then_fin_at_once_every_time(relayed):
    """The FIN right behind the data: often both are queued before the daemon collects the edge (IN|RDHUP),
    and no later edge comes; the pump must read on to the 0."""
    relayed.start(digest_at_eof)
    rng = random.Random(8)
    for i in range(60):
        peer = relayed.open()
        if i % 2:                # relay established first, so the data+FIN edge meets a waiting pump
            peer.send(b"x")
            time.sleep(0.005)
            data = b"x" + rng.randbytes(rng.choice((1, 700, 5000)))
            peer.end(data[1:])
        else:
            data = rng.randbytes(rng.choice((1, 700, 5000)))
            peer.end(data)
        assert recv_exact(peer, 32) == hashlib.sha256(data).digest(), f"connection {i}"
        peer.sock.close()


@pytest.mark.timeout(90)
def test_backend_data_then_fin_at_once_every_time(relayed):
    """The other way: the backend answers and closes at once; the client must see all of it and the end."""
    def answer_and_close(sock):
        n = int(sock.recv(16))
        sock.sendall(random.Random(n).randbytes(n))
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)

    relayed.start(answer_and_close)
    for i in range(60):
        n = (1, 900, 6000, 70000)[i % 4]
        peer = relayed.open()
        peer.send(b"%d" % n)
        assert recv_to_end(peer) == random.Random(n).randbytes(n), f"connection {i}"
        peer.sock.close()


@pytest.mark.timeout(60)
def test_rst_after_data_ends_the_backend_side(relayed):
    """Data then RST (right behind it, or after the data was relayed): the backend sees the end, the daemon
    goes on serving."""
    ends = []

    def watch(sock):
        try:
            got = recv_all(sock)
        except ConnectionResetError:
            got = None
        ends.append(got)

    relayed.start(watch)
    for delay in (0, 0.05, 0, 0.05):
        peer = relayed.open()
        peer.send(b"hello" * 100)
        time.sleep(delay)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.sock.close()
    backend = relayed.backend
    deadline = time.monotonic() + STEP      # a RST may beat the backend connect (TLS: right after the handshake)
    while len(ends) < backend.accepted and time.monotonic() < deadline or time.monotonic() < deadline - STEP + 0.3:
        time.sleep(0.02)
    assert backend.accepted >= 2 and len(ends) == backend.accepted, f"{len(ends)} ends of {backend.accepted}"
    relayed.backend.handle = chatty_echo
    peer = relayed.open()
    peer.send(b"still here")
    assert recv_exact(peer, 10) == b"still here"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("direction", ["up", "down"])
def test_64mib_byte_exact(relayed, direction):
    size = 64 << 20
    rng = random.Random(64)
    if direction == "up":
        relayed.start(digest_at_eof)
        data = rng.randbytes(size)
        peer = relayed.open()
        peer.sock.settimeout(60)
        i = 0
        while i < size:
            n = rng.choice((1, 100, 1500, 16384, 65536, 300000, 1 << 20))
            peer.send(data[i:i + n])
            i += n
        peer.end()
        assert recv_exact(peer, 32) == hashlib.sha256(data).digest()
    else:
        def send_random_chunks(sock):
            srng = random.Random(65)
            sock.recv(1)
            i = 0
            while i < size:
                n = srng.choice((1, 100, 1500, 16384, 65536, 300000))
                sock.sendall(rng_data[i:i + n])
                i += n
            sock.shutdown(socket.SHUT_WR)
            recv_all(sock)

        rng_data = rng.randbytes(size)
        relayed.start(send_random_chunks)
        peer = relayed.open()
        peer.sock.settimeout(60)
        peer.send(b"g")
        got = recv_to_end(peer)
        assert len(got) == size and hashlib.sha256(got).digest() == hashlib.sha256(rng_data).digest()


# --- TLS only: what the engine holds matters, not only the socket ------------------------------------------
@pytest.fixture
def tls_relayed(daemon, server, tls_ca):
    return Relayed("tls", daemon, server, tls_ca)


@pytest.mark.timeout(60)
def test_tls_data_and_close_notify_in_one_segment_without_fin(tls_relayed):
    """The socket is empty after one short read, but the engine still holds the close_notify behind the
    data: the pump must take it (EOF to the backend) although no FIN and no further edge come."""
    tls_relayed.start(digest_at_eof)
    rng = random.Random(9)
    for i in range(20):
        peer = tls_relayed.open()
        if i % 2:
            peer.send(b"x")
            time.sleep(0.005)
            data = b"x" + rng.randbytes(rng.choice((1, 3000)))
            peer.end(data[1:], fin=False)
        else:
            data = rng.randbytes(rng.choice((1, 3000)))
            peer.end(data, fin=False)
        assert recv_exact(peer, 32) == hashlib.sha256(data).digest(), f"connection {i}"
        peer.sock.close()


@pytest.mark.timeout(60)
def test_tls_records_split_across_segments(tls_relayed):
    """Records cut anywhere (inside the 5-byte header too), the pieces sent apart: each piece is a new
    edge; a short read that leaves half a record in the engine must wait for it, not lose it."""
    tls_relayed.start(chatty_echo)
    rng = random.Random(10)
    peer = tls_relayed.open()
    for round_ in range(40):
        msgs = [rng.randbytes(rng.choice((1, 50, 5000, 16384))) for _ in range(rng.choice((1, 2, 3)))]
        wire = b"".join(peer.records(m) for m in msgs)
        cuts = sorted(rng.sample(range(1, len(wire)), min(3, len(wire) - 1)) + [2, 7])
        start = 0
        for cut in [c for c in cuts if 0 < c < len(wire)] + [len(wire)]:
            if cut > start:
                peer.sock.sendall(wire[start:cut])
                start = cut
                time.sleep(rng.choice((0.001, 0.005)))
        want = b"".join(msgs)
        assert recv_exact(peer, len(want)) == want, f"round {round_}"


@pytest.mark.timeout(60)
def test_bursts_of_tiny_segments(relayed):
    """Many tiny segments sent back to back, then a wait for their echo: the queue holds more skbs than a
    64 KiB pipe has slots (16), so a splice comes back short with bytes left and no edge to come."""
    relayed.start(chatty_echo)
    rng = random.Random(11)
    peer = relayed.open()
    for burst in range(60):
        msgs = [rng.randbytes(rng.choice((1, 20, 60))) for _ in range(rng.choice((20, 40, 80)))]
        if relayed.variant == "tls":
            for m in msgs:
                peer.send(m)
        else:
            for m in msgs:
                peer.sock.send(m)
        want = b"".join(msgs)
        assert recv_exact(peer, len(want)) == want, f"burst {burst}"


@pytest.mark.timeout(60)
def test_idle_connections_hold_no_channel(relayed):
    """A pump that stops on a short read (no EAGAIN read) gives its buffer back all the same: idle
    connections, after traffic both ways, hold no pipe and no buffer."""
    relayed.start(chatty_echo)
    peers = [relayed.open() for _ in range(20)]
    for i, peer in enumerate(peers):
        peer.send(b"ping %d" % i)
        assert recv_exact(peer, len(b"ping %d" % i)) == b"ping %d" % i
    time.sleep(0.2)
    block = stats(relayed.d)
    assert " channels_lent=0 " in block + " ", block
