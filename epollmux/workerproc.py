"""One worker process as the supervisor sees it: the fork, the child's first steps, the report pipe.

Owns: forking a worker with the supervisor's signals blocked across the fork; in the child, before
anything is served: default signal dispositions, the supervisor's loop and fds dropped (its epoll set
and signal wake-up pipe must never be shared), a parent-death signal, the privilege drop, then
`Worker(cfg, sockets).run()`. And the report protocol: a worker tells the supervisor over its own pipe
"ready" once its listeners are in its epoll set, then "stats <accepted> <open>" every interval; each
message is one write below PIPE_BUF, so it is never torn, and is dropped if the pipe is full.
Must not decide policy (replacement, reload, readiness of the service): the supervisor does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from epollmux import privileges
from epollmux.worker import Worker

log = logging.getLogger("epollmux.supervisor")

EXIT_PRIVILEGES = 3     # the child could not drop privileges: retrying cannot help
EXIT_CRASH = 4          # the child raised before or while serving
SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD}
PR_SET_PDEATHSIG = 1


class ManagedWorker(Worker):
    """A Worker that reports readiness and counts to the supervisor over a pipe."""

    def __init__(self, config, sockets, report_fd: int, interval: float):
        super().__init__(config, sockets)
        self.report_fd = report_fd
        self.interval = interval

    def run(self) -> int:
        # run() arms the acceptors before its loop turns: the first turn's deferred call sees them armed
        self.reactor.call_soon(self._ready)
        return super().run()

    def _send(self, message: str) -> None:
        try:
            os.write(self.report_fd, message.encode())
        except (BlockingIOError, BrokenPipeError):
            pass    # supervisor busy or gone: a lost report is replaced by the next one

    def _ready(self) -> None:
        self._send("ready\n")
        self._report()

    def _report(self) -> None:
        self._send(f"stats {self.ctx.stats.accepted} {len(self.ctx.connections)}\n")
        self.reactor.call_later(self.interval, self._report)


@dataclass
class WorkerProc:
    """The supervisor's record of one worker process."""
    pid: int
    generation: object
    report_fd: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    stopping: bool = False          # the supervisor sent SIGTERM: its exit is expected
    accepted: int = 0
    open: int = 0
    last_report: float = field(default_factory=time.monotonic)
    buffer: bytes = b""

    def feed(self, data: bytes) -> list[list[str]]:
        """Split report bytes into messages (lists of words); keeps an incomplete tail."""
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.buffer = self.buffer[-256:]
        messages = []
        for line in lines:
            words = line.decode(errors="replace").split()
            if words:
                messages.append(words)
        self.last_report = time.monotonic()
        return messages

    def apply(self, words: list[str]) -> bool:
        """Apply one message; True if it was the readiness report."""
        if words[0] == "ready":
            self.ready = True
            return True
        if words[0] == "stats" and len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            self.accepted, self.open = int(words[1]), int(words[2])
        return False


def spawn(config, sockets, creds, interval: float, in_child: Callable[[], None], generation) -> WorkerProc:
    """Fork one worker over `sockets`; `in_child` closes what the supervisor holds that the child must not."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        code = EXIT_CRASH
        try:
            os.close(read_fd)
            _reset_signals()
            in_child()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            code = _child(config, sockets, creds, write_fd, interval, parent)
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (AttributeError, OSError, ValueError):
                    pass
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return WorkerProc(pid, generation, read_fd)


def _reset_signals() -> None:
    """Dispositions as a fresh process has them; SIGHUP ignored (only the supervisor reloads)."""
    signal.set_wakeup_fd(-1)
    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _child(config, sockets, creds, report_fd: int, interval: float, parent: int) -> int:
    try:
        privileges.drop(creds)
    except privileges.PrivilegeError as exc:
        log.error("%s", exc)
        return EXIT_PRIVILEGES
    _die_with(parent)       # after the drop: a change of credentials clears the parent-death signal
    os.set_blocking(report_fd, False)
    return ManagedWorker(config, sockets, report_fd, interval).run()


def _die_with(parent: int) -> None:
    """Ask for SIGTERM (a graceful drain) if the supervisor dies; leave at once if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)
