"""One worker process as the supervisor sees it: the fork, the child's first steps, the report channel.

Owns: forking a worker with the supervisor's signals blocked across the fork; in the child, before
anything is served: default signal dispositions, the supervisor's loop and fds dropped (its epoll set
and signal wake-up pipe must never be shared), a parent-death signal, the privilege drop, then
`Worker(cfg, sockets).run()`. And the report protocol over the worker's own channel, an AF_UNIX
SOCK_SEQPACKET socketpair: each message is one datagram (one line), delivered whole or not at all, up to
MAX_MESSAGE bytes, so a snapshot of any size below that is never torn; a message that finds the
channel full is dropped and replaced by the next one. Worker to supervisor:
  "ready"                          its listeners are in its epoll set
  "closed"                         told to retire or stop, it has closed its listeners: it accepts no more
  "stats <accepted> <open> <flows>"   every interval (flows: UDP flows held)
  "snap <id> <json>"               its metrics snapshot (metrics.encode): every SNAPSHOT_EVERY intervals
                                   and at exit with id 0, or in answer to "snap <id>"
  "conns <id> <json rows>"         in answer to "conns <id>": its open connections, in parts,
  "conns-end <id> <open>"          then this
Supervisor to worker: "snap <id>", "conns <id>".
Must not decide policy (replacement, reload, readiness of the service): the supervisor does.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from epollmux.observe import metrics, stats
from epollmux.process import privileges
from epollmux.reactor import IN
from epollmux.serve.worker import Worker

log = logging.getLogger("epollmux.supervisor")

EXIT_PRIVILEGES = 3     # the child could not drop privileges: retrying cannot help
EXIT_CRASH = 4          # the child raised before or while serving
SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD}
PR_SET_PDEATHSIG = 1
# what the supervisor tells a worker, weakest first: a stronger one overrides, a weaker or equal one is not sent
RETIRE, STOP, HARD_STOP = signal.SIGUSR2, signal.SIGTERM, signal.SIGQUIT
STRENGTH = {0: 0, RETIRE: 1, STOP: 2, HARD_STOP: 3}
MAX_MESSAGE = 192 * 1024        # one datagram; the socket buffers are raised to hold several
CHANNEL_BUFFER = 1 << 20
SNAPSHOT_EVERY = 5              # report intervals between unrequested snapshots
CONNS_PART = 32 * 1024          # bytes of `show conns` rows per message
FINAL_WAIT = 1.0                # seconds an exiting worker waits to hand over its last snapshot


class ManagedWorker(Worker):
    """A Worker that reports readiness and counts to the supervisor over its channel, and answers its questions."""

    def __init__(self, config, sockets, report_fd: int, interval: float):
        super().__init__(config, sockets)
        self.report_fd = report_fd
        self.interval = interval
        self.reports = 0

    def run(self) -> int:
        # run() arms the acceptors before its loop turns: the first turn's deferred call sees them armed
        self.reactor.call_soon(self._ready)
        self.reactor.register(self.report_fd, IN, _Requests(self))
        code = super().run()
        self._send_final(f"snap 0 {self._snapshot()}\n")
        return code

    def _send(self, message: str) -> bool:
        try:
            os.write(self.report_fd, message.encode())
            return True
        except (BlockingIOError, BrokenPipeError, ConnectionError):
            return False    # supervisor busy or gone: a lost report is replaced by the next one
        except OSError as exc:      # EMSGSIZE: say so, serving goes on
            log.warning("report of %d bytes not sent: %s", len(message), exc.strerror)
            return False

    def _send_final(self, message: str) -> None:
        """The last snapshot: wait a little for room, so the supervisor's totals get every count."""
        poller = select.poll()
        poller.register(self.report_fd, select.POLLOUT)
        if poller.poll(FINAL_WAIT * 1000):
            self._send(message)

    def _ready(self) -> None:
        self._send("ready\n")
        self._report()

    def retire(self) -> None:
        super().retire()
        self._send("closed\n")          # the supervisor announces a reload only once old workers say this

    def stop(self) -> None:
        super().stop()
        self._send("closed\n")

    def _report(self) -> None:
        self._send(f"stats {self.ctx.stats.accepted} {len(self.ctx.connections)} {len(self.ctx.flows)}\n")
        self.reports += 1
        if self.reports % SNAPSHOT_EVERY == 0:
            self._send(f"snap 0 {self._snapshot()}\n")
        self.reactor.call_later(self.interval, self._report)

    def _snapshot(self) -> str:
        return metrics.encode(self.ctx.stats.snapshot(self.ctx.connections, self.ctx.pool, self.ctx.flows))

    def answer(self, request: str) -> None:
        kind, _, qid = request.partition(" ")
        if not qid.isdigit():
            return
        if kind == "snap":
            self._send(f"snap {qid} {self._snapshot()}\n")
        elif kind == "conns":
            rows = stats.conn_rows(self.ctx.connections, self.reactor.clock())
            for part in _parts(rows, CONNS_PART):
                if not self._send(f"conns {qid} {part}\n"):
                    return      # the supervisor notes this worker's list as incomplete
            self._send(f"conns-end {qid} {len(self.ctx.connections)}\n")


