"""The backend side of a connection before relaying: its socket, the connect, the transparent bind,
and the facts a PROXY header sends.

Owns: creating the backend socket (the C socket type, TCP_NODELAY), binding it to the
client's address in transparent mode (IP_TRANSPARENT), starting the connect and telling whether it
finished inside connect() already, `facts()` for proxyout, reading a client's address back from its socket, telling a client that is one of our own
backend sockets (a loop), and closing a socket with RST when a connection is aborted.
Must not import the reactor or the relay; the phases and deadlines stay the connection's.
"""

from __future__ import annotations

import _socket
import errno
import socket
import sys
from typing import TYPE_CHECKING

from epollmux import errors
from epollmux.wire import proxyout
from epollmux.reasons import Reason

if TYPE_CHECKING:      # the seams' types, for readers and checkers; no import at run time
    from epollmux.config import Route

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SO_PEERNAME = 28                                     # asm-generic/socket.h: answers after a reset too
SO_ORIGINAL_DST = 80                                 # linux/netfilter_ipv4.h (and netfilter_ipv6's IP6T_ one)
TCP_ESTABLISHED = 1                                  # tcp_info.tcpi_state, its first byte
TCP_CLOSE = 7
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"   # struct linger {on, 0 s}: close() sends RST


def connect(route: Route, client_ip: str) -> tuple[object, str | None, bool]:
    """Start connecting to route.backend: (socket, close reason or None, connected already).
    A connect done by the time connect() returns (loopback, a unix socket) needs no EPOLLOUT wait.
    Only TCP_NODELAY is set here: the keepalive options wait for keepalive.Settler."""
    family = route.backend.family
    # _socket.socket: the C socket type, without socket.socket's Python-level __init__/close/.family
    sock = _socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    tcp = family in TCP_FAMILIES
    if tcp:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if route.transparent:
        reason = bind_as_client(sock, family, client_ip)
        if reason:
            return sock, reason, False
    err = sock.connect_ex(route.backend.sockaddr)
    if err not in (0, errno.EINPROGRESS):
        return sock, Reason.BACKEND_BUSY if err == errno.EAGAIN else errors.connect_reason(err), False
    done = route.backend_context is None and (
        err == 0 or tcp and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED)
    return sock, None, done


def bind_as_client(sock, family: int, ip: str) -> str | None:
    """Transparent mode: the backend sees the client's own address (IP_TRANSPARENT)."""
    if (":" in ip) != (family == socket.AF_INET6):
        return Reason.TRANSPARENT_FAMILY
    level, option = (socket.IPPROTO_IPV6, IPV6_TRANSPARENT) if family == socket.AF_INET6 else (socket.SOL_IP, IP_TRANSPARENT)
    try:
        sock.setsockopt(level, option, 1)
    except PermissionError:
        return Reason.TRANSPARENT_DENIED     # no CAP_NET_ADMIN / CAP_NET_RAW (--check warns)
    sock.bind((ip, 0))
    return None


def facts(src, dst, unique_id: bytes, engine, names) -> proxyout.Facts:
    """What a PROXY header tells the backend: from the TLS engine of a terminated connection, else
    from the names sniffed in the client's first bytes (sniff.Names, or None)."""
    out = proxyout.Facts(src=src[:2], dst=dst[:2], unique_id=unique_id)
    if engine is not None:
        cert = engine.peer_cert_der() is not None
        out.sni, out.alpn = engine.sni, engine.alpn()
        out.tls_version, out.tls_cipher = engine.version(), engine.cipher()
        out.client_cn, out.client_cert, out.client_verified = engine.peer_cn(), cert, engine.peer_verified()
        out.session_reused = engine.session_reused()
    elif names is not None and names.hello:
        out.sni, out.alpn = names.server_name, (names.alpn[0] if names.alpn else None)
    return out


