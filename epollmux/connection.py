"""One client connection from accept to close: sniff, connect the backend, relay.

Owns: the connection's phases (changed only through `_set_phase`), its deadlines (probe, connect,
idle), its epoll registrations (each socket registered once, edge-triggered, never modified) and
`close()`, the one place where a connection ends: it records the reason, counts it per route
and writes the connection's log line.
Handlers return None to go on or a close reason; only `_event` turns a reason into a close.
Must not parse protocols (the sniffer does) or move bytes itself (relay.Direction does).
"""

from __future__ import annotations

import enum
import errno
import logging
import socket

from epollmux import addr, errors, sniff
from epollmux.reactor import ERR, ET, HUP, IN, OUT, RDHUP
from epollmux.relay import Direction, State

log = logging.getLogger("epollmux.conn")
probe_log = logging.getLogger("epollmux.probe")

EVENTS = IN | OUT | RDHUP | ET
READABLE = IN | ERR | HUP | RDHUP
WRITABLE = OUT | ERR | HUP


class Phase(enum.Enum):
    SNIFFING = "sniffing"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    CLOSED = "closed"


_ALLOWED = {
    Phase.SNIFFING: {Phase.CONNECTING, Phase.CLOSED},
    Phase.CONNECTING: {Phase.RELAYING, Phase.CLOSED},
    Phase.RELAYING: {Phase.CLOSED},
    Phase.CLOSED: set(),
}


