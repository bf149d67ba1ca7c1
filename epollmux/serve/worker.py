"""One event-loop process: acceptors over the shared listening sockets and their connections.

Owns: the worker context (reactor, settings, channel pool, stats, open connections), the
signals a worker obeys (SIGTERM/SIGINT: stop accepting and drain; SIGUSR1: stats to the log) and
the drain deadline. Binding, forking and reloading belong to the supervisor.
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
from epollmux.observe.words import plural
from epollmux.serve import keepalive
from epollmux.serve.admission import Admission
from epollmux.relay.channels import ChannelPool
from epollmux.config import Config, Listener
from epollmux.relay.kernel import KernelRelay
from epollmux.serve.listener import PAUSE_ON_EXHAUSTION, Acceptor, Reserve
from epollmux.reactor import Reactor
from epollmux.observe.stats import Stats

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
        self.reactor = reactor
        relay = config.settings.relay
        kind = relay if relay in ("splice", "copy") else "splice"   # sockmap, auto: splice where the kernel cannot
        self.pool = ChannelPool(kind, config.settings.pipe_size, config.settings.max_pipes)
        self.kernel = KernelRelay(reactor, relay) if relay in ("sockmap", "auto") else None   # loads on first use
        self.stats = Stats()
        self.connections: set = set()
        self.own_backends: dict = {}       # local (ip, port[, flow, scope]) -> target of this worker's TCP backend sockets
        self.loop_warned = False
        self.reserve = Reserve()
        self.draining = False
        self.acceptors: list[Acceptor] = []
        self.admission = Admission(config.settings)
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
        self.acceptors = [Acceptor(self.ctx, listener, sock) for listener, sock in sockets]
        self.ctx.acceptors = self.acceptors
        self.drain_timer = None

    def run(self) -> int:
        """Serve until told to stop and drained; returns the exit code."""
        reactor = self.reactor
        reactor.on_signal(signal.SIGTERM, self.drain)
        reactor.on_signal(signal.SIGINT, self.drain)
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

    def drain(self) -> None:
        """Stop accepting; stop the loop once every connection is gone or drain_timeout passed."""
        ctx = self.ctx
        if ctx.draining:
            return
        ctx.draining = True
        for acceptor in self.acceptors:
            acceptor.stop()
        log.info("draining %s (at most %.0fs)", plural(len(ctx.connections), "connection"), ctx.settings.drain_timeout)
        self.drain_timer = self.reactor.call_later(ctx.settings.drain_timeout, self._drain_deadline)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.ctx.connections:
            self.reactor.stop()
        else:
            self.reactor.call_later(0.05, self._check_drained)

    def _drain_deadline(self) -> None:
        for conn in list(self.ctx.connections):
            conn.close("shutdown")
        self.reactor.stop()

    def dump_stats(self) -> None:
        text = self.ctx.stats.render(len(self.ctx.connections), self.ctx.pool)
        if self.ctx.kernel is not None:
            text = f"{text.rstrip()}\n{self.ctx.kernel.describe()}\n"
        log.info("stats:\n%s", text)

    def close(self) -> None:
        for acceptor in self.acceptors:
            acceptor.stop()
        for conn in list(self.ctx.connections):
            conn.close("shutdown")
        self.ctx.access.flush()
        self.ctx.pool.close()
        if self.ctx.kernel is not None:
            self.ctx.kernel.close()
        self.ctx.reserve.close()
        self.reactor.close()
