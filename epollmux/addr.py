"""Parses the address forms of the config and command line: `host:port`, `[v6]:port`, `unix:/path`, and
the UDP forms `udp:host:port`, `udp:[v6]:port`.

Owns: turning such a string into (family, sockaddr, udp) and back into text for logs.
Must not import anything of epollmux, and opens no sockets.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    family: int
    sockaddr: tuple | str
    text: str
    udp: bool = False          # written `udp:host:port`: a datagram address

    def __str__(self) -> str:
        return self.text


def parse(text: str, *, resolve: bool = True, _udp: bool = False) -> Address:
    """Parse one address; raises ValueError with a user-facing message."""
    text = text.strip()
    if text.startswith("udp:"):
        inner = parse(text[4:], resolve=resolve, _udp=True)
        return Address(inner.family, inner.sockaddr, text, udp=True)
    if text.startswith("unix:"):
        if _udp:
            raise ValueError(f"'udp:{text}': a UDP address is host:port or [v6]:port")
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f"'{text}': unix socket path must be absolute")
        return Address(socket.AF_UNIX, path, text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"'{text}': expected [v6-address]:port")
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise ValueError(f"'{text}': '{host}' is not an IPv6 address") from None
        return Address(socket.AF_INET6, (host, _port(text, port), 0, 0), text)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"'{text}': expected host:port, [v6]:port or unix:/path")
    if ":" in host:
        raise ValueError(f"'{text}': write IPv6 addresses in brackets, like [::1]:443")
    portnum = _port(text, port)
    try:
        ipaddress.IPv4Address(host)
        return Address(socket.AF_INET, (host, portnum), text)
    except ValueError:
        pass
    if not resolve:
        return Address(socket.AF_INET, (host, portnum), text)
    try:
        infos = socket.getaddrinfo(host, portnum, type=socket.SOCK_DGRAM if _udp else socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"'{text}': cannot resolve '{host}': {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return Address(family, sockaddr, text)


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{text}': port must be a number from 0 to 65535")
    return int(port)


def peer_text(family: int, sockaddr) -> str:
    """Text for a peer address as the logs show it."""
    if family == socket.AF_INET6:
        return f"[{sockaddr[0]}]:{sockaddr[1]}"
    if family == socket.AF_INET:
        return f"{sockaddr[0]}:{sockaddr[1]}"
    return f"unix:{sockaddr or '-'}"
