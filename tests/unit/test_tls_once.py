"""relay.direction.ends_once, the no-Direction path of a connection with a TLS end (its plain side given by
fd), over real sockets: a small record goes through in one call, done; a read that fills the scratch buffer
and close_notify hand over to a Direction, and the Direction delivers the rest byte-exact."""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading

import pytest

from epollmux.relay import direction as relay
from epollmux.relay.channels import ChannelPool
from epollmux.relay.direction import Direction, State
from epollmux.relay.endpoints import PlainEndpoint, TLSEndpoint
from epollmux.tls.contexts import RouteTLS, server_context
from epollmux.tls.engine import Event, TLSEngine

DEADLINE = 10.0


@pytest.fixture(scope="module")
def leaf(tls_ca):
    return tls_ca.issue(["server.example"], key="ec")


@pytest.fixture
def tls_end(leaf, tls_ca):
    """(server TLSEndpoint, the blocking client's SSLSocket) after a TLS 1.3 handshake over a socketpair."""
    srv, cli = socket.socketpair()
    srv.setblocking(False)
    end = TLSEndpoint(srv, TLSEngine(server_context(RouteTLS("s", cert=str(leaf.chain), key=str(leaf.key)))))
    out: dict = {}

    def client():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(tls_ca.cert))
        try:
            out["tls"] = ctx.wrap_socket(cli, server_hostname="server.example")
        except OSError as exc:
            out["error"] = exc

    t = threading.Thread(target=client)
    t.start()
    result = None
    for _ in range(100):
        result = end.handshake()
        if result is not None:
            break
        select.select([srv], [], [], 1)
    t.join(DEADLINE)
    assert result is Event.HANDSHAKE_DONE and "tls" in out, out
    out["tls"].settimeout(DEADLINE)
    yield end, out["tls"]
    out["tls"].close()
    srv.close()


@pytest.fixture
def plain():
    """(our non-blocking end, its blocking peer)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(DEADLINE)
    yield a, b
    a.close()
    b.close()


def once_when_readable(sock, src, dst):
    """ends_once after the source socket is readable (as on an edge)."""
    select.select([sock], [], [], DEADLINE)
    return relay.ends_once(src, dst)


def recv_exactly(sock, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "EOF before the bytes"
        got += chunk
    return got


def test_small_records_go_through_in_one_call_both_ways(tls_end, plain):
    end, client = tls_end
    ours, peer = plain
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert once_when_readable(end.sock, end, ours.fileno()) == (18, True, b"")
    assert recv_exactly(peer, 18) == b"GET / HTTP/1.1\r\n\r\n"
    peer.sendall(b"HTTP/1.1 200 OK\r\n\r\nhi")
    assert once_when_readable(ours, ours.fileno(), end) == (21, True, b"")
    assert recv_exactly(client, 21) == b"HTTP/1.1 200 OK\r\n\r\nhi"


def test_a_full_read_hands_over_and_the_direction_delivers_the_rest(tls_end, plain):
    end, client = tls_end
    ours, peer = plain
    data = os.urandom(60_000)      # 4 records, queued whole before the read (a socketpair holds them): more than
    client.sendall(data)           # the scratch buffer takes
    n, done, rest = once_when_readable(end.sock, end, ours.fileno())
    assert n == relay.QUICK and not done and rest == b""
    got = recv_exactly(peer, n)
    d = Direction(end, PlainEndpoint(ours), ChannelPool("copy", 65536, 0))
    for _ in range(10_000):
        if len(got) == len(data):
            break
        assert d.pump() is None
        if d.state is State.WAIT_SRC:
            select.select([end.sock], [], [], DEADLINE)
        got += peer.recv(1 << 20, socket.MSG_DONTWAIT) if select.select([peer], [], [], 0)[0] else b""
    assert got == data


def test_close_notify_is_end_of_file_with_nothing_moved(tls_end, plain):
    end, client = tls_end
    ours, peer = plain
    client.sendall(b"last words")
    assert once_when_readable(end.sock, end, ours.fileno()) == (10, True, b"")
    closer = threading.Thread(target=client.unwrap)   # close_notify, TCP still open; waits for ours
    closer.start()
    assert once_when_readable(end.sock, end, ours.fileno()) == (0, False, b"")
    assert recv_exactly(peer, 10) == b"last words"
    end.shutdown_write()                              # our close_notify: the client's unwrap returns
    closer.join(DEADLINE)
    assert not closer.is_alive()
