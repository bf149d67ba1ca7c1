"""Who may come in, and how many: source ACLs and connection limits of one worker.

Owns: the checks made on a connection's client address (after a PROXY header, if the listener takes
one) at entry and once its route is known, the per-listener and per-route counters (kept only where a
max_connections reads them: a worker's listeners and routes never change), and the
per-source limits (limits.Limits). Each check returns None or the close reason; `leave()` undoes
exactly what was granted. Must not import sockets or the reactor.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from epollmux.serve.limits import Limits
from epollmux.reasons import Reason

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Listener, Route, Settings


class Admission:
    def __init__(self, settings: Settings, counted=None):
        """counted: the worker's listeners and routes; without them every connection gets a Grant of its own."""
        self.limits = Limits(settings.max_connections_per_source, settings.max_sniffing_per_source,
                             settings.rate_per_source, ipv6_prefix=settings.source_ipv6_prefix)
        self.per_source = self.limits.enabled
        # anything to grant (and undo)? If not, connections share NOTHING, which no check writes to
        self.grants = counted is None or self.per_source or any(x.max_connections for x in counted)
        self.max_connections = settings.max_connections
        self.listeners: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()

    def grant(self) -> "Grant":
        """A new connection's Grant: its own, or NOTHING where no per-source, listener or route count is kept
        (an idle connection then holds none)."""
        return Grant() if self.grants else NOTHING

    def enter(self, grant: "Grant", listener: Listener, ip: str, now: float, open_connections: int) -> str | None:
        if self.max_connections and open_connections > self.max_connections:
            return Reason.LIMIT_GLOBAL
        if listener.access is not None and not listener.access.permits(ip):
            return Reason.DENIED
        if listener.max_connections and self.listeners[listener.name] >= listener.max_connections:
            return Reason.LIMIT_LISTENER
        if self.per_source:
            key = self.limits.key(ip)
            reason = self.limits.admit(key, now)
            if reason:
                return reason
            grant.source = key
            reason = self.limits.sniff_started(key)
            if reason:
                return reason
            grant.sniffing = True
        if listener.max_connections:
            self.listeners[listener.name] += 1
            grant.listener = listener.name
        return None

    def sniffed(self, grant: "Grant") -> None:
        """The route is decided: the connection no longer counts as sniffing."""
        if grant.sniffing:
            grant.sniffing = False
            self.limits.sniff_ended(grant.source)

    def route(self, grant: "Grant", route: Route, ip: str) -> str | None:
        if route.access is not None and not route.access.permits(ip):
            return Reason.DENIED
        if route.max_connections and self.routes[route.name] >= route.max_connections:
            return Reason.LIMIT_ROUTE
        if grant.route is not None:          # an inner route replaces the terminating one
            self.routes[grant.route] -= 1
            grant.route = None
        if route.max_connections:
            self.routes[route.name] += 1
            grant.route = route.name
        return None

    def leave(self, grant: "Grant") -> None:
        if grant.sniffing:
            grant.sniffing = False
            self.limits.sniff_ended(grant.source)
        if grant.source is not None:
            self.limits.release(grant.source)
            grant.source = None
        if grant.listener is not None:
            self.listeners[grant.listener] -= 1
            grant.listener = None
        if grant.route is not None:
            self.routes[grant.route] -= 1
            grant.route = None


class Grant:
    """What one connection was granted, so that leaving undoes exactly that."""

    __slots__ = ("source", "sniffing", "listener", "route")

    def __init__(self):
        self.source = None
        self.sniffing = False
        self.listener = None
        self.route = None


NOTHING = Grant()      # the shared Grant of an Admission that counts nothing: every field stays as it is here
