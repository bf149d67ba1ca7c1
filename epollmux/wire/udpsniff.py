"""The sniffing decision for a UDP flow: which route the flow's first datagrams select, and what they name.

Owns: the strict-order rule of wire.sniff (README "How a connection is routed") applied over UDP_PROBES to
a flow's first datagrams, the names (SNI, ALPN) of a QUIC Initial or DTLS ClientHello for the access log,
and which probe names belong to TCP only or UDP only (config refuses a probe on the wrong transport).
The caller owns the flow table, how many datagrams a pending flow keeps and its deadline; it passes
full=True once it will feed no more datagrams.

Must not import: socket, select, the reactor, connection or config modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epollmux.wire import dtls, quic, sniff
from epollmux.wire.clienthello import HelloStatus
from epollmux.wire.probes import PROBES
from epollmux.wire.sniff import NO_NAMES, Decision, Names
from epollmux.wire.udpprobes import UDP_PROBES

TCP_ONLY = frozenset(PROBES) - frozenset(UDP_PROBES)       # refused on a udp: listener's routes
UDP_ONLY = frozenset(UDP_PROBES) - frozenset(PROBES)       # refused on a TCP listener's routes


def probe_fits(probe: str, udp: bool) -> bool:
    """Whether a route of a UDP (udp=True) or TCP listener may use this known probe."""
    return probe not in (TCP_ONLY if udp else UDP_ONLY)


def decide_flow(datagrams: tuple[bytes, ...], routes: Sequence[tuple[str, Mapping]], *,
                full: bool = False) -> Decision:
    """Apply the routes' UDP probes to the flow's first datagrams in strict order (sniff.decide's rule)."""
    return sniff.decide(datagrams, routes, full=full, probes=UDP_PROBES)


def flow_names(datagrams: tuple[bytes, ...]) -> Names:
    """The SNI and ALPN of the ClientHello in a QUIC Initial or a DTLS ClientHello; NO_NAMES otherwise
    (or while it is not whole)."""
    if not datagrams or not datagrams[0]:
        return NO_NAMES
    first = datagrams[0][0]
    if first & 0x80:
        hello = quic.client_hello(datagrams)
    elif first == dtls.CONTENT_HANDSHAKE:
        hello = dtls.client_hello(datagrams)
    else:
        return NO_NAMES
    if hello.status is not HelloStatus.OK:
        return NO_NAMES
    return Names(True, hello.sni, hello.server_name, tuple(hello.alpn))
