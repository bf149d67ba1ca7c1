"""The worker's open connections, without a container entry per connection.

Owns: `OpenConnections`, what `ctx.connections` is: the count of open connections, kept by
`Connection.start()` (add) and `Connection.close()` (discard), and their list, read from the
reactor's fd table, where every open connection is registered at its client fd from start() to
close(). A set of connections cost ~30 B per idle connection (bench/PROFILE.md "Idle memory, second
pass"); the list is made only for `show conns`, metrics, a drain and the worker's end.
Must not import the connection module (the connection class is passed in) nor sockets.
"""

from __future__ import annotations


class OpenConnections:
    __slots__ = ("_reactor", "_kind", "_count")

    def __init__(self, reactor, kind: type):
        self._reactor = reactor
        self._kind = kind        # connection.Connection
        self._count = 0

    def add(self, conn) -> None:
        """A connection started (registered at its client fd): called once per connection."""
        self._count += 1

    def discard(self, conn) -> None:
        """A connection closes: called once, by its close()."""
        self._count -= 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        """The open connections (a snapshot: closing them while walking it is safe)."""
        kind = self._kind
        return iter([h for fd, h in self._reactor.handlers() if isinstance(h, kind) and h.cfd == fd])
