"""The supervisor: the process that holds the listening sockets and keeps the workers running.

Owns: the supervisor's states (starting, running, reloading, stopping), worker generations (a
reload starts a new generation over the same sockets and stops the old one only once the new one
accepts; `generation.py` holds one generation's bookkeeping and back-off), replacing dead workers,
the supervisor's signals handled in its own Reactor (SIGTERM/SIGINT stop, SIGHUP reload, SIGUSR1
stats, SIGCHLD reap), answering the metrics endpoints (collector.py sums the workers' reports,
exporter.py serves them from this loop, observe/report.py words them), what systemd is told, and
the exit code once running: 0 clean stop, 2 runtime failure (workers that cannot start). The start
sequence before the loop is `start.py`.
The supervisor keeps the credentials it was started with, like nginx's master: it must read the
file and bind new addresses on reload, and it never reads a client byte. Each worker drops to
`user`/`group` right after its fork, before it serves anything.
Must not touch client connections (workers do) nor fork by hand (workerproc does).
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter

from epollmux import config
from epollmux.states import TransitionError
from epollmux.observe import collector, exporter, metrics, report
from epollmux.observe.words import plural
from epollmux.process import systemd, workerproc
from epollmux.process.prepare import Prepared, ReloadAsks
from epollmux.process.reloading import Reloading
from epollmux.process.states import NEXT, State
from epollmux.process.generation import Generation, describe_socket, describe_status, send, terminate
from epollmux.reactor import IN, Reactor
from epollmux.serve import drain
from epollmux.process.sockettable import SocketTable

log = logging.getLogger("epollmux.supervisor")

EXIT_OK, EXIT_RUNTIME = 0, 2
REPORT_INTERVAL = 1.0       # seconds between a worker's count reports (shorter under a fast watchdog)
READY_TIMEOUT = 20.0        # new workers must accept within this, at start and on reload
KILL_GRACE = 5.0            # past its last drain deadline (or a hard stop), a stopping worker is killed
RATE_SECONDS = 5.0          # the connections-per-second figure averages over this


class Supervisor(Reloading):
    def __init__(self, path: str | None, verbose: bool, table: SocketTable, pidfile=None,
                 endpoints: exporter.Endpoints | None = None, loader=None):
        self.path = path                # None: config-free mode, nothing to reload from
        self.loader = loader or config.load_file     # path -> Config (the sslh command line has its own)
        self.verbose = verbose
        self.table = table
        self.pidfile = pidfile
        self.notifier = systemd.Notifier()
        self.reactor = Reactor()
        self.state = State.STARTING
        self.exit_code = EXIT_OK
        self.current: Generation | None = None
        self.pending: Generation | None = None      # a reload's new generation, until it accepts
        self.retired: list[Generation] = []          # draining after a reload
        self.switching: tuple | None = None          # (new, old) generations until the old ones stop accepting
        self.switch_timer = None
        self.generations = 0
        self.reload_queued = False
        self.leaving = False                         # a stop is announced (stop_delay): /healthz says 503
        self.reload_asks = ReloadAsks()
        self.log_target = ""
        self.accepted_gone = 0          # last counts of workers that exited
        self.last_status = ""
        wd = self.notifier.watchdog_interval
        self.report_interval = min(REPORT_INTERVAL, wd / 2) if wd else REPORT_INTERVAL
        self.rate = report.Rate(RATE_SECONDS, self.report_interval)
        self.collector = collector.Collector(self.reactor)
        self.exporter = exporter.Exporter(endpoints)
        self.reloads: Counter[str] = Counter()      # ok | refused | abandoned
        self.crashes = 0
        self.started_at = time.time()

    # --- life cycle --------------------------------------------------------------------------
    def run(self, ready: Prepared) -> int:
        reactor = self.reactor
        self.log_target = ready.cfg.settings.log_target
        for signum, handler in ((signal.SIGTERM, self.handle_stop), (signal.SIGINT, self.handle_stop),
                                (signal.SIGHUP, self.handle_reload), (signal.SIGUSR1, self.handle_stats),
                                (signal.SIGCHLD, self.handle_child)):
            reactor.on_signal(signum, handler)
        log.info("listening on %s", ", ".join(describe_socket(lst, s) for lst, s in ready.sockets))
        self.exporter.start(reactor, self._answer)
        if self.exporter.describe():
            log.info("%s", self.exporter.describe())
        self.current = self._new_generation(ready)
        self._fill(self.current)
        reactor.call_later(self.report_interval, self._tick_status)
        if self.notifier.watchdog_interval:
            reactor.call_later(self.notifier.watchdog_interval, self._tick_watchdog)
        try:
            reactor.run()
        except Exception:
            log.exception("supervisor failed")
            self.exit_code = EXIT_RUNTIME
        finally:
            self._finish()
        log.info("stopped")
        return self.exit_code

    def _finish(self) -> None:
        """Leave nothing behind: kill and reap any worker still there, close every fd."""
        for proc in self._live():
            if proc.report_fd >= 0:
                self._close_reports(proc)
            send(proc, signal.SIGKILL)
            try:
                os.waitpid(proc.pid, 0)
            except ChildProcessError:
                pass
        self.exporter.close()
        self.reactor.close()
        self.notifier.close()
        self.table.close_all()

    def _set_state(self, state: State) -> None:
        if state not in NEXT[self.state]:
            raise TransitionError.of("supervisor", self.state, state)
        self.state = state

    def _generations(self) -> list[Generation]:
        return [g for g in (self.current, self.pending) if g is not None] + self.retired

    def _live(self) -> list[workerproc.WorkerProc]:
        return [p for g in self._generations() for p in g.workers.values()]

    # --- workers -----------------------------------------------------------------------------
    def _new_generation(self, ready: Prepared) -> Generation:
        self.generations += 1
        gen = Generation(self.generations, ready.cfg, ready.sockets, ready.keys, ready.creds)
        log.info("generation %d: starting %s%s", gen.number, plural(gen.wanted, "worker"),
                 f" as {ready.creds.describe()}" if ready.creds else "")
        self.reactor.call_later(READY_TIMEOUT, lambda: self._ready_timeout(gen))
        return gen

    def _fill(self, gen: Generation) -> None:
        for _ in range(gen.wanted - len(gen.workers)):
            self._spawn(gen)

    def _spawn(self, gen: Generation) -> None:
        if self.state is State.STOPPING or gen not in (self.current, self.pending):
            return
        slot = gen.free_slot()
        sockets = self.table.for_slot(gen.sockets, slot)
        try:
            proc = workerproc.spawn(gen.cfg, sockets, gen.creds, self.report_interval,
                                    lambda: self._in_child(sockets), gen)
        except OSError as exc:
            log.error("cannot fork a worker: %s", exc.strerror)
            self._start_failed(gen, f"cannot fork: {exc.strerror}")
            return
        gen.workers[proc.pid] = proc
        gen.slots[proc.pid] = slot
        self.reactor.register(proc.report_fd, IN, _Reports(self, proc))
        log.info("worker %d started (generation %d)", proc.pid, gen.number)

    def _in_child(self, sockets: list) -> None:
        """In a new worker: close what only the supervisor may hold."""
        self.reactor.close_after_fork()
        self.exporter.close_in_child()
        self.notifier.close()
        for proc in self._live():
            proc.close_channel()
        keep = {id(sock) for _, sock in sockets}
        for sock in self.table.sockets():
            if id(sock) not in keep:
                sock.close()
        if self.pidfile is not None and self.pidfile.fd >= 0:
            os.close(self.pidfile.fd)
            self.pidfile.fd = -1

    def _read_reports(self, proc: workerproc.WorkerProc, limit: int = 16) -> None:
        messages, ended = proc.receive(limit)
        for kind, qid, payload in messages:
            if kind == "ready":
                self._worker_ready(proc)
            elif kind == "closed":
                self._old_worker_closed()
            elif qid:
                self.collector.reply(proc, kind, qid, payload)
        if ended:
            self._close_reports(proc)

    def _close_reports(self, proc: workerproc.WorkerProc) -> None:
        self.reactor.unregister(proc.report_fd)
        proc.close_channel()

    def _worker_ready(self, proc: workerproc.WorkerProc) -> None:
        gen = proc.generation
        gen.start_failures = 0
        log.debug("worker %d accepting", proc.pid)
        if gen.announced or not gen.all_ready():
            return
        gen.announced = True
        if gen is self.current and self.state is State.STARTING:
            self._set_state(State.RUNNING)
            log.info("ready: %s accepting", plural(len(gen.workers), "worker"))
            self.notifier.ready(self._status_text())
            self._run_queued_reload()
        elif gen is self.pending and self.state is State.RELOADING:
            self._switch(gen)

    def handle_child(self) -> None:
        """SIGCHLD: reap every exited worker."""
        for _ in range(1024):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = next((p for p in self._live() if p.pid == pid), None)
            if proc is not None:
                self._worker_exited(proc, status)

    def _worker_exited(self, proc: workerproc.WorkerProc, status: int) -> None:
        gen = proc.generation
        if proc.report_fd >= 0:
            self._read_reports(proc, 1024)  # its last words (its final snapshot), then EOF closes the channel
        if proc.report_fd >= 0:
            self._close_reports(proc)
        gen.workers.pop(proc.pid, None)
        gen.slots.pop(proc.pid, None)
        self.accepted_gone += proc.accepted
        self.collector.worker_gone(proc)
        how = describe_status(status)
        if proc.stopping or self.state is State.STOPPING:
            log.info("worker %d (generation %d) %s", proc.pid, gen.number, how)
        else:
            self._worker_died(proc, gen, how, status)
        self._forget_idle_generations()
        self._old_worker_closed()
        if self.state is State.STOPPING and not self._live():
            self.reactor.stop()

    def _worker_died(self, proc, gen: Generation, how: str, status: int) -> None:
        log.error("worker %d (generation %d) %s unexpectedly", proc.pid, gen.number, how)
        self.crashes += 1
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == workerproc.EXIT_PRIVILEGES:
            self._generation_failed(gen, "workers cannot drop privileges")
            return
        if not proc.ready:
            self._start_failed(gen, "died before accepting")
            return
        gen.died_after(time.monotonic() - proc.started)
        self._replace_later(gen)

    def _start_failed(self, gen: Generation, why: str) -> None:
        if gen.failed_start():
            self._generation_failed(gen, f"workers cannot start ({gen.start_failures} in a row {why})")
            return
        self._replace_later(gen)

    def _replace_later(self, gen: Generation) -> None:
        delay = gen.backoff()
        log.info("generation %d: replacing a worker in %.1fs", gen.number, delay)
        self.reactor.call_later(delay, lambda: self._replace(gen))

    def _replace(self, gen: Generation) -> None:
        if len(gen.workers) < gen.wanted:
            self._spawn(gen)

    def _generation_failed(self, gen: Generation, why: str) -> None:
        if gen is self.pending:
            self._abandon(gen, why)
        elif gen is self.current and self.state is not State.STOPPING:
            log.error("%s: stopping", why)
            self.exit_code = EXIT_RUNTIME
            self._stop()

    def _ready_timeout(self, gen: Generation) -> None:
        if not gen.announced and gen in (self.current, self.pending) and self.state is not State.STOPPING:
            self._generation_failed(gen, f"workers not accepting {READY_TIMEOUT:.0f}s after start")

    def _forget_idle_generations(self) -> None:
        """Retired generations without workers are gone; so are the sockets only they used."""
        idle = [g for g in self.retired if not g.workers]
        if not idle:
            return
        for gen in idle:
            self.retired.remove(gen)
            log.info("generation %d finished", gen.number)
        in_use = set().union(*(g.keys for g in self._generations()))
        closed = self.table.release(in_use)
        if closed:
            log.info("closed listening sockets no longer configured: %s", ", ".join(closed))

    # --- signals -----------------------------------------------------------------------------
    def handle_stop(self) -> None:
        """SIGTERM/SIGINT: every worker closes its listeners and drains; exit once all are gone. With
        stop_delay, /healthz answers 503 first and the workers keep accepting that long (a second signal:
        stop at once). A signal during the drain is a hard stop: every connection is reset, the workers exit."""
        if self.state is State.STOPPING:
            self._hard_stop()
            return
        delay = self.current.cfg.settings.stop_delay if self.current is not None else 0.0
        if delay > 0 and not self.leaving:
            self.leaving = True
            log.info("stopping in %gs (stop_delay): /healthz answers 503, workers still accept", delay)
            self.reactor.call_later(delay, self._stop_after_delay)
            return
        log.info("stopping: %s draining", plural(len(self._live()), "worker"))
        self._stop()

    def _stop_after_delay(self) -> None:
        """stop_delay is over (unless a second signal already stopped: that must not count as a third)."""
        if self.state is not State.STOPPING:
            log.info("stopping: %s draining", plural(len(self._live()), "worker"))
            self._stop()

    def _stop(self) -> None:
        self._set_state(State.STOPPING)
        self.reload_asks.starting()
        self.reload_asks.tell("refused: the daemon is stopping\n")
        self.notifier.stopping()
        self.table.close_all()      # the workers close their copies: new clients are refused, not queued
        for proc in self._live():
            terminate(proc)
        deadlines = [drain.stop_deadline(g.cfg) for g in self._generations()]
        if deadlines and 0 not in deadlines:       # 0: some connection may go on until it ends
            self.reactor.call_later(max(deadlines) + KILL_GRACE, self._kill_stragglers)
        if not self._live():
            self.reactor.stop()

    def _hard_stop(self) -> None:
        live = self._live()
        log.warning("hard stop: %s reset their connections and exit", plural(len(live), "worker"))
        for proc in live:
            terminate(proc, workerproc.HARD_STOP)
        self.reactor.call_later(KILL_GRACE, self._kill_stragglers)
        if not live:
            self.reactor.stop()

    def _kill_stragglers(self) -> None:
        for proc in self._live():
            log.warning("worker %d still running past its drain: killing it", proc.pid)
            send(proc, signal.SIGKILL)

    def handle_stats(self) -> None:
        """SIGUSR1: every worker logs its stats; the supervisor logs one line per worker."""
        log.info("%s", report.stats_lines(self.state, self._status_text(), self._workers()))
        for proc in self._live():
            send(proc, signal.SIGUSR1)
        self.collector.ask(self._live(), ("snap", "conns"), lambda query: log.info(
            "show stat:\n%sshow conns:\n%s", self._stat_text(), self._conns_text(query)))

    # --- metrics -----------------------------------------------------------------------------
    def _answer(self, what: str, reply) -> None:
        """An endpoint's question (metrics, stat, conns): ask the workers, then reply with fresh numbers."""
        if what == "health":
            accepting = self.state in (State.RUNNING, State.RELOADING) and not self.leaving
            reply("accepting\n" if accepting else f"{'stopping' if self.leaving else self.state}\n")
        elif what == "reload":
            if self.state is State.STOPPING or self.leaving:
                reply("refused: the daemon is stopping\n")
                return
            self.reload_asks.ask(reply)
            self.handle_reload()
        elif what == "conns":
            self.collector.ask(self._live(), ("conns",), lambda query: reply(self._conns_text(query)))
        elif what == "stat":
            self.collector.ask(self._live(), ("snap",), lambda query: reply(self._stat_text()))
        else:
            self.collector.ask(self._live(), ("snap",), lambda query: reply(metrics.prometheus(self._snapshot())))

    def _workers(self) -> list[report.WorkerView]:
        return [report.WorkerView(p.pid, g.number, report.proc_state(p), p.accepted, p.open,
                                  p.snapshot.get("epollmux_open_fds", {}).get(("workers",), "?"))
                for g in self._generations() for p in g.workers.values()]

    def _snapshot(self) -> metrics.Snapshot:
        live = self._live()
        return report.supervisor_families(self.collector.totals(live), self._workers(), self.crashes, self.reloads,
                                          self.started_at, [g.cfg for g in self._generations()],
                                          [p.pid for p in live])

    def _stat_text(self) -> str:
        return report.stat_text(self._snapshot(), self.state, self.current.number if self.current else 0,
                                self.reloads, self.crashes, self.started_at, self._status_text(), self._workers())

    def _conns_text(self, query: collector.Query) -> str:
        return report.conns_text(query, self.collector.timeout)

    # --- systemd -----------------------------------------------------------------------------
    def _status_text(self) -> str:
        draining = [p for p in self._live() if p.stopping]
        return report.status_text(len(self.current.workers) if self.current else 0,
                                  sum(p.open for p in self._live()), self.rate.value,
                                  len(draining), sum(p.open for p in draining), sum(p.flows for p in self._live()))

    def _tick_status(self) -> None:
        self.rate.sample(time.monotonic(), self.accepted_gone + sum(p.accepted for p in self._live()))
        text = self._status_text()
        if self.state is State.RUNNING and text != self.last_status:
            self.notifier.status(text)
            self.last_status = text
        self.reactor.call_later(self.report_interval, self._tick_status)

    def _tick_watchdog(self) -> None:
        if self.state is not State.STOPPING and self._workers_alive():
            self.notifier.watchdog()
        self.reactor.call_later(self.notifier.watchdog_interval, self._tick_watchdog)

    def _workers_alive(self) -> bool:
        """The current generation has workers, and each that accepts reported within WATCHDOG_USEC."""
        procs = list(self.current.workers.values()) if self.current else []
        stale = time.monotonic() - 2 * self.notifier.watchdog_interval
        return bool(procs) and all(not p.ready or p.last_report > stale for p in procs)


class _Reports:
    """Reactor handler for one worker's report pipe."""

    def __init__(self, supervisor: Supervisor, proc: workerproc.WorkerProc):
        self.supervisor = supervisor
        self.proc = proc

    def on_event(self, fd: int, events: int) -> None:
        self.supervisor._read_reports(self.proc)
