"""The listening sockets the supervisor holds across reloads, keyed by local address.

Owns: binding each configured address once (`listener.bind`), handing the same socket to the next
configuration that keeps the address (so a reload never closes a listening socket in use), adopting
systemd's inherited sockets, and closing the sockets that no generation of workers uses any more.
Adoption: an inherited socket whose LISTEN_FDNAMES name is a listener's name serves that listener
(and then its `address` lines are not bound); any other inherited socket serves the configured
address equal to its local address. Inherited sockets are never closed: systemd keeps them.
An address that does not exist on this host (EADDRNOTAVAIL: no IPv6 on loopback, an interface address
gone; EAFNOSUPPORT: IPv6 off) is left out with a note in `missing`, so a host serves on what it has;
`assign` fails only when the configuration leaves nothing to listen on, or on any other bind error.
A `udp:` address is bound as a SO_REUSEPORT group of one socket per worker slot (`workers`), grown or
shrunk on reload: worker slot i reads group socket i, so the kernel's 4-tuple hash sends every datagram of
a new flow to one worker (README "UDP"); `for_slot` gives a worker its slot's sockets.
Must not fork or know about workers.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from epollmux.serve import listener, udplistener


def address_key(family: int, sockaddr, udp: bool = False) -> tuple:
    """(family, packed address, port, udp): equal for every spelling of one local address; TCP and UDP
    on the same port are two keys."""
    host, port = sockaddr[0], sockaddr[1]
    host = host.split("%")[0]
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        packed = host.encode()
    return (family, packed, port, udp)


ABSENT = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})     # the address does not exist here


@dataclass
class Outcome:
    """What the last `assign` did, for the log."""
    fresh: list[str]          # addresses bound by that call ("now also listening on" after a reload)
    missing: list[str]        # addresses left out: not on this host


class SocketTable:
    def __init__(self, inherited=()):
        self.inherited = list(inherited)
        self._inherited_keys = [address_key(s.sock.family, s.sock.getsockname(), s.sock.type == socket.SOCK_DGRAM)
                                for s in self.inherited]
        self.bound: dict[tuple, socket.socket] = {}
        self.groups: dict[tuple, list[socket.socket]] = {}     # UDP key -> its SO_REUSEPORT group, slot order
        self.outcome = Outcome([], [])

    def assign(self, cfg) -> tuple[list, set]:
        """(listener, socket) pairs for every listener of cfg, binding only addresses new to the table,
        and the keys used. On a bind failure the sockets bound by this call are closed, then OSError."""
        names = {lst.name for lst in cfg.listeners}
        pairs, used, fresh = [], {}, []
        outcome = Outcome([], [])
        try:
            for lst in cfg.listeners:
                named = [s for s in self.inherited if s.name == lst.name]
                if named:
                    pairs += [(lst, s.sock) for s in named]
                    continue
                for address in lst.addresses:
                    key = address_key(address.family, address.sockaddr, address.udp)
                    if key in used:
                        raise OSError(errno.EADDRINUSE, f"cannot listen on {address}: listeners "
                                      f"'{used[key]}' and '{lst.name}' both name it")
                    used[key] = lst.name
                    sock = self._inherited_for(key, names) or self.bound.get(key)
                    if sock is None:
                        try:
                            sock = (udplistener if address.udp else listener).bind(address)
                            if address.udp:
                                self.groups[key] = [sock]
                        except OSError as exc:
                            if exc.errno not in ABSENT:
                                raise
                            outcome.missing.append(f"{exc.strerror} (listener {lst.name})")
                            del used[key]
                            continue
                        self.bound[key] = sock
                        fresh.append(key)
                        outcome.fresh.append(f"{address} ({lst.name})")
                    if key in self.groups:
                        self._resize(key, address, cfg.settings.workers)
                    pairs.append((lst, sock))
            if not pairs:
                raise OSError(errno.EADDRNOTAVAIL, "nothing to listen on: " + "; ".join(outcome.missing))
        except OSError:
            for key in fresh:
                self.bound.pop(key).close()
                for extra in self.groups.pop(key, [])[1:]:
                    extra.close()
            raise
        self.outcome = outcome
        return pairs, set(used)

    def _resize(self, key: tuple, address, slots: int) -> None:
        """Make the UDP group of `key` one socket per worker slot. A socket dropped from the group stays
        in it (and read) until the old workers that hold it retire; new ones join at the end."""
        group = self.groups[key]
        while len(group) < slots:
            group.append(udplistener.bind(address))
        while len(group) > max(1, slots):
            group.pop().close()

    def for_slot(self, pairs: list, slot: int) -> list:
        """`pairs` with each UDP group socket replaced by the one of worker slot `slot`."""
        groups = {id(g[0]): g for g in self.groups.values()}
        out = []
        for lst, sock in pairs:
            group = groups.get(id(sock))
            out.append((lst, group[slot % len(group)] if group else sock))
        return out

    def _inherited_for(self, key: tuple, names: set) -> socket.socket | None:
        for s, k in zip(self.inherited, self._inherited_keys):
            if k == key and s.name not in names:
                return s.sock
        return None

    def unused_inherited(self, cfg) -> list:
        """Inherited sockets that no listener of cfg takes (worth a warning)."""
        names = {lst.name for lst in cfg.listeners}
        keys = {address_key(a.family, a.sockaddr, a.udp) for lst in cfg.listeners for a in lst.addresses}
        return [s for s, k in zip(self.inherited, self._inherited_keys) if s.name not in names and k not in keys]

    def release(self, in_use: set) -> list[str]:
        """Close the bound sockets whose key is not in `in_use`; returns their addresses for the log."""
        gone = []
        for key in [k for k in self.bound if k not in in_use]:
            sock = self.bound.pop(key)
            for extra in self.groups.pop(key, [])[1:]:
                extra.close()
            try:
                host, port = sock.getsockname()[:2]
                gone.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
            except OSError:
                pass
            sock.close()
        return gone

    def sockets(self) -> list[socket.socket]:
        return [s.sock for s in self.inherited] + list(self.bound.values()) + \
            [s for g in self.groups.values() for s in g[1:]]

    def close_all(self) -> None:
        for sock in self.sockets():
            sock.close()
        self.bound.clear()
        self.groups.clear()
