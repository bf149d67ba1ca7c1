"""The stress suite (`make stress`), hostile clients: random, truncated and bit-flipped first flights with absurd
lengths in any chunking with early closes and resets, fuzzed PROXY headers, TLS handshake abuse,
a TLS 1.2 renegotiation flood.  Each test prints one line of figures and fails on
a misrouted client (its bytes at another route's backend), a traceback in the daemon's log, a worker death
the test did not cause, an fd or RSS leak, or a hang (a client waiting past CLIENT_TIMEOUT).  Loops are
bounded; EPOLLMUX_STRESS_SCALE (default 1) multiplies the client counts.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import threading

import pytest

from epollmux.wire import proxybuild as pb
from epollmux.wire import proxyproto as pp
from epollmux.wire import sniff
from stress.harness import (CLIENT_TIMEOUT, LINGER_RST, Clock, fd_count, healthy, n, one_line, read_until_eof,
                            routed_config, run_clients, tagged, tagged_backends)
from support.daemon import make_config, proc_cpu_seconds
from support.hello_builder import build_client_hello
from support.net import connect, free_port
from support.renegotiation import NAME, Stream, echo_tls12, renegotiate

pytestmark = pytest.mark.timeout(900)


# --------------------------------------------------------------------------------- sniff fuzzer
SNIFF_ROUTES = [("ssh", "ssh", b"S"), ("web", "http", b"H"), ("tls", "tls", b"T")]
TABLE = [(probe, {}) for _, probe, _ in SNIFF_ROUTES]


def first_flights(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n" + os.urandom(rng.randrange(0, 600))
    if kind == 1:
        return (f"{rng.choice(['GET', 'POST', 'HEAD', 'PATCH'])} /{'x' * rng.randrange(50)} HTTP/1.1\r\n"
                f"Host: h{rng.randrange(99)}.example\r\n\r\n").encode()
    if kind == 2:
        return build_client_hello(sni=f"s{rng.randrange(999)}.example", alpn=("h2", "http/1.1"),
                                  pad_to=rng.choice([0, 512, 1500, 4000]),
                                  record_split=rng.choice([None, 1, [5, 40, 41], list(range(1, 60))]))
    if kind == 3:       # absurd lengths: a TLS record or hello claiming far more than it carries
        return bytes([0x16, 0x03, 0x01, rng.randrange(256), rng.randrange(256), 0x01,
                      rng.randrange(256), rng.randrange(256), rng.randrange(256)]) + os.urandom(rng.randrange(64))
    if kind == 4:
        return os.urandom(rng.randrange(1, 3000))
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(rng.randrange(64))


def mutate(data: bytes, rng: random.Random) -> bytes:
    how = rng.randrange(4)
    if how == 1 and len(data) > 1:
        return data[:rng.randrange(1, len(data))]
    if how == 2:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    return data


def send_chunked(sock: socket.socket, data: bytes, rng: random.Random) -> None:
    how = rng.randrange(3)
    if how == 0:
        sock.sendall(data)
        return
    pos = 0
    while pos < len(data):
        step = 1 if how == 1 and pos < 48 else rng.randrange(1, 400)
        sock.sendall(data[pos:pos + step])
        pos += step


def test_sniff_fuzzer_routes_every_client_where_the_probes_say(daemon, server):
    backends = tagged_backends(server, [tag for *_, tag in SNIFF_ROUTES])
    port = free_port()
    d = daemon().start(routed_config(port, backends, SNIFF_ROUTES), wait=port)
    worker = d.wait_workers(1)
    fds = {worker[0]: fd_count(worker[0])}
    tag_of = {i: tag for i, (_, _, tag) in enumerate(SNIFF_ROUTES)}
    clock = Clock()
    counts = {"checked": 0, "closed": 0, "early": 0, "rst": 0, "misrouted": 0}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        data = mutate(first_flights(rng), rng)
        ending = rng.choices(["half", "close", "rst"], [8, 1, 1])[0]
        c = connect(port, timeout=CLIENT_TIMEOUT)
        try:
            send_chunked(c, data, rng)
        except OSError:
            pass          # the daemon may close a client it has decided against
        if ending == "rst":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.close()
            with lock:
                counts["rst"] += 1
            return
        if ending == "close":
            c.close()
            with lock:
                counts["early"] += 1
            return
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass          # already reset by the daemon: a refused client
        got, _ = read_until_eof(c)
        c.close()
        decision = sniff.decide(data, TABLE, full=True)
        with lock:
            if decision.route is None:
                counts["closed"] += 1
                ok = got == b""
            else:
                counts["checked"] += 1
                ok = got == tag_of[decision.route] + data
            if not ok:
                counts["misrouted"] += 1
        assert ok, (data[:80], decision, got[:80])

    run_clients(client, range(n(20000)))
    figures = healthy(d, worker, fds)
    one_line("sniff-fuzz", clients=n(20000), seconds=clock(), **counts, health=figures)
    assert counts["misrouted"] == 0


# --------------------------------------------------------------------------------- PROXY fuzzer
def proxy_headers(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    v4 = (f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(65536))
    v6 = (f"2001:db8::{rng.randrange(65536):x}", rng.randrange(65536))
    if kind == 0:
        header = pb.build_v1(v4, v4)
    elif kind == 1:
        header = pb.build_v2(v6, v6, tlvs=[(0x02, b"a.example")], crc=rng.random() < 0.5)
    elif kind == 2:
        header = pb.build_v2(None, None, local=True)
    elif kind == 3:
        header = b"PROXY TCP4 " + os.urandom(rng.randrange(120))
    else:
        header = pp.SIGNATURE_V2 + bytes([0x21, 0x11]) + struct.pack(">H", rng.randrange(65536)) + os.urandom(60)
    return mutate(header, rng)


def test_proxy_header_fuzzer(daemon, server):
    backends = tagged_backends(server, [b"P"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"P")], glob="",
                                     listen_extra="  proxy_protocol = any\n  trusted = 127.0.0.1/32\n"),
                       wait=port)
    worker = d.wait_workers(1)
    fds = {worker[0]: fd_count(worker[0])}
    clock = Clock()
    counts = {"accepted": 0, "refused": 0}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        header, payload = proxy_headers(rng), os.urandom(rng.randrange(1, 200))
        data = header + payload
        c = connect(port, timeout=CLIENT_TIMEOUT)
        try:
            send_chunked(c, data, rng)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got, _ = read_until_eof(c)
        c.close()
        result = pp.parse(data)
        if result.status is pp.Status.OK:
            assert got == b"P" + data[result.length:], (data[:80], result, got[:80])
        else:
            assert got == b"", (data[:80], result, got[:80])
        with lock:
            counts["accepted" if result.status is pp.Status.OK else "refused"] += 1

    run_clients(client, range(n(10000)))
    one_line("proxy-fuzz", clients=n(10000), seconds=clock(), **counts, health=healthy(d, worker, fds))


# --------------------------------------------------------------------------------- TLS abuse
def test_tls_handshake_abuse(daemon, server, tls_ca):
    leaf = tls_ca.issue(["abuse.example"])
    backend = server(tagged(b"D"), backlog=4096)
    port = free_port()
    d = daemon().start(make_config(port, {"tls": {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key,
                                                   "backend": f"127.0.0.1:{backend.port}"}},
                                   workers=1, tls_handshake_timeout=5), wait=port)
    worker = d.wait_workers(1)
    fds = {worker[0]: fd_count(worker[0])}
    hellos = [build_client_hello(sni="abuse.example", alpn=("h2",)), real_hello("abuse.example")]
    clock = Clock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        kind = rng.randrange(5)
        hello = hellos[rng.randrange(2)]     # a built one (no key share) or a real one (the worker does ECDHE)
        c = connect(port, timeout=CLIENT_TIMEOUT)
        try:
            if kind == 0:          # garbage after the hello
                c.sendall(hello + os.urandom(rng.randrange(1, 5000)))
            elif kind == 1:        # half a handshake, then gone
                c.sendall(hello)
                c.recv(1)
            elif kind == 2:        # a huge record after the hello
                c.sendall(hello + b"\x16\x03\x03\xff\xff" + os.urandom(4000))
            elif kind == 3:        # a second ClientHello (renegotiation-like) in the same flight
                c.sendall(hello + hello)
            else:                  # an alert storm
                c.sendall(hello + b"\x15\x03\x03\x00\x02\x01\x00" * 200)
            if rng.random() < 0.5:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            else:
                c.shutdown(socket.SHUT_WR)
                read_until_eof(c)
        except OSError:
            pass
        c.close()

    run_clients(client, range(n(3000)))
    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    good = 0
    for _ in range(20):             # and a real client still gets through
        with ctx.wrap_socket(connect(port), server_hostname="abuse.example") as t:
            t.sendall(b"ping")
            got = b""
            while len(got) < 5:
                chunk = t.recv(5 - len(got))
                assert chunk, got
                got += chunk
            assert got == b"Dping"
            good += 1
    one_line("tls-abuse", clients=n(3000), good=good, seconds=clock(), health=healthy(d, worker, fds))


def real_hello(name: str) -> bytes:
    """The first flight of Python's own TLS client (X25519 key share, TLS 1.3 and 1.2)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()




