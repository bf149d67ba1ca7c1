"""One event-loop process: acceptors over the shared listening sockets and their connections, and the UDP
listeners with their flows.

Owns: the worker context (reactor, settings, channel pool, stats, open connections) and the signals
a worker obeys: SIGTERM/SIGINT stop (drain with `drain_timeout`; also what the parent-death signal
sends), SIGUSR2 retire after a reload (drain with `reload_drain_timeout`), SIGQUIT hard stop (every
connection reset at once), SIGUSR1 stats to the log. The drain policy is drain.py's.
Binding, forking and reloading belong to the supervisor.
Must not import what serve/ must not (README "Architecture").
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import signal
import socket
import time

from epollmux.observe import accesslog
from epollmux.serve import keepalive
from epollmux.serve.admission import Admission
from epollmux.serve.backend import OwnBackends
from epollmux.serve.connection import Connection
from epollmux.serve.openconns import OpenConnections
from epollmux.relay.channels import ChannelPool
from epollmux.config import Config, Listener
from epollmux.relay.kernel import KernelRelay
from epollmux.serve.drain import RETIRE, STOP, Drain
from epollmux.serve.armed import PAUSE as PAUSE_ON_EXHAUSTION
from epollmux.serve.listener import Acceptor, Reserve
from epollmux.serve.flows import FlowTable
from epollmux.serve.udplistener import UdpListener
from epollmux.reactor import Reactor
from epollmux.observe.stats import Stats
from epollmux.reasons import Reason

log = logging.getLogger("epollmux.worker")

# Connections make no reference cycles (checked: RSS is flat with the collector off), so the cyclic GC
# only costs time; a larger first generation makes it run ~20x less often (+18 % connections per CPU-s).
GC_THRESHOLDS = (20000, 20, 20)


class Context:
    """What every connection of this worker shares."""

    def __init__(self, config: Config, reactor: Reactor):
        self.config = config
        self.settings = config.settings
        self.keepalive = keepalive.options(config.settings)     # for every TCP socket, both legs
        self.settler = keepalive.Settler(reactor, keepalive.fresh(self.keepalive))  # new backend sockets' options
        self.reactor = reactor
        relay = config.settings.relay
        kind = relay if relay in ("adaptive", "splice", "copy") else "adaptive"   # sockmap, auto: where the kernel cannot
        self.pool = ChannelPool(kind, config.settings.pipe_size, config.settings.max_pipes)
        self.kernel = KernelRelay(reactor, relay) if relay in ("sockmap", "auto") else None   # loads on first use
        self.stats = Stats()
        self.connections = OpenConnections(reactor, Connection)    # len() and iteration, as a set would
        self.own_backends = OwnBackends()  # this worker's TCP backend sockets by local port
        self.loop_warned = False
        self.reserve = Reserve()
        self.draining = False
        self.acceptors: list = []         # listener.Acceptor and udplistener.UdpListener
        self.flows = FlowTable(self)
        self.admission = Admission(config.settings, (*config.listeners, *config.routes.values()))
        self.access = accesslog.Writer(config.settings.log_format, config.settings.log_target)
        reactor.after_turn(self.access.flush)
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{int(time.time() * 1000):x}-"

    def unique_id(self) -> bytes:
        """An id for one connection, unique across workers and restarts (PROXY v2 UNIQUE_ID)."""
        return f"{self._id_prefix}{next(self._ids):x}".encode()

    def exhausted(self, what: str) -> None:
        """Out of fds or memory: say so once, and every acceptor stops for a while, then tries again."""
        if not any(a.resume_timer for a in self.acceptors):
            log.warning("%s; refusing new clients for %.1fs", what, PAUSE_ON_EXHAUSTION)
        for acceptor in self.acceptors:
            acceptor.pause()


class Worker:
    def __init__(self, config: Config, sockets: list[tuple[Listener, socket.socket]],
                 reactor: Reactor | None = None):
        self.reactor = reactor or Reactor()
        self.ctx = Context(config, self.reactor)
        self.acceptors = [(UdpListener if listener.udp else Acceptor)(self.ctx, listener, sock)
                          for listener, sock in sockets]
        self.ctx.acceptors = self.acceptors
        self.drain = Drain(self.ctx, self.reactor.stop)

    def run(self) -> int:
        """Serve until told to stop and drained; returns the exit code."""
        reactor = self.reactor
        reactor.on_signal(signal.SIGTERM, self.stop)
        reactor.on_signal(signal.SIGINT, self.stop)
        reactor.on_signal(signal.SIGUSR2, self.retire)
        reactor.on_signal(signal.SIGQUIT, self.drain.hard_stop)
        reactor.on_signal(signal.SIGUSR1, self.dump_stats)
        for acceptor in self.acceptors:
            acceptor.start()
        gc.collect()
        gc.freeze()          # what was loaded before serving is never traversed again (and stays shared after fork)
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            reactor.run()
        finally:
            self.close()
        return 0

    def stop(self) -> None:
        """Close the listeners; exit once every connection is gone (cut per `drain_timeout`)."""
        self.drain.start(STOP)

    def retire(self) -> None:
        """A reload's new workers accept: close the listeners, drain per `reload_drain_timeout`."""
        self.drain.start(RETIRE)

    def dump_stats(self) -> None:
        text = self.ctx.stats.render(len(self.ctx.connections), self.ctx.pool, len(self.ctx.flows))
        if self.ctx.kernel is not None:
            text = f"{text.rstrip()}\n{self.ctx.kernel.describe()}\n"
        log.info("stats:\n%s", text)

    def close(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        for conn in list(self.ctx.connections):
            conn.close(Reason.SHUTDOWN)
        self.ctx.flows.close_all(Reason.SHUTDOWN)
        self.ctx.access.flush()
        self.ctx.pool.close()
        if self.ctx.kernel is not None:
            self.ctx.kernel.close()
        self.ctx.reserve.close()
        self.reactor.close()
