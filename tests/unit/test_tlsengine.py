"""TLSEngine driven in memory against a real `ssl.SSLObject` peer: no sockets, no reactor.

The helpers `Peer`, `pump` and `handshake` are imported by test_tlsctx.py as well.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import ssl
import time
import tracemalloc

import pytest

from epollmux.tls.contexts import RouteTLS, server_context
from epollmux.tls.engine import MAX_RECORD_WIRE, CloseReason, Event, TLSEngine, TLSState, TLSStateError

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


class Peer:
    """The other end: a plain SSLObject over two MemoryBIOs (a client unless server_side)."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None = None, *,
                 server_side: bool = False, session: ssl.SSLSession | None = None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=server_hostname, session=session)
        self.done = False
        self.error: ssl.SSLError | None = None

    def handshake(self) -> None:
        if self.done or self.error is not None:
            return
        try:
            self.obj.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self.error = exc

    def read(self, size: int = 1 << 20) -> bytes | ssl.SSLError:
        """All plaintext available now (b"" when none), or the SSLError that ended the stream."""
        chunks = []
        while True:
            try:
                chunk = self.obj.read(size)
            except ssl.SSLWantReadError:
                return b"".join(chunks)
            except ssl.SSLError as exc:
                return b"".join(chunks) if chunks else exc
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def client_context(ca, maximum=None, cert=None, alpn=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca.cert))
    if maximum is not None:
        ctx.maximum_version = maximum
    if cert is not None:
        ctx.load_cert_chain(str(cert.chain), str(cert.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def chunks_of(data: bytes, mode: str, rng: random.Random):
    if mode == "whole":
        yield data
    elif mode == "bytewise":
        yield from (data[i:i + 1] for i in range(len(data)))
    else:
        i = 0
        while i < len(data):
            n = rng.randint(1, 700)
            yield data[i:i + n]
            i += n


def pump(engine: TLSEngine, peer: Peer, mode: str = "whole", rng: random.Random | None = None) -> list:
    """Move ciphertext both ways once; step the engine after every fed chunk; return its outcomes."""
    rng = rng or random.Random(1)
    outcomes = []
    data = peer.outgoing.read()
    for chunk in chunks_of(data, mode, rng):
        engine.feed_ciphertext(chunk)
        if engine.state is TLSState.HANDSHAKING or (engine.state is TLSState.CLOSED and not outcomes):
            outcome = engine.step()
            if outcome is not None:
                outcomes.append(outcome)
    if not data and engine.state is TLSState.HANDSHAKING:
        outcome = engine.step()
        if outcome is not None:
            outcomes.append(outcome)
    if engine.pending_ciphertext():
        peer.incoming.write(engine.take_ciphertext())
    return outcomes


def handshake(engine: TLSEngine, peer: Peer, mode: str = "whole", rounds: int = 12) -> list:
    """Run both handshakes to their end (bounded); return the engine's step() outcomes."""
    rng = random.Random(7)
    outcomes = []
    for _ in range(rounds):
        peer.handshake()
        outcomes += pump(engine, peer, mode, rng)
        peer.handshake()
        if engine.state is not TLSState.HANDSHAKING and (peer.done or peer.error):
            break
    return outcomes


@pytest.fixture(scope="module")
def leaf(tls_ca):
    return tls_ca.issue(["server.example"], key="ec")


@pytest.fixture(scope="module")
def server_ctx(leaf):
    return server_context(RouteTLS("srv", cert=str(leaf.chain), key=str(leaf.key)))


def open_pair(server_ctx, tls_ca, maximum=None):
    engine = TLSEngine(server_ctx)
    peer = Peer(client_context(tls_ca, maximum), "server.example")
    assert handshake(engine, peer) == [Event.HANDSHAKE_DONE]
    assert peer.done and engine.state is TLSState.OPEN
    return engine, peer


def test_first_bytes_that_cannot_start_tls_are_refused_cheaply():
    cases = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"G", b"\x15\x03\x03"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)          # no certificate needed to say no
    for data in cases:
        engine = TLSEngine(ctx)
        engine.feed_ciphertext(data)
        assert engine.step() is CloseReason.NOT_TLS
        assert engine.state is TLSState.CLOSED and engine.reason == "tls-not-tls"
        assert engine.pending_ciphertext() == 0              # nothing is sent to a plaintext peer
        assert engine.step() is CloseReason.NOT_TLS          # stays answered


@pytest.mark.parametrize("mode", ["whole", "bytewise", "random"])
@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_handshake_then_data_both_ways(server_ctx, tls_ca, mode, maximum):
    transitions = []
    engine = TLSEngine(server_ctx, on_state_change=lambda old, new: transitions.append((old, new)))
    peer = Peer(client_context(tls_ca, maximum), "server.example")
    outcomes = handshake(engine, peer, mode)
    assert outcomes == [Event.HANDSHAKE_DONE]
    assert peer.done and peer.error is None
    assert transitions == [(TLSState.HANDSHAKING, TLSState.OPEN)]
    assert engine.version() == {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[maximum]
    assert engine.cipher() and engine.step() is None
    peer.obj.write(b"ping" * 1000)
    pump(engine, peer, mode)
    got = b""
    for _ in range(10):
        got += engine.read_plaintext(1000)
    assert got == b"ping" * 1000
    assert engine.read_plaintext() == b""
    assert engine.write_plaintext(b"pong") == 4
    pump(engine, peer)
    assert peer.read() == b"pong"


def test_garbage_record_after_hello_fails_the_handshake(server_ctx, tls_ca):
    engine = TLSEngine(server_ctx)
    peer = Peer(client_context(tls_ca), "server.example")
    peer.handshake()
    pump(engine, peer)
    engine.feed_ciphertext(b"\x17\x03\x03\x00\x20" + os.urandom(32))
    assert engine.step() is CloseReason.HANDSHAKE_FAILED
    assert engine.state is TLSState.CLOSED and "record" in engine.detail
    assert engine.pending_ciphertext() > 0                   # the alert (after the server flight)


def test_plaintext_after_hello_fails_the_handshake(server_ctx, tls_ca):
    engine = TLSEngine(server_ctx)
    peer = Peer(client_context(tls_ca), "server.example")
    peer.handshake()
    engine.feed_ciphertext(peer.outgoing.read() + b"GET / HTTP/1.0\r\n\r\n")
    assert engine.step() is CloseReason.HANDSHAKE_FAILED
    assert engine.detail == "wrong_version_number"


def test_alert_from_the_peer(server_ctx, make_ca_factory):
    stranger = make_ca_factory("stranger CA")
    engine = TLSEngine(server_ctx)
    peer = Peer(client_context(stranger), "server.example")  # does not trust our certificate
    outcomes = handshake(engine, peer)
    assert outcomes == [CloseReason.ALERT]
    assert engine.detail == "tlsv1_alert_unknown_ca"
    assert isinstance(peer.error, ssl.SSLCertVerificationError)


def test_alert_after_the_handshake_on_a_client_engine(tls_ca, leaf):
    # TLS 1.3: the client finishes first; a server refusing its (missing) certificate answers with an alert.
    backend = server_context(RouteTLS("b", cert=str(leaf.chain), key=str(leaf.key), client_ca=str(tls_ca.cert)))
    engine = TLSEngine(client_context(tls_ca), server_side=False, server_hostname="server.example")
    server = Peer(backend, server_side=True)
    for _ in range(6):
        engine.step()
        server.incoming.write(engine.take_ciphertext())
        server.handshake()
        engine.feed_ciphertext(server.outgoing.read())
    assert engine.state is TLSState.OPEN and server.error is not None
    assert engine.read_plaintext() is CloseReason.ALERT
    assert engine.state is TLSState.CLOSED and engine.detail == "tlsv13_alert_certificate_required"


def test_client_engine_refuses_a_backend_that_is_not_tls(tls_ca):
    engine = TLSEngine(client_context(tls_ca), server_side=False, server_hostname="server.example")
    assert engine.step() is None and engine.pending_ciphertext() > 0     # the ClientHello
    engine.feed_ciphertext(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert engine.step() is CloseReason.NOT_TLS


def test_eof_during_the_handshake_is_truncation(server_ctx, tls_ca):
    engine = TLSEngine(server_ctx)
    peer = Peer(client_context(tls_ca), "server.example")
    peer.handshake()
    engine.feed_ciphertext(peer.outgoing.read()[:40])
    assert engine.step() is None
    engine.feed_eof()
    assert engine.step() is CloseReason.TRUNCATED


def test_eof_without_close_notify_is_truncation_after_the_data(server_ctx, tls_ca):
    engine, peer = open_pair(server_ctx, tls_ca)
    peer.obj.write(b"last words")
    pump(engine, peer)
    engine.feed_eof()
    assert engine.read_plaintext() == b"last words"
    assert engine.read_plaintext() is CloseReason.TRUNCATED
    assert engine.state is TLSState.CLOSED and engine.reason is CloseReason.TRUNCATED
    assert engine.read_plaintext() is CloseReason.TRUNCATED


def test_bad_record_when_open_is_a_protocol_error(server_ctx, tls_ca):
    engine, peer = open_pair(server_ctx, tls_ca)
    engine.feed_ciphertext(b"\x17\x03\x03\x00\x20" + bytes(32))
    assert engine.read_plaintext() is CloseReason.PROTOCOL_ERROR
    assert engine.state is TLSState.CLOSED and "bad_record_mac" in engine.detail
    with pytest.raises(TLSStateError):
        engine.write_plaintext(b"x")


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_close_notify_from_the_peer_is_a_half_close(server_ctx, tls_ca, maximum):
    engine, peer = open_pair(server_ctx, tls_ca, maximum)
    peer.obj.write(b"request")
    with pytest.raises(ssl.SSLWantReadError):
        peer.obj.unwrap()                                    # the peer's close_notify
    pump(engine, peer)
    assert engine.read_plaintext() == b"request"
    assert engine.read_plaintext() is CloseReason.CLOSE_NOTIFY
    assert engine.state is TLSState.OPEN and engine.peer_closed
    assert engine.write_plaintext(b"response") == 8          # our direction is still open
    engine.close()
    assert engine.state is TLSState.CLOSED and engine.reason is CloseReason.CLOSE_NOTIFY
    pump(engine, peer)
    assert peer.read() == b"response"
    assert peer.obj.unwrap() is None                          # the peer saw our close_notify


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_close_sends_close_notify_and_still_reads_until_the_peer_closes(server_ctx, tls_ca, maximum):
    transitions = []
    engine, peer = open_pair(server_ctx, tls_ca, maximum)
    engine._on_state_change = lambda old, new: transitions.append(new)
    peer.obj.write(b"unread before close")
    pump(engine, peer)
    engine.close()                                           # must not lose the unread record
    assert engine.state is TLSState.CLOSING and transitions == [TLSState.CLOSING]
    assert engine.read_plaintext() == b"unread before close"
    pump(engine, peer)
    assert peer.read() == b""                                 # close_notify reached the peer
    peer.obj.write(b"in flight")
    pump(engine, peer, "bytewise")
    assert engine.read_plaintext() == b"in flight"
    assert peer.obj.unwrap() is None                          # the peer answers ours: complete on its side
    pump(engine, peer)
    assert engine.read_plaintext() is CloseReason.CLOSE_NOTIFY
    assert engine.state is TLSState.CLOSED and transitions == [TLSState.CLOSING, TLSState.CLOSED]
    with pytest.raises(TLSStateError):
        engine.write_plaintext(b"late")


def test_truncation_while_closing(server_ctx, tls_ca):
    engine, peer = open_pair(server_ctx, tls_ca)
    engine.close()
    engine.feed_eof()
    assert engine.read_plaintext() is CloseReason.TRUNCATED
    assert engine.state is TLSState.CLOSED


def test_close_during_the_handshake_goes_straight_to_closed(server_ctx, tls_ca):
    engine = TLSEngine(server_ctx)
    assert engine.write_plaintext(b"too early") == 0
    assert engine.read_plaintext() == b""
    engine.close()
    assert engine.state is TLSState.CLOSED and engine.reason is None
    assert engine.pending_ciphertext() == 0 and engine.ciphertext_room() == 0
    with pytest.raises(TLSStateError):
        engine.read_plaintext()


def test_only_listed_transitions_are_allowed(server_ctx):
    engine = TLSEngine(server_ctx)
    with pytest.raises(TLSStateError):
        engine._set_state(TLSState.CLOSING)                  # HANDSHAKING -> CLOSING is not listed
    engine.close()
    for target in TLSState:
        with pytest.raises(TLSStateError):
            engine._set_state(target)                        # CLOSED is final


def test_inbound_ciphertext_is_capped(server_ctx, tls_ca):
    cap = MAX_RECORD_WIRE
    with pytest.raises(ValueError):
        TLSEngine(server_ctx, max_inbound=cap - 1)           # could never hold a whole record
    engine = TLSEngine(server_ctx, max_inbound=cap)
    peer = Peer(client_context(tls_ca), "server.example")
    assert handshake(engine, peer) == [Event.HANDSHAKE_DONE]
    payload = os.urandom(60000)
    peer.obj.write(payload)
    wire = peer.outgoing.read()
    engine.feed_ciphertext(wire[:cap])
    assert not engine.wants_more_ciphertext() and engine.ciphertext_room() == 0
    with pytest.raises(BufferError):
        engine.feed_ciphertext(wire[cap:cap + 1])
    got = engine.read_plaintext()
    assert len(got) >= 16384 and engine.wants_more_ciphertext()
    wire = wire[cap:]
    for _ in range(20):
        room = engine.ciphertext_room()
        engine.feed_ciphertext(wire[:room])
        wire = wire[room:]
        got += engine.read_plaintext()
    assert got == payload


def test_outbound_ciphertext_is_capped(server_ctx, tls_ca):
    engine, peer = open_pair(server_ctx, tls_ca)
    engine.take_ciphertext()
    accepted = engine.write_plaintext(bytes(1 << 20))
    assert accepted == 64 * 1024
    assert engine.write_plaintext(b"more") == 0               # full until the socket takes some
    assert engine.pending_ciphertext() <= 64 * 1024 + 512
    engine.take_ciphertext(40000)
    assert 0 < engine.write_plaintext(bytes(1 << 20)) <= 40000


def _stream(seed: int, total: int):
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(total - sent, rng.choice([1, 100, 5000, 16384, 70000]))
        yield rng.randbytes(n)
        sent += n


def test_32_mib_each_way_is_byte_exact_within_the_caps(server_ctx, tls_ca):
    total, cap = 32 << 20, 64 * 1024
    engine, peer = open_pair(server_ctx, tls_ca)
    rng = random.Random(3)
    up_src, down_src = _stream(11, total), _stream(12, total)
    up_sent, up_recv, down_sent, down_recv = hashlib.sha256(), hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    up_n = down_n = 0
    up_rest, down_rest = b"", b""
    up_wire = b""                                            # client ciphertext not yet fed (the "socket")
    peak_out = peak_in = 0
    for _ in range(200_000):
        if not up_rest:
            up_rest = next(up_src, b"")
            up_sent.update(up_rest)
        if up_rest and peer.outgoing.pending < 256 * 1024:
            peer.obj.write(up_rest)
            up_rest = b""
        up_wire += peer.outgoing.read()
        room = engine.ciphertext_room()
        take = min(room, rng.randint(1, 90000))
        if take:
            engine.feed_ciphertext(up_wire[:take])
            up_wire = up_wire[take:]
        peak_in = max(peak_in, engine._incoming.pending)
        data = engine.read_plaintext(rng.randint(1, 80000))
        assert isinstance(data, bytes)
        up_recv.update(data)
        up_n += len(data)

        if not down_rest:
            down_rest = next(down_src, b"")
            down_sent.update(down_rest)
        if down_rest:
            accepted = engine.write_plaintext(down_rest)
            down_rest = down_rest[accepted:]
        peak_out = max(peak_out, engine.pending_ciphertext())
        peer.incoming.write(engine.take_ciphertext(rng.randint(1, 90000)))
        data = peer.read()
        assert isinstance(data, bytes)
        down_recv.update(data)
        down_n += len(data)
        if up_n == total and down_n == total:
            break
    assert (up_n, down_n) == (total, total)
    assert up_recv.digest() == up_sent.digest() and down_recv.digest() == down_sent.digest()
    assert peak_in <= cap
    assert cap - 1024 < peak_out <= cap + 1024                  # the cap was reached and held


def _statm_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_failed_handshakes_do_not_leak(server_ctx, leaf, tls_ca):
    old_client = Peer(client_context(tls_ca, TLS12), "server.example")
    old_client.handshake()
    hello12 = old_client.outgoing.read()
    strict_ctx = server_context(RouteTLS("strict", cert=str(leaf.chain), key=str(leaf.key), min_version="1.3"))

    def one_failure(i: int) -> CloseReason | Event | None:
        kind = i % 3
        engine = TLSEngine(strict_ctx if kind == 0 else server_ctx)
        if kind == 0:
            engine.feed_ciphertext(hello12)                  # version refused
        elif kind == 1:
            engine.feed_ciphertext(hello12[:60] + b"\x17" * 200)  # garbage inside the hello
        else:
            engine.feed_ciphertext(b"GET / HTTP/1.1\r\n\r\n")
        outcome = engine.step()
        engine.take_ciphertext()
        return outcome

    for i in range(1500):                                     # warm up allocator and caches
        one_failure(i)
    counts = collections.Counter()
    tracemalloc.start()
    before, traced_before, start = _statm_rss(), tracemalloc.get_traced_memory()[0], time.monotonic()
    for i in range(10_000):
        counts[one_failure(i)] += 1
    elapsed = time.monotonic() - start
    grown, traced = _statm_rss() - before, tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    assert counts[CloseReason.NOT_TLS] == 3333 and counts[CloseReason.HANDSHAKE_FAILED] == 6667
    # statm catches C-level leaks (an SSL object is ~33 KB) even where freed memory is reused;
    # tracemalloc catches Python-level ones down to a few bytes per iteration.
    assert grown < 2 << 20, f"RSS grew {grown} bytes over 10,000 failed handshakes"
    assert traced < 64 << 10, f"Python heap grew {traced} bytes over 10,000 failed handshakes"
    assert elapsed < 20
    print(f"10,000 failed handshakes: {elapsed:.2f} s, RSS +{grown} B, Python heap +{traced} B")


def test_read_into_fills_the_callers_buffer_then_reports_the_end(server_ctx, tls_ca):
    engine, peer = open_pair(server_ctx, tls_ca)
    payload = bytes(range(256)) * 160                # 40,960 bytes: several records, within the inbound cap
    peer.obj.write(payload)
    pump(engine, peer)
    engine.feed_eof()
    buf = bytearray(10_000)
    view = memoryview(buf)
    got = b""
    while True:
        n = engine.read_into(view)
        if isinstance(n, CloseReason):
            break
        assert 0 < n <= len(buf)
        got += bytes(view[:n])
    assert got == payload
    assert n is CloseReason.TRUNCATED and engine.state is TLSState.CLOSED


class CountingSSL:
    """Stands in for the object the engine calls OpenSSL through (`_c`) and counts the calls."""

    def __init__(self, obj: ssl.SSLObject) -> None:
        self.obj = obj
        self.calls = collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self.obj, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


def test_openssl_is_not_asked_when_no_ciphertext_came(server_ctx, tls_ca):
    engine = TLSEngine(server_ctx)
    spy = engine._c = CountingSSL(engine._c)                 # what the engine calls OpenSSL through
    for _ in range(3):                                       # a server speaks only after the ClientHello
        assert engine.step() is None
    assert spy.calls["do_handshake"] == 0 and engine.pending_ciphertext() == 0
    peer = Peer(client_context(tls_ca), "server.example")
    assert handshake(engine, peer) == [Event.HANDSHAKE_DONE]
    steps = spy.calls["do_handshake"]
    assert engine.step() is None and spy.calls["do_handshake"] == steps
    view = memoryview(bytearray(4096))
    assert engine.read_into(view) == 0 and spy.calls["read"] == 0    # nothing came after the Finished
    assert peer.read() == b"" and peer.obj.session.has_ticket       # the tickets went with the handshake

    for request in (b"GET / HTTP/1.1\r\n\r\n", b"x" * 5000):     # one read, then two (the view fills)
        peer.obj.write(request)
        pump(engine, peer)
        reads = spy.calls["read"]
        got = b""
        while n := engine.read_into(view):
            got += bytes(view[:n])
        assert got == request
        # only the reads that returned plaintext: none just to hear "want more"
        assert spy.calls["read"] - reads == -(-len(request) // len(view))
        for _ in range(3):
            assert engine.read_into(view) == 0 and engine.read_plaintext() == b""
        assert spy.calls["read"] - reads == -(-len(request) // len(view))
    peer.obj.write(b"last")
    pump(engine, peer)
    engine.feed_eof()                                        # EOF must still be read out of OpenSSL
    assert engine.read_into(view) == 4 and bytes(view[:4]) == b"last"
    assert engine.read_into(view) is CloseReason.TRUNCATED


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_read_into_never_stops_while_plaintext_is_buffered(server_ctx, tls_ca, maximum):
    """Records of random sizes, fed in random chunks, read into views of random sizes: after each feed,
    reading until read_into() says 0 must return every byte of every whole record fed so far."""
    rng = random.Random(11)
    engine, peer = open_pair(server_ctx, tls_ca, maximum)
    sent = got = b""
    buf = bytearray(20_000)
    for _ in range(300):
        for _ in range(rng.randint(1, 4)):
            record = os.urandom(rng.choice((1, 17, 1000, 16384, rng.randint(1, 20_000))))
            peer.obj.write(record)
            sent += record
        wire = peer.outgoing.read()
        cut = rng.randint(0, len(wire))                      # the rest arrives with the next round
        for chunk in chunks_of(wire[:cut], "random", rng):
            engine.feed_ciphertext(chunk)
            while n := engine.read_into(memoryview(buf)[:rng.randint(1, len(buf))]):
                got += bytes(buf[:n])
        engine.feed_ciphertext(wire[cut:])
        while n := engine.read_into(memoryview(buf)[:rng.randint(1, len(buf))]):
            got += bytes(buf[:n])
        assert got == sent                                   # every whole record, nothing held back


def test_a_client_engine_reads_data_that_came_with_the_tickets(server_ctx, tls_ca):
    """TLS 1.3 tickets and the first data in one segment: the non-application records must not leave the
    engine waiting for ciphertext that will never come (the backend side of re-encryption)."""
    engine = TLSEngine(client_context(tls_ca), server_side=False, server_hostname="server.example")
    server = Peer(server_ctx, server_side=True)
    for _ in range(4):
        if engine.state is TLSState.HANDSHAKING:
            engine.step()
        server.incoming.write(engine.take_ciphertext())
        server.handshake()
        if server.done:
            break
        engine.feed_ciphertext(server.outgoing.read())
    assert server.done and engine.state is TLSState.OPEN
    server.obj.write(b"first answer")
    engine.feed_ciphertext(server.outgoing.read())              # NewSessionTicket x2, then the data
    view = memoryview(bytearray(100))
    assert engine.read_into(view) == 12 and bytes(view[:12]) == b"first answer"
    assert engine.read_into(view) == 0
