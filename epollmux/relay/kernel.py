"""Relays passthrough connections in the kernel (sockmap.py): the daemon sees EOF, errors and progress only.

Owns: the worker's `Sockmap` (loaded on the first connection offered, so always in the worker process,
never before fork; if it cannot load, one log line and every connection of this worker uses splice),
the ring fd registered with the reactor, the lookup from a flow to its connection, pausing a direction
whose kernel backlog passed `HIGH` and resuming it under `LOW` (a short timer, `TICK`, runs only while
some direction is paused, draining or waiting to pass EOF on), EOF passed on as shutdown(SHUT_WR) once
`Flow.pending(eof=True)` is 0, the rest of a direction moved by the process when a FIN came while it
was paused (the kernel refuses a CLOSE_WAIT socket), errors seen as a reset, remove_pair before close,
and the byte counts for the access log.

A connection's close reason goes back through `conn._event(handler)`: the connection stays the one
place that closes, and calls `release()` first (what is still queued for a removed pair is lost, so
it removes only at close, when both directions are done or the connection is dead anyway).

Why the worker pauses instead of the verdict program refusing to redirect past a limit (the bound would
then not depend on the worker being scheduled in time; tried on Linux 6.18, see the README's kernel relay
section). SK_DROP frees bytes that TCP has already acked. SK_PASS queues them on the socket's own psock
ingress list, charged to its receive memory, so the window closes. recv() reads them in order, but only
while the socket is in `sources`. After a pause, recv() returns them and then the stream stalls. After
remove_pair they are purged. The kernel could redirect again only once the worker owes no passed byte,
and reading them opens the window, so the sender's next segments are passed too. Read-then-write never
caught up. Clamping the window stalled the sender in zero-window probes. Peek-then-consume caught up but
duplicated a segment in 3 of ~50 runs. Related: a socket that has sent a FIN (EOF passed on the other
way) is refused like one in CLOSE_WAIT, so a pause after the other direction finished never resumes, and
the rest goes through `_copy`.

Must not import the connection, the configuration or anything that knows a protocol.
"""

from __future__ import annotations

import errno
import logging
import socket

from epollmux.relay import sockmap
from epollmux.reactor import ERR, ET, IN, RDHUP

log = logging.getLogger("epollmux.kernelrelay")

MiB = 1 << 20
NOTIFY = 1 * MiB      # the ring wakes us each time a direction has redirected this much more
HIGH = 8 * MiB        # pause a direction whose redirected-but-undelivered bytes pass this...
LOW = 2 * MiB         # ...and resume it once they are down to this
TICK = 0.002          # seconds between looks at busy directions (paused, draining, EOF to pass on)
COPY_SIZE = 1 << 16

# A paired socket is watched for RDHUP (and ERR/HUP, always reported) only, edge-triggered. Not IN:
# redirected bytes raise no event anyway, but a paused socket's queue grows with every segment, and
# IN would wake us for each one. Not OUT: each ACK of bytes the kernel put into a send queue frees
# room and would wake us, i.e. once per payload segment: the very cost the kernel relay removes.
PAIRED_EVENTS = RDHUP | ET

KERNEL, PAUSED, DRAIN, COPY, DONE = "kernel", "paused", "drain", "copy", "done"


class _Direction:
    __slots__ = ("flow", "state", "eof", "buf")

    def __init__(self, flow: sockmap.Flow):
        self.flow = flow
        self.state = KERNEL
        self.eof = False          # the source has received a FIN (EPOLLRDHUP)
        self.buf = bytearray()    # COPY: read from src, not yet written to dst

    def busy(self) -> bool:
        return self.state in (PAUSED, DRAIN, COPY) or (self.state == KERNEL and self.eof)

    def moved(self) -> int:
        try:
            return self.flow.moved(eof=self.eof)
        except OSError:           # socket gone bad: the count is lost, not the log line
            return 0


