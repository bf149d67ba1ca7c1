"""A connection's side object: what it holds while it is set up, and what its log line needs after.

Owns: `SetupState` (the sniffing progress, the PROXY header's destination, the admission Grant,
the connect's start time, and the access log's facts: verdict, names, TLS, the terminating route,
an error's detail) and `SETTLED`, the one shared, read-only SetupState of every relaying
connection that has nothing of its own to log (verdict match, no names, no TLS, no inner route,
a Grant that counts nothing). An idle plain relayed connection then carries one slot for all of
this instead of thirteen (measured in bench/PROFILE.md "Idle memory, second pass").
Must not import sockets, the reactor, or anything that moves bytes or parses protocols.
"""

from __future__ import annotations

from epollmux.serve.admission import NOTHING
from epollmux.wire.sniff import NO_NAMES


class SetupState:
    __slots__ = ("grant",          # what admission granted, undone at close
                 "dst",            # the address the client connected to (a PROXY header's), looked up when needed
                 "edges",          # readable edges spent deciding (max_probe_edges)
                 "peek_len",       # bytes seen by the last peek
                 "peeked",         # the last bytes peeked while sniffing, until a route is chosen
                 "reader",         # a clienthello.HelloReader while a TLS first flight is being sniffed
                 "inner",          # decrypted bytes read while sniffing inside TLS
                 "connect_started",  # metrics: when the backend connect began
                 "outer",          # the terminating route, when the route was chosen inside TLS
                 "verdict",        # how the route was chosen: match, timeout (none while undecided)
                 "names",          # sniff.Names of the peeked bytes: the access log, an outgoing PROXY v2 header
                 "tls",            # version, cipher, ALPN, client CN of a terminated handshake, for the access log
                 "detail")         # what a TLS engine or a PROXY parser said about an error, for the log line

    def __init__(self, grant=NOTHING, verdict: str = "none"):
        self.grant = grant
        self.dst = None
        self.edges = 0
        self.peek_len = 0
        self.peeked = None
        self.reader = None
        self.inner = b""
        self.connect_started = 0.0
        self.outer = None
        self.verdict = verdict
        self.names = None
        self.tls = None
        self.detail = None

    def settle(self) -> SetupState:
        """Relaying begins: SETTLED when nothing here is worth keeping, else self without what only the
        set-up needed."""
        if (self.verdict == "match" and (self.names is None or self.names is NO_NAMES) and self.tls is None
                and self.detail is None and self.outer is None and self.grant is NOTHING):
            return SETTLED
        self.dst = self.peeked = self.reader = None
        self.inner = b""
        return self

    def noted(self, detail: str | None) -> SetupState:
        """This state with an error's detail kept for the log line: `conn.setup = conn.setup.noted(detail)`."""
        self.detail = detail
        return self


class _Settled(SetupState):
    """The shared SetupState: never written to (that raises); a detail to keep gets a state of its own."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"SETTLED is shared: cannot set {name}")

    def noted(self, detail: str | None) -> SetupState:
        if detail is None:
            return self
        return SetupState(verdict="match").noted(detail)


def _settled() -> SetupState:
    settled, model = _Settled.__new__(_Settled), SetupState(verdict="match")
    for name in SetupState.__slots__:
        object.__setattr__(settled, name, getattr(model, name))
    return settled


SETTLED = _settled()
