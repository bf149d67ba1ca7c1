"""Source address lists: CIDR lists (`allow`, `deny`, `trusted`) and the allow/deny decision.

Owns: parsing CIDR entries from the config, membership tests, and the rule that combines allow and deny.
Pure: must not import socket, select, or anything of the reactor, connection, listener or config modules.

Rules:
- An entry is `addr/prefix` or a bare address (a host: /32 or /128).  Host bits set (10.0.0.1/8) are an
  error, so a typo cannot silently widen or narrow a list.  Scopes (`%eth0`) are refused.
- IPv4-mapped IPv6 (::ffff:a.b.c.d), what a dual-stack socket reports for an IPv4 peer, is the IPv4
  address: it matches IPv4 entries, and an entry written as ::ffff:10.0.0.0/104 is the entry 10.0.0.0/8.
  Otherwise IPv6 entries match IPv6 addresses only: `::/0` means every IPv6 client, not IPv4 ones.
- Access: a source is refused if any deny entry contains it (deny wins); otherwise, if there is an allow
  list, it is permitted only if the allow list contains it; with no allow list everyone else is permitted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAPPED_PREFIX = 96                        # ::ffff:0:0/96


def source_ip(ip: str | _IPAddress) -> _IPAddress:
    """The address a source is known by: scope dropped, IPv4-mapped IPv6 turned into IPv4.

    Raises ValueError for text that is not an IP address.
    """
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class CIDRList:
    """An immutable set of networks; membership costs one dict lookup per distinct prefix length."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self.networks = tuple(networks)
        self._by_prefix: dict[tuple[int, int], set[int]] = {}   # (version, prefixlen) -> network ints
        for net in self.networks:
            self._by_prefix.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        self._lookups = {4: _masks(self._by_prefix, 4, 32), 6: _masks(self._by_prefix, 6, 128)}

    @classmethod
    def parse(cls, entries: Iterable[str] | str) -> CIDRList:
        """Parse config entries (a list, or one comma-separated string); ValueError names the bad entry."""
        if isinstance(entries, str):
            entries = entries.split(",")
        return cls(_network(entry) for entry in entries)

    def contains(self, ip: str | _IPAddress) -> bool:
        addr = source_ip(ip)
        value = int(addr)
        for key, mask in self._lookups[addr.version]:
            if (value & mask) in self._by_prefix[key]:
                return True
        return False

    __contains__ = contains

    def __len__(self) -> int:
        return len(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"CIDRList([{', '.join(repr(str(n)) for n in self.networks)}])"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CIDRList) and set(self.networks) == set(other.networks)

    def __hash__(self) -> int:
        return hash(frozenset(self.networks))


def _masks(by_prefix: dict, version: int, bits: int) -> tuple[tuple[tuple[int, int], int], ...]:
    """((version, prefixlen), netmask int) for each prefix length present, longest first."""
    full = (1 << bits) - 1
    keys = sorted((k for k in by_prefix if k[0] == version), key=lambda k: -k[1])
    return tuple((k, full ^ (full >> k[1])) for k in keys)


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = entry.strip()
    if not text:
        raise ValueError("empty entry in address list")
    if "%" in text:
        raise ValueError(f"'{text}': scoped addresses (%zone) are not allowed in address lists")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"'{text}': host bits set (did you mean {fixed}?)") from None
        raise ValueError(f"'{text}': not an address or address/prefix") from None
    if net.version == 6 and net.prefixlen >= _MAPPED_PREFIX and net.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - _MAPPED_PREFIX}")
    return net


class Access:
    """allow/deny for one listener or route; either list may be None (not configured)."""

    def __init__(self, allow: CIDRList | None = None, deny: CIDRList | None = None) -> None:
        self.allow = allow
        self.deny = deny

    @classmethod
    def parse(cls, allow: Iterable[str] | str | None = None, deny: Iterable[str] | str | None = None) -> Access:
        """From config values; an empty or missing value means the list is not configured (not "nobody")."""
        return cls(_optional_list(allow), _optional_list(deny))

    def permits(self, ip: str | _IPAddress) -> bool:
        addr = source_ip(ip)
        if self.deny is not None and self.deny.contains(addr):
            return False
        return self.allow is None or self.allow.contains(addr)

    @property
    def open(self) -> bool:
        """True when nothing is configured, so callers may skip the check."""
        return self.allow is None and self.deny is None

    def __repr__(self) -> str:
        return f"Access(allow={self.allow!r}, deny={self.deny!r})"


def _optional_list(value: Iterable[str] | str | None) -> CIDRList | None:
    if value is None:
        return None
    entries = [e for e in (value.split(",") if isinstance(value, str) else value) if e.strip()]
    return CIDRList.parse(entries) if entries else None
