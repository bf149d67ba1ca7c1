"""Reactor races: an event queued for a socket closed earlier in the same batch never reaches the
socket that reuses its fd number; cancelled timers do not pile up in the heap."""

from __future__ import annotations

import os
import socket

from epollmux.reactor import IN, RDHUP, Reactor
from support.clock import FakeClock


def test_stale_event_of_a_closed_fd_never_reaches_the_socket_that_reuses_its_number():
    """Two readable sockets in one batch; the first handler to run closes the other one and opens a
    new socket that gets the same fd number. The closed socket's queued event must be dropped."""
    r = Reactor()
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    a_peer.send(b"x")
    b_peer.close()                    # b's queued event: IN|RDHUP, the "client shut its side" edge
    by_fd = {a.fileno(): a, b.fileno(): b}
    calls: list[tuple[str, int, int]] = []
    replacements: list[socket.socket] = []

    class NewSocket:
        def on_event(self, fd, events):
            calls.append(("new", fd, events))

    class Closer:
        def on_event(self, fd, events):
            calls.append(("old", fd, events))
            if fd in by_fd:
                by_fd[fd].recv(16)            # level-triggered: read it, or it comes again
            if replacements:
                return
            other_fd = next(f for f in by_fd if f != fd)
            r.forget(other_fd)
            by_fd.pop(other_fd).close()
            new, new_peer = socket.socketpair()
            if new.fileno() != other_fd:          # the kernel hands out the lowest free number
                os.dup2(new.fileno(), other_fd)
                new.close()
                new = socket.socket(fileno=other_fd)
            replacements.extend([new, new_peer])
            r.register(new.fileno(), IN | RDHUP, NewSocket())

    r.register(a.fileno(), IN | RDHUP, Closer())
    r.register(b.fileno(), IN | RDHUP, Closer())
    try:
        r.run_once()
        assert [c[0] for c in calls] == ["old"], calls     # the stale event was dropped
        new, new_peer = replacements
        new_peer.send(b"y")                                # the new socket still gets its own events
        r.run_once()
        assert [c[0] for c in calls] == ["old", "new"], calls
        assert calls[1][1] == new.fileno()
    finally:
        for s in [*by_fd.values(), a_peer, *replacements]:
            s.close()
        r.close()


def turn(r: Reactor) -> None:
    """One turn that does not wait in epoll (the fake clock's deadlines are far in real time)."""
    r.call_soon(lambda: None)
    r.run_once()


def test_cancelled_timers_are_compacted_once_they_are_most_of_the_heap():
    clock = FakeClock()
    r = Reactor(clock=clock)
    fired = []
    timers = [r.call_later(300 + i * 0.00001, fired.append, i) for i in range(10_000)]
    for t in timers[:9_000]:
        t.cancel()
    timers[0].cancel()                       # a second cancel counts once
    turn(r)
    assert r.timer_count() <= 1_000, r.timer_count()
    clock.now += 301
    for _ in range(3):
        turn(r)
    assert fired == list(range(9_000, 10_000))  # the kept timers still fire, in deadline order
    assert r.timer_count() == 0
    r.close()


def test_a_few_cancelled_timers_are_left_for_the_lazy_path():
    clock = FakeClock()
    r = Reactor(clock=clock)
    timers = [r.call_later(300, lambda: None) for _ in range(100)]
    for t in timers[:90]:
        t.cancel()
    turn(r)
    assert r.timer_count() == 100            # below the compaction threshold: no rebuild
    r.close()


def test_cancel_after_firing_does_not_count_as_a_cancelled_entry():
    clock = FakeClock()
    r = Reactor(clock=clock)
    fired_timers = [r.call_later(1, lambda: None) for _ in range(1000)]
    waiting = [r.call_later(300, lambda: None) for _ in range(600)]
    clock.now += 2
    turn(r)
    for t in fired_timers:
        t.cancel()                           # what a connection does to its finished deadline
    turn(r)
    assert r.timer_count() == len(waiting)   # nothing compacted away: none of these is cancelled
    assert r._cancelled == 0
    r.close()
