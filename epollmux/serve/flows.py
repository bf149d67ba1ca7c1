"""UDP flows: one client address and port on one listening socket, probed, then relayed datagram by datagram.

Owns: the worker's flow table (`FlowTable`: lookup in O(1) by (listening socket, client), the `max_flows`
and `max_flows_per_source` bounds), and a flow's life (`Flow`): pending while its first datagrams are
probed (at most PENDING_DATAGRAMS datagrams and PENDING_BYTES bytes, until `probe_timeout`), then relayed
through two connected sockets, each read in bounded batches (READ_BUDGET datagrams a wake-up, level
triggered, so a busy flow cannot starve the others): the client side, bound to the listening address and
connected to the client, so the kernel gives it every later datagram of that 4-tuple (a connected socket
scores above the unconnected listening one) and its replies leave from the address the client wrote to;
and the backend side, connected to the route's backend. Datagram boundaries are kept: one recv, one send.
A datagram that cannot be sent at once (a full socket buffer) is dropped and counted, as a router would.
Idle expiry costs O(1) per datagram: a datagram only stores the loop's clock; the flow's one timer,
when it fires, compares and re-arms itself for the remaining time.
A flow ends in one place (`close`), which counts it and writes its access-log line. A new client's
datagram refused before a flow exists (access list, no route on the probes' verdict on it alone, a flow
bound) opens nothing: udpdrops.py counts it and sums it up in the log.
Must not import the listener (udplistener.py feeds the table) nor know any protocol (the probes do).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from epollmux import addr
from epollmux.reactor import IN
from epollmux.reasons import Reason
from epollmux.serve import udpdrops
from epollmux.wire import udpsniff

log = logging.getLogger("epollmux.udp")

PENDING_DATAGRAMS = 4       # datagrams kept per pending flow while the probes say AGAIN
PENDING_BYTES = 8192        # and bytes: a QUIC ClientHello with a post-quantum key share spans 2 Initials
READ_BUDGET = 64            # datagrams read from one socket per wake-up
MAX_DATAGRAM = 65535
PEER_GONE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


class FlowTable:
    """The flows of one worker, by (listening socket fd, client sockaddr)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.flows: dict[tuple, Flow] = {}
        self.per_source: dict[str, int] = {}
        self.max_flows = ctx.settings.max_flows
        self.max_per_source = ctx.settings.max_flows_per_source
        self.prefix = ctx.settings.source_ipv6_prefix
        self.warned = -10.0             # the loop's clock when the last flow-limit warning was logged
        self.drops = udpdrops.Drops(ctx)

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self):
        return iter(list(self.flows.values()))

    def source_key(self, client) -> str:
        ip = client[0]
        if ":" in ip and self.prefix < 128 and not ip.startswith("::ffff:"):
            return str(ipaddress.IPv6Network(f"{ip.split('%')[0]}/{self.prefix}", strict=False).network_address)
        return ip

    def datagram(self, udp, client, local, data: bytes) -> None:
        """A datagram read from listening socket `udp` (a UdpListener) from `client` to `local`. A new
        client's datagram that the access list refuses, that no route can take (the probes decide on it
        alone) or that a flow bound refuses costs no flow state: udpdrops counts it."""
        flow = self.flows.get((udp.fd, client))
        if flow is not None:
            flow.from_client(data)
            return
        listener = udp.listener
        if listener.access is not None and not listener.access.permits(client[0]):
            self.ctx.stats.count("udp_denied")
            self.drops.drop(udp, client, Reason.DENIED, len(data))
            return
        decision = udpsniff.decide_flow((data,), listener.probe_table)
        if decision.done and decision.route is None:
            self.drops.drop(udp, client, Reason.NO_ROUTE, len(data))
            return
        source = self.source_key(client)
        if len(self.flows) >= self.max_flows:
            self._refuse(udp, client, len(data), "max_flows")
            return
        if self.max_per_source and self.per_source.get(source, 0) >= self.max_per_source:
            self._refuse(udp, client, len(data), "max_flows_per_source")
            return
        flow = Flow(self, udp, client, local, source)
        self.flows[flow.key] = flow
        self.per_source[source] = self.per_source.get(source, 0) + 1
        flow.start(data, decision)

    def _refuse(self, udp, client, size: int, which: str) -> None:
        """A new flow past a bound: its datagram is dropped; counted, and warned of once per second at most."""
        ctx = self.ctx
        self.drops.drop(udp, client, Reason.FLOW_LIMIT, size)
        now = ctx.reactor.now
        if now - self.warned >= 1.0:
            self.warned = now
            log.warning("%s: %s reached, datagrams of new flows dropped (client %s)", udp.listener.name, which,
                        addr.peer_text(udp.family, client))

    def forget(self, flow: "Flow") -> None:
        if self.flows.pop(flow.key, None) is not None:
            n = self.per_source.get(flow.source, 1) - 1
            if n:
                self.per_source[flow.source] = n
            else:
                self.per_source.pop(flow.source, None)

    def close_all(self, reason: str) -> int:
        flows = list(self.flows.values())
        for flow in flows:
            flow.close(reason)
        self.drops.flush()
        return len(flows)


