"""Server-side cost of TLSEndpoint + TLSEngine alone: `python3 -m bench.tools.tlsmicro [--tree DIR ...]`.

Owns: an in-process microbenchmark of the TLS record path of one or more epollmux trees (each run in its
own interpreter with that tree first on sys.path): a socketpair, the daemon's `TLSEndpoint` on one end and
an in-memory `ssl.SSLObject` client on the other. Only the server side's calls are timed, the way the relay
makes them: keep-alive (readinto until BlockingIOError, then write the answer) and a whole connection
(engine and endpoint built, handshake driven like connection._drive, one request, one answer, close_notify).
Prints the median µs per unit over batches, with min-max. No reactor, no relay, no load generator: the
noise of a shared machine is mostly gone, and what is left is the cost the TLS modules own.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import os, socket, ssl, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from epollmux.relay.endpoints import TLSEndpoint
from epollmux.tls.engine import Event, TLSEngine
from epollmux.tls.contexts import RouteTLS, server_context
cert, key, mode, batches, per = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
sctx = server_context(RouteTLS("bench", cert=cert, key=key))
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.check_hostname = False
cctx.verify_mode = ssl.CERT_NONE
REQUEST = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 34\r\n\r\n" + b"x" * 34
buf = bytearray(262144)
view = memoryview(buf)


class Client:
    def __init__(self, sock):
        self.sock, self.inc, self.out = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = cctx.wrap_bio(self.inc, self.out, server_hostname="bench.example")

    def pump_in(self):
        try:
            while data := self.sock.recv(65536):
                self.inc.write(data)
        except BlockingIOError:
            pass

    def send_out(self):
        if self.out.pending:
            self.sock.sendall(self.out.read())

    def read(self, n):
        got = b""
        while len(got) < n:
            self.pump_in()
            try:
                got += self.obj.read(65536)
            except ssl.SSLWantReadError:
                pass
        return got


def drive(end):
    # as connection._drive
    engine = end.engine
    while True:
        result = engine.step()
        end.flush()
        if result is Event.HANDSHAKE_DONE or result is not None:
            return result
        try:
            if not end.receive():
                return None
        except BlockingIOError:
            return None


def serve_request(end):
    n = end.readinto(view)
    try:
        end.readinto(view[n:])
        raise AssertionError("two reads")
    except BlockingIOError:
        pass
    end.write(memoryview(ANSWER))
    return n


def connection():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    client = Client(b)
    spent = 0.0
    t = time.perf_counter()
    end = TLSEndpoint(a, TLSEngine(sctx, server_side=True))
    assert drive(end) is None
    spent += time.perf_counter() - t
    done = None
    while done is None:
        try:
            client.obj.do_handshake()
            client.obj.write(REQUEST)
        except ssl.SSLWantReadError:
            pass
        client.send_out()
        t = time.perf_counter()
        done = drive(end)
        spent += time.perf_counter() - t
        client.pump_in()
    t = time.perf_counter()
    assert done is Event.HANDSHAKE_DONE
    engine = end.engine
    facts = (engine.version(), engine.cipher(), engine.alpn(), engine.peer_cn())
    assert serve_request(end) == len(REQUEST)
    end.shutdown_write()
    spent += time.perf_counter() - t
    assert client.read(len(ANSWER)) == ANSWER
    a.close()
    b.close()
    return spent


def keepalive(count):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    client = Client(b)
    end = TLSEndpoint(a, TLSEngine(sctx, server_side=True))
    while drive(end) is not Event.HANDSHAKE_DONE:
        try:
            client.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        client.send_out()
        client.pump_in()
    for _ in range(3):
        client.obj.write(REQUEST)
        client.send_out()
        serve_request(end)
        client.read(len(ANSWER))
    spent = 0.0
    for _ in range(count):
        client.obj.write(REQUEST)
        client.send_out()
        t = time.perf_counter()
        serve_request(end)
        spent += time.perf_counter() - t
        assert client.read(len(ANSWER)) == ANSWER
    a.close()
    b.close()
    return spent / count


results = []
for _ in range(batches):
    if mode == "keepalive":
        results.append(keepalive(per) * 1e6)
    else:
        results.append(sum(connection() for _ in range(per)) / per * 1e6)
print(" ".join(f"{x:.2f}" for x in results))
"""


def main(argv=None) -> int:
    import argparse
    from bench.peers import certs
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.tlsmicro")
    p.add_argument("--tree", action="append", help="epollmux trees to compare (default: this one)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved runs per tree")
    p.add_argument("--modes", default="keepalive,connection")
    o = p.parse_args(argv)
    trees = o.tree or [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    tmp = tempfile.mkdtemp(prefix="epollmux-tlsmicro-")
    try:
        return _compare(trees, o, certs.make(tmp, "ecdsa"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compare(trees: list[str], o, cert) -> int:
    for mode in o.modes.split(","):
        batches, per = (5, 2000) if mode == "keepalive" else (5, 100)
        samples = {tree: [] for tree in trees}
        for r in range(o.rounds):
            for tree in (trees if r % 2 == 0 else trees[::-1]):
                out = subprocess.run([sys.executable, "-c", CHILD, tree, cert.cert, cert.key, mode,
                                      str(batches), str(per)], capture_output=True, text=True, timeout=300)
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    return 1
                samples[tree] += [float(x) for x in out.stdout.split()]
        for tree in trees:
            xs = samples[tree]
            print(f"{mode:10} {tree}: {statistics.median(xs):7.2f} µs per "
                  f"{'request' if mode == 'keepalive' else 'connection'} ({min(xs):.2f}-{max(xs):.2f}, n={len(xs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
