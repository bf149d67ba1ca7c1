"""One client connection from accept to close: sniff, [terminate TLS, sniff inside], connect, relay.

Owns: the connection's phases (changed only through `_set_phase`, which cancels the old phase's
deadline; entering a waiting phase arms its own), its epoll registrations (each socket registered
once, edge-triggered; a plain socket without EPOLLOUT until a direction waits for it to drain, then
one EPOLL_CTL_MOD adds it; the kernel relay narrows them, see kernelrelay.PAIRED_EVENTS) and
`close()`, the one place where a connection ends: it records the reason, counts it per route and
writes the connection's log line.
Handlers return None to go on or a close reason; only `_event` turns a reason into a close.
Must not parse protocols (the sniffer and the TLS engine do) or move bytes itself (relay.Direction does,
or the kernel: a passthrough connection between two TCP sockets may be handed to ctx.kernel, a
kernelrelay.KernelRelay, which reports its close reasons through `_event` like any handler).
"""

from __future__ import annotations

import _socket
import enum
import errno
import logging
import socket

from epollmux.observe import accesslog
from epollmux import addr, errors
from epollmux.wire import clienthello, proxyout, proxyproto, sniff, why
from epollmux.serve.admission import Grant
from epollmux.relay.endpoints import PlainEndpoint, TLSEndpoint
from epollmux.reactor import ERR, ET, HUP, IN, OUT, RDHUP
from epollmux.relay.direction import Direction, State
from epollmux.tls.engine import Event, TLSEngine

log = logging.getLogger("epollmux.conn")
probe_log = logging.getLogger("epollmux.probe")

EVENTS = IN | OUT | RDHUP | ET
QUIET = IN | RDHUP | ET     # a plain socket's events until a direction waits for it to drain (saves an edge
#                             per writable socket that nobody waits on); ERR and HUP come regardless
READABLE = IN | ERR | HUP | RDHUP
WRITABLE = OUT | ERR | HUP
ABORTS = ("reset", "timeout", "drain-cut", "hard-stop")   # end both sockets with RST, not FIN (a dead peer, a cut)
LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"   # struct linger {on, 0 s}: close() sends RST
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
TCP_ESTABLISHED = 1                                  # tcp_info.tcpi_state, its first byte
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
CLIENT_OUT, BACKEND_OUT = OUT, OUT << 16               # Connection.writable bits


def client_events(listener) -> int:
    """Events a listener's clients are registered with: QUIET unless a route may terminate TLS (a TLS
    endpoint flushes ciphertext on writable edges, in the handshake too)."""
    routes = [*listener.routes, listener.on_timeout]
    return EVENTS if any(r is not None and r.server_context is not None for r in routes) else QUIET


class Phase(enum.Enum):
    PROXY_HEADER = "proxy-header"            # reading the PROXY protocol header a trusted proxy sends
    SNIFFING = "sniffing"
    HANDSHAKING = "handshaking"              # terminating TLS with the client
    INNER_SNIFFING = "inner-sniffing"        # sniffing the decrypted stream
    CONNECTING = "connecting"
    BACKEND_HANDSHAKING = "backend-handshaking"   # TLS towards the backend
    RELAYING = "relaying"
    CLOSED = "closed"


_ALLOWED = {
    Phase.PROXY_HEADER: {Phase.SNIFFING, Phase.CLOSED},
    Phase.SNIFFING: {Phase.HANDSHAKING, Phase.CONNECTING, Phase.CLOSED},
    Phase.HANDSHAKING: {Phase.INNER_SNIFFING, Phase.CONNECTING, Phase.CLOSED},
    Phase.INNER_SNIFFING: {Phase.CONNECTING, Phase.CLOSED},
    Phase.CONNECTING: {Phase.BACKEND_HANDSHAKING, Phase.RELAYING, Phase.CLOSED},
    Phase.BACKEND_HANDSHAKING: {Phase.RELAYING, Phase.CLOSED},
    Phase.RELAYING: {Phase.CLOSED},
    Phase.CLOSED: set(),
}
for _phase, _next in _ALLOWED.items():
    _phase.allowed = tuple(_next)     # `in` a tuple of members compares identity: no Enum.__hash__ (Python code)
