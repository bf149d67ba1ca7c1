"""How a worker ends: retired after a reload, stopped, or hard-stopped.

Owns the drain policy. When a drain starts, the worker closes its listening sockets at once (it stops
being a destination: the kernel must not queue a client on a socket nobody accepts from; after a reload
the new workers hold the same sockets). Then its connections finish on their own, except that each is
cut after its timeout: `reload_drain_timeout` when retired by a reload, `drain_timeout` when stopped,
or its route's own `drain_timeout` when the route sets one; 0 means never cut. A cut connection ends with
a reset (reason `drain-cut`): a clean FIN would make a truncated transfer look complete. A stop during a
retirement re-plans with the stop's timeouts. A hard stop ends every connection at once with a reset
(reason `hard-stop`). The worker exits once its last connection is gone.
UDP flows: a stop ends them at once (reason `udp-stop`: a flow has no end of its own to wait for, only
its idle timeout); a retirement keeps them, each relaying through its own socket until it goes idle
(`udp-idle`) or its drain timeout cuts it, so a reload does not break an established flow.
Must not know about signals or processes (the worker and the supervisor do).
Must not import what serve/ must not (README "Architecture").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from epollmux.observe.words import plural
from epollmux.reasons import Reason

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Route, Settings
    from epollmux.serve.worker import Context

log = logging.getLogger("epollmux.worker")

RETIRE, STOP = "retire", "stop"
CHECK_EVERY = 0.05          # seconds between looks at whether the last connection is gone
CUT, HARD_STOP = Reason.DRAIN_CUT, Reason.HARD_STOP


def timeout_for(settings: Settings, route: Route | None, kind: str) -> float:
    """Seconds a connection on `route` (None: not routed yet) may go on after a drain of this kind; 0 = never cut."""
    if route is not None and route.drain_timeout is not None:
        return route.drain_timeout
    return settings.reload_drain_timeout if kind == RETIRE else settings.drain_timeout


def stop_deadline(cfg) -> float:
    """The longest a stop lets any connection of cfg go on; 0 if some connection is never cut."""
    timeouts = [timeout_for(cfg.settings, route, STOP) for route in [None, *cfg.routes.values()]]
    return 0.0 if 0 in timeouts else max(timeouts)


class Drain:
    def __init__(self, ctx: Context, done: Callable[[], None]):
        self.ctx = ctx
        self.done = done            # called once no connection is left
        self.kind = ""              # "", RETIRE or STOP
        self.started = 0.0
        self.timers: list = []
        self.checking = False

    def start(self, kind: str) -> None:
        """Begin (or, a stop during a retirement, re-plan) the drain; a repeated kind changes nothing."""
        if self.kind == kind or self.kind == STOP:
            return
        ctx = self.ctx
        reactor = ctx.reactor
        self.kind = kind
        self.started = reactor.clock()
        ctx.draining = True
        for acceptor in ctx.acceptors:
            acceptor.close()
        for timer in self.timers:
            timer.cancel()
        routes = [None, *ctx.config.routes.values()]
        deadlines = sorted({timeout_for(ctx.settings, route, kind) for route in routes} - {0})
        self.timers = [reactor.call_later(seconds, self._cut, seconds) for seconds in deadlines]
        if kind == STOP and len(ctx.flows):
            log.info("stopping: %s ended", plural(ctx.flows.close_all(Reason.UDP_STOP), "UDP flow"))
        never = 0 in {timeout_for(ctx.settings, route, kind) for route in routes}
        log.info("draining %s, %s (%s)", plural(len(ctx.connections), "connection"),
                 "stopping" if kind == STOP else "retired by a reload", _describe(deadlines, never))
        if not self.checking:
            self.checking = True
            self._check()

    def _cut(self, seconds: float) -> None:
        """Reset the connections whose timeout is `seconds` (their route's, or the global one)."""
        ctx = self.ctx
        cut = [c for c in ctx.connections if timeout_for(ctx.settings, c.route, self.kind) == seconds]
        cut += [f for f in ctx.flows if timeout_for(ctx.settings, f.route, self.kind) == seconds]
        for conn in cut:
            conn.close(CUT)
        if cut:
            log.info("drain: %s cut after %gs", plural(len(cut), "connection"), seconds)

    def hard_stop(self) -> None:
        """End every connection now, with a reset; the worker exits."""
        ctx = self.ctx
        ctx.draining = True
        for acceptor in ctx.acceptors:
            acceptor.close()
        conns = list(ctx.connections)
        log.warning("hard stop: %s reset", plural(len(conns), "connection"))
        for conn in conns:
            conn.close(HARD_STOP)
        ctx.flows.close_all(HARD_STOP)
        self.done()

    def _check(self) -> None:
        if not self.ctx.connections and not len(self.ctx.flows):
            self.done()
        else:
            self.ctx.reactor.call_later(CHECK_EVERY, self._check)


def _describe(deadlines: list[float], never: bool) -> str:
    parts = [f"cut after {', '.join(f'{s:g}s' for s in deadlines)}"] if deadlines else []
    if never:
        parts.append("some never cut" if deadlines else "none cut")
    return "; ".join(parts)
