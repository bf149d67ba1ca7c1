"""The end of a terminated TLS connection when the backend finishes first: the daemon passes the backend's
FIN on as close_notify (and the TCP FIN behind it) and keeps relaying the other way, since the client may
go on sending after it (RFC 8446 6.1; the relay contract's `test_backend_half_closes_first_and_keeps_reading`
runs that over TLS). So there is no shutdown deadline of its own: a client that never answers close_notify
is held like any other quiet half-closed connection, and idle_timeout ends it (TCP keepalive, a stop's
drain_timeout likewise)."""

from __future__ import annotations

import socket
import ssl

from support.net import recv_all, wait_until
from support.relaycontract import STEP, Relayed


def until_close_notify(peer) -> bytes:
    """Plaintext up to the daemon's close_notify (ssl's read then gives b""); a TCP EOF before it fails."""
    got = b""
    while True:
        try:
            chunk = peer.tls.read(65536)
            if not chunk:
                return got
            got += chunk
        except ssl.SSLWantReadError:
            data = peer.sock.recv(65536)
            assert data, f"TCP EOF without close_notify after {got!r}"
            peer.incoming.write(data)
        except ssl.SSLZeroReturnError:
            return got


def test_a_client_that_never_answers_close_notify_is_ended_by_idle_timeout(daemon, server, tls_ca):
    backend_got = []

    def handle(sock):
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)
        backend_got.append(recv_all(sock))

    relayed = Relayed("tls", daemon, server, tls_ca).start(handle, idle_timeout=1)
    peer = relayed.open()
    assert until_close_notify(peer) == b"bye"         # this peer never answers the close_notify
    text = relayed.d.wait_log(" reason=idle-timeout", timeout=STEP)
    assert text.count(" reason=") == 1, text[-2000:]
    wait_until(lambda: backend_got == [b""], STEP, "the backend's EOF")
    peer.sock.settimeout(STEP)
    try:
        assert peer.sock.recv(1) == b""                # the client's TCP connection is over too
    except ConnectionResetError:
        pass
