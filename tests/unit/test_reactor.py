"""The reactor alone: timers on an injected clock, deferred calls, fd bookkeeping, signals."""

from __future__ import annotations

import os
import signal
import socket

from epollmux.reactor import IN, Reactor
from support.clock import FakeClock


def test_timers_fire_in_deadline_order_on_injected_clock():
    clock = FakeClock()
    r = Reactor(clock=clock)
    fired = []
    r.call_later(5, lambda: fired.append("b"))
    r.call_later(1, lambda: fired.append("a"))
    r.call_later(10, lambda: fired.append("c"))
    r.run_once()
    assert fired == []
    clock.now += 5
    r.run_once()
    assert fired == ["a", "b"]
    clock.now += 100
    r.run_once()
    assert fired == ["a", "b", "c"]
    r.close()


def test_cancelled_timer_never_fires_and_does_not_set_wait():
    clock = FakeClock()
    r = Reactor(clock=clock)
    fired = []
    t = r.call_later(1, lambda: fired.append(1))
    t.cancel()
    r.call_later(3, lambda: fired.append(3))
    assert r._wait_timeout() == 3        # the cancelled timer does not shorten the wait
    clock.now += 2
    r.run_once()
    assert fired == []
    clock.now += 1
    r.run_once()
    assert fired == [3]
    r.close()


def test_timer_added_by_due_timer_waits_for_next_turn():
    clock = FakeClock()
    r = Reactor(clock=clock)
    fired = []
    r.call_later(0, lambda: (fired.append("first"), r.call_later(0, lambda: fired.append("second"))))
    r.run_once()
    assert fired == ["first"]
    r.run_once()
    assert fired == ["first", "second"]
    r.close()


def test_call_soon_runs_next_turn_without_waiting():
    r = Reactor()
    fired = []
    r.call_soon(lambda: fired.append(1))
    assert r._wait_timeout() == 0
    r.run_once()
    assert fired == [1]
    r.close()


def test_skip_stale_event_deterministic():
    r = Reactor()
    a1, a2 = socket.socketpair()
    b1, b2 = socket.socketpair()
    a2.send(b"x")
    b2.send(b"x")
    calls = []

    class Closer:
        def on_event(self, fd, events):
            calls.append(fd)
            other = b1.fileno() if fd == a1.fileno() else a1.fileno()
            r.unregister(other)

    r.register(a1.fileno(), IN, Closer())
    r.register(b1.fileno(), IN, Closer())
    r.run_once()
    assert len(calls) == 1          # the second fd was unregistered by the first handler
    for s in (a1, a2, b1, b2):
        s.close()
    r.close()


def test_signal_handled_in_loop():
    r = Reactor()
    got = []
    r.on_signal(signal.SIGUSR2, lambda: got.append("usr2"))
    os.kill(os.getpid(), signal.SIGUSR2)
    assert got == []                 # the handler only records
    for _ in range(5):
        if got:
            break
        r.run_once()
    assert got == ["usr2"]
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    r.close()


def test_cancelled_timer_releases_its_callback_at_once():
    """Regression: a cancelled timer kept its closure (and the whole connection) until its deadline."""
    import gc
    import weakref

    class Owner:
        pass

    r = Reactor()
    owner = Owner()
    ref = weakref.ref(owner)
    t = r.call_later(3600, lambda o=owner: o)
    del owner
    t.cancel()
    gc.collect()
    assert ref() is None
    r.close()


def test_call_later_passes_args_and_cancel_drops_them():
    clock = FakeClock()
    r = Reactor(clock=clock)
    fired = []
    r.call_later(1, fired.append, "a")
    t = r.call_later(1, fired.append, "b")
    t.cancel()
    assert t.args == ()
    clock.now += 1
    r.run_once()
    assert fired == ["a"]
    r.close()


def test_now_is_read_once_per_turn_after_the_poll():
    clock = FakeClock()
    r = Reactor(clock=clock)
    seen = []
    r.call_soon(lambda: seen.append(r.now))
    clock.now += 7
    r.run_once()
    assert seen == [1007.0]           # handlers see the time the poll returned, not the loop's creation
    r.close()


def test_handler_table_indexed_by_fd_counts_registrations_and_survives_fd_reuse():
    """The handler table is a list indexed by fd (idle memory): registrations are counted, a forgotten fd
    gets no event, and a reused fd number reaches its new handler only."""
    r = Reactor()
    seen = []

    class H:
        def __init__(self, name):
            self.name = name

        def on_event(self, fd, mask):
            seen.append(self.name)

    try:
        a, b = socket.socketpair()
        assert r.handler_count() == 0
        r.register(a.fileno(), IN, H("first"))
        assert r.handler_count() == 1
        r.forget(a.fileno())
        r.forget(a.fileno())              # twice: counted once
        assert r.handler_count() == 0
        fd = a.fileno()
        a.close()
        c, d = socket.socketpair()        # the same number again, most likely: the lowest free fd
        r.register(c.fileno(), IN, H("second"))
        d.send(b"x")
        r.run_once()
        assert seen == ["second"] and (c.fileno() != fd or r.handler_count() == 1)
        r.unregister(c.fileno())
        r.unregister(10_000)              # never registered, beyond the table: nothing happens
        assert r.handler_count() == 0
        for s in (b, c, d):
            s.close()
    finally:
        r.close()
