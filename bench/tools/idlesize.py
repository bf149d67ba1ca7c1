"""What one idle relayed connection costs the worker's heap: `python3 -m bench.tools.idlesize [-n N] [--relay R]`.

Owns: an in-process worker (the real Worker, `probe = any`, one listener, `relay` as asked) fed by a
forked child that opens N connections through it to its own backend socket and proves each with a
round trip; then, with every connection idle: (1) the `sys.getsizeof` table of what one connection
owns (objects reachable from it and not from a second connection nor from the shared context, plus
its entries in the worker's containers: reactor registrations, the connection set, own_backends),
(2) the Python heap per connection (tracemalloc, N connections against a warm-up) and the RSS per
connection (/proc/self/statm). Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import socket
import sys
import tracemalloc
import types

from epollmux import config
from epollmux.serve.worker import Worker

HOST = "127.0.0.1"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def child(front: int, backend: socket.socket, n: int, wr: int, rd: int) -> None:
    """Open n connections through the worker at `front`, each proven by a round trip; then wait."""
    held = []
    batch = []
    for _ in range(n):
        c = socket.create_connection((HOST, front))
        c.sendall(b"p")
        b, _ = backend.accept()
        assert b.recv(1) == b"p"
        b.sendall(b"q")
        assert c.recv(1) == b"q"
        held.append((c, b))
        batch.append(c)
    os.write(wr, b"h")
    os.read(rd, 1)             # the parent measured: close and go
    os._exit(0)


class Run:
    def __init__(self, relay: str):
        self.backend = socket.create_server((HOST, 0), backlog=4096)
        self.front = socket.create_server((HOST, 0), backlog=4096)
        self.front.setblocking(False)
        self.front.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = self.backend.getsockname()[1]
        cfg = config.load_dict("idlesize", {
            "global": {"relay": relay, "workers": "1", "log_level": "warning"},
            "listen": {"idle": {"address": f"{HOST}:{self.front.getsockname()[1]}"}},
            "routes": {"all": {"probe": "any", "backend": f"{HOST}:{port}"}}})
        self.worker = Worker(cfg, [(cfg.listeners[0], self.front)])
        for acceptor in self.worker.acceptors:
            acceptor.start()
        self.children: list[tuple[int, int]] = []

    def hold(self, n: int) -> None:
        """A child opens n connections; the worker serves until they are all held."""
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r1)
            os.close(w2)
            child(self.front.getsockname()[1], self.backend, n, w1, r2)
        os.close(w1)
        os.close(r2)
        while not select.select([r1], [], [], 0)[0]:
            self.worker.reactor.run_once()
        os.read(r1, 1)
        os.close(r1)
        self.children.append((w2, pid))

    def done(self) -> None:
        for w2, pid in self.children:
            os.write(w2, b"x")
            os.close(w2)
            os.waitpid(pid, 0)


def owned(conns: list, ctx) -> dict[int, object]:
    """Objects reachable from conns[0] that neither conns[1] nor the shared context reaches."""
    stop = {id(ctx), id(ctx.reactor), id(ctx.pool), id(ctx.stats), id(ctx.admission), id(ctx.config)}

    def reach(root) -> dict[int, object]:
        seen: dict[int, object] = {}
        todo = [root]
        while todo:
            obj = todo.pop()
            if id(obj) in seen or id(obj) in stop or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
                continue
            if obj is not root and any(obj is c for c in conns):
                continue
            seen[id(obj)] = obj
            todo.extend(gc.get_referents(obj))
        return seen

    mine = reach(conns[0])
    other = reach(conns[1])
    return {k: v for k, v in mine.items() if k not in other}


def table(conn, ctx) -> list[tuple[str, int]]:
    rows: dict[str, list[int]] = {}
    for obj in owned(list(ctx.connections), ctx).values():
        rows.setdefault(type(obj).__qualname__, []).append(sys.getsizeof(obj))
    out = [(f"{name} x{len(sizes)}", sum(sizes)) for name, sizes in rows.items()]
    reactor = ctx.reactor
    handlers = reactor._handlers            # a list indexed by fd (a dict in older trees)
    if isinstance(handlers, dict):
        get, registered = handlers.get, len(handlers)
    else:
        get, registered = (lambda fd: handlers[fd] if 0 <= fd < len(handlers) else None), reactor.handler_count()
    regs = [h for h in (get(conn.cfd), get(conn.bfd)) if h not in (None, conn)]
    if regs:
        out.append((f"reactor registration objects x{len(regs)}", sum(sys.getsizeof(r) for r in regs)))
    own = ctx.own_backends
    by_local = getattr(own, "by_port", None)        # backend.OwnBackends: flat, local port -> socket
    if by_local is None:
        by_local = getattr(own, "by_local", own)    # older trees: local address -> {target: [sockets]}
    for label, container, per, count in (
            (f"reactor._handlers {type(handlers).__name__} (share)", handlers, 2, registered),
            (f"ctx.connections {type(ctx.connections).__name__} (share)", ctx.connections, 1, len(ctx.connections)),
            ("own_backends dict (share)", by_local, 1, len(by_local))):
        if count:
            out.append((label, round(sys.getsizeof(container) * per / count)))
    local = getattr(conn, "local", None)
    if isinstance(local, tuple) and by_local is not own:
        key = next((k for k in by_local if k == local[:2]), None)
        if key is not None:
            inner = by_local[key]
            size = (sys.getsizeof(key) if key is not local else 0) + sys.getsizeof(inner)
            size += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in inner.items())
            out.append(("own_backends entry (key, dict, target, list)", size))
    return sorted(out, key=lambda r: -r[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.idlesize")
    p.add_argument("-n", type=int, default=2000, help="idle connections measured (after a warm-up of 200)")
    p.add_argument("--relay", default="splice")
    o = p.parse_args(argv)
    run = Run(o.relay)
    ctx = run.worker.ctx
    gc.disable()
    run.hold(200)
    rss0 = rss()
    run.hold(o.n)
    rss1 = rss()
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    run.hold(o.n)
    heap1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    conn = next(iter(ctx.connections))
    rows = table(conn, ctx)
    print(f"one idle relayed connection (relay = {o.relay}), sys.getsizeof of what it owns:")
    for label, size in rows:
        print(f"  {label:45} {size:6d} B")
    print(f"  {'total':45} {sum(s for _, s in rows):6d} B")
    print(f"held {len(ctx.connections)}; per connection: Python heap (tracemalloc) {(heap1 - heap0) / o.n:.0f} B, "
          f"RSS {(rss1 - rss0) / o.n:.0f} B; pipes alive {ctx.pool.pipes}, lent {ctx.pool.lent}")
    run.done()
    run.worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
