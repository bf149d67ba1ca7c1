"""What an idle relayed connection holds: a real worker in this process relays one connection between real
loopback sockets, and once both ends are quiet the connection carries no side object of its own (it shares
setupstate.SETTLED), no timestamp beyond its start without an idle_timeout, and no entry in a container of
the worker's connections (they are found through the reactor's fd table). The SetupState's rules alone."""

from __future__ import annotations

import select
import socket
import sys
import time

import pytest

from epollmux import config
from epollmux.serve.admission import Grant
from epollmux.serve.setupstate import SETTLED, SetupState
from epollmux.serve.worker import Worker
from epollmux.wire.sniff import NO_NAMES, Names

pytestmark = pytest.mark.timeout(30)
HOST = "127.0.0.1"


class Relayed:
    """One client connection through an in-process worker to a backend socket, proven by a round trip."""

    def __init__(self, relay: str, extra: dict | None = None):
        self.backend = socket.create_server((HOST, 0))
        self.front = socket.create_server((HOST, 0))
        self.front.setblocking(False)
        cfg = config.load_dict("test", {
            "global": {"relay": relay, "workers": "1", "log_level": "warning", **(extra or {})},
            "listen": {"l": {"address": f"{HOST}:{self.front.getsockname()[1]}"}},
            "routes": {"r": {"probe": "any", "backend": f"{HOST}:{self.backend.getsockname()[1]}"}}})
        self.worker = Worker(cfg, [(cfg.listeners[0], self.front)])
        self.ctx = self.worker.ctx
        for acceptor in self.worker.acceptors:
            acceptor.start()
        self.client = socket.create_connection(self.front.getsockname())
        self.client.sendall(b"p")
        self.serve_until(lambda: select.select([self.backend], [], [], 0)[0])
        self.server, _ = self.backend.accept()
        self.server.settimeout(5)
        assert self.server.recv(1) == b"p"
        self.server.sendall(b"q")
        self.serve_until(lambda: select.select([self.client], [], [], 0)[0])
        assert self.client.recv(1) == b"q"

    def serve_until(self, done, limit: float = 5.0) -> None:
        end = time.monotonic() + limit
        while not done():
            assert time.monotonic() < end, "the worker did not get there"
            self.worker.reactor.call_later(0.01, lambda: None)     # bounds the poll
            self.worker.reactor.run_once()

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.serve_until(lambda: len(self.ctx.connections) == 0)
        self.worker.close()
        self.backend.close()


@pytest.mark.parametrize("relay", ["adaptive", "splice", "copy"])
def test_an_idle_relayed_connection_holds_no_side_object_and_no_container_entry(relay):
    r = Relayed(relay)
    try:
        conns = list(r.ctx.connections)
        assert len(conns) == len(r.ctx.connections) == 1      # registered at two fds, listed once
        conn = conns[0]
        assert conn.setup is SETTLED
        assert conn.last_active is None                      # no idle_timeout: no float for it
        assert conn.up is None and conn.down is None and conn.src is None
        assert sys.getsizeof(conn) <= 224                    # 24 slots (36 before: 320 B)
        assert sys.getsizeof(r.ctx.connections) < 100        # no entry per connection
    finally:
        r.close()
    assert SETTLED.verdict == "match" and SETTLED.detail is None and SETTLED.grant.route is None


def test_with_an_idle_timeout_the_connection_keeps_its_last_active_turn_and_is_cut_when_idle():
    r = Relayed("adaptive", {"idle_timeout": "0.3"})
    try:
        conn = next(iter(r.ctx.connections))
        assert isinstance(conn.last_active, float) and conn.last_active >= conn.started
        r.serve_until(lambda: len(r.ctx.connections) == 0)
        assert r.client.recv(1) == b""                       # the worker closed it: idle-timeout
    finally:
        r.close()


def test_settle_gives_the_shared_state_only_when_nothing_is_worth_keeping():
    plain = SetupState(verdict="match")
    plain.peeked, plain.names, plain.peek_len = b"GET", NO_NAMES, 3
    assert plain.settle() is SETTLED
    for change in (("verdict", "timeout"), ("names", Names(host="x")), ("tls", {"tls": "TLSv1.3"}),
                   ("detail", "bad"), ("outer", object()), ("grant", Grant())):
        state = SetupState(verdict="match")
        state.peeked, state.inner, state.dst = b"x", b"y", ("127.0.0.1", 1)
        setattr(state, *change)
        assert state.settle() is state
        assert (state.peeked, state.inner, state.dst) == (None, b"", None)       # what only the set-up needed


def test_the_shared_state_is_never_written_a_detail_gets_a_state_of_its_own():
    with pytest.raises(AttributeError):
        SETTLED.detail = "x"
    assert SETTLED.noted(None) is SETTLED
    own = SETTLED.noted("record overflow")
    assert own is not SETTLED and (own.verdict, own.detail) == ("match", "record overflow")
    assert SETTLED.detail is None and own.noted("later") is own and own.detail == "later"
