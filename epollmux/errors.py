"""Classifies OS errors once, for every module that does I/O.

Owns: which errnos mean "the peer is gone" (close quietly, count), which mean "resources are
exhausted" (pause, retry later), and the close-reason names derived from them.
Must not import sockets, the reactor or anything above them.
"""

import errno

PEER_GONE = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT,
                       errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH})
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CONNECT_FAILED = {
    errno.ECONNREFUSED: "backend-refused",
    errno.EHOSTUNREACH: "backend-unreachable",
    errno.ENETUNREACH: "backend-unreachable",
    errno.ENOENT: "backend-refused",          # unix socket path missing
    errno.ETIMEDOUT: "backend-timeout",
    errno.EADDRNOTAVAIL: "backend-unreachable",
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
        return "reset"
    if exc.errno == errno.ETIMEDOUT:
        return "timeout"
    if exc.errno in EXHAUSTED:
        return "exhausted"
    return "error"


def connect_reason(err: int) -> str:
    """Close reason for a failed backend connect, from its errno."""
    return CONNECT_FAILED.get(err, "backend-error")
