"""Cross-key checks of a loaded configuration against itself and this host (`--check`, start, reload).

Owns: what no single key shows and config.py therefore cannot see: users and groups unknown to this
host, an address named twice (in two listeners, twice in one, or a wildcard beside one of its own
addresses on the same port), the metrics endpoint on a listener's address, a route whose backend is
one of the daemon's own listening addresses (a wildcard listener makes every local address of the host
on that port its own: they are read from /proc/net), `log_target = syslog` on a host without /dev/log;
and warnings for routes that can never be chosen, naming the earlier route that takes their clients.
Errors use config's form "FILE: [section] key: message"; warnings "FILE: warning: [section] key: message".
Must not import anything of epollmux (it reads the Config it is given); opens no sockets, starts nothing.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
from dataclasses import dataclass, field

DEV_LOG = "/dev/log"
FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"
Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Findings:
    source: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, where: str, key: str, message: str) -> None:
        self.errors.append(f"{self.source}: {_where(where, key)}: {message}")

    def warning(self, where: str, key: str, message: str) -> None:
        self.warnings.append(f"{self.source}: warning: {_where(where, key)}: {message}")


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}" if key else f"[{section}]"


def run(cfg, *, starting: bool = False, local: set[Ip] | None = None) -> Findings:
    """Every cross-key problem of cfg. starting: the daemon is about to run (or reload), so only what
    would otherwise go unnoticed is reported: unknown users, addresses bound twice and the metrics
    address fail on their own at start (exit 2, README "Command line"), and a missing /dev/log makes logging fall
    back to stderr with a warning of its own."""
    found = Findings(cfg.source)
    at_start = Findings(cfg.source) if starting else found      # what start itself reports: dropped
    _credentials(cfg.settings, at_start)
    if cfg.settings.log_target == "syslog" and not os.path.exists(DEV_LOG):
        at_start.error("global", "log_target", f"syslog needs {DEV_LOG}, which this host lacks (no syslog "
                                               "daemon or journald socket, as in most containers): use stderr")
    bound = _listen_addresses(cfg, at_start)
    _metrics(cfg, bound, at_start)
    _self_backends(cfg, bound, local_addresses() if local is None else local, found)
    _unreachable_routes(cfg, found)
    return found


# ---------------------------------------------------------------- users and groups
def _credentials(settings, found: Findings) -> None:
    for key, lookup, by_id in (("user", pwd.getpwnam, pwd.getpwuid), ("group", grp.getgrnam, grp.getgrgid)):
        name = getattr(settings, key).strip()
        if not name:
            continue
        try:
            by_id(int(name)) if name.isdigit() else lookup(name)
        except KeyError:
            found.error("global", key, f"unknown {key} '{name}' on this host")


# ---------------------------------------------------------------- addresses
@dataclass(frozen=True)
class Bound:
    """One address the daemon will listen on."""
    owner: str            # "listen.NAME" or "metrics"
    text: str
    ip: Ip
    port: int
    udp: bool = False     # a UDP port: never in the way of the TCP port of the same number

    def overlaps(self, other: "Bound") -> bool:
        """Both cannot be bound: same protocol, port and version, and the same address or a wildcard."""
        if self.port != other.port or self.ip.version != other.ip.version or self.udp != other.udp:
            return False
        return self.ip == other.ip or self.ip.is_unspecified or other.ip.is_unspecified


def _ip_port(address) -> tuple[Ip, int] | None:
    if address.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        ip = ipaddress.ip_address(address.sockaddr[0].split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, address.sockaddr[1]


def _listen_addresses(cfg, found: Findings) -> list[Bound]:
    bound: list[Bound] = []
    for lst in cfg.listeners:
        for address in lst.addresses:
            parsed = _ip_port(address)
            if parsed is None or parsed[1] == 0:       # port 0: the kernel picks a free one each time
                continue
            new = Bound(f"listen.{lst.name}", address.text, *parsed, getattr(address, "udp", False))
            for old in bound:
                if not new.overlaps(old):
                    continue
                if old.owner == new.owner:
                    what = "is named twice" if new.ip == old.ip else f"overlaps '{old.text}' (a wildcard)"
                    found.error(new.owner, "address", f"'{new.text}' {what} in this listener")
                elif new.ip == old.ip:
                    found.error(new.owner, "address", f"'{new.text}' is also an address of [{old.owner}]")
                else:
                    found.error(new.owner, "address", f"'{new.text}' overlaps '{old.text}' of [{old.owner}]: "
                                                      "a wildcard takes every address of its port, so both "
                                                      "cannot be bound")
                break
            else:
                bound.append(new)
    return bound


def _metrics(cfg, bound: list[Bound], found: Findings) -> None:
    address = cfg.metrics.address
    parsed = _ip_port(address) if address is not None else None
    if parsed is None or parsed[1] == 0:
        return
    mine = Bound("metrics", address.text, *parsed)
    for other in bound:
        if mine.overlaps(other):
            found.error("metrics", "address", f"'{mine.text}' is also where [{other.owner}] listens "
                                              f"('{other.text}'): use another port")
            return


def local_addresses() -> set[Ip]:
    """The addresses of this host's interfaces (IPv4 from the local routing table, IPv6 per interface);
    loopback is always local and is not listed."""
    found: set[Ip] = set()
    try:
        with open(FIB_TRIE) as f:
            last = None
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text == "/32 host LOCAL" and last:
                    found.add(ipaddress.IPv4Address(last))
    except (OSError, ValueError):
        pass
    try:
        with open(IF_INET6) as f:
            for line in f:
                hexa = line.split()[0]
                found.add(ipaddress.IPv6Address(int(hexa, 16)))
    except (OSError, ValueError, IndexError):
        pass
    return found


def reaches(listen: Bound, ip: Ip, port: int, local: set[Ip]) -> bool:
    """A connect to ip:port arrives at this listening address."""
    if port != listen.port or ip.version != listen.ip.version:
        return False
    if ip == listen.ip:
        return True
    return listen.ip.is_unspecified and (ip.is_loopback or ip.is_unspecified or ip in local)


def _self_backends(cfg, bound: list[Bound], local: set[Ip], found: Findings) -> None:
    for route in cfg.routes.values():
        parsed = _ip_port(route.backend) if route.backend is not None else None
        if parsed is None:
            continue
        for listen in bound:
            if listen.udp == getattr(route.backend, "udp", False) and reaches(listen, *parsed, local):
                via = "" if parsed[0] == listen.ip else " (a wildcard listener takes every local address)"
                found.error(f"routes.{route.name}", "backend",
                            f"'{route.backend.text}' is the daemon's own listener [{listen.owner}] "
                            f"'{listen.text}'{via}: each client would loop through it until the fds run out")
                break


# ---------------------------------------------------------------- routes that can never be chosen
FILTER_KEYS = ("sni", "alpn", "host")


def takes_all_of(first, later) -> bool:
    """Every client `later` would match, `first` matches too (checked only on simple forms: same probe,
    and each filter of `first` absent, or a superset of the same filter of `later`, or `*`)."""
    if first.probe != later.probe or first.probe in ("regex", "any"):
        return False
    for key in FILTER_KEYS:
        mine = first.opts.get(key)
        if mine is None or "*" in mine:
            continue
        theirs = later.opts.get(key)
        if theirs is None or not set(theirs) <= set(mine):
            return False
    return True


def _filters(route) -> str:
    shown = [f"{k} {', '.join(route.opts[k])}" for k in FILTER_KEYS if route.opts.get(k) is not None]
    return "; ".join(shown) if shown else f"no {'/'.join(k for k in FILTER_KEYS if k in _keys(route))} filter"


def _keys(route) -> tuple[str, ...]:
    return {"tls": ("sni", "alpn"), "quic": ("sni", "alpn"), "dtls": ("sni", "alpn"), "http": ("host",)}.get(route.probe, ())


def _unreachable_routes(cfg, found: Findings) -> None:
    lists = [(f"listen.{lst.name}", "routes", lst.routes) for lst in cfg.listeners]
    lists += [(f"routes.{r.name}", "inner_routes", r.inner_routes) for r in cfg.routes.values() if r.inner_routes]
    reported = set()
    for where, key, routes in lists:
        for i, later in enumerate(routes):
            first = next((r for r in routes[:i] if takes_all_of(r, later)), None)
            if first is None or (later.name, first.name) in reported:
                continue
            reported.add((later.name, first.name))
            found.warning(f"routes.{later.name}", "", f"can never be chosen on [{where}]: the earlier route "
                          f"'{first.name}' (probe {first.probe}, {_filters(first)}) takes every client it would "
                          f"({_filters(later)})")
    used = {r.name for _, _, routes in lists for r in routes}
    for name in cfg.routes:
        if name not in used:
            found.warning(f"routes.{name}", "", "no listener uses this route (each [listen] routes list leaves it "
                                                "out, and no inner_routes names it)")
