"""The stress suite (`make stress`): hostile first flights, fuzzed PROXY headers, TLS abuse, connection churn,
reload and worker-kill storms under load, fd exhaustion.  Each test prints one line of figures and fails on
a misrouted client (its bytes at another route's backend), a traceback in the daemon's log, a worker death
the test did not cause, an fd or RSS leak, or a hang (a client waiting past CLIENT_TIMEOUT).  Loops are
bounded; EPOLLMUX_STRESS_SCALE (default 1) multiplies the client counts.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

from epollmux.wire import proxyproto as pp
from epollmux.wire import sniff
from stress.harness import (CLIENT_TIMEOUT, Clock, fd_count, healthy, one_line, read_until_eof, recv_exact,
                            run_clients, tagged, tagged_backends)
from support.daemon import proc_rss_kib
from support.hello_builder import build_client_hello
from support.net import connect, free_port, wait_until

SCALE = float(os.environ.get("EPOLLMUX_STRESS_SCALE", "1"))
pytestmark = pytest.mark.timeout(900)
LINGER_RST = struct.pack("ii", 1, 0)


def n(count: int) -> int:
    return max(1, int(count * SCALE))


def routed_config(port: int, backends: dict, probes, *, glob: str = "", listen_extra: str = "") -> str:
    routes = "".join(f"  [[{name}]]\n  probe = {probe}\n  backend = 127.0.0.1:{backends[tag].port}\n"
                     for (name, probe, tag) in probes)
    return (f"[global]\nworkers = 1\nprobe_timeout = 30\n{glob}\n[listen]\n  [[main]]\n"
            f"  address = 127.0.0.1:{port}\n{listen_extra}[routes]\n{routes}")


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
        header = pp.build_v1(v4, v4)
    elif kind == 1:
        header = pp.build_v2(v6, v6, tlvs=[(0x02, b"a.example")], crc=rng.random() < 0.5)
    elif kind == 2:
        header = pp.build_v2(None, None, local=True)
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
    d = daemon().start(f"""
[global]
workers = 1
tls_handshake_timeout = 5
[listen]
  [[main]]
  address = 127.0.0.1:{port}
[routes]
  [[tls]]
  probe = tls
  tls_cert = {leaf.chain}
  tls_key = {leaf.key}
  backend = 127.0.0.1:{backend.port}
