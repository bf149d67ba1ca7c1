"""The event loop: one `select.epoll`, fd handlers, a timer heap, deferred calls, signals.

Owns: epoll registration bookkeeping, timers (heap with lazy cancellation, compacted when most
entries are cancelled), callbacks deferred to the next turn, the signal wake-up fd, and `now` (the
clock read once per turn, when the poll returns). Signal handlers only record the signal; the loop
dispatches to the callback registered with `on_signal`.
A batch's events are matched to the handlers registered when the poll returned, and delivered only if the
same handler is still registered for that fd, so an event queued for a closed socket never reaches a new
socket that reuses its fd number in the same batch (the map holds the handler itself, no object per
registration: an idle connection's two registrations cost two dict entries).
Must not import anything of epollmux but `errors`: nothing that knows about connections, protocols or configuration.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import select
import signal
import time
from collections import deque
from typing import Callable, Protocol

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR
HUP = select.EPOLLHUP
RDHUP = select.EPOLLRDHUP
ET = select.EPOLLET
EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)

MAX_EVENTS = 256
COMPACT_MIN = 256       # cancelled timers tolerated in the heap before a compaction is considered


class Handler(Protocol):
    def on_event(self, fd: int, events: int) -> None: ...


class Timer:
    """A cancellable one-shot timer; a cancelled entry stays in the heap until it surfaces or the
    heap is compacted (more than half of it cancelled), and counts itself to its reactor."""

    __slots__ = ("deadline", "callback", "args", "cancelled", "reactor")

    def __init__(self, deadline: float, callback: Callable[..., None], args: tuple = (), reactor=None):
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.reactor = reactor     # set while the timer waits in that reactor's heap

    def cancel(self) -> None:
        if not self.cancelled and self.reactor is not None:
            self.reactor._cancelled += 1
        self.cancelled = True
        self.reactor = None
        self.callback = _noop      # a cancelled entry waits in the heap until it surfaces: keep nothing alive
        self.args = ()


class Reactor:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._epoll = select.epoll()
        # fd -> the handler itself, as a list indexed by fd (None: none): no object per registration, and 8 bytes
        # per fd where a dict took ~35 (idle memory); it grows to the highest fd registered and never shrinks
        self._handlers: list[Handler | None] = []
        self._registered = 0
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled = 0         # cancelled timers still in the heap
        self._seq = itertools.count()
        self._soon: deque[tuple[Callable[..., None], tuple]] = deque()
        self._signal_callbacks: dict[int, Callable[[], None]] = {}
        self._signal_r = self._signal_w = -1
        self._after_turn: list[Callable[[], None]] = []
        self.running = False
        self.now = clock()          # the clock when the last poll returned: one reading per turn for handlers

    # --- fds -----------------------------------------------------------------------------
    def register(self, fd: int, events: int, handler: Handler) -> None:
        self._epoll.register(fd, events)
        handlers = self._handlers
        if fd >= len(handlers):
            handlers.extend([None] * (fd + 1 - len(handlers) + len(handlers) // 2))
        if handlers[fd] is None:
            self._registered += 1
        handlers[fd] = handler

    def _pop(self, fd: int) -> Handler | None:
        handlers = self._handlers
        if fd >= len(handlers):
            return None
        handler = handlers[fd]
        if handler is not None:
            handlers[fd] = None
            self._registered -= 1
        return handler

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        """Forget fd; call before closing it. Events for it still queued in this batch are skipped."""
        if self._pop(fd) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError as exc:  # already closed elsewhere: the kernel dropped it with the fd
                if exc.errno not in (errno.EBADF, errno.ENOENT):
                    raise

    def forget(self, fd: int) -> None:
        """Forget fd that is about to be closed: closing removes it from the epoll set, so no
        EPOLL_CTL_DEL is needed (the fd is never duplicated). Queued events for it are skipped."""
        self._pop(fd)

    def handler_count(self) -> int:
        return self._registered

    def handlers(self) -> list[tuple[int, Handler]]:
        """The registered fds with their handlers, in fd order (a snapshot: safe to unregister while walking it)."""
        return [(fd, h) for fd, h in enumerate(self._handlers) if h is not None]

    # --- time ----------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[..., None], *args) -> Timer:
        """Run callback(*args) once, `delay` seconds from now (bound methods and args: no closure per call)."""
        timer = Timer(self.clock() + delay, callback, args, self)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        return timer

    def after_turn(self, callback: Callable[[], None]) -> None:
        """Run callback at the end of every turn of the loop (batched output, say)."""
        self._after_turn.append(callback)

    def call_soon(self, callback: Callable[..., None], *args) -> None:
        """Run callback(*args) on the next turn of the loop, before waiting for events (no closure per call)."""
        self._soon.append((callback, args))

    def timer_count(self) -> int:
        """Entries in the timer heap, cancelled ones included (what the heap costs in memory)."""
        return len(self._timers)

    def _run_due_timers(self) -> None:
        now = self.now
        due = []
        while self._timers and self._timers[0][0] <= now:
            due.append(heapq.heappop(self._timers)[2])
        for timer in due:  # collected first: a callback's new timers wait for the next turn
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer.cancelled = True
                timer.reactor = None
                timer.callback(*timer.args)

    def _compact_timers(self) -> None:
        """Drop the cancelled entries (asyncio's rule: once they are more than half of the heap)."""
        self._timers = [entry for entry in self._timers if not entry[2].cancelled]
        heapq.heapify(self._timers)
        self._cancelled = 0

    def _wait_timeout(self) -> float:
        if self._soon:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
            self._cancelled -= 1
        if not self._timers:
            return -1
        return max(0.0, self._timers[0][0] - self.clock())

    # --- signals -------------------------------------------------------------------------
    def on_signal(self, signum: int, callback: Callable[[], None]) -> None:
        """Run callback in the loop when signum arrives; the handler itself only records."""
        if self._signal_r < 0:
            self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
            self.register(self._signal_r, IN, _SignalPipe(self))
        self._signal_callbacks[signum] = callback
        signal.signal(signum, _record_signal)

    def _dispatch_signals(self) -> None:
        try:
            data = os.read(self._signal_r, 256)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):  # each distinct signal once per wake-up, in order
            callback = self._signal_callbacks.get(signum)
            if callback is not None:
                callback()

    # --- loop ----------------------------------------------------------------------------
    def run_once(self) -> None:
        try:
            events = self._epoll.poll(self._wait_timeout(), MAX_EVENTS)
        except InterruptedError:
            events = []
        self.now = self.clock()
        handlers = self._handlers
        # matched before any handler runs: a registration ended by an earlier handler of this batch
        # is dead, and a new one that reuses the number (another handler) is not the one this event was queued for
        batch = [(handlers[fd], fd, mask) for fd, mask in events]      # an event's fd was registered: in range
        for handler, fd, mask in batch:
            if handler is not None and handlers[fd] is handler:
                handler.on_event(fd, mask)
        timers = self._timers
        if timers and timers[0][0] <= self.now:
            self._run_due_timers()
        soon = self._soon
        for _ in range(len(soon)):
            callback, args = soon.popleft()
            callback(*args)
        for callback in self._after_turn:
            callback()
        if self._cancelled > COMPACT_MIN and self._cancelled * 2 > len(self._timers):
            self._compact_timers()

    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        if self._signal_r >= 0:
            signal.set_wakeup_fd(-1)
            self.unregister(self._signal_r)
            os.close(self._signal_r)
            os.close(self._signal_w)
            self._signal_r = self._signal_w = -1
        self._epoll.close()

    def close_after_fork(self) -> None:
        """In a child forked from this loop's process: drop the loop without epoll_ctl on the epoll
        set (the parent shares it) and stop signal wake-ups from reaching the parent's pipe."""
        if self._signal_r >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._signal_r)
            os.close(self._signal_w)
            self._signal_r = self._signal_w = -1
        self._handlers.clear()
        self._registered = 0
        self._signal_callbacks.clear()
        self._timers.clear()
        self._cancelled = 0
        self._soon.clear()
        self._epoll.close()


class _SignalPipe:
    def __init__(self, reactor: Reactor):
        self.reactor = reactor

    def on_event(self, fd: int, events: int) -> None:
        self.reactor._dispatch_signals()


def _record_signal(signum, frame) -> None:
    """The Python-level handler does nothing: set_wakeup_fd already wrote the signal number."""


def _noop() -> None:
    pass