class _Link:
    """One connection in the kernel's hands."""

    __slots__ = ("conn", "pair", "up", "down", "by_fd", "seen")

    def __init__(self, conn, pair: sockmap.Pair):
        self.conn = conn
        self.pair = pair
        self.up, self.down = _Direction(pair.up), _Direction(pair.down)
        self.by_fd = {pair.up.src.fileno(): self.up, pair.down.src.fileno(): self.down}
        self.seen = 0             # bytes received by both sockets at the last activity check


class KernelRelay:
    """The per-worker kernel relay; `mode` is the configured relay ("sockmap" or "auto")."""

    def __init__(self, reactor, mode: str, high: int = HIGH, low: int = LOW, notify: int = NOTIFY,
                 maps: sockmap.Sockmap | None = None):
        """maps: already loaded ones to use (tests share one set); else loaded on first use."""
        self.reactor = reactor
        self.mode = mode
        self.high, self.low, self.notify = high, low, notify
        self.maps: sockmap.Sockmap | None = None
        self.failed = False
        self.links: dict[object, _Link] = {}        # by connection
        self.by_flow: dict[sockmap.Flow, _Link] = {}
        self.busy: set[_Link] = set()
        self.timer = None
        self.pairs = self.fallbacks = self.pauses = 0
        self.max_backlog = 0                         # highest backlog seen, for the stats
        if maps is not None:
            self._use(maps)

    # --- loading -----------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self.maps is None and not self.failed:
            try:
                maps = sockmap.Sockmap.load(notify=self.notify)
            except sockmap.SockmapUnavailable as exc:
                self.failed = True
                level = logging.WARNING if self.mode == "sockmap" else logging.INFO
                log.log(level, "kernel relay (sockmap) unavailable: %s; this worker relays with splice", exc.reason)
                if exc.verifier_log:
                    log.debug("verifier log:\n%s", exc.verifier_log)
                return False
            self._use(maps)
        return self.maps is not None

    def _use(self, maps: sockmap.Sockmap) -> None:
        self.maps = maps
        self.reactor.register(maps.fileno(), IN, self)

    # --- taking and giving back a connection -------------------------------------------------
    def take(self, conn, client: socket.socket, backend: socket.socket) -> bool:
        """Pair the connection's sockets; False: not possible here, the caller relays it itself."""
        if not self._ready():
            return False
        try:
            pair = self.maps.add_pair(client, backend)
        except OSError as exc:     # E2BIG: map full; EOPNOTSUPP: a FIN already came (CLOSE_WAIT)
            self.fallbacks += 1
            log.debug("cannot pair a connection (%s): relaying it with splice", exc.strerror)
            return False
        link = _Link(conn, pair)
        link.seen = self._received(link)
        self.links[conn] = link
        self.by_flow[pair.up] = self.by_flow[pair.down] = link
        self.pairs += 1
        for sock in (client, backend):
            self.reactor.modify(sock.fileno(), PAIRED_EVENTS)
        return True

    def release(self, conn) -> tuple[int, int]:
        """Take the pair out of the maps (before its sockets close); return (up, down) bytes moved."""
        link = self.links.pop(conn, None)
        if link is None:
            return 0, 0
        counts = link.up.moved(), link.down.moved()
        self.busy.discard(link)
        for flow in (link.pair.up, link.pair.down):
            self.by_flow.pop(flow, None)
        try:
            self.maps.remove_pair(link.pair)
        except OSError as exc:
            log.warning("cannot remove a pair from the sockmap: %s", exc.strerror)
        return counts

    def active(self, conn) -> bool:
        """Whether bytes moved since the last call (for the idle timeout: payload wakes no one)."""
        link = self.links.get(conn)
        if link is None:
            return False
        total = self._received(link)
        moved, link.seen = total != link.seen, total
        return moved

    @staticmethod
    def _received(link: _Link) -> int:
        return sum(sockmap.tcp_bytes(d.flow.src)[0] for d in (link.up, link.down))

    # --- events --------------------------------------------------------------------------------
    def socket_event(self, conn, fd: int, events: int) -> str | None:
        """An event on a paired socket (run inside conn._event): RDHUP marks EOF, an error a reset."""
        link = self.links.get(conn)
        d = link.by_fd.get(fd) if link else None
        if d is None:
            return None
        if events & ERR:
            err = d.flow.src.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return "timeout" if err == errno.ETIMEDOUT else "reset"    # timeout: keepalive found it gone
        if events & RDHUP and not d.eof:
            d.eof = True
            return self._step(link)
        return None

    def on_event(self, fd: int, events: int) -> None:
        """The ring: some directions crossed a notify step; pause those whose backlog is high."""
        for flow in self.maps.notified():
            link = self.by_flow.get(flow)
            if link is not None:
                link.conn._event(self._watch, link, flow)

    def _watch(self, link: _Link, flow: sockmap.Flow) -> str | None:
        link.conn.last_active = self.reactor.clock()
        d = link.up if link.up.flow is flow else link.down
        if d.state != KERNEL:
            return None
        backlog = flow.backlog()
        self.max_backlog = max(self.max_backlog, backlog)
        if backlog > self.high:
            flow.pause()
            d.state = PAUSED
            self.pauses += 1
            self._mark(link)
        return None

    # --- busy directions, on a short timer -----------------------------------------------------
    def _mark(self, link: _Link) -> None:
        self.busy.add(link)
        if self.timer is None:
            self.timer = self.reactor.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.timer = None
        for link in list(self.busy):
            if link.conn in self.links:
                link.conn._event(self._step, link)       # re-arms the timer (_mark) while still busy

    def _step(self, link: _Link) -> str | None:
        for d in (link.up, link.down):
            self._advance(d)
        if link.up.state == DONE and link.down.state == DONE:
            self.busy.discard(link)
            return "eof"
        if link.up.busy() or link.down.busy():
            self._mark(link)
        else:
            self.busy.discard(link)
        return None

    def _advance(self, d: _Direction) -> None:
        flow = d.flow
        if d.state == KERNEL and d.eof and flow.pending(eof=True) == 0:
            self._finish(d)
        elif d.state == PAUSED:
            backlog = flow.backlog()
            self.max_backlog = max(self.max_backlog, backlog)
            if d.eof or backlog <= self.low:
                try:
                    flow.resume()
                    d.state = KERNEL
                except OSError as exc:     # a FIN came while paused: the kernel will not take it back
                    if exc.errno != errno.EOPNOTSUPP:
                        raise
                    d.state = DRAIN
        if d.state == DRAIN and flow.backlog() == 0:
            d.state = COPY                  # from here the process writes to dst itself
        if d.state == COPY:
            self._copy(d)

    def _copy(self, d: _Direction) -> None:
        """The rest of a direction the kernel cannot take back, at most one buffer at a time."""
        src, dst = d.flow.src, d.flow.dst
        for _ in range(64):                 # bounded: the next tick goes on
            if d.buf:
                try:
                    del d.buf[:dst.send(d.buf, socket.MSG_DONTWAIT)]
                except BlockingIOError:
                    return
                continue
            try:
                data = src.recv(COPY_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                self._finish(d)
                return
            d.buf += data

    def _finish(self, d: _Direction) -> None:
        d.flow.dst.shutdown(socket.SHUT_WR)
        d.state = DONE

    # --- the worker ----------------------------------------------------------------------------
    def describe(self) -> str:
        state = "unavailable" if self.failed else ("loaded" if self.maps else "not loaded")
        return (f"kernel relay: {state} pairs={self.pairs} open={len(self.links)} fallbacks={self.fallbacks} "
                f"pauses={self.pauses} max_backlog={self.max_backlog}")

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.maps is not None:
            self.reactor.forget(self.maps.fileno())
            self.maps.close()
            self.maps = None
