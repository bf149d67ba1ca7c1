"""A connection's phases, the transitions between them, and the epoll event sets it registers with.

Owns: `Phase` (a StrEnum: its values are the phase labels of metrics and `show conns`), the table
of allowed transitions (`NEXT`, checked by `Connection._set_phase`), and the event masks.
Must not import the reactor's loop, sockets beyond their constants, or anything that knows a protocol.
"""

from __future__ import annotations

import enum
import socket
from typing import TYPE_CHECKING

from epollmux.reactor import ERR, ET, HUP, IN, OUT, RDHUP

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Listener

EVENTS = IN | OUT | RDHUP | ET
QUIET = IN | RDHUP | ET     # a plain socket's events until a direction waits for it to drain (saves an edge
#                             per writable socket that nobody waits on); ERR and HUP come regardless
READABLE = IN | ERR | HUP | RDHUP
WRITABLE = OUT | ERR | HUP
CLIENT_OUT, BACKEND_OUT = OUT, OUT << 16               # Connection.writable bits
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class Phase(enum.StrEnum):
    PROXY_HEADER = "proxy-header"            # reading the PROXY protocol header a trusted proxy sends
    SNIFFING = "sniffing"
    HANDSHAKING = "handshaking"              # terminating TLS with the client
    INNER_SNIFFING = "inner-sniffing"        # sniffing the decrypted stream
    CONNECTING = "connecting"
    BACKEND_HANDSHAKING = "backend-handshaking"   # TLS towards the backend
    RELAYING = "relaying"
    CLOSED = "closed"


# Allowed transitions. Tuples, not sets: `in` a tuple of members compares identity first, with no
# call to Enum.__hash__ (Python code) on the hot path.
NEXT: dict[Phase, tuple[Phase, ...]] = {
    Phase.PROXY_HEADER: (Phase.SNIFFING, Phase.CLOSED),
    Phase.SNIFFING: (Phase.HANDSHAKING, Phase.CONNECTING, Phase.CLOSED),
    Phase.HANDSHAKING: (Phase.INNER_SNIFFING, Phase.CONNECTING, Phase.CLOSED),
    Phase.INNER_SNIFFING: (Phase.CONNECTING, Phase.CLOSED),
    Phase.CONNECTING: (Phase.BACKEND_HANDSHAKING, Phase.RELAYING, Phase.CLOSED),
    Phase.BACKEND_HANDSHAKING: (Phase.RELAYING, Phase.CLOSED),
    Phase.RELAYING: (Phase.CLOSED,),
    Phase.CLOSED: (),
}


def client_events(listener: Listener) -> int:
    """Events a listener's clients are registered with: QUIET unless a route may terminate TLS (a TLS
    endpoint flushes ciphertext on writable edges, in the handshake too)."""
    routes = [*listener.routes, listener.on_timeout]
    return EVENTS if any(r is not None and r.server_context is not None for r in routes) else QUIET
