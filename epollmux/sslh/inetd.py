"""sslh's `-i/--inetd`: serve the one connection inetd passed on stdin, then exit (as sslh-fork does).

Owns: that one connection, blocking: read the client's first bytes (at most max_probe_bytes, within
probe_timeout), decide with the first listener's routes as the daemon would (wire.sniff), connect the
route's backend, write the bytes read so far, then relay both ways, passing a half-close on.
Must not import the reactor, the supervisor or the workers: one connection needs none of them.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

from epollmux import config
from epollmux.wire import proxyout, sniff

CHUNK = 1 << 16


def serve(cfg: config.Config, fd: int = 0) -> int:
    try:
        client = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        print(f"epollmux: --inetd: stdin is not a socket ({exc.strerror})", file=sys.stderr)
        return 1
    with client:
        route, data = _decide(client, cfg)
        if route is None:
            return 0
        try:
            backend = _connect(route, client, cfg.settings.connect_timeout)
        except OSError as exc:
            print(f"epollmux: --inetd: {route.name}: {route.backend}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        with backend:
            backend.sendall(data)
            _relay(client, backend)
    return 0


def _decide(client: socket.socket, cfg: config.Config) -> tuple[config.Route | None, bytes]:
    listener = cfg.listeners[0]
    cap = cfg.settings.max_probe_bytes
    deadline = time.monotonic() + cfg.settings.probe_timeout
    data, eof = b"", False
    while True:
        decision = sniff.decide(data, listener.probe_table, full=eof or len(data) >= cap)
        if decision.done:
            return (None if decision.route is None else listener.routes[decision.route]), data
        left = deadline - time.monotonic()
        if left <= 0:
            return listener.on_timeout, data
        if select.select([client], [], [], left)[0]:
            chunk = client.recv(cap - len(data))
            eof = not chunk
            data += chunk


def _connect(route: config.Route, client: socket.socket, timeout: float) -> socket.socket:
    backend = socket.socket(route.backend.family, socket.SOCK_STREAM)
    try:
        backend.settimeout(timeout)
        backend.connect(route.backend.sockaddr)
        backend.settimeout(None)
        if route.send_proxy:
            facts = proxyout.Facts(src=client.getpeername()[:2], dst=client.getsockname()[:2],
                                   unique_id=os.urandom(16))
            backend.sendall(proxyout.header(route.send_proxy, facts, crc=route.send_proxy_crc))
    except OSError:
        backend.close()
        raise
    return backend


def _relay(client: socket.socket, backend: socket.socket) -> None:
    """Copy both ways until both are done; EOF on one side becomes shutdown(SHUT_WR) on the other."""
    open_from = {client: backend, backend: client}
    while open_from:
        for src in select.select(list(open_from), [], [])[0]:
            try:
                chunk = src.recv(CHUNK)
            except OSError:
                return
            dst = open_from[src]
            if not chunk:
                del open_from[src]
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    return
                continue
            try:
                dst.sendall(chunk)
            except OSError:
                return
