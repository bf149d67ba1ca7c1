"""The socket side of the sniff phases: taking a PROXY header off a client socket, peeking at the
client's first bytes, and reading the decrypted first bytes inside TLS.

Owns: the reads of those phases (peek, consume exactly a PROXY header, read into a bounded buffer)
and the probe debug log. The decisions are `wire/` modules' (proxyproto.parse, sniff.decide); the
phases, deadlines and close reasons stay the connection's.
Must not import the reactor, the relay or the configuration.
"""

from __future__ import annotations

import logging
import socket

from epollmux.wire import proxyproto, why
from epollmux.reasons import Reason

probe_log = logging.getLogger("epollmux.probe")


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
