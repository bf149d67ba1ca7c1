"""Detaching as a classic daemon (`--daemon`) and the PID file; the only module importing python-daemon.

Owns: the double fork (python-daemon's DaemonContext), which fds survive it (the listening sockets
and the log handlers' streams or sockets), and `PidFile`: created and locked (fcntl) by the process
that stays, so a second instance is refused while a stale file left by a crash is simply taken over;
removed at a clean stop. Under systemd none of this is used: the foreground mode is.
Must not import the reactor, the configuration or the workers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys

import daemon


class PidFileError(Exception):
    """The PID file cannot be written, or another running process holds it."""


class PidFile:
    """A locked PID file, as a context manager (python-daemon enters it after detaching)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.fd = -1
        self.owner = 0

    def _open_locked(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PidFileError(f"pidfile {self.path}: {exc.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PidFileError(f"pidfile {self.path}: held by running process {holder}") from None
        return fd

    def check(self) -> None:
        """Refuse now, while a terminal still sees the error, if another instance holds the file."""
        os.close(self._open_locked())

    def __enter__(self) -> "PidFile":
        fd = self._open_locked()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self.owner = fd, os.getpid()
        return self

    def __exit__(self, *exc) -> None:
        if self.fd < 0 or os.getpid() != self.owner:
            return          # a forked worker never removes the supervisor's file
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def handler_fds() -> list[int]:
    """The fds the root logger's handlers write to (streams, syslog sockets)."""
    fds = []
    for handler in logging.getLogger().handlers:
        for attr in ("stream", "socket"):
            target = getattr(handler, attr, None)
            try:
                fds.append(target.fileno())
            except (AttributeError, OSError, ValueError):
                continue
    return fds


def detach(pidfile: PidFile | None, keep_fds: list[int]) -> daemon.DaemonContext:
    """Double-fork into the background keeping `keep_fds` and the log handlers' fds open.

    stderr stays as it is when a log handler writes to it (log_target = stderr: the operator may
    have redirected it); otherwise it goes to /dev/null like stdin and stdout. The PID file is
    written by the detached process. Returns the open context: its close() runs at exit.
    """
    if pidfile is not None:
        pidfile.check()
    logged = handler_fds()
    keep_stderr = sys.stderr is not None and sys.stderr.fileno() in logged
    context = daemon.DaemonContext(
        working_directory="/", umask=0o022, detach_process=True,
        files_preserve=sorted(set(keep_fds) | set(logged)), pidfile=pidfile,
        stderr=sys.stderr if keep_stderr else None,
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None})
    context.open()
    return context
