"""Relays passthrough connections in the kernel (sockmap.py): the daemon sees EOF, errors and progress only.

Owns: the worker's `Sockmap` (loaded on the first connection offered, so always in the worker process,
never before fork; if it cannot load, one log line and every connection of this worker uses splice),
whether `relay = auto` may use it on the running kernel (`TESTED_KERNELS`), the ring fd registered
with the reactor, the lookup from a flow to its connection, ending a connection whose kernel backlog
in one direction passed `LIMIT` (reason `kernel-backlog`: the kernel has no backpressure on this
path and nothing stops a paired sender safely, see sockmap.py), EOF passed on as shutdown(SHUT_WR)
once `Flow.pending(eof=True)` is 0 (a short timer, `TICK`, runs only while some direction waits to
pass EOF on), errors seen as a reset, remove_pair before close, and the byte counts for the access
log (the verdict program's per-direction counters).

A connection's close reason goes back through `conn._event(handler)`: the connection stays the one
place that closes, and calls `release()` first (what is still queued for a removed pair is lost, so
it removes only at close, when both directions are done or the connection is dead anyway).

Earlier versions paused a direction by taking its source out of the verdict map, and once in a
while a 65,483-byte segment arrived twice; a live socket is never unmapped now, but the duplicate
was never reproduced under instrumentation, so its cause is not proven. Hence `TESTED_KERNELS`: `auto` takes
the kernel relay only on a kernel listed there, and the list is empty until the duplicate is
explained; `relay = sockmap` works everywhere the maps load, with a warning on other kernels.

Must not import the connection, the configuration or anything that knows a protocol.
"""

from __future__ import annotations

import errno
import logging
import platform
import socket

from epollmux.relay import sockmap
from epollmux.reactor import ERR, ET, IN, RDHUP

log = logging.getLogger("epollmux.kernelrelay")

MiB = 1 << 20
NOTIFY = 1 * MiB      # the ring wakes us each time a direction has redirected this much more
LIMIT = 64 * MiB      # end a connection one of whose directions has more redirected-but-undelivered
TICK = 0.002          # seconds between looks at directions waiting to pass EOF on

# A paired socket is watched for RDHUP (and ERR/HUP, always reported) only, edge-triggered. Not IN:
# redirected bytes raise no event anyway, but a socket's queue (before pairing, or when the kernel refuses) grows with every segment, and
# IN would wake us for each one. Not OUT: each ACK of bytes the kernel put into a send queue frees
# room and would wake us, i.e. once per payload segment: the very cost the kernel relay removes.
PAIRED_EVENTS = RDHUP | ET

KERNEL, DONE = "kernel", "done"

# Kernel releases (platform.release() up to the first "-") on which `make stress` passed and the
# duplicated segment is explained; `relay = auto` uses the kernel relay only on these.
TESTED_KERNELS: tuple[str, ...] = ()


def kernel_tested(release: str | None = None) -> bool:
    release = platform.release() if release is None else release
    return release.split("-")[0] in TESTED_KERNELS


class _Direction:
    __slots__ = ("flow", "state", "eof")

    def __init__(self, flow: sockmap.Flow):
        self.flow = flow
        self.state = KERNEL
        self.eof = False          # the source has received a FIN (EPOLLRDHUP)

    def busy(self) -> bool:
        return self.state == KERNEL and self.eof

    def moved(self) -> int:
        try:
            return self.flow.moved()
        except OSError:           # map gone: the count is lost, not the log line
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

    def __init__(self, reactor, mode: str, limit: int = LIMIT, notify: int = NOTIFY,
                 maps: sockmap.Sockmap | None = None):
        """maps: already loaded ones to use (tests share one set); else loaded on first use."""
        self.reactor = reactor
        self.mode = mode
        self.limit, self.notify = limit, notify
        self.maps: sockmap.Sockmap | None = None
        self.failed = False
        self.links: dict[object, _Link] = {}        # by connection
        self.by_flow: dict[sockmap.Flow, _Link] = {}
        self.busy: set[_Link] = set()
        self.timer = None
        self.pairs = self.fallbacks = self.overruns = 0
        self.max_backlog = 0                         # highest backlog seen, for the stats
        if maps is not None:
            self._use(maps)

    # --- loading -----------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self.maps is None and not self.failed:
            if not kernel_tested():
                why = (f"Linux {platform.release()} is not in TESTED_KERNELS (a duplicated segment was seen "
                       "once and its cause is not proven)")
                if self.mode != "sockmap":
                    self.failed = True
                    log.info("relay = auto: not using the kernel relay: %s; this worker relays with splice", why)
                    return False
                log.warning("relay = sockmap on an untested kernel: %s", why)
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
        """The ring: some directions crossed a notify step; end the connections over the limit."""
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
        if backlog > self.limit:
            self.overruns += 1
            return "kernel-backlog"
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
        if d.state == KERNEL and d.eof and d.flow.pending(eof=True) == 0:
            d.flow.dst.shutdown(socket.SHUT_WR)
            d.state = DONE

    # --- the worker ----------------------------------------------------------------------------
    def describe(self) -> str:
        state = "unavailable" if self.failed else ("loaded" if self.maps else "not loaded")
        return (f"kernel relay: {state} pairs={self.pairs} open={len(self.links)} fallbacks={self.fallbacks} "
                f"overruns={self.overruns} max_backlog={self.max_backlog}")

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.maps is not None:
            self.reactor.forget(self.maps.fileno())
            self.maps.close()
            self.maps = None
