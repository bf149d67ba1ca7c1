"""The relay contract's machinery: one daemon per test with one route to a thread backend, relaying by
one variant, and a client peer that speaks plain TCP or TLS (over MemoryBIOs, so a test decides which
ciphertext goes out in which segment). e2e/test_relay_contract.py writes the contract once with these.

Variants: splice (64 KiB pipes: 16 slots, so many splices come back short with bytes still queued),
copy, tls (terminated by the daemon, plain backend; relays by copy) and sockmap (the kernel relay; skipped
with the reason where the maps cannot load)."""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import time

import pytest

from epollmux.relay import sockmap
from support.daemon import make_config
from support.net import connect, free_port, recv_all

STEP = 10.0        # seconds any single receive may wait: a lost wake-up fails here, not at the test timeout


def sockmap_unavailable() -> str | None:
    try:
        sockmap.Sockmap.load(max_entries=2).close()
    except sockmap.SockmapUnavailable as exc:
        return f"sockmap unavailable here: {exc.reason}"
    return None


VARIANTS = ["adaptive", "splice", "copy", "tls",
            pytest.param("sockmap", marks=pytest.mark.skipif(bool(sockmap_unavailable()),
                                                             reason=sockmap_unavailable() or ""))]
RELAY_OPTIONS = {"adaptive": {"relay": "adaptive", "pipe_size": 65536},
                 "splice": {"relay": "splice", "pipe_size": 65536}, "copy": {"relay": "copy"},
                 "tls": {"relay": "splice", "pipe_size": 65536}, "sockmap": {"relay": "sockmap"}}


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

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()


class TLSPeer(PlainPeer):
    """A TLS client over MemoryBIOs: the test decides which ciphertext goes out in which segment."""

    def __init__(self, sock: socket.socket, ca):
        super().__init__(sock)
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
    """A daemon (one worker) with one route to a backend thread; open() -> a peer (plain or TLS) through it."""

    def __init__(self, variant: str, daemon, server, ca):
        self.variant, self.daemon, self.server, self.ca = variant, daemon, server, ca

    def start(self, handle, **global_) -> "Relayed":
        self.backend = self.server(handle)
        self.port = free_port()
        route = {"probe": "any", "backend": f"127.0.0.1:{self.backend.port}"}
        if self.variant == "tls":
            leaf = self.ca.issue("edge.example")
            route = {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key, "backend": route["backend"]}
        options = {"workers": 1, "log_level": "info", **RELAY_OPTIONS[self.variant], **global_}
        self.d = self.daemon().start(make_config(self.port, {"all": route}, **options), ready=True)
        return self

    def open(self, timeout: float = STEP):
        sock = connect(self.port, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return TLSPeer(sock, self.ca.cert) if self.variant == "tls" else PlainPeer(sock)


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


def random_chunks(data: bytes, rng: random.Random, sizes=(1, 7, 100, 1500, 4096, 65536, 300000)):
    i = 0
    while i < len(data):
        n = rng.choice(sizes)
        yield data[i:i + n]
        i += n


def chatty_echo(sock: socket.socket) -> None:
    """Echo each read back in two pieces with random gaps: many small segments, both ways."""
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