class _Requests:
    """The worker's end of its channel: the supervisor's questions (or EOF: it is gone)."""

    def __init__(self, worker: ManagedWorker):
        self.worker = worker

    def on_event(self, fd: int, events: int) -> None:
        for _ in range(64):
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.worker.reactor.unregister(fd)      # level-triggered EOF would wake us forever
                return
            for line in data.decode(errors="replace").splitlines():
                self.worker.answer(line.strip())


def _parts(rows: list, size: int):
    """JSON arrays of rows, each about `size` bytes at most (a single row may exceed it)."""
    part, length = [], 2
    for row in rows:
        text = json.dumps(row, separators=(",", ":"))
        if part and length + len(text) + 1 > size:
            yield "[" + ",".join(part) + "]"
            part, length = [], 2
        part.append(text)
        length += len(text) + 1
    if part:
        yield "[" + ",".join(part) + "]"


@dataclass
class WorkerProc:
    """The supervisor's record of one worker process."""
    pid: int
    generation: object
    report_fd: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    closed: bool = False            # it said it closed its listeners (told to retire or stop)
    stopping: bool = False          # the supervisor told it to end: its exit is expected
    told: int = 0                   # the last of RETIRE, STOP, HARD_STOP sent to it
    accepted: int = 0
    open: int = 0
    flows: int = 0                  # UDP flows held
    last_report: float = field(default_factory=time.monotonic)
    snapshot: dict = field(default_factory=dict)       # the last metrics snapshot it sent

    def feed(self, data: bytes) -> list[str]:
        """Split one received datagram into its lines (a cut-off last line is dropped)."""
        *lines, tail = data.split(b"\n")
        self.last_report = time.monotonic()
        return [text for line in lines if (text := line.decode(errors="replace").strip())]

    def apply(self, line: str) -> tuple[str, int, str] | None:
        """Apply one message; returns (kind, request id, rest) for the supervisor to act on, or None."""
        kind, _, rest = line.partition(" ")
        if kind == "ready":
            self.ready = True
            return kind, 0, ""
        if kind == "closed":
            self.closed = True
            return kind, 0, ""
        if kind == "stats":
            words = rest.split()
            if len(words) in (2, 3) and all(w.isdigit() for w in words):
                self.accepted, self.open = int(words[0]), int(words[1])
                self.flows = int(words[2]) if len(words) == 3 else 0
            return None
        qid, _, payload = rest.partition(" ")
        if kind not in ("snap", "conns", "conns-end") or not qid.isdigit():
            return None
        if kind == "snap":
            try:
                self.snapshot = metrics.decode(payload)
            except ValueError:
                return None
            accepted = self.snapshot.get("epollmux_connections_accepted_total")
            if accepted is not None:     # fresher than the last count report: show stat asks for this one
                self.accepted = max(self.accepted, int(sum(accepted.values())))
                self.open = int(sum(self.snapshot.get("epollmux_connections_active", {}).values()))
                self.flows = int(sum(self.snapshot.get("epollmux_udp_flows_active", {}).values()))
        return kind, int(qid), payload

    def receive(self, limit: int) -> tuple[list[tuple[str, int, str]], bool]:
        """Read up to `limit` datagrams from the report channel and apply them: the messages for the
        supervisor to act on, and whether the channel reached its end (the worker has exited)."""
        messages = []
        for _ in range(limit):
            try:
                data = os.read(self.report_fd, MAX_MESSAGE)
            except BlockingIOError:
                return messages, False
            except OSError:
                data = b""
            if not data:
                return messages, True
            messages += [m for line in self.feed(data) if (m := self.apply(line)) is not None]
        return messages, False

    def close_channel(self) -> None:
        if self.report_fd >= 0:
            os.close(self.report_fd)
            self.report_fd = -1

    def ask(self, request: str) -> bool:
        """Send the worker a request; False if it cannot be sent now."""
        if self.report_fd < 0:
            return False
        try:
            os.write(self.report_fd, request.encode() + b"\n")
            return True
        except OSError:
            return False


def spawn(config, sockets, creds, interval: float, in_child: Callable[[], None], generation) -> WorkerProc:
    """Fork one worker over `sockets`; `in_child` closes what the supervisor holds that the child must not."""
    read_fd, write_fd = _channel()
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


def _channel() -> tuple[int, int]:
    """The supervisor's and the worker's ends of a worker's report channel, as fds."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    for end in ends:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                end.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)   # capped by net.core.*mem_max
            except OSError:
                pass
    return ends[0].detach(), ends[1].detach()


def _reset_signals() -> None:
    """Dispositions as a fresh process has them; SIGHUP ignored (only the supervisor reloads)."""
    signal.set_wakeup_fd(-1)
    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _child(config, sockets, creds, report_fd: int, interval: float, parent: int) -> int:
    try:
        privileges.drop(creds, keep_bind=privileges.needs_bind_service(_udp_ports(config)))
    except privileges.PrivilegeError as exc:
        log.error("%s", exc)
        return EXIT_PRIVILEGES
    _die_with(parent)       # after the drop: a change of credentials clears the parent-death signal
    os.set_blocking(report_fd, False)
    return ManagedWorker(config, sockets, report_fd, interval).run()


def _udp_ports(config) -> list[int]:
    """The ports of the UDP listeners: each UDP flow's socket binds its listener's address again."""
    return [a.sockaddr[1] for lst in config.listeners if lst.udp for a in lst.addresses]


def _die_with(parent: int) -> None:
    """Ask for SIGTERM (a stop: listeners closed at once, then a drain) if the supervisor dies; leave at
    once if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)
