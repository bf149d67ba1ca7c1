"""Every state machine refuses a transition its table does not list (the idiom of epollmux/states.py),
and the supervisor does not switch generations while it stops."""

from __future__ import annotations

import enum
import ssl
from types import SimpleNamespace

import pytest

from epollmux.process import states as supervisor_states
from epollmux.process.generation import Generation
from epollmux.process.sockettable import SocketTable
from epollmux.process.supervisor import Supervisor
from epollmux.relay import direction, kernel
from epollmux.serve import phases
from epollmux.serve.connection import Connection
from epollmux.states import TransitionError
from epollmux.tls import engine

MACHINES = [(phases.Phase, phases.NEXT), (engine.TLSState, engine.NEXT), (direction.State, direction.NEXT),
            (kernel.State, kernel.NEXT), (supervisor_states.State, supervisor_states.NEXT)]


@pytest.mark.parametrize("states, table", MACHINES, ids=lambda m: getattr(m, "__name__", ""))
def test_tables_are_plain(states, table):
    assert issubclass(states, enum.StrEnum)
    assert set(table) == set(states)
    assert all(isinstance(allowed, tuple) and set(allowed) <= set(states) for allowed in table.values())
    for member in states:
        assert vars(member).keys() <= {"_value_", "_name_", "__objclass__", "_sort_order_", "__init__"}


def test_connection_phase():
    ctx = SimpleNamespace(reactor=SimpleNamespace(now=0.0), admission=SimpleNamespace(grant=lambda: None))
    listener = SimpleNamespace(proxy_protocol="none")
    conn = Connection(ctx, listener, SimpleNamespace(fileno=lambda: 5), ("127.0.0.1", 1))
    assert conn.phase is phases.Phase.SNIFFING
    with pytest.raises(TransitionError):
        conn._set_phase(phases.Phase.RELAYING)
    assert conn.phase is phases.Phase.SNIFFING


def test_tls_engine_state():
    tls = engine.TLSEngine(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with pytest.raises(TransitionError):
        tls._set_state(engine.TLSState.CLOSING)
    assert tls.state is engine.TLSState.HANDSHAKING


def test_relay_direction_state():
    end = SimpleNamespace(zero_copy=False)
    d = direction.Direction(end, end, pool=None)
    d._set_state(direction.State.DONE)
    with pytest.raises(TransitionError):
        d._set_state(direction.State.WAIT_SRC)


def test_kernel_relay_state():
    d = kernel._Direction(flow=None)
    d._set_state(kernel.DONE)
    with pytest.raises(TransitionError):
        d._set_state(kernel.KERNEL)


@pytest.fixture
def supervisor():
    sup = Supervisor(None, False, SocketTable([]))
    yield sup
    sup.reactor.close()
    sup.notifier.close()


def test_supervisor_state(supervisor):
    State = supervisor_states.State
    with pytest.raises(TransitionError):
        supervisor._set_state(State.RELOADING)          # only a running supervisor reloads
    supervisor._set_state(State.STOPPING)
    with pytest.raises(TransitionError):
        supervisor._set_state(State.RUNNING)


def test_supervisor_stopping_does_not_switch_to_a_ready_generation(supervisor):
    """A reload's workers that report ready after the stop began: the supervisor keeps stopping
    (it used to switch generations and go back to running, so the stop never finished)."""
    cfg = SimpleNamespace(settings=SimpleNamespace(workers=1))
    supervisor.current = Generation(1, cfg, [], set(), None)
    supervisor.pending = Generation(2, cfg, [], set(), None)
    proc = SimpleNamespace(pid=-1, ready=True, stopping=True, generation=supervisor.pending)
    supervisor.pending.workers[proc.pid] = proc
    supervisor.state = supervisor_states.State.STOPPING
    supervisor._worker_ready(proc)
    assert supervisor.state is supervisor_states.State.STOPPING and supervisor.pending is not None
