"""The relay phase of a connection: the two directions (or the kernel relay) and the events that drive them.

Owns: starting the relay (Directions over the two endpoints, or the kernel relay for passthrough
between two TCP sockets), turning socket edges into pumps, asking for writable edges only while a
direction waits for its destination to drain, the busy-direction resume, the end of both directions,
and the idle deadline (`last_active`: None without an idle_timeout, a float less per connection). A
Direction exists only while it has something to hold (bytes in flight, a pending EOF, a stream going by splice), and so do the PlainEndpoints of plain sockets (cend/bend are None
for them): one that waits for its source with nothing held (`Direction.idle`) is dropped after its pump, its byte counts kept in `sent_up`/`sent_down`/`spliced`, and made again at the
next readable edge, so an idle connection holds no relay object. A small exchange on a clean edge needs no Direction
at all: relay.direction.copy_once between plain sockets (relay = adaptive), ends_once where an end is TLS (its
bytes are copied whatever the relay: decrypted into, or encrypted from, the shared scratch buffer). `Relaying` is a base class of
`connection.Connection`: it works on that connection's fields and returns close reasons like every other handler.
Must not parse protocols, close the connection (connection.close does) or move bytes itself.
Must not import what serve/ must not (README "Architecture").
"""

from __future__ import annotations


from epollmux.reactor import ERR, HUP, RDHUP
from epollmux import errors
from epollmux.relay.direction import Direction, State, copy_once, ends_once
from epollmux.relay.endpoints import PlainEndpoint
from epollmux.serve.phases import BACKEND_OUT, CLIENT_OUT, EVENTS, READABLE, TCP_FAMILIES, WRITABLE, Phase
from epollmux.reasons import Reason

WAIT_SRC, WAIT_DST, BUSY, DONE = State.WAIT_SRC, State.WAIT_DST, State.BUSY, State.DONE


