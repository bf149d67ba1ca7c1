"""What epollmux says to systemd and what it takes from it; the only module that imports sdnotify.

Owns: the notifications (READY, STATUS, RELOADING with MONOTONIC_USEC, STOPPING, WATCHDOG), the
watchdog period the service manager asks for (WATCHDOG_USEC, WATCHDOG_PID), and socket activation:
the listening sockets passed as fds 3... (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES). Without
NOTIFY_SOCKET every notification is a no-op; without LISTEN_FDS for this PID nothing is adopted.
Must not import the reactor, the configuration or the workers: matching sockets to listeners is the
supervisor's business.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import sdnotify

LISTEN_FDS_START = 3
ACTIVATION_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The inherited fds cannot be used (not a listening stream socket, bad LISTEN_FDS)."""


@dataclass
class Inherited:
    """One listening socket passed by systemd."""
    fd: int
    name: str | None          # FileDescriptorName= of the .socket unit, if systemd passed names
    sock: socket.socket

    def describe(self) -> str:
        host, port = self.sock.getsockname()[:2]
        where = f"[{host}]:{port}" if self.sock.family == socket.AF_INET6 else f"{host}:{port}"
        return f"fd {self.fd} ({self.name or 'unnamed'}, {where})"


class Notifier:
    """sd_notify over NOTIFY_SOCKET; every method is a no-op without it."""

    def __init__(self, environ=os.environ):
        self._sd = sdnotify.SystemdNotifier() if environ.get("NOTIFY_SOCKET") else None
        if self.enabled:
            # A notification the manager's full queue cannot take is dropped (sdnotify swallows the error),
            # never waited for: a blocking send stalled the whole supervisor (metrics, reload, watchdog)
            # once net.unix.max_dgram_qlen STATUS= updates went unread.
            self._sd.socket.setblocking(False)
        self.watchdog_interval = watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return self._sd is not None and self._sd.socket is not None

    def send(self, *fields: str) -> None:
        if self._sd is not None:
            self._sd.notify("\n".join(fields))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time systemd uses to tell reloads apart."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def fileno(self) -> int:
        return self._sd.socket.fileno() if self.enabled else -1

    def close(self) -> None:
        """Close the notification socket (a forked worker calls this: only the supervisor notifies)."""
        if self.enabled:
            self._sd.socket.close()
        self._sd = None


def watchdog_interval(environ=os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked of this process."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def listen_fds(environ=os.environ) -> list[Inherited]:
    """Adopt the sockets systemd passed to this process, and unset LISTEN_* so no child sees them."""
    pid, count, names = (environ.pop(name, "") for name in ACTIVATION_VARS)
    if not count or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ActivationError(f"LISTEN_FDS={count!r} is not a number")
    n = int(count)
    labels = names.split(":") if names else []
    if len(labels) != n:
        labels = [None] * n
    adopted = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"inherited fd {fd}: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ActivationError(f"inherited fd {fd} is not a listening stream socket "
                                  "(the .socket unit needs ListenStream= and Accept=no)")
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.detach()
            raise ActivationError(f"inherited fd {fd} is not a TCP socket")
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        adopted.append(Inherited(fd, labels[i] or None, sock))
    return adopted
