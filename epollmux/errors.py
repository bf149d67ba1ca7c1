"""Classifies OS errors once, for every module that does I/O.

Owns: which errnos mean "the peer is gone" (close quietly, count), which mean "resources are
exhausted" (pause, retry later), and the close-reason names derived from them.
Must not import anything of epollmux but `reasons`: no sockets, no reactor.
"""

import errno
from epollmux.reasons import Reason

PEER_GONE = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT,
                       errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH})
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CONNECT_FAILED = {
    errno.ECONNREFUSED: Reason.BACKEND_REFUSED,
    errno.EHOSTUNREACH: Reason.BACKEND_UNREACHABLE,
    errno.ENETUNREACH: Reason.BACKEND_UNREACHABLE,
    errno.ENOENT: Reason.BACKEND_REFUSED,          # unix socket path missing
    errno.ETIMEDOUT: Reason.BACKEND_TIMEOUT,
    errno.EADDRNOTAVAIL: Reason.BACKEND_UNREACHABLE,
}


class Closed(Exception):
    """Raised by an endpoint when the connection must end: `reason` names why, `detail` says more."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def is_peer_gone(exc: OSError) -> bool:
    return exc.errno in PEER_GONE


def is_exhausted(exc: OSError) -> bool:
    return exc.errno in EXHAUSTED


def relay_reason(exc: OSError) -> str:
    """Close reason for an error met while moving bytes."""
    if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return Reason.RESET
    if exc.errno == errno.ETIMEDOUT:
        return Reason.TIMEOUT
    if exc.errno in EXHAUSTED:
        return Reason.EXHAUSTED
    return Reason.ERROR


def connect_reason(err: int) -> str:
    """Close reason for a failed backend connect, from its errno."""
    return CONNECT_FAILED.get(err, Reason.BACKEND_ERROR)
