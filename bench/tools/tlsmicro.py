"""Server-side cost of TLSEndpoint + TLSEngine alone: `python3 -m bench.tools.tlsmicro [--tree DIR ...]`.

Owns: an in-process microbenchmark of the TLS record path of one or more epollmux trees (each run in its
own interpreter with that tree first on sys.path): a socketpair, the daemon's `TLSEndpoint` on one end and
an in-memory `ssl.SSLObject` client on the other. Only the server side's calls are timed, the way the relay
makes them: keep-alive (readinto until BlockingIOError, then write the answer) and a whole connection
(engine and endpoint built, handshake driven like connection._drive, one request, one answer, close_notify).
Each tree's batches run in a child interpreter (`--child`, this module again) that imports epollmux from that
tree. Prints the median µs per unit over batches, with min-max. No reactor, no relay, no load generator: the
noise of a shared machine is mostly gone, and what is left is the cost the TLS modules own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUEST = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 34\r\n\r\n" + b"x" * 34
VIEW = memoryview(bytearray(262144))


class Client:
    """The in-memory TLS client on the other end of the socketpair."""

    def __init__(self, sock, cctx):
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


class Server:
    """The tree's TLSEndpoint + TLSEngine, driven as the daemon drives them."""

    def __init__(self, tree: str, cert: str, key: str):
        sys.path.insert(0, tree)          # this tree's epollmux, imported here only
        from epollmux.relay.endpoints import TLSEndpoint
        from epollmux.tls.contexts import RouteTLS, server_context
        from epollmux.tls.engine import Event, TLSEngine
        self.Endpoint, self.Engine, self.Event = TLSEndpoint, TLSEngine, Event
        self.sctx = server_context(RouteTLS("bench", cert=cert, key=key))
        self.cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.cctx.check_hostname = False
        self.cctx.verify_mode = ssl.CERT_NONE

    def pair(self):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        return a, b, Client(b, self.cctx)

    def endpoint(self, sock):
        return self.Endpoint(sock, self.Engine(self.sctx, server_side=True))

    def drive(self, end):
        """As the connection drives its TLS handshake."""
        engine = end.engine
        while True:
            result = engine.step()
            end.flush()
            if result is self.Event.HANDSHAKE_DONE or result is not None:
                return result
            try:
                if not end.receive():
                    return None
            except BlockingIOError:
                return None


def serve_request(end) -> int:
    n = end.readinto(VIEW)
    try:
        end.readinto(VIEW[n:])
        raise AssertionError("two reads")
    except BlockingIOError:
        pass
    end.write(memoryview(ANSWER))
    return n


def connection(srv: Server) -> float:
    a, b, client = srv.pair()
    t = time.perf_counter()
    end = srv.endpoint(a)
    assert srv.drive(end) is None
    spent = time.perf_counter() - t
    done = None
    while done is None:
        try:
            client.obj.do_handshake()
            client.obj.write(REQUEST)
        except ssl.SSLWantReadError:
            pass
        client.send_out()
        t = time.perf_counter()
        done = srv.drive(end)
        spent += time.perf_counter() - t
        client.pump_in()
    t = time.perf_counter()
    assert done is srv.Event.HANDSHAKE_DONE
    engine = end.engine
    (engine.version(), engine.cipher(), engine.alpn(), engine.peer_cn())
    assert serve_request(end) == len(REQUEST)
    end.shutdown_write()
    spent += time.perf_counter() - t
    assert client.read(len(ANSWER)) == ANSWER
    a.close()
    b.close()
    return spent


def keepalive(srv: Server, count: int) -> float:
    a, b, client = srv.pair()
    end = srv.endpoint(a)
    while srv.drive(end) is not srv.Event.HANDSHAKE_DONE:
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


def child(tree: str, cert: str, key: str, mode: str, batches: int, per: int) -> None:
    """Print µs per unit of each batch, from one tree."""
    srv = Server(tree, cert, key)
    results = []
    for _ in range(batches):
        if mode == "keepalive":
            results.append(keepalive(srv, per) * 1e6)
        else:
            results.append(sum(connection(srv) for _ in range(per)) / per * 1e6)
    print(" ".join(f"{x:.2f}" for x in results))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        tree, cert, key, mode, batches, per = argv[1:]
        child(tree, cert, key, mode, int(batches), int(per))
        return 0
    from bench.peers import certs
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.tlsmicro")
    p.add_argument("--tree", action="append", help="epollmux trees to compare (default: this one)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved runs per tree")
    p.add_argument("--modes", default="keepalive,connection")
    o = p.parse_args(argv)
    trees = [os.path.abspath(t) for t in o.tree or [REPO]]
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
                out = subprocess.run([sys.executable, "-m", "bench.tools.tlsmicro", "--child", tree, cert.cert,
                                      cert.key, mode, str(batches), str(per)], cwd=REPO, capture_output=True,
                                     text=True, timeout=300)
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
