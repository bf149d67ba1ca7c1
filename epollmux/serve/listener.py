"""Listening sockets: binding them, and accepting from them in bounded batches.

Owns: `bind()` (the supervisor calls it before forking), `Acceptor` (one per listening socket in a
worker), the per-worker connection limit, and fd exhaustion: on EMFILE/ENFILE the acceptor spends
its reserve fd to accept and close one client politely, then pauses and re-arms after a delay,
so it never spins. Must not know what a connection does after accept.
Must not import what serve/ must not (README "Architecture").
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING

from epollmux import addr, errors
from epollmux.serve import keepalive
from epollmux.serve.armed import Armed
from epollmux.serve.connection import Connection, client_events
from epollmux.serve.sniffing import DEFER_SECONDS, defers

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Listener
    from epollmux.serve.worker import Context

log = logging.getLogger("epollmux.listen")

ACCEPT_BATCH = 64
BACKLOG = 4096


def bind(address: addr.Address) -> socket.socket:
    """Bind and listen; raises OSError with the address in the message."""
    sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # accepted sockets inherit it
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None
    return sock


class Reserve:
    """An fd held back so that a worker out of fds can still accept and close one client."""

    def __init__(self):
        self.fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    def spend(self, sock: socket.socket) -> bool:
        """Accept one pending client and close it at once; True if one was refused."""
        os.close(self.fd)
        self.fd = -1
        try:
            client, _ = sock.accept()
            client.close()
            return True
        except OSError:
            return False
        finally:
            try:
                self.fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Acceptor(Armed):
    """Accepts with `socket._accept()` (accept4 -> fd, address) and wraps the fd in the C socket type
    `_socket.socket`: socket.accept() would read the listener's `.family` and `.type` as enums and run
    socket.socket's Python __init__ (~2 us), and the Python close() wrapper would run again at close."""

    def __init__(self, ctx: Context, listener: Listener, sock: socket.socket):
        super().__init__(ctx, listener, sock)
        if self.family in keepalive.TCP_FAMILIES:    # accepted clients inherit them (a reload re-applies them)
            keepalive.apply(sock, ctx.keepalive)
            defer = DEFER_SECONDS if defers(listener, ctx.settings.probe_timeout) else 0
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer)    # a reload may turn it off
        self.events = client_events(listener)

    def on_event(self, fd: int, events: int) -> None:
        ctx = self.ctx
        accept, family, listener, events = self.sock._accept, self.family, self.listener, self.events
        for _ in range(ACCEPT_BATCH):
            try:
                cfd, sockaddr = accept()
                try:
                    client = _socket.socket(family, socket.SOCK_STREAM, 0, cfd)
                except OSError:
                    os.close(cfd)
                    raise
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._accept_failed(exc):
                    return
                continue
            ctx.stats.accepted_on(listener.name)
            client.setblocking(False)          # ioctl(FIONBIO): accept4 gets only SOCK_CLOEXEC from CPython
            Connection(ctx, listener, client, sockaddr, events).start()

    def _accept_failed(self, exc: OSError) -> bool:
        """Handle an accept error; True to go on accepting in this batch."""
        if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
            return True     # that client is gone already; the next one may be fine
        if errors.is_exhausted(exc):
            refused = self.ctx.reserve.spend(self.sock)
            self.ctx.stats.count("refused_exhausted" if refused else "accept_exhausted")
            self.ctx.exhausted(f"{self.listener.name}: accept: {os.strerror(exc.errno)}")
        else:
            log.error("%s: accept failed: %s", self.listener.name, exc)
            self.pause()
        return False