class _Side:
    """The epoll handler of one of a flow's sockets."""

    __slots__ = ("flow", "client")

    def __init__(self, flow: "Flow", client: bool):
        self.flow = flow
        self.client = client

    def on_event(self, fd: int, events: int) -> None:
        if self.client:
            self.flow.client_readable()
        else:
            self.flow.backend_readable()


class Flow:
    __slots__ = ("table", "ctx", "udp", "listener", "client", "local", "source", "key", "route", "csock",
                 "bsock", "pending", "pending_bytes", "timer", "started", "last", "up", "down", "dgrams_up",
                 "dgrams_down", "dropped", "closed", "names", "verdict", "peer", "idle")

    def __init__(self, table: FlowTable, udp, client, local, source: str):
        self.table = table
        self.ctx = table.ctx
        self.udp = udp
        self.listener = udp.listener
        self.client = client
        self.local = local
        self.source = source
        self.key = (udp.fd, client)
        self.route = None
        self.csock = self.bsock = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.timer = None
        self.started = self.last = self.ctx.reactor.now
        self.up = self.down = self.dgrams_up = self.dgrams_down = self.dropped = 0
        self.closed = False
        self.names = None
        self.verdict = None
        self.peer = addr.peer_text(udp.family, client)
        self.idle = 0.0

    # --- start and probing --------------------------------------------------------------------
    def start(self, data: bytes, decision: udpsniff.Decision | None = None) -> None:
        """Open the flow socket and take the first datagram (`decision`: the probes' on it, if made)."""
        try:
            self.csock = self._client_socket()
        except OSError as exc:
            log.warning("%s: cannot open a flow socket for %s: %s", self.listener.name, self.peer, exc.strerror)
            self.close(Reason.EXHAUSTED if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
                       else Reason.ERROR)
            return
        self.ctx.reactor.register(self.csock.fileno(), IN, _Side(self, True))
        self.timer = self.ctx.reactor.call_later(self.ctx.settings.probe_timeout, self._probe_deadline)
        self._add_pending(data, decision)
        if not self.closed:
            self.client_readable()          # datagrams queued in the instant before connect

    def _client_socket(self) -> socket.socket:
        """Bound to the address the client wrote to, connected to the client: from now on the kernel
        hands this socket the flow's datagrams, in whichever process holds it (a reload's old worker)."""
        sock = socket.socket(self.udp.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.udp.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(self.local)
            sock.connect(self.client)
        except OSError:
            sock.close()
            raise
        return sock

    def _add_pending(self, data: bytes, decision: udpsniff.Decision | None = None) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.up += len(data)
        self.dgrams_up += 1
        full = len(self.pending) >= PENDING_DATAGRAMS or self.pending_bytes >= PENDING_BYTES
        if decision is None or (full and not decision.done):
            decision = udpsniff.decide_flow(tuple(self.pending), self.listener.probe_table, full=full)
        self._decide(decision)

    def _decide(self, decision: udpsniff.Decision) -> None:
        if not decision.done:
            return
        if decision.route is None:
            self.verdict = "none"
            self.close(Reason.NO_ROUTE)
            return
        self.verdict = "match"
        self._routed(self.listener.routes[decision.route])

    def _probe_deadline(self) -> None:
        self.timer = None
        if self.route is not None or self.closed:
            return
        decision = udpsniff.decide_flow(tuple(self.pending), self.listener.probe_table, full=True)
        if decision.route is not None:
            self.verdict = "match"
            self._routed(self.listener.routes[decision.route])
        elif self.listener.on_timeout is not None:
            self.verdict = "timeout"
            self._routed(self.listener.on_timeout)
        else:
            self.verdict = "none"
            self.close(Reason.PROBE_TIMEOUT)

    def _routed(self, route) -> None:
        ctx = self.ctx
        self.names = udpsniff.flow_names(tuple(self.pending))
        self.route = route
        ctx.stats.routed(self.listener.name, route.name, ctx.reactor.now - self.started)
        if route.access is not None and not route.access.permits(self.client[0]):
            self.close(Reason.DENIED)
            return
        backend = route.backend
        try:
            sock = socket.socket(backend.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.close(Reason.EXHAUSTED if exc.errno in (errno.EMFILE, errno.ENFILE) else Reason.ERROR)
            return
        self.bsock = sock
        try:
            sock.connect(backend.sockaddr)
        except OSError as exc:
            self.close(_backend_reason(exc))
            return
        ctx.reactor.register(sock.fileno(), IN, _Side(self, False))
        if self.timer is not None:
            self.timer.cancel()
        self.idle = route.udp_idle_timeout
        self.timer = ctx.reactor.call_later(self.idle, self._idle_check)
        pending, self.pending = self.pending, []
        self.pending_bytes = 0
        for data in pending:
            if not self._send(sock, data, True):
                return

    # --- relaying -----------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        """One datagram from the client (read by the flow socket, or by the listening socket early on)."""
        if self.closed:
            return
        if self.route is None:
            self._add_pending(data)
            return
        self.up += len(data)
        self.dgrams_up += 1
        self.last = self.ctx.reactor.now
        self._send(self.bsock, data, True)

    def client_readable(self) -> None:
        """Read the client's datagrams. In the microseconds between bind and connect the flow socket,
        unconnected, matches any client of its address, so it may hold other clients' datagrams (queued
        then, or by a lookup that raced the connect: read after the connect too), so the sender of each
        is checked. With one worker such a datagram is this worker's: hand it to the table. With several,
        the kernel's hash may give that client to another worker, and starting its flow here too would
        split it: drop the datagram (counted as the event udp_stray, and as a datagram dropped on route
        "-"); the client's retransmission reaches its own worker."""
        recvfrom, client = self.csock.recvfrom, self.client[:2]
        for _ in range(READ_BUDGET):
            try:
                data, sender = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._failed(exc, client=True)
                return
            if sender[:2] == client:
                self.from_client(data)
            elif self.ctx.settings.workers == 1:
                self.table.datagram(self.udp, sender, self.local, data)
            else:
                self.ctx.stats.count("udp_stray")
                self.ctx.stats.flow_closed("-", 0, 0, 1)
            if self.closed:
                return

    def backend_readable(self) -> None:
        recv, csock = self.bsock.recv, self.csock
        for _ in range(READ_BUDGET):
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._failed(exc, client=False)
                return
            self.down += len(data)
            self.dgrams_down += 1
            self.last = self.ctx.reactor.now
            if not self._send(csock, data, False):
                return

    def _send(self, sock, data: bytes, to_backend: bool) -> bool:
        """Send one datagram; False once the flow is closed by an error."""
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
        except OSError as exc:
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                self.dropped += 1
                return True
            self._failed(exc, client=not to_backend)
            return False
        return True

    def _failed(self, exc: OSError, client: bool) -> None:
        """An error a connected UDP socket reports (an ICMP error for an earlier datagram, mostly)."""
        if client:
            self.close(Reason.CLIENT_UNREACHABLE if exc.errno in PEER_GONE else Reason.ERROR)
        else:
            self.close(_backend_reason(exc))

    def _idle_check(self) -> None:
        self.timer = None
        if self.closed:
            return
        left = self.last + self.idle - self.ctx.reactor.now
        if left <= 0:
            self.close(Reason.UDP_IDLE)
        else:
            self.timer = self.ctx.reactor.call_later(left, self._idle_check)

    # --- the one end ----------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for sock in (self.csock, self.bsock):
            if sock is not None:
                ctx.reactor.forget(sock.fileno())
                sock.close()
        self.table.forget(self)
        route = self.route.name if self.route is not None else "-"
        ctx.stats.closed(self.listener.name, route, "relaying" if self.route else "pending", reason,
                         self.up, self.down)
        if self.route is None:          # never routed: its datagrams went nowhere
            ctx.stats.flow_closed(route, 0, 0, self.dgrams_up)
        else:
            ctx.stats.flow_closed(route, self.dgrams_up, self.dgrams_down, self.dropped)
        if ctx.access.enabled():
            ctx.access.write(self._record(route, reason))

    def _record(self, route: str, reason: str) -> dict:
        record = {"client": self.peer, "listener": self.listener.name, "route": route,
                  "backend": self.route.backend.text if self.bsock is not None else None,
                  "up": self.up, "down": self.down, "dgrams_up": self.dgrams_up, "dgrams_down": self.dgrams_down,
                  "dropped": self.dropped or None, "duration": self.ctx.reactor.clock() - self.started,
                  "reason": str(reason), "verdict": self.verdict}
        if self.names is not None:
            record.update(self.names.fields())
        return record

    def moved(self) -> tuple[int, int]:
        return self.up, self.down


def _backend_reason(exc: OSError) -> Reason:
    if exc.errno == errno.ECONNREFUSED:
        return Reason.BACKEND_REFUSED
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return Reason.BACKEND_UNREACHABLE
    return Reason.BACKEND_ERROR
