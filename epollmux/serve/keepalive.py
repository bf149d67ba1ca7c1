"""TCP keepalive and TCP_USER_TIMEOUT on both legs of every TCP connection.

Owns: which socket options make a peer that vanished without a FIN or RST (NAT timeout, lid closed, cable
pulled) show up as an error, so its connection ends (reason `timeout`, ETIMEDOUT) instead of holding two
fds forever.  The listening sockets carry the options and accepted clients inherit them (no syscall per
client); each backend socket within a second of its connect.  Idle healthy connections are not cut: a live peer
answers the probes.

Settings: tcp_keepalive (on by default), tcp_keepalive_idle / _interval / _count (seconds, seconds,
probes) and tcp_user_timeout (seconds unacknowledged data may wait; 0 leaves the kernel's limits).
Backend sockets get theirs through a `Settler`, a second after connect at most (not at all if they close
sooner). Must not import the reactor, the connection or the config module.
"""

from __future__ import annotations

import socket

TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


def options(settings) -> tuple[tuple[int, int, int], ...]:
    """The (level, option, value) triples the settings ask for; with keepalive off they reset it."""
    if not settings.tcp_keepalive:
        opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)]
    else:
        opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.tcp_keepalive_idle),
                (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.tcp_keepalive_interval),
                (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.tcp_keepalive_count)]
    opts.append((socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(settings.tcp_user_timeout * 1000)))
    return tuple(opts)


def fresh(opts: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
    """The options a new socket needs: without those that only restate a new socket's defaults (keepalive
    off, TCP_USER_TIMEOUT 0), which a listening socket kept over a reload still needs to be reset."""
    return tuple(o for o in opts if o[2] or o[1] not in (socket.SO_KEEPALIVE, TCP_USER_TIMEOUT))


SETTLE_DELAY = 1.0      # seconds a new backend socket waits for its options (Settler)


class Settler:
    """New backend sockets waiting for their options (`fresh` ones), applied once a second to those still
    open: a connection that ends sooner (most of a busy server's) never pays the syscalls, one that lives
    gets them at most a second late, against keepalive's idle time of minutes. `reactor` only needs
    call_later."""

    __slots__ = ("reactor", "opts", "socks", "armed")

    def __init__(self, reactor, opts: tuple[tuple[int, int, int], ...]):
        self.reactor = reactor
        self.opts = opts
        self.socks: list = []
        self.armed = False

    def add(self, sock) -> None:
        if self.opts:
            self.socks.append(sock)
            if not self.armed:
                self.armed = True
                self.reactor.call_later(SETTLE_DELAY, self.settle)

    def settle(self) -> None:
        socks, self.socks, self.armed = self.socks, [], False
        for sock in socks:
            if sock.fileno() >= 0:        # closed since: -1
                try:
                    apply(sock, self.opts)
                except OSError:
                    pass


def apply(sock, opts: tuple[tuple[int, int, int], ...]) -> None:
    """Set the options on a TCP socket (a listening one: its accepted sockets inherit them)."""
    for level, option, value in opts:
        sock.setsockopt(level, option, value)
