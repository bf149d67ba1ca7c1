"""One client connection from accept to close: sniff, [terminate TLS, sniff inside], connect, relay.

Owns: the connection's phases (`phases.py`; changed only through `_set_phase`, which cancels the old
phase's deadline; entering a waiting phase arms its own), its epoll registrations (each socket
registered once, edge-triggered; a plain socket without EPOLLOUT until a direction waits for it to
drain, then one EPOLL_CTL_MOD adds it; the kernel relay narrows them, see relay/kernel.py's
PAIRED_EVENTS) and `close()`, the one place where a connection ends: it records the reason, counts it
per route and writes the connection's log line. The socket work of the sniff phases is
`sniffing.py`, the backend socket and connect `backend.py`, the relay phase `relaying.py`.
Handlers return None to go on or a close reason; only `dispatch` turns a reason into a close.
Must not parse protocols (wire/ and the TLS engine do) or move bytes itself (relay/direction.py
does, or the kernel: a passthrough connection between two TCP sockets may be handed to ctx.kernel,
a relay/kernel.py KernelRelay, which reports its close reasons through `dispatch` like any handler).
Must not import what serve/ must not (README "Architecture").
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING

from epollmux import errors
from epollmux.observe import accesslog
from epollmux.reactor import ERR, HUP, OUT, RDHUP
from epollmux.relay.endpoints import TLSEndpoint
from epollmux.serve import backend, sniffing
from epollmux.serve.relaying import Relaying
from epollmux.serve.setupstate import SetupState
from epollmux.states import TransitionError
from epollmux.serve.phases import (BACKEND_OUT, CLIENT_OUT, EVENTS, NEXT, QUIET, READABLE, TCP_FAMILIES, Phase,
                                   client_events)
from epollmux.tls.engine import Event, TLSEngine
from epollmux.wire import clienthello, proxyout, sniff
from epollmux.reasons import Reason

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Listener, Route
    from epollmux.serve.worker import Context

__all__ = ["Connection", "Phase", "client_events"]

log = logging.getLogger("epollmux.conn")

ABORTS = (Reason.RESET, Reason.TIMEOUT, Reason.DRAIN_CUT, Reason.HARD_STOP)   # RST both, not FIN (a dead peer, a cut)
SNIFFING_PHASES = (Phase.PROXY_HEADER, Phase.SNIFFING, Phase.INNER_SNIFFING)   # edges count against max_probe_edges


def _expired(reason: str) -> str:
    """A deadline's handler: its close reason (armed with the reason as the timer's argument)."""
    return reason


class Connection(Relaying):
    __slots__ = ("ctx", "listener", "client", "cfd", "src", "backend", "bfd", "route",
                 "phase", "timer", "cend", "bend", "up", "down", "started", "last_active", "_soon")
    __slots__ += ("kernel",)              # True: ctx.kernel relays this connection, not Directions
    __slots__ += ("writable",)            # fds registered with OUT: CLIENT_OUT | BACKEND_OUT
    __slots__ += ("local",)               # the backend socket's local port, while in ctx.own_backends
    __slots__ += ("setup",)               # a SetupState: sniffing, PROXY, TLS, connect; SETTLED once relaying if plain

    def __init__(self, ctx: Context, listener: Listener, client: socket.socket, sockaddr, events: int = EVENTS):
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.cfd = client.fileno()
        self.src = sockaddr        # the client's (ip, port, ...): from a PROXY header when one is taken; None: ask the socket
        self.backend: socket.socket | None = None
        self.bfd = -1
        self.route = None          # the route whose backend we use
        self.phase = Phase.PROXY_HEADER if listener.proxy_protocol != "none" else Phase.SNIFFING
        self.timer = None
        self.cend = None           # the client's endpoint when TLS starts (a TLSEndpoint); None for a plain socket
        self.bend = None
        self.up = self.down = None
        self.started = ctx.reactor.now
        self.last_active = None    # with an idle_timeout, the last turn that moved bytes (relaying.py)
        self._soon = False
        self.kernel = False
        self.writable = events      # start() registers the client with these events
        self.local = None
        self.setup = SetupState(ctx.admission.grant())

    @property
    def peer(self) -> str:
        """The client as logs show it (made only when a log line needs it; read back from the socket while
        relaying, see _relay)."""
        host, port = (self.src or backend.peer_address(self.client) or ("-", 0))[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        ctx = self.ctx
        ctx.reactor.register(self.cfd, self.writable, self)
        self.writable &= CLIENT_OUT
        ctx.connections.add(self)
        if ctx.own_backends.looped(self.src, self.client):
            self.dispatch(self._looped)
            return
        self.dispatch(self._admit if self.listener.proxy_protocol == "none" else self._begin)

    def _looped(self) -> str:
        """The client is one of this worker's own backend sockets: a route's backend leads back here."""
        if not self.ctx.loop_warned:
            self.ctx.loop_warned = True
            log.warning("%s: a connection from this worker's own backend socket: a route's backend leads back "
                        "to a listener of this daemon; closed (reason loop)", self.listener.name)
        return Reason.LOOP

    def _set_phase(self, phase: Phase, deadline: float = 0, on_expiry=None, *args) -> None:
        if phase not in NEXT[self.phase]:
            raise TransitionError.of("connection phase", self.phase, phase)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.phase = phase
        if deadline:
            self._arm(deadline, on_expiry, *args)

    def _arm(self, delay: float, callback, *args) -> None:
        self.timer = self.ctx.reactor.call_later(delay, self.dispatch, callback, *args)

    def on_event(self, fd: int, events: int) -> None:
        phase = self.phase
        if phase is Phase.RELAYING:
            self.dispatch(self._relay_event, fd, events)
        elif fd == self.cfd:
            if phase in SNIFFING_PHASES and events & READABLE:
                setup = self.setup
                setup.edges += 1
                self.ctx.stats.count("sniff_wakeups")
                if setup.edges > self.ctx.settings.max_probe_edges:
                    self.dispatch(_expired, Reason.SNIFF_BUDGET)
                    return
            if phase is Phase.SNIFFING and events & READABLE:
                self.dispatch(self._sniff, bool(events & (RDHUP | HUP)))
            elif phase is Phase.PROXY_HEADER and events & READABLE:
                self.dispatch(self._proxy_header, bool(events & (RDHUP | HUP)))
            elif phase is Phase.HANDSHAKING:
                self.dispatch(self._handshake)
            elif phase is Phase.INNER_SNIFFING and events & READABLE:
                self.dispatch(self._inner_sniff)
            elif events & ERR:
                self.dispatch(self._socket_error, self.client)
            elif isinstance(self.cend, TLSEndpoint) and events & OUT:
                self.dispatch(self.cend.flush)
        elif phase is Phase.CONNECTING:
            self.dispatch(self._connected, events)
        elif phase is Phase.BACKEND_HANDSHAKING:
            self.dispatch(self._backend_handshake)

    def route_label(self, unknown: str | None) -> str | None:
        """The route as logs and `show conns` name it: outer>inner when chosen inside TLS; `unknown`
        while none is chosen."""
        route = self.route.name if self.route is not None else unknown
        outer = self.setup.outer
        if outer is not None and self.route is not outer:
            return f"{outer.name}>{route}"
        return route

    def dispatch(self, handler, *args) -> None:
        """Run a handler; the reason it returns, or the exception it raises, closes the connection.
        Public: the kernel relay runs its handlers for this connection through it."""
        if self.phase is Phase.CLOSED:
            return
        try:
            reason = handler(*args)
        except errors.Closed as exc:
            reason = exc.reason
            self.setup = self.setup.noted(exc.detail)
        except OSError as exc:
            if not (errors.is_peer_gone(exc) or errors.is_exhausted(exc)):
                log.exception("%s: unexpected error", self.peer)
            reason = errors.relay_reason(exc)
        except Exception:
            log.exception("%s: internal error", self.peer)
            reason = Reason.INTERNAL_ERROR
        if isinstance(reason, str):
            self.close(reason)

    _socket_error = staticmethod(backend.socket_error)

    # --- admission, PROXY header in ---------------------------------------------------------
    def _begin(self) -> str | None:
        """A listener that takes PROXY headers: from a trusted source, wait for one (else start() admits)."""
        listener = self.listener
        if not listener.trusted.contains(self.src[0]):
            return Reason.PROXY_UNTRUSTED
        reason = self._proxy_header(False)
        if not reason and self.phase is Phase.PROXY_HEADER:     # not all there yet: wait, with a deadline
            delay = sniffing.probe_delay(listener, self.ctx.settings.probe_timeout, self.client, True)
            self._arm(delay, _expired, Reason.PROXY_TIMEOUT)
        return reason

    def _proxy_header(self, peer_done: bool) -> str | None:
        reason, result = sniffing.take_proxy_header(self.client, self.listener.proxy_protocol, peer_done)
        if reason:
            if result is not None:
                self.setup = self.setup.noted(result.reason.replace(" ", "_"))
            return reason
        if result is None:
            return None
        if result.src is not None and result.src.port is not None:    # UNIX addresses: keep the socket's
            self.src, self.setup.dst = (result.src.host, result.src.port), (result.dst.host, result.dst.port)
        self._set_phase(Phase.SNIFFING)
        return self._admit()

    # --- sniffing --------------------------------------------------------------------------
    def _admit(self) -> str | None:
        """Admission, then sniffing begins."""
        ctx = self.ctx
        reason = ctx.admission.enter(self.setup.grant, self.listener, self.src[0], ctx.reactor.now, len(ctx.connections))
        if reason:
            return reason
        routes = self.listener.routes
        if routes[0].probe == "any":          # nothing to sniff: no wait, no peek
            return self._choose(routes[0])
        reason = self._sniff(False)           # the first bytes came with the accept where the listener defers
        if not reason and self.route is None:     # undecided: wait for more, with a deadline
            first = self.listener.proxy_protocol == "none"     # else the PROXY header's wait was the first
            self._arm(sniffing.probe_delay(self.listener, self.ctx.settings.probe_timeout, self.client, first),
                      self._probe_timeout)
        return reason

    def _sniff(self, peer_done: bool) -> str | None:
        """Peek at what the client sent so far; decide, or wait for the next edge.

        peer_done: the client shut its side, so these bytes are all there will be.
        """
        if peer_done:
            reason = self._socket_error(self.client)
            if reason:
                return reason  # a reset client is gone, though the kernel still shows its last bytes
        limit = self.ctx.settings.max_probe_bytes
        try:
            data = self.client.recv(limit, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        if not data:
            return Reason.CLIENT_EOF
        setup = self.setup
        if len(data) == setup.peek_len and not peer_done:
            return None        # nothing new (a spurious wake-up); the next edge brings more bytes
        reader = setup.reader
        if reader is None and data[0] == 0x16:
            reader = setup.reader = clienthello.HelloReader()
        if reader is not None:      # the new bytes only: sniffing a drip-fed hello stays O(bytes)
            clienthello.remember(data, reader.feed(data[setup.peek_len:]))
        setup.peek_len = len(data)
        setup.peeked = data
        return self._decide(data, self.listener.routes, self.listener.probe_table,
                            peer_done or len(data) >= limit)

    def _decide(self, data: bytes, routes, table, full: bool) -> str | None:
        decision = sniff.decide(data, table, full=full)
        sniffing.log_verdicts(self.peer, data, routes, decision, full)
        if not decision.done:
            return None
        if decision.route is None:
            return Reason.NO_ROUTE
        return self._choose(routes[decision.route])

    def _probe_timeout(self) -> str | None:
        outer = self.setup.outer
        route = outer.inner_on_timeout if outer else self.listener.on_timeout
        if route is None:
            return Reason.PROBE_TIMEOUT
        self.ctx.stats.count("probe_timeouts", route.name)
        self.setup.verdict = "timeout"
        return self._choose(route)

    def _choose(self, route: Route) -> str | None:
        setup = self.setup
        if setup.verdict == "none":
            setup.verdict = "match"
        self.route = route
        setup.reader = None
        ctx = self.ctx
        ctx.stats.routed(self.listener.name, route.name, ctx.reactor.clock() - self.started, setup.outer is not None)
        admission = ctx.admission
        if route.server_context is None and setup.grant.sniffing:    # a TLS handshake still counts as sniffing
            admission.sniffed(setup.grant)
        reason = admission.route(setup.grant, route, self.src[0])
        if reason:
            return reason
        if setup.peeked is not None:
            if setup.names is None:
                setup.names = sniff.names(setup.peeked)
            setup.peeked = None
        if route.server_context is not None:
            return self._start_tls(route)
        if setup.outer is not None:
            self.cend.pushback = setup.inner
        return self._connect()

    # --- terminating TLS -------------------------------------------------------------------
    def _start_tls(self, route: Route) -> str | None:
        self._set_phase(Phase.HANDSHAKING, self.ctx.settings.tls_handshake_timeout, _expired, Reason.TLS_HANDSHAKE_TIMEOUT)
        self.cend = TLSEndpoint(self.client, TLSEngine(route.server_context, server_side=True), fd=self.cfd)
        return self._handshake()

    def _handshake(self) -> str | None:
        end = self.cend
        result = end.handshake()
        if result is not Event.HANDSHAKE_DONE:
            if result is None:
                return None
            self.setup = self.setup.noted(end.engine.detail)
            return result.on("")
        if self.ctx.access.enabled():     # only the log line needs them; after a TLS close they cannot be asked
            engine = self.cend.engine
            self.setup.tls = {"tls": engine.version(), "cipher": engine.cipher(), "alpn": engine.alpn(),
                              "client_cn": engine.peer_cn()}
        self.ctx.stats.tls_handshake(self.route.name, "client")
        if self.setup.grant.sniffing:
            self.ctx.admission.sniffed(self.setup.grant)
        route = self.route
        if route.inner_routes:
            self.setup.outer = route
            self._set_phase(Phase.INNER_SNIFFING, self.ctx.settings.probe_timeout, self._probe_timeout)
            return self._inner_sniff()
        return self._connect()

    def _inner_sniff(self) -> str | None:
        """Read decrypted bytes (kept, to be sent first) and decide among the inner routes."""
        setup = self.setup
        outer = setup.outer
        limit = self.ctx.settings.max_probe_bytes
        inner, peer_done = sniffing.read_inner(self.cend, setup.inner, limit)
        setup.inner = inner
        if not inner:
            return Reason.CLIENT_EOF if peer_done else None
        return self._decide(inner, outer.inner_routes, outer.inner_table, peer_done or len(inner) >= limit)

    # --- connecting ------------------------------------------------------------------------
    def _connect(self) -> str | None:
        """Start the backend connect. A connect that is done by the time connect() returns (loopback, a
        unix socket) goes on to relay in this turn; else the connection waits, with a deadline, for the
        first writable edge."""
        self._set_phase(Phase.CONNECTING)
        ctx = self.ctx
        self.setup.connect_started = ctx.reactor.clock()
        sock, reason, done = backend.connect(self.route, self.src[0])
        self.backend = sock
        self.bfd = sock.fileno()
        if reason:
            return reason
        if done:
            # done already (on loopback the handshake ran inside connect()): no turn spent waiting for EPOLLOUT.
            # Bytes the backend sends make an edge after the registration (or are seen by it): no pump now.
            ctx.reactor.register(self.bfd, QUIET, self)
            reason = self._connected(OUT, pump_down=False)
        else:
            ctx.reactor.register(self.bfd, EVENTS, self)
            self.writable |= BACKEND_OUT
            self._arm(ctx.settings.connect_timeout, _expired, Reason.BACKEND_TIMEOUT)
        if not reason and self.route.backend.family in TCP_FAMILIES:
            # after the client's first bytes went to the backend: off the path of a first answer; the keepalive
            # options a second later, if the connection still lives (keepalive.Settler). The address is
            # remembered so that this socket, arriving at one of our listeners, is seen as a loop (that accept
            # comes in a later turn than this one).
            self.local = sock.getsockname()[1]
            ctx.settler.add(sock)
            ctx.own_backends.add(self.local, sock)
        return reason

    def _connected(self, events: int, pump_down: bool = True) -> str | None:
        """The connect finished: writable without an error means it worked (no SO_ERROR lookup then)."""
        if events & (ERR | HUP):
            err = self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return errors.connect_reason(err or errno.ECONNREFUSED)
        if not events & OUT:
            return None
        self.ctx.stats.connected(self.route.name, self.ctx.reactor.clock() - self.setup.connect_started)
        route = self.route
        if route.send_proxy:
            header = proxyout.header(route.send_proxy, self._facts(), crc=route.send_proxy_crc)
            if self.backend.send(header) != len(header):    # a fresh socket takes ~100 bytes at once
                return Reason.BACKEND_ERROR
        if route.backend_context is None:
            return self._relay(pump_down)      # cend and bend: None for a plain socket (relaying.py)
        self._set_phase(Phase.BACKEND_HANDSHAKING, self.ctx.settings.connect_timeout, _expired,
                        Reason.BACKEND_TLS_TIMEOUT)
        engine = TLSEngine(route.backend_context, server_side=False, server_hostname=route.backend_sni)
        self.bend = TLSEndpoint(self.backend, engine, prefix="backend-", fd=self.bfd)
        return self._backend_handshake()

    def _backend_handshake(self) -> str | None:
        end = self.bend
        result = end.handshake()
        if result is Event.HANDSHAKE_DONE:
            self.ctx.stats.tls_handshake(self.route.name, "backend")
            return self._relay()
        if result is None:
            return None
        self.setup = self.setup.noted(end.engine.detail)
        return result.on("backend-")

    def _relay(self, pump_down: bool = True) -> str | None:
        """An idle connection holds no address: the accepted client's is read back from its socket when a log
        line needs it (backend.peer_address; a PROXY header's, or a unix socket's, stays)."""
        if self.listener.proxy_protocol == "none" and self.client.family in TCP_FAMILIES:
            self.src = None
        self.setup = self.setup.settle()
        return self._start_relay(pump_down)

    def _facts(self) -> proxyout.Facts:
        setup = self.setup
        if setup.dst is None:
            setup.dst = self.client.getsockname()
        engine = self.cend.engine if isinstance(self.cend, TLSEndpoint) else None
        return backend.facts(self.src, setup.dst, self.ctx.unique_id(), engine, setup.names)

    # --- the one place where a connection ends ----------------------------------------------
    def close(self, reason: str) -> None:
        phase = self.phase
        if phase is Phase.CLOSED:
            return
        self._set_phase(Phase.CLOSED)
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.admission.leave(self.setup.grant)
        if self.src is None and (ctx.access.enabled() or reason == Reason.EXHAUSTED):
            self.src = backend.peer_address(self.client)      # while the socket is open
        if self.local is not None:
            ctx.own_backends.discard(self.local, self.backend)
        abort = reason in ABORTS
        up = down = spliced = 0
        if self.kernel:        # out of the maps before the sockets close; the counts need them open
            up, down = ctx.kernel.release(self)
        if not abort:
            for end in (self.cend, self.bend):
                if end is not None and end.holds_output:
                    try:
                        end.flush()      # best effort: a last alert or close_notify
                    except OSError:
                        pass
        for sock, fd in ((self.client, self.cfd), (self.backend, self.bfd)):
            if sock is not None:
                backend.close_socket(ctx.reactor, sock, fd, abort)
        if phase is Phase.RELAYING and not self.kernel:
            up, down, spliced = self.relay_counts()
        route = self.route.name if self.route else "-"
        ctx.stats.closed(self.listener.name, route, phase, reason, up, down)   # a StrEnum is its own label
        outer = self.setup.outer
        if outer is not None and self.route is not outer:    # routed counted it: so does closed
            ctx.stats.closed_outer(self.listener.name, outer.name, reason)
        if reason == Reason.EXHAUSTED:
            ctx.exhausted(f"{self.peer}: out of file descriptors or memory")
        if ctx.access.enabled():
            try:
                ctx.access.write(accesslog.record(self, self.route_label(route), reason, up, down, spliced))
            except Exception:     # a log line must never take the worker down
                log.exception("%s: cannot log the connection", self.peer)