""", wait=port)
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


# --------------------------------------------------------------------------------- churn
def test_connection_churn_leaks_no_fd_and_no_memory(daemon, server):
    backends = tagged_backends(server, [b"C"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"C")], glob="relay = splice"), wait=port)
    worker = d.wait_workers(1)
    total = n(100000)
    payload = b"x" * 64

    def burst(count: int) -> None:
        def job(_):
            for _ in range(count):
                c = connect(port, timeout=CLIENT_TIMEOUT)
                c.sendall(payload)
                got = recv_exact(c, 1 + len(payload))
                assert got == b"C" + payload, got
                c.close()
        run_clients(job, range(16), workers=16)

    clock = Clock()
    burst(max(1, total // 10 // 16))                 # warm-up: pools, caches, allocator arenas
    wait_until(lambda: fd_count(worker[0]) <= 40, timeout=30, what="idle worker fds")
    fds0, rss0 = fd_count(worker[0]), proc_rss_kib(worker[0])
    burst(max(1, total * 9 // 10 // 16))
    healthy(d, worker, {worker[0]: fds0})
    rss1 = proc_rss_kib(worker[0])
    seconds = clock()
    one_line("churn", connections=total, seconds=seconds, per_second=total / seconds, fds_before=fds0,
             fds_after=fd_count(worker[0]), rss_kib_before=rss0, rss_kib_after=rss1)
    assert rss1 - rss0 < 16 * 1024, (rss0, rss1)


# --------------------------------------------------------------------------------- reload storm
def test_reload_storm_under_a_connect_storm_keeps_streams_byte_exact(daemon, server):
    backends = tagged_backends(server, [b"R"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"R")], glob="drain_timeout = 120")
                       .replace("workers = 1", "workers = 2"), wait=port)
    d.wait_workers(2)
    stop = threading.Event()
    results = {"streams": 0, "short": 0, "bytes": 0}
    lock = threading.Lock()

    def stream(seed: int) -> None:
        rng = random.Random(seed)
        data = rng.randbytes(rng.randrange(1 << 16, 1 << 20))
        c = connect(port, timeout=CLIENT_TIMEOUT)
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got, how = read_until_eof(c, limit=len(data) + 2)
        sender.join(CLIENT_TIMEOUT)
        c.close()
        assert got == b"R" + data, (len(got), len(data), how)
        with lock:
            results["streams"] += 1
            results["bytes"] += len(data)

    def short(seed: int) -> None:
        while not stop.is_set():
            c = connect(port, timeout=CLIENT_TIMEOUT)
            c.sendall(b"ping")
            assert recv_exact(c, 5) == b"Rping"
            c.close()
            with lock:
                results["short"] += 1

    reloads = 15
    storm = threading.Thread(target=lambda: run_clients(short, range(4), workers=4))
    storm.start()
    streams = threading.Thread(target=lambda: run_clients(stream, range(n(60)), workers=8))
    errors = []
    streams.run = (lambda run: (lambda: _capture(run, errors)))(streams.run)
    storm.run = (lambda run: (lambda: _capture(run, errors)))(storm.run)
    streams.start()
    clock = Clock()
    for i in range(reloads):
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded:", count=i + 1, timeout=60)
        time.sleep(0.3)
    streams.join(300)
    stop.set()
    storm.join(60)
    assert not errors, errors
    assert not streams.is_alive() and not storm.is_alive(), "a client hung"
    log = d.log_text()
    assert "Traceback" not in log, log[-4000:]
    one_line("reload-storm", reloads=reloads, seconds=clock(), **results)


def _capture(run, errors: list) -> None:
    try:
        run()
    except BaseException as exc:      # noqa: BLE001 - reported by the test thread
        errors.append(repr(exc)[:500])


# --------------------------------------------------------------------------------- worker kills
def test_worker_kills_are_replaced_and_clients_served(daemon, server):
    backends = tagged_backends(server, [b"K"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"K")]).replace("workers = 1", "workers = 2"),
                       wait=port)
    seen = set(d.wait_workers(2))
    clock = Clock()
    kills = 8
    served = 0
    for _ in range(kills):
        victim = random.choice(d.workers())
        os.kill(victim, signal.SIGKILL)
        seen.add(victim)
        d.wait_workers(2, timeout=30, exclude={victim})
        for _ in range(50):
            c = connect(port, timeout=CLIENT_TIMEOUT)
            c.sendall(b"k")
            assert recv_exact(c, 2) == b"Kk"
            c.close()
            served += 1
    log = d.log_text()
    assert "Traceback" not in log, log[-4000:]
    one_line("worker-kills", kills=kills, served_after=served, seconds=clock(), workers=len(d.workers()))


# --------------------------------------------------------------------------------- fd exhaustion
def test_fd_exhaustion_is_survived(daemon, server):
    backends = tagged_backends(server, [b"F"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"F")]), wait=port)
    worker = d.wait_workers(1)
    subprocess.run(["prlimit", f"--pid={worker[0]}", "--nofile=200:200"], check=True, timeout=10)
    fds = {worker[0]: fd_count(worker[0])}
    clock = Clock()
    held = []
    for _ in range(300):            # each served client takes two fds: the worker runs out near 95
        held.append(connect(port, timeout=CLIENT_TIMEOUT))
    wait_until(lambda: "out of file descriptors" in d.log_text(), timeout=30, what="EMFILE seen")
    cpu_busy = open(f"/proc/{worker[0]}/stat").read().rsplit(")", 1)[1].split()[11:13]
    time.sleep(1)
    cpu_after = open(f"/proc/{worker[0]}/stat").read().rsplit(")", 1)[1].split()[11:13]
    spun = sum(map(int, cpu_after)) - sum(map(int, cpu_busy))
    for c in held:
        c.close()
    figures = healthy(d, worker, fds)
    c = connect(port)
    c.sendall(b"f")
    assert recv_exact(c, 2) == b"Ff"
    c.close()
    one_line("fd-exhaustion", held=len(held), ticks_in_1s_while_exhausted=spun, seconds=clock(), health=figures)
    assert spun < 50, "the worker spins while out of fds"