class Connection:
    __slots__ = ("ctx", "listener", "client", "cfd", "peer", "backend", "bfd", "route", "phase",
                 "timer", "up", "down", "started", "last_active", "_peek_len", "_soon")

    def __init__(self, ctx, listener, client: socket.socket, peer: str):
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.cfd = client.fileno()
        self.peer = peer
        self.backend: socket.socket | None = None
        self.bfd = -1
        self.route = None
        self.phase = Phase.SNIFFING
        self.timer = None
        self.up = self.down = None
        self.started = ctx.reactor.clock()
        self.last_active = self.started
        self._peek_len = 0
        self._soon = False

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        ctx = self.ctx
        ctx.reactor.register(self.cfd, EVENTS, self)
        ctx.connections.add(self)
        self._event(self._begin_sniff)

    def _set_phase(self, phase: Phase) -> None:
        if phase not in _ALLOWED[self.phase]:
            raise RuntimeError(f"connection phase {self.phase.value} -> {phase.value} not allowed")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.phase = phase

    def _arm(self, delay: float, callback) -> None:
        self.timer = self.ctx.reactor.call_later(delay, lambda: self._event(callback))

    def on_event(self, fd: int, events: int) -> None:
        if self.phase is Phase.RELAYING:
            self._event(self._relay_event, fd, events)
        elif self.phase is Phase.SNIFFING:
            if fd == self.cfd and events & READABLE:
                self._event(self._sniff, bool(events & (RDHUP | HUP)))
        elif self.phase is Phase.CONNECTING:
            if fd == self.bfd:
                self._event(self._connected)
            elif events & (ERR | HUP):
                self._event(self._client_error)

    def _event(self, handler, *args) -> None:
        """Run a handler; the reason it returns, or the exception it raises, closes the connection."""
        if self.phase is Phase.CLOSED:
            return
        try:
            reason = handler(*args)
        except OSError as exc:
            if not (errors.is_peer_gone(exc) or errors.is_exhausted(exc)):
                log.exception("%s: unexpected error", self.peer)
            reason = errors.relay_reason(exc)
        except Exception:
            log.exception("%s: internal error", self.peer)
            reason = "internal-error"
        if reason is not None:
            self.close(reason)

    # --- sniffing --------------------------------------------------------------------------
    def _begin_sniff(self) -> str | None:
        routes = self.listener.routes
        if routes[0].probe == "any":          # nothing to sniff: no wait, no peek
            return self._choose(routes[0])
        self._arm(self.ctx.settings.probe_timeout, self._probe_timeout)
        return self._sniff(False)

    def _sniff(self, peer_done: bool) -> str | None:
        """Peek at what the client sent so far; decide, or wait for the next edge.

        peer_done: the client shut its side, so these bytes are all there will be.
        """
        limit = self.ctx.settings.max_probe_bytes
        try:
            data = self.client.recv(limit, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        if not data:
            return "client-eof"
        if len(data) == self._peek_len and not peer_done:
            return None        # nothing new (a spurious wake-up); the next edge brings more bytes
        self._peek_len = len(data)
        routes = self.listener.routes
        decision = sniff.decide(data, self.listener.probe_table, full=peer_done or len(data) >= limit)
        if probe_log.isEnabledFor(logging.DEBUG):
            probe_log.debug("%s: %d bytes, verdicts %s", self.peer, len(data),
                            " ".join(f"{r.name}={v.value}" for r, v in zip(routes, decision.verdicts)))
        if not decision.done:
            return None
        if decision.route is None:
            return "no-route"
        return self._choose(routes[decision.route])

    def _probe_timeout(self) -> str | None:
        route = self.listener.on_timeout
        if route is None:
            return "probe-timeout"
        self.ctx.stats.count("probe_timeouts", route.name)
        return self._choose(route)

    def _choose(self, route) -> str | None:
        self.route = route
        self.ctx.stats.count("routed", route.name)
        return self._connect()

    # --- connecting ------------------------------------------------------------------------
    def _connect(self) -> str | None:
        self._set_phase(Phase.CONNECTING)
        target = self.route.backend
        sock = socket.socket(target.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.backend = sock
        self.bfd = sock.fileno()
        if target.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(target.sockaddr)
        if err not in (0, errno.EINPROGRESS):
            return "backend-busy" if err == errno.EAGAIN else errors.connect_reason(err)
        self.ctx.reactor.register(self.bfd, EVENTS, self)
        self._arm(self.ctx.settings.connect_timeout, lambda: "backend-timeout")
        return None

    def _connected(self) -> str | None:
        err = self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return errors.connect_reason(err)
        return self._start_relay()

    def _client_error(self) -> str | None:
        err = self.client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return "reset" if err else None

    # --- relaying --------------------------------------------------------------------------
    def _start_relay(self) -> str | None:
        self._set_phase(Phase.RELAYING)
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pool = self.ctx.pool
        self.up = Direction(self.client, self.backend, pool)
        self.down = Direction(self.backend, self.client, pool)
        if self.ctx.settings.idle_timeout:
            self._arm(self.ctx.settings.idle_timeout, self._idle_check)
        return self._pump(self.up) or self._pump(self.down) or self._after_pump()

    def _relay_event(self, fd: int, events: int) -> str | None:
        if events & ERR:
            sock = self.client if fd == self.cfd else self.backend
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return "reset"
        src, dst = (self.up, self.down) if fd == self.cfd else (self.down, self.up)
        if events & READABLE and src.state is State.WAIT_SRC:
            reason = self._pump(src)
            if reason:
                return reason
        if events & WRITABLE and dst.state is State.WAIT_DST:
            reason = self._pump(dst)
            if reason:
                return reason
        return self._after_pump()

    def _pump(self, direction: Direction) -> str | None:
        self.last_active = self.ctx.reactor.clock()
        return direction.pump()

    def _after_pump(self) -> str | None:
        up, down = self.up.state, self.down.state
        if up is State.DONE and down is State.DONE:
            return "eof"
        if (up is State.BUSY or down is State.BUSY) and not self._soon:
            self._soon = True
            self.ctx.reactor.call_soon(lambda: self._event(self._resume))
        return None

    def _resume(self) -> str | None:
        self._soon = False
        for direction in (self.up, self.down):
            if direction.state is State.BUSY:
                reason = self._pump(direction)
                if reason:
                    return reason
        return self._after_pump()

    def _idle_check(self) -> str | None:
        idle = self.ctx.settings.idle_timeout
        left = self.last_active + idle - self.ctx.reactor.clock()
        if left <= 0:
            return "idle-timeout"
        self._arm(left, self._idle_check)
        return None

    # --- the one place where a connection ends ----------------------------------------------
    def close(self, reason: str) -> None:
        if self.phase is Phase.CLOSED:
            return
        self._set_phase(Phase.CLOSED)
        ctx = self.ctx
        ctx.connections.discard(self)
        abort = reason == "reset"
        for sock, fd in ((self.client, self.cfd), (self.backend, self.bfd)):
            if sock is None:
                continue
            ctx.reactor.unregister(fd)
            if abort:   # pass the reset on: the other peer sees RST, not a clean end
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
            sock.close()
        up = down = 0
        if self.up is not None:
            self.up.discard()
            self.down.discard()
            up, down = self.up.moved, self.down.moved
        route = self.route.name if self.route else "-"
        ctx.stats.closed(route, reason, up, down)
        if reason == "exhausted":
            ctx.exhausted(f"{self.peer}: out of file descriptors or memory")
        if log.isEnabledFor(logging.INFO):
            backend = self.route.backend.text if self.route else "-"
            duration = ctx.reactor.clock() - self.started
            log.info("client=%s listener=%s route=%s backend=%s up=%d down=%d duration=%.3fs reason=%s",
                     self.peer, self.listener.name, route, backend, up, down, duration, reason)


def peer_of(family: int, sockaddr) -> str:
    return addr.peer_text(family, sockaddr)

