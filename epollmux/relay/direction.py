"""Moves bytes one way between two sockets and says why it stopped; knows no protocol.

Owns: `Direction`, the pump from one endpoint to another (endpoints.py) through a channel borrowed from a `ChannelPool`
(a pipe for splice, a buffer for copy: one loop serves both), the adaptive choice between the two (a pool of kind
"adaptive": copy while a pump moves little, splice once one moves `BIG` bytes, copy again after `SMALL_PUMPS`
pumps in a row under `SMALL`; the switch happens only when the channel is empty, so bytes keep their order),
whether a direction may be dropped while idle (`idle`), end-of-file passed on as
shutdown(SHUT_WR), backpressure (a direction with bytes in flight does not read), and the
per-direction byte count. A pump runs until the source is empty, the destination is full, EOF has
been passed on, or its budget is spent (`BUSY`: the caller must run it again soon).
Must not import the reactor, the configuration or anything that knows a protocol.
"""

from __future__ import annotations

import enum
import os

from epollmux import errors
from epollmux.states import TransitionError
from epollmux.relay.channels import BUFFER_MIN, ChannelPool


class State(enum.StrEnum):
    WAIT_SRC = "wait-src"     # source empty: run again when it is readable
    WAIT_DST = "wait-dst"     # bytes in flight, destination full: run again when it is writable
    BUSY = "busy"             # budget spent with work left: run again on the next turn
    DONE = "done"             # EOF read and passed on


NEXT: dict[State, tuple[State, ...]] = {       # the idiom of epollmux/states.py
    State.WAIT_SRC: (State.WAIT_SRC, State.WAIT_DST, State.BUSY, State.DONE),
    State.WAIT_DST: (State.WAIT_SRC, State.WAIT_DST, State.BUSY, State.DONE),
    State.BUSY: (State.WAIT_SRC, State.WAIT_DST, State.BUSY, State.DONE),
    State.DONE: (),
}

BUDGET = 4 << 20   # bytes one pump call may move before it yields (BUSY), so one fast stream cannot starve the
#                    others; checked when the channel is empty, so a call moves at most BUDGET + one channel's worth.
# A short splice does not prove the source drained: a non-blocking splice stops when the pipe runs out of
# slots (one per skb fragment), long before its byte capacity. So a pipe is filled until EAGAIN.
# A short copy read does prove it, on a clean edge (see `Direction.pump`), when its endpoint says so (`drained`).

# Adaptive relay: a small exchange costs one read and one write by copy, against two splices, the splice that
# only raises EAGAIN, and a pipe by splice; a large stream costs less by splice (no copy into Python).
BIG = 32 << 10       # a pump that moves this much switches its direction to splice (half a loopback segment)
SMALL = 16 << 10     # SMALL_PUMPS pumps in a row under this switch it back to copy (hysteresis)
SMALL_PUMPS = 4
QUICK = BUFFER_MIN   # bytes copy_once reads at most: a read that fills it hands over to a Direction; what the
#                      destination refused of it fits in any buffer (channels.BUFFER_MIN)
_SCRATCH = memoryview(bytearray(QUICK))     # one per process: copy_once's bytes stay in it for one call only


def copy_once(src: int, dst: int) -> tuple[int, bool, bytes]:
    """A small exchange between two plain sockets with no Direction at all (relay = adaptive, the source idle,
    a clean readable edge: see Direction.pump): one read into a shared scratch buffer, one write of what it got.
    Returns (bytes moved, done, rest): done when nothing is left to do (the read came back short, so the
    source is empty, or raised EAGAIN, and the destination took everything); else a Direction must take
    over: at end of file (nothing read), after a full read (more may wait), or holding `rest`, the bytes
    the destination did not take (`Direction.hold`). OSError as from a pump."""
    try:
        n = os.readv(src, (_SCRATCH,))
    except BlockingIOError:
        return 0, True, b""
    if not n:
        return 0, False, b""
    try:
        sent = os.write(dst, _SCRATCH[:n])
    except BlockingIOError:
        sent = 0
    if sent < n:
        return sent, False, bytes(_SCRATCH[sent:n])
    return n, n < QUICK, b""


def ends_once(src, dst) -> tuple[int, bool, bytes]:
    """copy_once for a connection with a TLS end: src and dst are each a TLSEndpoint (endpoints.py) or the fd of a
    plain socket (an int: no endpoint object is made for it). A small exchange is decrypted into (or encrypted
    from) the shared scratch buffer, with no Direction. Same contract as copy_once, except that done also needs
    the TLS source's `drained` (a short TLS read may leave whole records in the engine), and errors come as
    OSError or errors.Closed, as from a pump. End of file (0 read) hands over with nothing moved: the caller's
    Direction passes it on without reading again (`eof`)."""
    plain = src.__class__ is int
    try:
        n = os.readv(src, (_SCRATCH,)) if plain else src.readinto(_SCRATCH)
    except BlockingIOError:
        return 0, True, b""
    if not n:
        return 0, False, b""
    try:
        sent = os.write(dst, _SCRATCH[:n]) if dst.__class__ is int else dst.write(_SCRATCH[:n])
    except BlockingIOError:
        sent = 0
    if sent < n:
        return sent, False, bytes(_SCRATCH[sent:n])
    return n, n < QUICK and (plain or src.drained), b""


