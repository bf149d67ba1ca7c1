"""Every reason a connection (or a UDP flow) can end with: the `reason` of its access-log line and the `reason` label of
`epollmux_connections_closed_total` (and of `epollmux_tls_handshake_failures_total` for the TLS ones).

Owns: the one vocabulary (`Reason`, a StrEnum: a member is the string operators see) and its one-line
meanings (`MEANING`), which the README's "Close reasons" table lists (tests/unit/test_reasons.py
checks both directions). A new close reason is a member here, a line in MEANING and a README row.
Must not import anything of epollmux.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    EOF = "eof"
    RESET = "reset"
    TIMEOUT = "timeout"
    ERROR = "error"
    EXHAUSTED = "exhausted"
    IDLE_TIMEOUT = "idle-timeout"
    SHUTDOWN = "shutdown"
    DRAIN_CUT = "drain-cut"
    HARD_STOP = "hard-stop"
    INTERNAL_ERROR = "internal-error"
    LOOP = "loop"
    CLIENT_EOF = "client-eof"
    PROBE_TIMEOUT = "probe-timeout"
    SNIFF_BUDGET = "sniff-budget"
    NO_ROUTE = "no-route"
    PROXY_UNTRUSTED = "proxy-untrusted"
    PROXY_TIMEOUT = "proxy-timeout"
    PROXY_INVALID = "proxy-invalid"
    DENIED = "denied"
    LIMIT_GLOBAL = "limit-global"
    LIMIT_LISTENER = "limit-listener"
    LIMIT_ROUTE = "limit-route"
    LIMIT_SOURCE = "limit-source"
    LIMIT_RATE = "limit-rate"
    LIMIT_SNIFFING = "limit-sniffing"
    BACKEND_REFUSED = "backend-refused"
    BACKEND_UNREACHABLE = "backend-unreachable"
    BACKEND_TIMEOUT = "backend-timeout"
    BACKEND_BUSY = "backend-busy"
    BACKEND_ERROR = "backend-error"
    KERNEL_BACKLOG = "kernel-backlog"
    TRANSPARENT_FAMILY = "transparent-family"
    TRANSPARENT_DENIED = "transparent-denied"
    TLS_HANDSHAKE_TIMEOUT = "tls-handshake-timeout"
    TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
    TLS_ALERT = "tls-alert"
    TLS_TRUNCATED = "tls-truncated"
    TLS_CLOSE_NOTIFY = "tls-close-notify"
    TLS_NOT_TLS = "tls-not-tls"
    TLS_PROTOCOL_ERROR = "tls-protocol-error"
    TLS_RENEGOTIATION = "tls-renegotiation"
    BACKEND_TLS_TIMEOUT = "backend-tls-timeout"
    BACKEND_TLS_HANDSHAKE_FAILED = "backend-tls-handshake-failed"
    BACKEND_TLS_ALERT = "backend-tls-alert"
    BACKEND_TLS_TRUNCATED = "backend-tls-truncated"
    BACKEND_TLS_CLOSE_NOTIFY = "backend-tls-close-notify"
    BACKEND_TLS_NOT_TLS = "backend-tls-not-tls"
    BACKEND_TLS_PROTOCOL_ERROR = "backend-tls-protocol-error"
    BACKEND_TLS_RENEGOTIATION = "backend-tls-renegotiation"
    UDP_IDLE = "udp-idle"
    UDP_STOP = "udp-stop"
    FLOW_LIMIT = "flow-limit"
    CLIENT_UNREACHABLE = "client-unreachable"


MEANING: dict[Reason, str] = {
    Reason.EOF: "both sides finished (each FIN passed on)",
    Reason.RESET: "a peer reset its connection (the reset is passed on to the other peer)",
    Reason.TIMEOUT: "a peer is gone: ETIMEDOUT (TCP keepalive or tcp_user_timeout found it); ended with a reset",
    Reason.ERROR: "another socket error while relaying",
    Reason.EXHAUSTED: "out of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)",
    Reason.IDLE_TIMEOUT: "no byte moved either way for idle_timeout",
    Reason.SHUTDOWN: "still open when the worker ended for another reason (e.g. an internal error)",
    Reason.DRAIN_CUT: "its drain timeout passed after a stop or a reload; ended with a reset",
    Reason.HARD_STOP: "a second SIGTERM/SIGINT stopped the daemon at once; ended with a reset",
    Reason.INTERNAL_ERROR: "a bug: an unexpected exception (logged with its traceback)",
    Reason.LOOP: "the client is one of this worker's own backend sockets: a route leads back to the daemon",
    Reason.CLIENT_EOF: "the client closed before a route was chosen",
    Reason.PROBE_TIMEOUT: "the client sent too little for a decision within probe_timeout, and no on_timeout route",
    Reason.SNIFF_BUDGET: "more than max_probe_edges readable edges before a decision (a drip-fed first flight)",
    Reason.NO_ROUTE: "no route matched the first bytes and there is no `any` route",
    Reason.PROXY_UNTRUSTED: "a listener that takes PROXY headers, a client not in its trusted list",
    Reason.PROXY_TIMEOUT: "no whole PROXY header within probe_timeout",
    Reason.PROXY_INVALID: "the PROXY header is malformed or of a version the listener does not accept (detail says why)",
    Reason.DENIED: "the client's address is refused by the listener's or route's allow/deny lists",
    Reason.LIMIT_GLOBAL: "max_connections reached in this worker",
    Reason.LIMIT_LISTENER: "the listener's max_connections reached",
    Reason.LIMIT_ROUTE: "the route's max_connections reached",
    Reason.LIMIT_SOURCE: "max_connections_per_source reached for this address (IPv6: its prefix)",
    Reason.LIMIT_RATE: "this address opened connections faster than rate_per_source",
    Reason.LIMIT_SNIFFING: "max_sniffing_per_source connections from this address are still being sniffed",
    Reason.BACKEND_REFUSED: "the backend refused the connect (or its unix socket is missing)",
    Reason.BACKEND_UNREACHABLE: "no route to the backend's host or network",
    Reason.BACKEND_TIMEOUT: "the backend connect did not finish within connect_timeout",
    Reason.BACKEND_BUSY: "the kernel had no local port or resource for the backend connect (EAGAIN)",
    Reason.BACKEND_ERROR: "the backend connect failed otherwise, or the PROXY header could not be sent",
    Reason.KERNEL_BACKLOG: "the kernel relay held more than 64 MiB for one direction: a reader too slow for it",
    Reason.TRANSPARENT_FAMILY: "transparent mode: the client's address family differs from the backend's",
    Reason.TRANSPARENT_DENIED: "transparent mode without CAP_NET_ADMIN or CAP_NET_RAW",
    Reason.TLS_HANDSHAKE_TIMEOUT: "the client did not finish its TLS handshake within tls_handshake_timeout",
    Reason.TLS_HANDSHAKE_FAILED: "the client's handshake was refused here (version, cipher, certificate...)",
    Reason.TLS_ALERT: "the client sent a fatal TLS alert (detail names it)",
    Reason.TLS_TRUNCATED: "the client closed TCP without a TLS close_notify",
    Reason.TLS_CLOSE_NOTIFY: "the client ended TLS (close_notify) while data was still to be written to it",
    Reason.TLS_NOT_TLS: "plaintext on a route that terminates TLS",
    Reason.TLS_PROTOCOL_ERROR: "a bad TLS record or message from the client after the handshake",
    Reason.TLS_RENEGOTIATION: "the client tried to renegotiate its TLS 1.2 session: refused, and closed at once",
    Reason.BACKEND_TLS_TIMEOUT: "the TLS handshake with the backend did not finish within connect_timeout",
    Reason.BACKEND_TLS_HANDSHAKE_FAILED: "the backend's certificate or handshake was refused (detail says why)",
    Reason.BACKEND_TLS_ALERT: "the backend sent a fatal TLS alert",
    Reason.BACKEND_TLS_TRUNCATED: "the backend closed TCP without a TLS close_notify",
    Reason.BACKEND_TLS_CLOSE_NOTIFY: "the backend ended TLS (close_notify) while data was still to be written to it",
    Reason.BACKEND_TLS_NOT_TLS: "the backend does not speak TLS",
    Reason.BACKEND_TLS_PROTOCOL_ERROR: "a bad TLS record or message from the backend after the handshake",
    Reason.BACKEND_TLS_RENEGOTIATION: "the backend asked to renegotiate its TLS 1.2 session: refused, and closed",
    Reason.UDP_IDLE: "UDP: no datagram either way for the route's udp_idle_timeout",
    Reason.UDP_STOP: "UDP: the worker stopped; a flow has no end of its own to wait for, so it ends at once",
    Reason.FLOW_LIMIT: "UDP: max_flows or max_flows_per_source reached; the new flow's datagram was dropped",
    Reason.CLIENT_UNREACHABLE: "UDP: the client's host or port answered with an ICMP error (nobody listens there)",
}