del _phase, _next


SNIFFING_PHASES = (Phase.PROXY_HEADER, Phase.SNIFFING, Phase.INNER_SNIFFING)   # edges count against max_probe_edges


def _expired(reason: str) -> str:
    """A deadline's handler: its close reason (armed with the reason as the timer's argument)."""
    return reason


class Connection:
    __slots__ = ("ctx", "listener", "client", "cfd", "src", "dst", "backend", "bfd", "route", "outer",
                 "phase", "timer", "cend", "bend", "up", "down", "started", "last_active", "_peek_len", "_soon",
                 "_inner", "detail", "tls", "grant", "hello", "names", "verdict")
    __slots__ += ("connect_started",)     # metrics: when the backend connect began
    __slots__ += ("kernel",)              # True: ctx.kernel relays this connection, not Directions
    __slots__ += ("writable",)            # fds registered with OUT: CLIENT_OUT | BACKEND_OUT
    __slots__ += ("edges", "reader")      # readable edges spent deciding; the ClientHello read so far
    __slots__ += ("local",)               # the backend socket's own address, while in ctx.own_backends

    def __init__(self, ctx, listener, client: socket.socket, sockaddr, events: int = EVENTS):
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.cfd = client.fileno()
        self.src = sockaddr        # the client's (ip, port, ...): from a PROXY header when one is taken
        self.dst = None            # the address the client connected to, looked up when needed
        self.backend: socket.socket | None = None
        self.bfd = -1
        self.route = None          # the route whose backend we use
        self.outer = None          # the terminating route, when the route was chosen inside TLS
        self.phase = Phase.PROXY_HEADER if listener.proxy_protocol != "none" else Phase.SNIFFING
        self.timer = None
        self.cend = None           # the client's endpoint: a TLSEndpoint when TLS starts, else a PlainEndpoint at connect
        self.bend = None
        self.up = self.down = None
        self.started = ctx.reactor.now
        self.last_active = self.started
        self._peek_len = 0
        self._soon = False
        self._inner = b""          # decrypted bytes read while sniffing inside TLS
        self.detail = None         # what a TLS engine said about an error, for the log line
        self.tls = None            # version, cipher, ALPN, client CN of a terminated handshake, for the access log
        self.names = None          # SNI / ALPN / Host seen in the peeked bytes, for the access log
        self.verdict = "none"      # how the route was chosen: match, timeout
        self.grant = Grant()       # what admission granted, undone at close
        self.hello = None          # the peeked ClientHello, kept when a PROXY v2 header will need its SNI
        self.connect_started = 0.0
        self.kernel = False
        self.writable = events      # start() registers the client with these events
        self.edges = 0              # readable edges before the route was decided (max_probe_edges)
        self.reader = None          # a clienthello.HelloReader while a TLS first flight is being sniffed
        self.local = None

    @property
    def peer(self) -> str:
        """The client as logs show it (made only when a log line needs it)."""
        host, port = self.src[0], self.src[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        ctx = self.ctx
        ctx.reactor.register(self.cfd, self.writable, self)
        self.writable &= CLIENT_OUT
        ctx.connections.add(self)
        target = ctx.own_backends.get(self.src)
        if target is not None and self._from_own_backend(target):
            self._event(self._looped)
            return
        self._event(self._admit if self.listener.proxy_protocol == "none" else self._begin)

    def _from_own_backend(self, target) -> bool:
        """Our backend socket's port is this client's, and it went to this very listener (not merely the same
        ephemeral port reused for a connect elsewhere, which the kernel allows: only the 4-tuple is unique)."""
        try:
            here = self.client.getsockname()
        except OSError:
            return False
        return here[:2] == target[:2]

    def _looped(self) -> str:
        """The client is one of this worker's own backend sockets: a route's backend leads back here."""
        if not self.ctx.loop_warned:
            self.ctx.loop_warned = True
            log.warning("%s: a connection from this worker's own backend socket: a route's backend leads back "
                        "to a listener of this daemon; closed (reason loop)", self.listener.name)
        return "loop"

    def _set_phase(self, phase: Phase, deadline: float = 0, on_expiry=None, *args) -> None:
        if phase not in self.phase.allowed:
            raise RuntimeError(f"connection phase {self.phase.value} -> {phase.value} not allowed")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.phase = phase
        if deadline:
            self._arm(deadline, on_expiry, *args)

    def _arm(self, delay: float, callback, *args) -> None:
        self.timer = self.ctx.reactor.call_later(delay, self._event, callback, *args)

    def on_event(self, fd: int, events: int) -> None:
        phase = self.phase
        if phase is Phase.RELAYING:
            self._event(self._relay_event, fd, events)
        elif fd == self.cfd:
            if phase in SNIFFING_PHASES and events & READABLE:
                self.edges += 1
                if self.edges > self.ctx.settings.max_probe_edges:
                    self._event(_expired, "sniff-budget")
                    return
            if phase is Phase.SNIFFING and events & READABLE:
                self._event(self._sniff, bool(events & (RDHUP | HUP)))
            elif phase is Phase.PROXY_HEADER and events & READABLE:
                self._event(self._proxy_header, bool(events & (RDHUP | HUP)))
            elif phase is Phase.HANDSHAKING:
                self._event(self._handshake)
            elif phase is Phase.INNER_SNIFFING and events & READABLE:
                self._event(self._inner_sniff)
            elif events & ERR:
                self._event(self._socket_error, self.client)
            elif isinstance(self.cend, TLSEndpoint) and events & OUT:
                self._event(self.cend.flush)
        elif phase is Phase.CONNECTING:
            self._event(self._connected, events)
        elif phase is Phase.BACKEND_HANDSHAKING:
            self._event(self._backend_handshake)

    def _event(self, handler, *args) -> None:
        """Run a handler; the reason it returns, or the exception it raises, closes the connection."""
        if self.phase is Phase.CLOSED:
            return
        try:
            reason = handler(*args)
        except errors.Closed as exc:
            reason, self.detail = exc.reason, exc.detail
        except OSError as exc:
            if not (errors.is_peer_gone(exc) or errors.is_exhausted(exc)):
                log.exception("%s: unexpected error", self.peer)
            reason = errors.relay_reason(exc)
        except Exception:
            log.exception("%s: internal error", self.peer)
            reason = "internal-error"
        if isinstance(reason, str):
            self.close(reason)

    def _socket_error(self, sock: socket.socket) -> str | None:
        """The close reason a socket's pending error gives: timeout (keepalive, TCP_USER_TIMEOUT), reset."""
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return None if not err else "timeout" if err == errno.ETIMEDOUT else "reset"

    # --- admission, PROXY header in ---------------------------------------------------------
    def _begin(self) -> str | None:
        """A listener that takes PROXY headers: from a trusted source, wait for one (else start() admits)."""
        listener = self.listener
        if not listener.trusted.contains(self.src[0]):
            return "proxy-untrusted"
        self._arm(self.ctx.settings.probe_timeout, _expired, "proxy-timeout")
        return self._proxy_header(False)

    def _proxy_header(self, peer_done: bool) -> str | None:
        try:
            data = self.client.recv(proxyproto.MAX_HEADER_LEN, socket.MSG_PEEK)
        except BlockingIOError:
            return None        # nothing yet: the next edge brings the header (or the deadline ends it)
        if not data:
            return "client-eof"
        result = proxyproto.parse(data, self.listener.proxy_protocol)
        if result.status is proxyproto.Status.NEED_MORE:
            return "proxy-invalid" if peer_done else None
        if result.status is proxyproto.Status.INVALID:
            self.detail = result.reason.replace(" ", "_")
            return "proxy-invalid"
        self.client.recv(result.length)        # consume exactly the header; the stream starts after it
        if result.src is not None and result.src.port is not None:    # UNIX addresses: keep the socket's
            self.src, self.dst = (result.src.host, result.src.port), (result.dst.host, result.dst.port)
        self._set_phase(Phase.SNIFFING)
        return self._admit()

    # --- sniffing --------------------------------------------------------------------------
    def _admit(self) -> str | None:
        """Admission, then sniffing begins."""
        ctx = self.ctx
        reason = ctx.admission.enter(self.grant, self.listener, self.src[0], ctx.reactor.now, len(ctx.connections))
        if reason:
            return reason
        routes = self.listener.routes
        if routes[0].probe == "any":          # nothing to sniff: no wait, no peek
            return self._choose(routes[0])
        self._arm(self.ctx.settings.probe_timeout, self._probe_timeout)
        return self._sniff(False)

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
            return "client-eof"
        if len(data) == self._peek_len and not peer_done:
            return None        # nothing new (a spurious wake-up); the next edge brings more bytes
        reader = self.reader
        if reader is None and data[0] == 0x16:
            reader = self.reader = clienthello.HelloReader()
        if reader is not None:      # the new bytes only: sniffing a drip-fed hello stays O(bytes)
            clienthello.remember(data, reader.feed(data[self._peek_len:]))
        self._peek_len = len(data)
        self.hello = data
        return self._decide(data, self.listener.routes, self.listener.probe_table,
                            peer_done or len(data) >= limit)

    def _decide(self, data: bytes, routes, table, full: bool) -> str | None:
        decision = sniff.decide(data, table, full=full)
        if probe_log.isEnabledFor(logging.DEBUG):
            probe_log.debug("%s: %d bytes, verdicts %s", self.peer, len(data),
                            why.describe(routes, decision.verdicts, data, full=full))
        if not decision.done:
            return None
        if decision.route is None:
            return "no-route"
        return self._choose(routes[decision.route])

    def _probe_timeout(self) -> str | None:
        route = self.outer.inner_on_timeout if self.outer else self.listener.on_timeout
        if route is None:
            return "probe-timeout"
        self.ctx.stats.count("probe_timeouts", route.name)
        self.verdict = "timeout"
        return self._choose(route)

    def _choose(self, route) -> str | None:
        if self.verdict == "none":
            self.verdict = "match"
        self.route = route
        self.reader = None
        ctx = self.ctx
        ctx.stats.routed(self.listener.name, route.name, ctx.reactor.clock() - self.started, self.outer is not None)
        admission = ctx.admission
        if route.server_context is None and self.grant.sniffing:    # a TLS handshake still counts as sniffing
            admission.sniffed(self.grant)
        reason = admission.route(self.grant, route, self.src[0])
        if reason:
            return reason
        if self.hello is not None and self.names is None:
            self.names = accesslog.peeked_names(self.hello)
        if route.send_proxy != "v2" or route.server_context is not None:
            self.hello = None
        if route.server_context is not None:
            return self._start_tls(route)
        if self.outer is not None:
            self.cend.pushback = self._inner
        return self._connect()

    # --- terminating TLS -------------------------------------------------------------------
    def _start_tls(self, route) -> str | None:
        self._set_phase(Phase.HANDSHAKING, self.ctx.settings.tls_handshake_timeout, _expired, "tls-handshake-timeout")
        self.cend = TLSEndpoint(self.client, TLSEngine(route.server_context, server_side=True), fd=self.cfd)
        return self._handshake()

    def _handshake(self) -> str | None:
        end = self.cend
        result = end.handshake()
        if result is not Event.HANDSHAKE_DONE:
            if result is None:
                return None
            self.detail = end.engine.detail
            return result.value
        if self.ctx.access.enabled():     # only the log line needs them; after a TLS close they cannot be asked
            engine = self.cend.engine
            self.tls = {"tls": engine.version(), "cipher": engine.cipher(), "alpn": engine.alpn(),
                        "client_cn": engine.peer_cn()}
        self.ctx.stats.tls_handshake(self.route.name, "client")
        if self.grant.sniffing:
            self.ctx.admission.sniffed(self.grant)
        route = self.route
        if route.inner_routes:
            self.outer = route
            self._set_phase(Phase.INNER_SNIFFING, self.ctx.settings.probe_timeout, self._probe_timeout)
            return self._inner_sniff()
        return self._connect()

    def _inner_sniff(self) -> str | None:
        """Read decrypted bytes (kept, to be sent first) and decide among the inner routes."""
        outer = self.outer
        limit = self.ctx.settings.max_probe_bytes
        buf = bytearray(limit)
        view = memoryview(buf)
        peer_done = False
        got = len(self._inner)
        buf[:got] = self._inner
        try:
            while got < limit:
                n = self.cend.readinto(view[got:])
                if n == 0:
                    peer_done = True
                    break
                got += n
        except BlockingIOError:
            pass
        self._inner = bytes(buf[:got])
        view.release()
        if not self._inner:
            return "client-eof" if peer_done else None
        return self._decide(self._inner, outer.inner_routes, outer.inner_table, peer_done or got >= limit)

    # --- connecting ------------------------------------------------------------------------
    def _connect(self) -> str | None:
        """Start the backend connect. A connect that is done by the time connect() returns (loopback, a
        unix socket) goes on to relay in this turn; else the connection waits, with a deadline, for the
        first writable edge."""
        self._set_phase(Phase.CONNECTING)
        ctx = self.ctx
        self.connect_started = ctx.reactor.clock()
        route = self.route
        target = route.backend
        family = target.family
        # _socket.socket: the C socket type, without socket.socket's Python-level __init__/close/.family
        sock = _socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.backend = sock
        self.bfd = sock.fileno()
        tcp = family in TCP_FAMILIES
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for level, option, value in ctx.keepalive:
                sock.setsockopt(level, option, value)
        if route.transparent:
            reason = self._bind_as_client(sock, family)
            if reason:
                return reason
        err = sock.connect_ex(target.sockaddr)
        if err not in (0, errno.EINPROGRESS):
            return "backend-busy" if err == errno.EAGAIN else errors.connect_reason(err)
        if tcp:         # remembered so that this socket, arriving at one of our listeners, is seen as a loop
            self.local = sock.getsockname()
            ctx.own_backends[self.local] = target.sockaddr
        if route.backend_context is None and (
                err == 0 or tcp and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED):
            # done already (on loopback the handshake ran inside connect()): no turn spent waiting for EPOLLOUT.
            # Bytes the backend sends make an edge after the registration (or are seen by it): no pump now.
            ctx.reactor.register(self.bfd, QUIET, self)
            return self._connected(OUT, pump_down=False)
        ctx.reactor.register(self.bfd, EVENTS, self)
        self.writable |= BACKEND_OUT
        self._arm(ctx.settings.connect_timeout, _expired, "backend-timeout")
        return None

    def _bind_as_client(self, sock: socket.socket, family: int) -> str | None:
        """Transparent mode: the backend sees the client's own address (IP_TRANSPARENT)."""
        ip = self.src[0]
        if (":" in ip) != (family == socket.AF_INET6):
            return "transparent-family"
        level, option = (socket.IPPROTO_IPV6, IPV6_TRANSPARENT) if family == socket.AF_INET6 else (socket.SOL_IP, IP_TRANSPARENT)
        try:
            sock.setsockopt(level, option, 1)
        except PermissionError:
            return "transparent-denied"     # no CAP_NET_ADMIN / CAP_NET_RAW (--check warns)
        sock.bind((ip, 0))
        return None

    def _connected(self, events: int, pump_down: bool = True) -> str | None:
        """The connect finished: writable without an error means it worked (no SO_ERROR lookup then)."""
        if events & (ERR | HUP):
            err = self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return errors.connect_reason(err or errno.ECONNREFUSED)
        if not events & OUT:
            return None
        self.ctx.stats.connected(self.route.name, self.ctx.reactor.clock() - self.connect_started)
        route = self.route
        if self.cend is None:
            self.cend = PlainEndpoint(self.client, self.cfd)
        if route.send_proxy:
            header = proxyout.header(route.send_proxy, self._facts(), crc=route.send_proxy_crc)
            if self.backend.send(header) != len(header):    # a fresh socket takes ~100 bytes at once
                return "backend-error"
        if route.backend_context is None:
            self.bend = PlainEndpoint(self.backend, self.bfd)
            return self._start_relay(pump_down)
        self._set_phase(Phase.BACKEND_HANDSHAKING, self.ctx.settings.connect_timeout, _expired,
                        "backend-tls-timeout")
        engine = TLSEngine(route.backend_context, server_side=False, server_hostname=route.backend_sni)
        self.bend = TLSEndpoint(self.backend, engine, prefix="backend-", fd=self.bfd)
        return self._backend_handshake()

    def _backend_handshake(self) -> str | None:
        end = self.bend
        result = end.handshake()
        if result is Event.HANDSHAKE_DONE:
            self.ctx.stats.tls_handshake(self.route.name, "backend")
            return self._start_relay()
        if result is None:
            return None
        self.detail = end.engine.detail
        return "backend-" + result.value

    def _facts(self) -> proxyout.Facts:
        if self.dst is None:
            self.dst = self.client.getsockname()
        facts = proxyout.Facts(src=self.src[:2], dst=self.dst[:2], unique_id=self.ctx.unique_id())
        if isinstance(self.cend, TLSEndpoint):
            engine = self.cend.engine
            cert = engine.peer_cert_der() is not None
            facts.sni, facts.alpn = engine.sni, engine.alpn()
            facts.tls_version, facts.tls_cipher = engine.version(), engine.cipher()
            facts.client_cn, facts.client_cert, facts.client_verified = engine.peer_cn(), cert, engine.peer_verified()
            facts.session_reused = engine.session_reused()
        elif self.hello is not None:
            hello = clienthello.parse_client_hello(self.hello)
            if hello.status is clienthello.HelloStatus.OK:
                facts.sni, facts.alpn = hello.server_name, (hello.alpn[0] if hello.alpn else None)
            self.hello = None
        return facts

    # --- relaying --------------------------------------------------------------------------
    def _start_relay(self, pump_down: bool = True) -> str | None:
        """pump_down=False: the backend was registered this turn, so its first bytes will raise an edge."""
        self._set_phase(Phase.RELAYING)
        ctx = self.ctx
        if ctx.kernel is not None and self._kernel_relayable() and ctx.kernel.take(self, self.client, self.backend):
            self.kernel = True
            if ctx.settings.idle_timeout:
                self._arm(ctx.settings.idle_timeout, self._idle_check)
            return None
        pool = ctx.pool
        up = self.up = Direction(self.cend, self.bend, pool)
        down = self.down = Direction(self.bend, self.cend, pool)
        up.other, down.other = down, up
        if ctx.settings.idle_timeout:
            self._arm(ctx.settings.idle_timeout, self._idle_check)
        return self._pump(up) or (pump_down and self._pump(down)) or self._after_pump()

    def _kernel_relayable(self) -> bool:
        """Passthrough between two TCP sockets, with a kernel relay in this worker, on a listener that
        takes no PROXY header (its bytes were read with recv: the kernel would relay them again)."""
        return (self.ctx.kernel is not None and self.listener.proxy_protocol == "none"
                and type(self.cend) is PlainEndpoint and type(self.bend) is PlainEndpoint
                and self.client.family in TCP_FAMILIES and self.backend.family in TCP_FAMILIES)

    def _relay_event(self, fd: int, events: int) -> str | None:
        if self.kernel:
            return self.ctx.kernel.socket_event(self, fd, events)
        if fd == self.cfd:
            sock, end, src, dst = self.client, self.cend, self.up, self.down
        else:
            sock, end, src, dst = self.backend, self.bend, self.down, self.up
        if events & ERR:
            reason = self._socket_error(sock)
            if reason:
                return reason
        moved = False          # an edge that finds nothing to do (a writable socket with nothing waiting) ends here
        if events & WRITABLE and end.holds_output and end.pending_output():
            end.flush()
            moved = True
        if events & READABLE and src.state is State.WAIT_SRC:
            reason = self._pump(src, not events & (RDHUP | HUP | ERR))     # clean edge: see Direction.pump
            if reason:
                return reason
            moved = True
        if events & WRITABLE and dst.state is State.WAIT_DST:
            reason = self._pump(dst)
            if reason:
                return reason
            moved = True
        return self._after_pump() if moved else None

    def _pump(self, direction: Direction, clean: bool = False) -> str | None:
        self.last_active = self.ctx.reactor.now
        reason = direction.pump(clean)
        if reason:
            if direction.detail:
                self.detail = direction.detail
            return reason
        if direction.state is State.WAIT_DST:
            self._want_writable(direction)
        return None

    def _want_writable(self, direction: Direction) -> None:
        """A direction waits for its destination to drain: make sure that socket reports writable edges."""
        bit, fd = (BACKEND_OUT, self.bfd) if direction is self.up else (CLIENT_OUT, self.cfd)
        if not self.writable & bit:
            self.ctx.reactor.modify(fd, EVENTS)    # ET: if it drained meanwhile, the edge is queued now
            self.writable |= bit

    def _after_pump(self) -> str | None:
        up, down = self.up.state, self.down.state
        if up is State.DONE and down is State.DONE:
            cend, bend = self.cend, self.bend
            if cend.holds_output and cend.pending_output() or bend.holds_output and bend.pending_output():
                return None        # a close_notify still on its way: the next writable edge sends it
            return "eof"
        if (up is State.BUSY or down is State.BUSY) and not self._soon:
            self._soon = True
            self.ctx.reactor.call_soon(self._event, self._resume)
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
        if self.kernel and self.ctx.kernel.active(self):     # payload wakes no one: ask the kernel
            self.last_active = self.ctx.reactor.clock()
        left = self.last_active + idle - self.ctx.reactor.clock()
        if left <= 0:
            return "idle-timeout"
        self._arm(left, self._idle_check)
        return None

    # --- the one place where a connection ends ----------------------------------------------
    def close(self, reason: str) -> None:
        phase = self.phase
        if phase is Phase.CLOSED:
            return
        self._set_phase(Phase.CLOSED)
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.admission.leave(self.grant)
        if self.local is not None:
            ctx.own_backends.pop(self.local, None)
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
            if sock is None:
                continue
            ctx.reactor.forget(fd)     # close() takes it out of the epoll set
            if abort:   # pass the reset on: the other peer sees RST, not a clean end
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                except OSError:
                    pass
            sock.close()
        if self.up is not None:
            self.up.discard()
            self.down.discard()
            up, down, spliced = self.up.moved, self.down.moved, self.up.spliced + self.down.spliced
        route = self.route.name if self.route else "-"
        ctx.stats.closed(self.listener.name, route, phase._value_, reason, up, down)   # _value_: .value is a Python property
        if self.outer is not None and self.route is not self.outer:    # routed counted it: so does closed
            ctx.stats.closed_outer(self.listener.name, self.outer.name, reason)
        if reason == "exhausted":
            ctx.exhausted(f"{self.peer}: out of file descriptors or memory")
        if ctx.access.enabled():
            try:
                ctx.access.write(self._record(route, reason, up, down, spliced))
            except Exception:     # a log line must never take the worker down
                log.exception("%s: cannot log the connection", self.peer)

    def _record(self, route: str, reason: str, up: int, down: int, spliced: int) -> dict:
        if self.outer is not None and self.route is not self.outer:
            route = f"{self.outer.name}>{route}"
        connected = self.backend is not None
        record = {"client": self.peer, "listener": self.listener.name, "route": route,
                  "backend": self.route.backend.text if connected else None, "up": up, "down": down,
                  "spliced": spliced, "duration": round(self.ctx.reactor.clock() - self.started, 6),
                  "reason": reason, "verdict": self.verdict}
        if self.names:
            record.update(self.names)
        if self.tls:
            record.update(self.tls)
        record["detail"] = self.detail
        return record
