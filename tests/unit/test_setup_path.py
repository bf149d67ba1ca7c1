"""Connection set-up pieces with fewer Python calls: TLSEndpoint.handshake over a real socket pair,
an engine whose sni_callback records and switches, call_soon with arguments."""

from __future__ import annotations

import select
import socket
import ssl
import threading

import pytest

from epollmux.relay.endpoints import TLSEndpoint
from epollmux.reactor import Reactor
from epollmux.tls.contexts import RouteTLS, server_context
from epollmux.tls.engine import CloseReason, Event, TLSEngine, record_sni


@pytest.fixture(scope="module")
def leaf(tls_ca):
    return tls_ca.issue(["server.example"], key="ec")


def _client(tls_ca, sock: socket.socket, out: dict, finished: threading.Event) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(tls_ca.cert))
    try:
        with ctx.wrap_socket(sock, server_hostname="server.example") as tls:
            out["cipher"] = tls.cipher()
            tls.sendall(b"hello")
            finished.wait(5)          # stay open until the test has read
    except OSError as exc:
        out["error"] = exc


def test_endpoint_handshake_over_a_socketpair_then_reads(leaf, tls_ca):
    srv, cli = socket.socketpair()
    srv.setblocking(False)
    end = TLSEndpoint(srv, TLSEngine(server_context(RouteTLS("s", cert=str(leaf.chain), key=str(leaf.key)))),
                      fd=srv.fileno())
    out: dict = {}
    finished = threading.Event()
    t = threading.Thread(target=_client, args=(tls_ca, cli, out, finished))
    t.start()
    results = []
    try:
        while not results or results[-1] is None:
            results.append(end.handshake())
            if results[-1] is None:
                select.select([srv], [], [], 5)
        assert results[-1] is Event.HANDSHAKE_DONE
        assert end.fd == srv.fileno() and end.engine.version() == "TLSv1.3"
        buf = bytearray(64)
        got = 0
        for _ in range(50):
            try:
                got = end.readinto(memoryview(buf))
                break
            except BlockingIOError:
                select.select([srv], [], [], 1)
        assert bytes(buf[:got]) == b"hello"
        assert "error" not in out and out["cipher"]
    finally:
        finished.set()
        t.join(5)
        srv.close()
        cli.close()


def test_endpoint_handshake_not_tls_says_why():
    srv, cli = socket.socketpair()
    srv.setblocking(False)
    try:
        end = TLSEndpoint(srv, TLSEngine(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)))
        assert end.handshake() is None          # nothing sent yet: wait
        cli.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert end.handshake() is CloseReason.NOT_TLS
        assert end.engine.detail == "first byte is not a TLS record"
    finally:
        srv.close()
        cli.close()


def test_sni_callback_records_and_switches_context(leaf, tls_ca):
    other = server_context(RouteTLS("o", cert=str(leaf.chain), key=str(leaf.key)))
    seen = []

    def callback(ssl_object, server_name, _ctx):
        seen.append(ssl_object)
        record_sni(ssl_object, server_name, "o")
        ssl_object.context = other

    first = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)      # no certificate: only the switch makes it work
    first.sni_callback = callback
    engine = TLSEngine(first)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(tls_ca.cert))
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = client.wrap_bio(inc, outg, server_hostname="server.example")
    done = None
    for _ in range(10):
        try:
            peer.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if outg.pending:
            engine.feed_ciphertext(outg.read())
        done = engine.step() or done
        if engine.outgoing.pending:
            inc.write(engine.take_ciphertext())
    assert done is Event.HANDSHAKE_DONE
    assert len(seen) == 1
    assert (engine.sni, engine.route) == ("server.example", "o")
    assert engine.context is other and engine.version() == "TLSv1.3" and engine.alpn() is None
    assert engine.peer_cert_der() is None and not engine.session_reused() and engine.cipher()
    # data both ways, then close_notify from the server (the fallback's unwrap)
    peer.write(b"ping")
    engine.feed_ciphertext(outg.read())
    buf = bytearray(16)
    assert engine.read_into(memoryview(buf)) == 4 and bytes(buf[:4]) == b"ping"
    engine.write_plaintext(b"pong")
    inc.write(engine.take_ciphertext())
    assert peer.read(16) == b"pong"
    engine.close()
    inc.write(engine.take_ciphertext())
    try:
        end = peer.read(16)                 # close_notify: b"" or SSLZeroReturnError, by Python version
    except ssl.SSLZeroReturnError:
        end = b""
    assert end == b"" and peer.unwrap() is None


def test_call_soon_passes_arguments_next_turn():
    r = Reactor()
    try:
        got = []
        r.call_soon(got.append, 7)
        assert got == []
        r.run_once()
        assert got == [7]
    finally:
        r.close()


def test_admission_counts_only_what_a_limit_reads_and_leave_undoes_it():
    from types import SimpleNamespace as NS

    from epollmux.serve.admission import Admission, Grant
    adm = Admission(NS(max_connections_per_source=0, max_sniffing_per_source=0, rate_per_source=0,
                       source_ipv6_prefix=64, max_connections=0))
    limited, free = NS(name="l", access=None, max_connections=1), NS(name="f", access=None, max_connections=0)
    outer, inner = NS(name="o", access=None, max_connections=1), NS(name="i", access=None, max_connections=0)
    a, b, c = Grant(), Grant(), Grant()
    assert adm.enter(a, limited, "10.0.0.1", 0.0, 1) is None
    assert adm.enter(b, limited, "10.0.0.2", 0.0, 2) == "limit-listener"
    assert adm.enter(c, free, "10.0.0.3", 0.0, 3) is None and c.listener is None
    assert adm.route(a, outer, "10.0.0.1") is None and adm.route(c, outer, "10.0.0.3") == "limit-route"
    assert adm.route(a, inner, "10.0.0.1") is None          # the inner route replaces the terminating one
    assert adm.route(c, outer, "10.0.0.3") is None           # ... which is free again
    adm.leave(a)
    adm.leave(c)
    assert +adm.listeners == {} and +adm.routes == {}
    assert adm.enter(b, limited, "10.0.0.2", 0.0, 1) is None


def test_a_worker_that_counts_nothing_shares_one_grant_and_never_writes_to_it():
    """Idle memory: with no per-source limit and no listener or route max_connections, connections share
    admission.NOTHING; every check leaves it as it was. One limit anywhere: a Grant per connection."""
    from types import SimpleNamespace as NS

    from epollmux.serve.admission import NOTHING, Admission
    settings = NS(max_connections_per_source=0, max_sniffing_per_source=0, rate_per_source=0,
                  source_ipv6_prefix=64, max_connections=5)
    listener, route = NS(name="l", access=None, max_connections=0), NS(name="r", access=None, max_connections=0)
    adm = Admission(settings, (listener, route))
    grant = adm.grant()
    assert grant is NOTHING
    assert adm.enter(grant, listener, "10.0.0.1", 0.0, 1) is None
    adm.sniffed(grant)
    assert adm.route(grant, route, "10.0.0.1") is None
    adm.leave(grant)
    assert (NOTHING.source, NOTHING.sniffing, NOTHING.listener, NOTHING.route) == (None, False, None, None)
    limited = NS(name="x", access=None, max_connections=1)
    assert Admission(settings, (listener, limited)).grant() is not NOTHING
    assert Admission(settings).grant() is not NOTHING
    assert Admission(NS(**{**vars(settings), "max_connections_per_source": 2}), (listener,)).grant() is not NOTHING