class OwnBackends:
    """The worker's own TCP backend sockets, to tell a client that is one of them (a loop): the local port of
    each -> its socket, in one flat dict (`by_port`), plus a side table (`more`) for the rare port that serves
    several at once (the kernel keeps only the 4-tuple unique: an ephemeral port is reused for connects to
    other addresses, or on another local address). Nothing else is kept per socket: a client whose source
    port is one of these is checked against the socket itself (its local address, the address it connected
    to), and a socket that was reset (or failed to connect) gives its port back while it is still open here,
    so a new connection may come from the same address to the same place: only a socket still alive in the
    kernel (not TCP_CLOSE) makes a client a loop, since no live socket can share its 4-tuple."""

    __slots__ = ("by_port", "more")

    def __init__(self):
        self.by_port: dict[int, object] = {}
        self.more: dict[int, list] = {}        # port -> the sockets on it beyond by_port's (rare)

    def __len__(self) -> int:
        return len(self.by_port)

    def add(self, port: int, sock) -> None:
        first = self.by_port.setdefault(port, sock)
        if first is not sock:
            self.more.setdefault(port, []).append(sock)

    def discard(self, port: int, sock) -> None:
        first = self.by_port.get(port)
        if first is None:
            return
        others = self.more.get(port)
        if first is sock:
            if others:
                self.by_port[port] = others.pop()
                if not others:
                    del self.more[port]
            else:
                del self.by_port[port]
        elif others is not None and sock in others:
            others.remove(sock)
            if not others:
                del self.more[port]

    def looped(self, src, client) -> bool:
        """The client comes from one of these sockets, still alive, and reached the very address that
        socket connected to (not merely the same ephemeral port reused for a connect elsewhere), or was sent
        here from that address by a NAT rule (the address it was sent to, SO_ORIGINAL_DST, is its target)."""
        first = self.by_port.get(src[1])
        if first is None:
            return False
        socks = [first, *self.more.get(src[1], ())]
        targets: dict[tuple, list] = {}            # as connected to, for the sockets on the client's address
        for sock in socks:
            try:
                if sock.getsockname()[:2] != src[:2]:
                    continue
                targets.setdefault(sock.getpeername()[:2], []).append(sock)
            except OSError:       # not connected (any more): reset, or a failed connect
                continue
        if not targets:
            return False
        try:
            here = client.getsockname()
        except OSError:
            return False
        found = targets.get(here[:2]) or targets.get(original_destination(client), ())
        return any(_alive(sock) for sock in found)


def _alive(sock) -> bool:
    """The socket still holds its 4-tuple: any TCP state but TCP_CLOSE (after a reset or a failed connect)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_CLOSE
    except OSError:
        return False


def original_destination(sock) -> tuple | None:
    """Where the peer sent this connection before a DNAT rule changed it (netfilter's SO_ORIGINAL_DST,
    IP6T_SO_ORIGINAL_DST: the same number); None without a conntrack entry."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)          # struct sockaddr_in
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)        # struct sockaddr_in6
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
    except (OSError, ValueError):
        return None


def peer_address(sock) -> tuple | None:
    """The peer's (host, port) as accept() gave it, read back from the socket: SO_PEERNAME, which still
    answers once a reset closed the connection (getpeername() says ENOTCONN then); None if the socket is
    closed. An IPv6 host with a scope is written as accept() writes it (getnameinfo: fe80::1%eth0)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, 16)          # struct sockaddr_in
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, 28)              # struct sockaddr_in6
        host, port = socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
        scope = int.from_bytes(raw[24:28], sys.byteorder)
        if scope:
            host = socket.getnameinfo((host, port, 0, scope), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
        return host, port
    except (OSError, ValueError):
        return None


def socket_error(sock) -> str | None:
    """The close reason a socket's pending error gives: timeout (keepalive, TCP_USER_TIMEOUT), reset."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return None if not err else Reason.TIMEOUT if err == errno.ETIMEDOUT else Reason.RESET


def close_socket(reactor, sock, fd: int, abort: bool) -> None:
    """Close one of a connection's sockets; abort: with RST, passing a reset or a cut on."""
    reactor.forget(fd)     # close() takes it out of the epoll set
    if abort:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
    sock.close()
