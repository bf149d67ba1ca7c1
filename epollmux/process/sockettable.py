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
Must not fork or know about workers.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from epollmux.serve import listener


def address_key(family: int, sockaddr) -> tuple:
    """(family, packed address, port): equal for every spelling of one local address."""
    host, port = sockaddr[0], sockaddr[1]
    host = host.split("%")[0]
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        packed = host.encode()
    return (family, packed, port)


ABSENT = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})     # the address does not exist here


@dataclass
class Outcome:
    """What the last `assign` did, for the log."""
    fresh: list[str]          # addresses bound by that call ("now also listening on" after a reload)
    missing: list[str]        # addresses left out: not on this host


class SocketTable:
    def __init__(self, inherited=()):
        self.inherited = list(inherited)
        self._inherited_keys = [address_key(s.sock.family, s.sock.getsockname()) for s in self.inherited]
        self.bound: dict[tuple, socket.socket] = {}
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
                    key = address_key(address.family, address.sockaddr)
                    if key in used:
                        raise OSError(errno.EADDRINUSE, f"cannot listen on {address}: listeners "
                                      f"'{used[key]}' and '{lst.name}' both name it")
                    used[key] = lst.name
                    sock = self._inherited_for(key, names) or self.bound.get(key)
                    if sock is None:
                        try:
                            sock = listener.bind(address)
                        except OSError as exc:
                            if exc.errno not in ABSENT:
                                raise
                            outcome.missing.append(f"{exc.strerror} (listener {lst.name})")
                            del used[key]
                            continue
                        self.bound[key] = sock
                        fresh.append(key)
                        outcome.fresh.append(f"{address} ({lst.name})")
                    pairs.append((lst, sock))
            if not pairs:
                raise OSError(errno.EADDRNOTAVAIL, "nothing to listen on: " + "; ".join(outcome.missing))
        except OSError:
            for key in fresh:
                self.bound.pop(key).close()
            raise
        self.outcome = outcome
        return pairs, set(used)

    def _inherited_for(self, key: tuple, names: set) -> socket.socket | None:
        for s, k in zip(self.inherited, self._inherited_keys):
            if k == key and s.name not in names:
                return s.sock
        return None

    def unused_inherited(self, cfg) -> list:
        """Inherited sockets that no listener of cfg takes (worth a warning)."""
        names = {lst.name for lst in cfg.listeners}
        keys = {address_key(a.family, a.sockaddr) for lst in cfg.listeners for a in lst.addresses}
        return [s for s, k in zip(self.inherited, self._inherited_keys) if s.name not in names and k not in keys]

    def release(self, in_use: set) -> list[str]:
        """Close the bound sockets whose key is not in `in_use`; returns their addresses for the log."""
        gone = []
        for key in [k for k in self.bound if k not in in_use]:
            sock = self.bound.pop(key)
            try:
                host, port = sock.getsockname()[:2]
                gone.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
            except OSError:
                pass
            sock.close()
        return gone

    def sockets(self) -> list[socket.socket]:
        return [s.sock for s in self.inherited] + list(self.bound.values())

    def close_all(self) -> None:
        for sock in self.sockets():
            sock.close()
        self.bound.clear()