class Relaying:
    __slots__ = ("sent_up", "sent_down", "spliced")    # bytes of the directions dropped while idle (set at relay start)

    def touch(self, now: float) -> None:
        """Bytes moved (seen by a collaborator: the kernel relay): the idle deadline starts again."""
        if self.last_active is not None:
            self.last_active = now

    def moved(self) -> tuple[int, int] | None:
        """Bytes relayed so far by the process (client->backend, backend->client); None before the
        process relays (and when the kernel does)."""
        if self.phase is not Phase.RELAYING or self.kernel:
            return None
        up, down = self.up, self.down
        return (self.sent_up + (up.moved if up is not None else 0),
                self.sent_down + (down.moved if down is not None else 0))

    def relay_counts(self) -> tuple[int, int, int]:
        """At close: (up, down, spliced) bytes; gives back the directions' channels."""
        up, down, spliced = self.sent_up, self.sent_down, self.spliced
        for d in (self.up, self.down):
            if d is not None:
                d.discard()
                spliced += d.spliced
        if self.up is not None:
            up += self.up.moved
        if self.down is not None:
            down += self.down.moved
        return up, down, spliced

    def _start_relay(self, pump_down: bool = True) -> str | None:
        """pump_down=False: the backend was registered this turn, so its first bytes will raise an edge."""
        self.sent_up = self.sent_down = self.spliced = 0
        self._set_phase(Phase.RELAYING)
        ctx = self.ctx
        if ctx.settings.idle_timeout:     # else no float is kept for it: last_active stays None
            self.last_active = self.started
            self._arm(ctx.settings.idle_timeout, self._idle_check)
        if ctx.kernel is not None and self._kernel_relayable() and ctx.kernel.take(self, self.client, self.backend):
            self.kernel = True
            return None
        return (self._pump(self._direction(True)) or (pump_down and self._pump(self._direction(False)))
                or self._after_pump())

    def _direction(self, up: bool) -> Direction:
        """The direction client->backend (up) or back, made if it was dropped while idle."""
        if up:
            d = self.up
            if d is None:
                d = self.up = Direction(self._end(True), self._end(False), self.ctx.pool)
                d.other = other = self.down
                if other is not None:
                    other.other = d
        else:
            d = self.down
            if d is None:
                d = self.down = Direction(self._end(False), self._end(True), self.ctx.pool)
                d.other = other = self.up
                if other is not None:
                    other.other = d
        return d

    def _end(self, client: bool):
        """The client's (or backend's) endpoint: its TLSEndpoint, or a PlainEndpoint made for a direction (plain
        sockets keep none while idle)."""
        if client:
            return self.cend or PlainEndpoint(self.client, self.cfd)
        return self.bend or PlainEndpoint(self.backend, self.bfd)

    def _drop(self, d: Direction) -> None:
        """An idle direction goes; its counts stay."""
        if d.other is not None:
            d.other.other = None
            d.other = None
        self.spliced += d.spliced
        if d is self.up:
            self.sent_up += d.moved
            self.up = None
        else:
            self.sent_down += d.moved
            self.down = None

    def _kernel_relayable(self) -> bool:
        """Passthrough between two TCP sockets, with a kernel relay in this worker, on a listener that
        takes no PROXY header (its bytes were read with recv: the kernel would relay them again)."""
        return (self.ctx.kernel is not None and self.listener.proxy_protocol == "none"
                and self.cend is None and self.bend is None        # plain sockets
                and self.client.family in TCP_FAMILIES and self.backend.family in TCP_FAMILIES)

    def _relay_event(self, fd: int, events: int) -> str | None:
        if self.kernel:
            return self.ctx.kernel.socket_event(self, fd, events)
        up = fd == self.cfd
        if up:
            sock, end, src, dst = self.client, self.cend, self.up, self.down
        else:
            sock, end, src, dst = self.backend, self.bend, self.down, self.up
        if events & ERR:
            reason = self._socket_error(sock)
            if reason:
                return reason
        moved = False          # an edge that finds nothing to do (a writable socket with nothing waiting) ends here
        if events & WRITABLE and end is not None and end.pending_output():     # only TLS endpoints hold output
            end.flush()
            moved = True
        if events & READABLE and (src is None or src.state is WAIT_SRC):
            clean = not events & (RDHUP | HUP | ERR)         # see Direction.pump
            if src is None and clean and (self.ctx.pool.adaptive or self.cend is not None or self.bend is not None):
                reason = self._copy_once(up)                 # a small exchange: no Direction at all
            else:
                reason = self._pump(src or self._direction(up), clean)
            if reason:
                return reason
            moved = True
        if events & WRITABLE and dst is not None and dst.state is WAIT_DST:
            reason = self._pump(dst)
            if reason:
                return reason
            moved = True
        # with no Direction left (a small exchange) there is nothing busy or done to look at
        return self._after_pump() if moved and (self.up is not None or self.down is not None) else None

    def _copy_once(self, up: bool) -> str | None:
        """An idle source, on a clean edge: relay.direction.copy_once (relay = adaptive, plain sockets) or ends_once
        (a TLS end, whatever the relay: its bytes are copied anyway), a Direction only if needed."""
        if self.last_active is not None:
            self.last_active = self.ctx.reactor.now
        cend, bend = self.cend, self.bend
        plain = cend is None and bend is None
        try:
            if plain:
                n, done, rest = copy_once(self.cfd, self.bfd) if up else copy_once(self.bfd, self.cfd)
            else:
                c, b = cend or self.cfd, bend or self.bfd          # a plain socket by its fd
                n, done, rest = ends_once(c, b) if up else ends_once(b, c)
        except OSError as exc:
            return errors.relay_reason(exc)
        except errors.Closed as exc:
            self.setup = self.setup.noted(exc.detail)
            return exc.reason
        if n:
            self.ctx.pool.copied += n
            if up:
                self.sent_up += n
            else:
                self.sent_down += n
        if done:
            return None
        direction = self._direction(up)
        if rest:
            direction.hold(rest)
            self._want_writable(direction)
            return None
        if not n and not plain:
            direction.eof = True      # a TLS end's close_notify (or a TCP EOF) was read: pass it on, no read again
        return self._pump(direction)

    def _pump(self, direction: Direction, clean: bool = False) -> str | None:
        if self.last_active is not None:
            self.last_active = self.ctx.reactor.now
        reason = direction.pump(clean)
        if reason:
            if direction.detail:
                self.setup = self.setup.noted(direction.detail)
            return reason
        state = direction.state
        if state is WAIT_DST:
            self._want_writable(direction)
        elif state is WAIT_SRC and direction.idle:
            self._drop(direction)
        return None

    def _want_writable(self, direction: Direction) -> None:
        """A direction waits for its destination to drain: make sure that socket reports writable edges."""
        bit, fd = (BACKEND_OUT, self.bfd) if direction is self.up else (CLIENT_OUT, self.cfd)
        if not self.writable & bit:
            self.ctx.reactor.modify(fd, EVENTS)    # ET: if it drained meanwhile, the edge is queued now
            self.writable |= bit

    def _after_pump(self) -> str | None:
        up, down = self.up, self.down
        if up is None or down is None:
            if (up is not None and up.state is BUSY or down is not None and down.state is BUSY) and not self._soon:
                self._soon = True
                self.ctx.reactor.call_soon(self.dispatch, self._resume)
            return None
        up, down = up.state, down.state
        if up is DONE and down is DONE:
            cend, bend = self.cend, self.bend
            if cend is not None and cend.pending_output() or bend is not None and bend.pending_output():
                return None        # a close_notify still on its way: the next writable edge sends it
            return Reason.EOF
        if (up is BUSY or down is BUSY) and not self._soon:
            self._soon = True
            self.ctx.reactor.call_soon(self.dispatch, self._resume)
        return None

    def _resume(self) -> str | None:
        self._soon = False
        for direction in (self.up, self.down):
            if direction is not None and direction.state is BUSY:
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
            return Reason.IDLE_TIMEOUT
        self._arm(left, self._idle_check)
        return None
