"""UDP listening sockets: binding them, and reading the first datagrams of new flows in bounded batches.

Owns: `bind()` for `udp:` addresses (the supervisor calls it before forking, like listener.bind for TCP)
and `UdpListener`, one per listening socket in a worker, which reads datagrams (READ_BUDGET a wake-up;
Python has no recvmmsg) with the address each was sent to (IP_PKTINFO / IPV6_RECVPKTINFO, so a
wildcard listener's flows reply from the address the client wrote to) and hands them to the flow table.
Only a flow's first datagrams come here: its flow socket takes the rest (flows.py).
The listening sockets of one address form a SO_REUSEPORT group (one per worker slot, so the kernel's
4-tuple hash gives all of a new flow's datagrams to one worker); every socket on the port also carries
SO_REUSEADDR, which for UDP lets flow sockets bind the listening address beside the group with no owner
check (joining the group itself would demand the supervisor's uid, which workers lose at the privilege
drop, and would change the hash). Arming, stop, close and pause are armed.Armed's, shared with listener.Acceptor.
Must not import the connection modules nor any wire/ module: what a flow does with its datagrams is
flows.py's.
"""

from __future__ import annotations

import logging
import socket

from epollmux import addr, errors
from epollmux.serve.armed import Armed
from epollmux.serve.flows import MAX_DATAGRAM, READ_BUDGET

log = logging.getLogger("epollmux.udp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)                  # Linux value; CPython does not export it
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
CMSG_SPACE = socket.CMSG_SPACE(20)                             # in6_pktinfo (20) >= in_pktinfo (12)
RCVBUF = 4 << 20             # first datagrams of many new flows at once: ask for 4 MiB (capped by rmem_max)


def bind(address: addr.Address) -> socket.socket:
    """Bind one socket of a UDP listening group (SO_REUSEPORT: the supervisor binds one per worker slot);
    raises OSError with the address in the message."""
    sock = socket.socket(address.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        sock.bind(address.sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None
    return sock


def local_address(family: int, bound, ancdata) -> tuple:
    """The address a datagram was sent to: the bound one, or for a wildcard the packet's own (PKTINFO)."""
    for level, kind, data in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return (socket.inet_ntop(socket.AF_INET, data[8:12]), bound[1])
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            host = socket.inet_ntop(socket.AF_INET6, data[:16])
            scope = int.from_bytes(data[16:20], "little") if host.startswith("fe80") else 0
            return (host, bound[1], 0, scope)
    return bound


class UdpListener(Armed):
    def __init__(self, ctx, listener, sock: socket.socket):
        super().__init__(ctx, listener, sock)
        self.bound = sock.getsockname()

    def on_event(self, fd: int, events: int) -> None:
        recvmsg, table, family, bound = self.sock.recvmsg, self.ctx.flows, self.family, self.bound
        for _ in range(READ_BUDGET):
            try:
                data, ancdata, _flags, client = recvmsg(MAX_DATAGRAM, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if errors.is_exhausted(exc):
                    self.ctx.exhausted(f"{self.listener.name}: recvmsg: {exc.strerror}")
                    return
                log.debug("%s: recvmsg: %s", self.listener.name, exc)    # an ICMP error queued on the socket
                continue
            table.datagram(self, client, local_address(family, bound, ancdata), data)
