"""The sniffing decision: which route, if any, the bytes peeked so far select.

Owns: the strict-order rule over a route list (README "How a connection is routed"), and `Names`,
what the peeked bytes say about where the client is going (SNI, ALPN, HTTP Host), decided once for
the access log and an outgoing PROXY v2 header.  Pure: the decision calls the probes from the PROBES
table and never names a protocol.  The caller owns peeking, the probe timeout (`on_timeout`), EOF and the
`max_probe_bytes` cap (it passes full=True once the buffer is at the cap).

Must not import: socket, select, the reactor, connection or config modules.

Rules:
- Routes are tried in order; a route's MATCH is taken only when every earlier route said NEXT.  The first
  AGAIN stops the walk: wait for more bytes (done=False), even if a later route would match.
- full=True (no more bytes will come): AGAIN counts as NEXT.
- All NEXT: the last route whose probe always matches would take it; such a probe (`any`) already
  MATCHes when the walk reaches it, so all-NEXT means no such route is reachable: close (route=None).
  A route after an `any` route is therefore never chosen.
- With b"" every probe but `any` says AGAIN, so only a list starting with `any` decides at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from epollmux.wire import clienthello
from epollmux.wire.probes import PROBES, ProbeSpec, Verdict, request_host


@dataclass(frozen=True)
class Decision:
    route: int | None                  # index into routes of the chosen route, or None
    done: bool                         # True: decided (route chosen, or None = close); False: wait
    verdicts: tuple[Verdict, ...]      # one per route evaluated, in order (for the debug log)


def decide(data, routes: Sequence[tuple[str, Mapping]], *, full: bool = False,
           probes: Mapping[str, ProbeSpec] = PROBES) -> Decision:
    """Apply the routes' probes (from `probes`: PROBES, or udpprobes.UDP_PROBES with the tuple of a flow's
    first datagrams as `data`) to `data` in strict order."""
    verdicts: list[Verdict] = []
    for index, (probe, opts) in enumerate(routes):
        verdict = probes[probe].func(data, opts)
        if verdict is Verdict.AGAIN and full:
            verdict = Verdict.NEXT
        verdicts.append(verdict)
        if verdict is Verdict.MATCH:
            return Decision(index, True, tuple(verdicts))
        if verdict is Verdict.AGAIN:
            return Decision(None, False, tuple(verdicts))
    return Decision(None, True, tuple(verdicts))


@dataclass(frozen=True, slots=True)
class Names:
    """The names in the peeked bytes: a ClientHello's SNI (lowercased, and exactly as sent) and ALPN
    list, or an HTTP/1 request's Host."""
    hello: bool = False                # a whole ClientHello was parsed
    sni: str | None = None
    server_name: str | None = None     # as sent (PROXY v2 AUTHORITY copies it)
    alpn: tuple[str, ...] = ()
    host: str | None = None

    def fields(self) -> dict:
        """The access log's fields: sni and alpn of a ClientHello, or host, or none."""
        if self.hello:
            return {"sni": self.sni, "alpn": ",".join(self.alpn) or None}
        return {"host": self.host} if self.host else {}


NO_NAMES = Names()


def names(data: bytes) -> Names:
    """What `data` (peeked from the client) names; NO_NAMES when it is neither a whole ClientHello
    nor an HTTP/1 request head with a Host."""
    if data[:1] == b"\x16":
        hello = clienthello.parse_client_hello(data)
        if hello.status is clienthello.HelloStatus.OK:
            return Names(True, hello.sni, hello.server_name, tuple(hello.alpn))
        return NO_NAMES
    host = request_host(data)
    return Names(host=host) if host else NO_NAMES
