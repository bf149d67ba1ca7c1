"""The socket side of the sniff phases: taking a PROXY header off a client socket, peeking at the
client's first bytes, and reading the decrypted first bytes inside TLS.

Owns: the reads of those phases (peek, consume exactly a PROXY header, read into a bounded buffer),
the probe debug log, which listeners defer accept (TCP_DEFER_ACCEPT) until the client's first bytes and
the first wait's deadline there (probe_timeout counted from the connect). The decisions are `wire/` modules' (proxyproto.parse, sniff.decide); the
phases, deadlines and close reasons stay the connection's.
Must not import the reactor, the relay or the configuration.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import TYPE_CHECKING

from epollmux.wire import proxyproto, why
from epollmux.reasons import Reason

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Listener

probe_log = logging.getLogger("epollmux.probe")

DEFER_SECONDS = 1       # TCP_DEFER_ACCEPT on listeners whose clients speak first: the kernel counts it in SYN-ACK
#                         retransmissions, and 1 s is one; a client silent that long is handed over after ~1 s
TCPI_TOTAL_RETRANS = 100        # offset of tcpi_total_retrans (u32) in struct tcp_info


def defers(listener: Listener, probe_timeout: float) -> bool:
    """Whether the listener's socket defers accept (TCP_DEFER_ACCEPT, DEFER_SECONDS) until a client's first
    bytes arrive, so that accept and the sniff of those bytes take one wake-up: only where nothing can
    happen before the client speaks (a PROXY header is required, or the first route sniffs; an `any` first
    route serves server-speaks-first clients at once) and probe_timeout is no shorter than the deferral."""
    return (probe_timeout >= DEFER_SECONDS
            and (listener.proxy_protocol != "none" or listener.routes[0].probe != "any"))


def probe_delay(listener: Listener, probe_timeout: float, sock: socket.socket, first: bool) -> float:
    """The deadline of a client's wait for bytes, so that probe_timeout counts from its connect: for the first
    wait of a connection (`first`) on a listener that defers accept, less the second the kernel held back a
    client that stayed silent that long. The kernel retransmitted the SYN-ACK then, and a new socket starts
    with its handshake's retransmission count (none for a client that spoke at once, nor with SYN cookies)."""
    if not first or not defers(listener, probe_timeout):
        return probe_timeout
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_TOTAL_RETRANS + 4)
    except OSError:
        return probe_timeout
    if len(info) >= TCPI_TOTAL_RETRANS + 4 and struct.unpack_from("I", info, TCPI_TOTAL_RETRANS)[0] > 0:
        return probe_timeout - DEFER_SECONDS
    return probe_timeout


def take_proxy_header(sock: socket.socket, accept: str, peer_done: bool) -> tuple[str | None, object]:
    """(close reason, None) or (None, proxyproto.Result once a whole header was consumed, else None to wait)."""
    try:
        data = sock.recv(proxyproto.MAX_HEADER_LEN, socket.MSG_PEEK)
    except BlockingIOError:
        return None, None      # nothing yet: the next edge brings the header (or the deadline ends it)
    if not data:
        return Reason.CLIENT_EOF, None
    result = proxyproto.parse(data, accept)
    if result.status is proxyproto.Status.NEED_MORE:
        return (Reason.PROXY_INVALID if peer_done else None), None
    if result.status is proxyproto.Status.INVALID:
        return Reason.PROXY_INVALID, result
    sock.recv(result.length)        # consume exactly the header; the stream starts after it
    return None, result


def read_inner(end, kept: bytes, limit: int) -> tuple[bytes, bool]:
    """Read decrypted bytes after `kept`, up to `limit` in all: (all of them, whether the peer ended)."""
    buf = bytearray(limit)
    view = memoryview(buf)
    peer_done = False
    got = len(kept)
    buf[:got] = kept
    try:
        while got < limit:
            n = end.readinto(view[got:])
            if n == 0:
                peer_done = True
                break
            got += n
    except BlockingIOError:
        pass
    view.release()
    return bytes(buf[:got]), peer_done


def log_verdicts(peer: str, data: bytes, routes, decision, full: bool) -> None:
    if probe_log.isEnabledFor(logging.DEBUG):
        probe_log.debug("%s: %d bytes, verdicts %s", peer, len(data),
                        why.describe(routes, decision.verdicts, data, full=full))