# --------------------------------------------------------------------------------- TLS renegotiation flood
def test_tls_renegotiation_flood(daemon, server, tls_ca):
    """Real TLS 1.2 client-initiated renegotiations (s_client and `R`), eight at a time, beside a TLS 1.2
    stream through the same worker: each is closed as tls-renegotiation at its first try, the stream stays
    byte-exact, and the worker spends about a handshake per renegotiating client."""
    backend = server(echo_tls12, backlog=4096)
    port = free_port()
    leaf = tls_ca.issue(NAME)
    d = daemon().start(make_config(port, {"tls": {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key,
                                                   "backend": f"127.0.0.1:{backend.port}"}},
                                   workers=1, log_level="info"), ready=True)
    worker = d.wait_workers(1)
    fds = {worker[0]: fd_count(worker[0])}
    stream = Stream(port, tls_ca.cert)
    stream.start()
    clients = n(300)
    clock, cpu = Clock(), proc_cpu_seconds(worker[0])
    outputs = run_clients(lambda _: renegotiate(port, tls_ca.cert), range(clients), workers=8)
    spent, seconds = proc_cpu_seconds(worker[0]) - cpu, clock()
    stream.stop()
    tried = sum("RENEGOTIATING" in out for out in outputs)
    d.wait_log(" reason=", count=clients + 1, timeout=60)
    refused = d.log_text().count(" reason=tls-renegotiation ")
    assert tried == clients and refused == clients, (tried, refused, outputs[0][-1500:])
    assert spent < 0.05 * clients, f"{spent:.3f} worker CPU-s for {clients} renegotiating clients"
    one_line("tls-renegotiation", clients=clients, refused=refused, seconds=seconds, worker_cpu_s=spent,
             cpu_ms_per_client=1000 * spent / clients, stream_bytes=stream.bytes, stream_chunks=stream.chunks,
             health=healthy(d, worker, fds))