class Direction:
    __slots__ = ("src", "dst", "zero_copy", "pool", "channel", "pending", "eof", "state", "moved", "spliced", "detail",
                 "other", "big", "smalls")

    def __init__(self, src, dst, pool: ChannelPool):
        self.src = src           # endpoints (endpoints.py)
        self.dst = dst
        self.zero_copy = src.zero_copy and dst.zero_copy
        self.pool = pool
        self.channel = None
        self.pending = 0
        self.eof = False
        self.state = State.WAIT_SRC
        self.moved = 0
        self.spliced = 0         # of moved, the bytes that went through a pipe
        self.detail = None       # what an endpoint said about the error that stopped this direction
        self.other = None        # the opposite direction of the same connection
        self.big = False         # the last pumps moved a lot: an adaptive pool lends a pipe
        self.smalls = 0          # small pumps in a row while big

    @property
    def idle(self) -> bool:
        """Waits for its source holding nothing, not done, not streaming: the caller may drop it (only its
        byte counts matter) and make a new one at the next edge."""
        return self.state is State.WAIT_SRC and self.channel is None and not self.big

    def pump(self, clean: bool = False) -> str | None:
        """Move what can be moved now; return a close reason on error, else None.

        clean=True: this pump answers a readable edge of the source that carried no RDHUP, HUP or ERR. Then a
        copy fill the source calls `drained` (a short read of an emptied socket, made after the edge was
        collected) ends the pump once its bytes are out, without the read that would only raise EAGAIN: bytes
        that arrive later raise a new edge (edge-triggered epoll). Never for a pipe (a short splice proves
        nothing), nor on an edge with RDHUP (a FIN already reported sends no new edge: the read of 0 must
        happen now), nor in a pump that resumes after WAIT_DST or BUSY (an edge may have passed unheard).
        """
        channel, pending, moved = self.channel, self.pending, 0
        adaptive = self.pool.adaptive
        want = self.zero_copy and (self.big or not adaptive)      # a pipe
        counted = 0              # of moved, the bytes counted already (through a channel left mid-pump)
        drained = False          # the last fill emptied the source (clean edges only)
        try:                     # one frame, no inner helper: this runs for every readable edge
            while True:
                if pending:
                    try:
                        n = channel.drain(self.dst, pending)
                    except BlockingIOError:
                        self._set_state(State.WAIT_DST)
                        return
                    pending -= n
                    moved += n
                    if drained and not pending:
                        self._release()
                        self._set_state(State.WAIT_SRC)
                        return
                    continue
                if self.eof:
                    self._finish()
                    return
                if moved >= BUDGET:
                    self._set_state(State.BUSY)
                    return
                if adaptive:     # switch only here, with the channel empty: the bytes keep their order
                    if not want and moved >= BIG and self.zero_copy:
                        want = True
                    if channel is not None and channel.zero_copy is not want:
                        self._count(channel, moved - counted)
                        counted = moved
                        self._release()
                        channel = None
                if channel is None:
                    channel = self.channel = self.pool.get(want)
                try:
                    pending = channel.fill(self.src)
                except BlockingIOError:
                    self._release()
                    self._set_state(State.WAIT_SRC)
                    return
                if not pending:
                    self.eof = True
                elif clean and not channel.zero_copy and pending < channel.size:
                    drained = self.src.drained
        except OSError as exc:
            return errors.relay_reason(exc)
        except errors.Closed as exc:
            self.detail = exc.detail
            return exc.reason
        finally:     # also when an endpoint raised: discard() must see what the channel still holds
            self.pending = pending
            if moved > counted:
                self._count(channel, moved - counted)
            if moved >= BIG:
                self.smalls = 0
                if not self.big:
                    self.big = True
                    self.pool.to_splice += self.pool.adaptive
            elif self.big and moved < SMALL and self.state is not State.WAIT_DST:
                self.smalls += 1
                if self.smalls >= SMALL_PUMPS:
                    self.big, self.smalls = False, 0
                    self.pool.to_copy += self.pool.adaptive

    def hold(self, rest: bytes) -> None:
        """Take bytes read for this direction that its destination did not take (copy_once): in a buffer,
        waiting for the destination (WAIT_DST)."""
        channel = self.channel = self.pool.get(False)
        channel.view[:len(rest)] = rest
        channel.start = 0
        self.pending = len(rest)
        self._set_state(State.WAIT_DST)

    def _count(self, channel, n: int) -> None:
        self.moved += n
        if channel.zero_copy:
            self.spliced += n
            self.pool.spliced += n
        else:
            self.pool.copied += n

    def _set_state(self, state: State) -> None:
        if state not in NEXT[self.state]:
            raise TransitionError.of("relay direction", self.state, state)
        self.state = state

    def _finish(self) -> None:
        self._release()
        self._set_state(State.DONE)
        if self.dst.zero_copy and self.other is not None and self.other.state is State.DONE:
            return               # both ends are done: the close that follows sends the FIN
        try:
            self.dst.shutdown_write()
        except OSError as exc:
            if not errors.is_peer_gone(exc):
                raise

    def _release(self) -> None:
        if self.channel is not None:
            self.pool.put(self.channel)
            self.channel = None

    def discard(self) -> None:
        """Give the channel back at close, whatever it still holds, and unlink the opposite direction
        (the two form a cycle that would keep the connection, TLS engines included, until a GC pass)."""
        self.other = None
        if self.channel is not None:
            if self.pending:
                self.pool.kill(self.channel)
            else:
                self.pool.put(self.channel)
            self.channel = None
            self.pending = 0
