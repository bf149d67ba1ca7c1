"""One generation of workers (those started from one configuration) and what the supervisor does to
a worker process.

Owns: a generation's bookkeeping (its workers, how many it wants, whether all accepted once) and its
restart policy (start failures in a row, back-off after quick deaths), telling a worker to retire,
stop or hard-stop (workerproc's signals) or killing it, and the words for an exit status, a
listening socket and a left-out address in the log.
Must not fork (workerproc does), touch the reactor or client connections.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from epollmux.process import workerproc

log = logging.getLogger("epollmux.supervisor")

MAX_START_FAILURES = 3      # workers dying before they accept, in a row: the generation cannot start
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
BACKOFF_RESET = 10.0        # a worker that lived this long resets the back-off


class Generation:
    """The workers started from one configuration."""

    def __init__(self, number: int, cfg, sockets: list, keys: set, creds):
        self.number = number
        self.cfg = cfg
        self.sockets = sockets
        self.keys = keys
        self.creds = creds
        self.wanted = cfg.settings.workers
        self.workers: dict = {}         # pid -> workerproc.WorkerProc
        self.slots: dict[int, int] = {}  # pid -> worker slot (which socket of each UDP group it reads)
        self.start_failures = 0
        self.quick_deaths = 0
        self.announced = False          # every worker accepted once

    def free_slot(self) -> int:
        """The lowest slot no live worker of this generation holds (a replaced worker's slot comes back)."""
        held = {self.slots[pid] for pid in self.workers if pid in self.slots}
        return next(i for i in range(len(held) + 1) if i not in held)

    def all_ready(self) -> bool:
        return len(self.workers) >= self.wanted and all(p.ready for p in self.workers.values())

    def died_after(self, lived: float) -> None:
        """A worker that had accepted died after `lived` seconds."""
        self.quick_deaths = self.quick_deaths + 1 if lived < BACKOFF_RESET else 1

    def failed_start(self) -> bool:
        """A worker could not start; True once too many did in a row."""
        self.start_failures += 1
        if self.start_failures >= MAX_START_FAILURES:
            return True
        self.quick_deaths += 1
        return False

    def backoff(self) -> float:
        """Seconds to wait before replacing a dead worker."""
        return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, self.quick_deaths - 1))


def terminate(proc, how: int = workerproc.STOP) -> None:
    """Tell a worker to retire, stop or hard-stop, unless it was told as much already; its exit is
    then expected."""
    if workerproc.STRENGTH[how] <= workerproc.STRENGTH[proc.told]:
        return
    proc.stopping = True
    proc.told = how
    send(proc, how)


def send(proc, signum: int) -> bool:
    """Send a signal to a worker; a worker already gone or a refusal (EPERM: no CAP_KILL while workers
    run as another user) is logged, never raised: the supervisor carries on."""
    try:
        os.kill(proc.pid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.error("cannot send %s to worker %d: permission denied (the supervisor needs CAP_KILL "
                  "when workers run as another user)", signal.Signals(signum).name, proc.pid)
        return False


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def describe_socket(lst, sock) -> str:
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{'udp:' if sock.type == socket.SOCK_DGRAM else ''}{where} ({lst.name})"


def log_missing(table) -> None:
    """Addresses of the configuration that this host does not have (the others are served)."""
    for missing in table.outcome.missing:
        log.warning("%s: not an address of this host, left out; serving on the others", missing)
