"""The supervisor: the process that holds the listening sockets and keeps the workers running.

Owns: the start sequence (privileges checked, sockets bound or adopted from systemd, the metrics
endpoints bound, RLIMIT_NOFILE raised, optional detach, workers forked), worker generations (a reload starts a new generation over
the same sockets and stops the old one only once the new one accepts), replacing dead workers with
back-off, the supervisor's signals handled in its own Reactor (SIGTERM/SIGINT stop, SIGHUP reload,
SIGUSR1 stats, SIGCHLD reap), the metrics the workers report (collector.py sums them; exporter.py
serves them, from this loop), what systemd is told, and the exit code: 0 clean stop, 2 runtime
failure at start (cannot bind, cannot drop privileges, workers that cannot start).
The supervisor keeps the credentials it was started with, like nginx's master: it must read the
file and bind new addresses on reload, and it never reads a client byte. Each worker drops to
`user`/`group` right after its fork, before it serves anything.
Must not touch client connections (workers do) nor fork by hand (workerproc does).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from collections import Counter, deque

from epollmux import __version__, checks, config
from epollmux.observe import collector, exporter, logsetup, metrics, procstats, stats
from epollmux.observe.words import plural
from epollmux.process import daemonize, privileges, systemd, workerproc
from epollmux.reactor import IN, Reactor
from epollmux.serve import drain
from epollmux.process.sockettable import SocketTable

log = logging.getLogger("epollmux.supervisor")

EXIT_OK, EXIT_RUNTIME = 0, 2
REPORT_INTERVAL = 1.0       # seconds between a worker's count reports (shorter under a fast watchdog)
READY_TIMEOUT = 20.0        # new workers must accept within this, at start and on reload
MAX_START_FAILURES = 3      # workers dying before they accept, in a row: the generation cannot start
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
BACKOFF_RESET = 10.0        # a worker that lived this long resets the back-off
KILL_GRACE = 5.0            # past its last drain deadline (or a hard stop), a stopping worker is killed
RATE_SECONDS = 5.0          # the connections-per-second figure averages over this


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


class Generation:
    """The workers started from one configuration."""

    def __init__(self, number: int, cfg, sockets: list, keys: set, creds):
        self.number = number
        self.cfg = cfg
        self.sockets = sockets
        self.keys = keys
        self.creds = creds
        self.wanted = cfg.settings.workers
        self.workers: dict[int, workerproc.WorkerProc] = {}
        self.start_failures = 0
        self.quick_deaths = 0
        self.announced = False          # every worker accepted once

    def all_ready(self) -> bool:
        return len(self.workers) >= self.wanted and all(p.ready for p in self.workers.values())


def run(cfg, args) -> int:
    """Start the service and supervise it until stopped; returns the exit code (DESIGN §2)."""
    verbose = bool(getattr(args, "verbose", False))
    logsetup.setup("debug" if verbose else cfg.settings.log_level, cfg.settings.log_target, cfg.settings.log_format)
    path = None if getattr(args, "listen", None) else os.path.abspath(cfg.source)
    path = getattr(args, "config_path", path)      # the sslh command line names its own source
    try:
        creds = privileges.resolve(cfg.settings.user, cfg.settings.group)
        privileges.check(creds)
        table = SocketTable(systemd.listen_fds())
    except (privileges.PrivilegeError, systemd.ActivationError) as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    try:
        sockets, keys = table.assign(cfg)
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        table.close_all()
        return EXIT_RUNTIME
    _log_missing(table)
    for inherited in table.unused_inherited(cfg):
        log.warning("inherited %s matches no listener: not served", inherited.describe())
    try:
        endpoints = exporter.bind(cfg.metrics.address, cfg.metrics.stats_socket)
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        table.close_all()
        return EXIT_RUNTIME
    soft, hard = privileges.raise_nofile()
    log.debug("open files limit %d (hard %d)", soft, hard)
    pidfile = daemonize.PidFile(args.pidfile) if getattr(args, "pidfile", None) else None
    try:
        if getattr(args, "daemon", False):
            daemonize.detach(pidfile, [s.fileno() for s in table.sockets() + endpoints.sockets()])
        elif pidfile is not None:
            pidfile.__enter__()
    except daemonize.PidFileError as exc:
        log.error("%s", exc)
        endpoints.close()
        table.close_all()
        return EXIT_RUNTIME
    try:
        return Supervisor(path, verbose, table, pidfile, endpoints,
                          getattr(args, "loader", None)).run(cfg, sockets, keys, creds)
    finally:
        if pidfile is not None:
            pidfile.__exit__(None, None, None)


class Supervisor:
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
        self.generations = 0
        self.reload_queued = False
        self.leaving = False                         # a stop is announced (stop_delay): /healthz says 503
        self.reload_asked: list = []                 # stats-socket `reload` clients before their reload runs
        self.reload_waiters: list = []               # ... while it runs: told its outcome
        self.log_target = ""
        self.accepted_gone = 0          # last counts of workers that exited
        self.rate = 0.0
        self.last_status = ""
        wd = self.notifier.watchdog_interval
        self.report_interval = min(REPORT_INTERVAL, wd / 2) if wd else REPORT_INTERVAL
        self.samples: deque = deque(maxlen=int(RATE_SECONDS / self.report_interval) + 1)
        self.collector = collector.Collector(self.reactor)
        self.exporter = exporter.Exporter(endpoints)
        self.reloads: Counter[str] = Counter()      # ok | refused | abandoned
        self.crashes = 0
        self.started_at = time.time()

    # --- life cycle --------------------------------------------------------------------------
    def run(self, cfg, sockets: list, keys: set, creds) -> int:
        reactor = self.reactor
        self.log_target = cfg.settings.log_target
        for signum, handler in ((signal.SIGTERM, self.handle_stop), (signal.SIGINT, self.handle_stop),
                                (signal.SIGHUP, self.handle_reload), (signal.SIGUSR1, self.handle_stats),
                                (signal.SIGCHLD, self.handle_child)):
            reactor.on_signal(signum, handler)
        log.info("listening on %s", ", ".join(_describe_socket(lst, s) for lst, s in sockets))
        self.exporter.start(reactor, self._answer)
        if self.exporter.describe():
            log.info("%s", self.exporter.describe())
        self.current = self._new_generation(cfg, sockets, keys, creds)
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
            _signal(proc.pid, signal.SIGKILL)
            try:
                os.waitpid(proc.pid, 0)
            except ChildProcessError:
                pass
        self.exporter.close()
        self.reactor.close()
        self.notifier.close()
        self.table.close_all()

    def _generations(self) -> list[Generation]:
        return [g for g in (self.current, self.pending) if g is not None] + self.retired

    def _live(self) -> list[workerproc.WorkerProc]:
        return [p for g in self._generations() for p in g.workers.values()]

    # --- workers -----------------------------------------------------------------------------
    def _new_generation(self, cfg, sockets: list, keys: set, creds) -> Generation:
        self.generations += 1
        gen = Generation(self.generations, cfg, sockets, keys, creds)
        log.info("generation %d: starting %s%s", gen.number, plural(gen.wanted, "worker"),
                 f" as {creds.describe()}" if creds else "")
        self.reactor.call_later(READY_TIMEOUT, lambda: self._ready_timeout(gen))
        return gen

    def _fill(self, gen: Generation) -> None:
        for _ in range(gen.wanted - len(gen.workers)):
            self._spawn(gen)

    def _spawn(self, gen: Generation) -> None:
        if self.state is State.STOPPING or gen not in (self.current, self.pending):
            return
        try:
            proc = workerproc.spawn(gen.cfg, gen.sockets, gen.creds, self.report_interval,
                                    lambda: self._in_child(gen), gen)
        except OSError as exc:
            log.error("cannot fork a worker: %s", exc.strerror)
            self._start_failed(gen, f"cannot fork: {exc.strerror}")
            return
        gen.workers[proc.pid] = proc
        self.reactor.register(proc.report_fd, IN, _Reports(self, proc))
        log.info("worker %d started (generation %d)", proc.pid, gen.number)

    def _in_child(self, gen: Generation) -> None:
        """In a new worker: close what only the supervisor may hold."""
        self.reactor.close_after_fork()
        self.exporter.close_in_child()
        self.notifier.close()
        for proc in self._live():
            if proc.report_fd >= 0:
                os.close(proc.report_fd)
                proc.report_fd = -1
        keep = {id(sock) for _, sock in gen.sockets}
        for sock in self.table.sockets():
            if id(sock) not in keep:
                sock.close()
        if self.pidfile is not None and self.pidfile.fd >= 0:
            os.close(self.pidfile.fd)
            self.pidfile.fd = -1

    def _read_reports(self, proc: workerproc.WorkerProc, limit: int = 16) -> None:
        for _ in range(limit):
            try:
                data = os.read(proc.report_fd, workerproc.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_reports(proc)
                return
            for line in proc.feed(data):
                message = proc.apply(line)
                if message is None:
                    continue
                kind, qid, payload = message
                if kind == "ready":
                    self._worker_ready(proc)
                elif qid:
                    self.collector.reply(proc, kind, qid, payload)

    def _close_reports(self, proc: workerproc.WorkerProc) -> None:
        self.reactor.unregister(proc.report_fd)
        os.close(proc.report_fd)
        proc.report_fd = -1

    def _worker_ready(self, proc: workerproc.WorkerProc) -> None:
        gen = proc.generation
        gen.start_failures = 0
        log.debug("worker %d accepting", proc.pid)
        if gen.announced or not gen.all_ready():
            return
        gen.announced = True
        if gen is self.current and self.state is State.STARTING:
            self.state = State.RUNNING
            log.info("ready: %s accepting", plural(len(gen.workers), "worker"))
            self.notifier.ready(self._status_text())
            self._run_queued_reload()
        elif gen is self.pending:
            self._switch(gen)

    def _terminate(self, proc: workerproc.WorkerProc, how: int = workerproc.STOP) -> None:
        """Tell a worker to retire, stop or hard-stop, unless it was told as much already."""
        if workerproc.STRENGTH[how] <= workerproc.STRENGTH[proc.told]:
            return
        proc.stopping = True
        proc.told = how
        _signal(proc.pid, how)

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
        self.accepted_gone += proc.accepted
        self.collector.worker_gone(proc)
        how = _describe_status(status)
        if proc.stopping or self.state is State.STOPPING:
            log.info("worker %d (generation %d) %s", proc.pid, gen.number, how)
        else:
            self._worker_died(proc, gen, how, status)
        self._forget_idle_generations()
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
        lived = time.monotonic() - proc.started
        gen.quick_deaths = gen.quick_deaths + 1 if lived < BACKOFF_RESET else 1
        self._replace_later(gen)

    def _start_failed(self, gen: Generation, why: str) -> None:
        gen.start_failures += 1
        if gen.start_failures >= MAX_START_FAILURES:
            self._generation_failed(gen, f"workers cannot start ({gen.start_failures} in a row {why})")
            return
        gen.quick_deaths += 1
        self._replace_later(gen)

    def _replace_later(self, gen: Generation) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, gen.quick_deaths - 1))
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
        self.state = State.STOPPING
        self.reload_waiters += self.reload_asked
        self.reload_asked = []
        self._tell_reload("refused: the daemon is stopping\n")
        self.notifier.stopping()
        self.table.close_all()      # the workers close their copies: new clients are refused, not queued
        for proc in self._live():
            self._terminate(proc)
        deadlines = [drain.stop_deadline(g.cfg) for g in self._generations()]
        if deadlines and 0 not in deadlines:       # 0: some connection may go on until it ends
            self.reactor.call_later(max(deadlines) + KILL_GRACE, self._kill_stragglers)
        if not self._live():
            self.reactor.stop()

    def _hard_stop(self) -> None:
        live = self._live()
        log.warning("hard stop: %s reset their connections and exit", plural(len(live), "worker"))
        for proc in live:
            self._terminate(proc, workerproc.HARD_STOP)
        self.reactor.call_later(KILL_GRACE, self._kill_stragglers)
        if not live:
            self.reactor.stop()

    def _kill_stragglers(self) -> None:
        for proc in self._live():
            log.warning("worker %d still running past its drain: killing it", proc.pid)
            _signal(proc.pid, signal.SIGKILL)

    def handle_reload(self) -> None:
        """SIGHUP: validate the file; if good, a new generation takes over; if bad, nothing changes."""
        if self.state is State.STOPPING or self.leaving:
            return
        if self.state is not State.RUNNING:
            log.info("reload queued: %s", self.state.value)
            self.reload_queued = True
            return
        self._reload()

    def _run_queued_reload(self) -> None:
        if self.reload_queued:
            self.reload_queued = False
            self.reactor.call_soon(self.handle_reload)

    def _reload(self) -> None:
        self.reload_waiters, self.reload_asked = self.reload_waiters + self.reload_asked, []
        self.notifier.reloading()
        if self.path is None:
            log.warning("reload is not possible: started from command-line flags, there is no file")
            self.reloads["refused"] += 1
            self._tell_reload("refused: started from command-line flags, there is no file\n")
            self.notifier.ready(self._status_text())
            return
        log.info("reloading %s", self.path)
        endpoints = None
        try:
            cfg = self.loader(self.path)
            found = checks.run(cfg, starting=True)
            if found.errors:
                raise config.ConfigError(found.errors)
            for warning in found.warnings:
                log.warning("%s", warning)
            creds = privileges.resolve(cfg.settings.user, cfg.settings.group)
            privileges.check(creds)
            endpoints = exporter.bind(cfg.metrics.address, cfg.metrics.stats_socket, self.exporter.endpoints)
            sockets, keys = self.table.assign(cfg)
        except config.ConfigError as exc:
            self._refuse(exc.problems)
            return
        except privileges.PrivilegeError as exc:
            self._refuse([str(exc)])
            return
        except OSError as exc:
            if endpoints is not None:       # bound for this reload only: the running ones stay
                for sock in endpoints.sockets():
                    if sock not in self.exporter.endpoints.sockets():
                        sock.close()
            self._refuse([exc.strerror or str(exc)])
            return
        self.exporter.replace(endpoints)
        _log_missing(self.table)
        if self.table.outcome.fresh:
            log.info("now also listening on %s", ", ".join(self.table.outcome.fresh))
        for inherited in self.table.unused_inherited(cfg):
            log.warning("inherited %s matches no listener: not served", inherited.describe())
        self._apply_logging(cfg)
        self.pending = self._new_generation(cfg, sockets, keys, creds)
        self.state = State.RELOADING
        self._fill(self.pending)

    def _refuse(self, problems: list[str]) -> None:
        for problem in problems:
            log.error("reload refused: %s", problem)
        log.error("reload refused (%s): the running configuration stays", plural(len(problems), "problem"))
        self.reloads["refused"] += 1
        self._tell_reload("".join(f"refused: {p}\n" for p in problems))
        self.notifier.ready(self._status_text() + "; last reload refused")

    def _tell_reload(self, text: str) -> None:
        """The reload that was running is over: answer every `reload` client that asked before it."""
        waiters, self.reload_waiters = self.reload_waiters, []
        for reply in waiters:
            reply(text)

    def _apply_logging(self, cfg) -> None:
        level = "debug" if self.verbose else cfg.settings.log_level
        if cfg.settings.log_target != self.log_target:
            logsetup.setup(level, cfg.settings.log_target, cfg.settings.log_format)
            self.log_target = cfg.settings.log_target
        else:
            logging.getLogger().setLevel(logsetup.LEVELS[level])

    def _switch(self, gen: Generation) -> None:
        """The reload's generation accepts on every worker: the old one stops accepting and drains."""
        old, self.current, self.pending = self.current, gen, None
        self.state = State.RUNNING
        if old is not None:
            self.retired.append(old)
            for proc in old.workers.values():
                self._terminate(proc, workerproc.RETIRE)
        log.info("reloaded: generation %d accepting, generation %d draining",
                 gen.number, old.number if old else 0)
        self.reloads["ok"] += 1
        self._tell_reload(f"ok: generation {gen.number} accepting\n")
        self.notifier.ready(self._status_text())
        self._forget_idle_generations()
        self._run_queued_reload()

    def _abandon(self, gen: Generation, why: str) -> None:
        log.error("reload abandoned: %s; the running configuration stays", why)
        self.reloads["abandoned"] += 1
        self._tell_reload(f"abandoned: {why}\n")
        self.pending = None
        self.retired.append(gen)
        for proc in gen.workers.values():
            self._terminate(proc, workerproc.RETIRE)
        self.state = State.RUNNING
        self.notifier.ready(self._status_text() + "; last reload abandoned")
        self._forget_idle_generations()
        self._run_queued_reload()

    def handle_stats(self) -> None:
        """SIGUSR1: every worker logs its stats; the supervisor logs one line per worker."""
        lines = [f"supervisor: {self.state.value}, {self._status_text()}"]
        for gen in self._generations():
            for proc in gen.workers.values():
                lines.append(f"worker {proc.pid} generation={gen.number} "
                             f"{'draining' if proc.stopping else 'ready' if proc.ready else 'starting'} "
                             f"accepted={proc.accepted} open={proc.open}")
                _signal(proc.pid, signal.SIGUSR1)
        log.info("%s", "\n".join(lines))
        self.collector.ask(self._live(), ("snap", "conns"), lambda query: log.info(
            "show stat:\n%sshow conns:\n%s", self._stat_text(), self._conns_text(query)))

    # --- metrics -----------------------------------------------------------------------------
    def _answer(self, what: str, reply) -> None:
        """An endpoint's question (metrics, stat, conns): ask the workers, then reply with fresh numbers."""
        if what == "health":
            accepting = self.state in (State.RUNNING, State.RELOADING) and not self.leaving
            reply("accepting\n" if accepting else f"{'stopping' if self.leaving else self.state.value}\n")
        elif what == "reload":
            if self.state is State.STOPPING or self.leaving:
                reply("refused: the daemon is stopping\n")
                return
            self.reload_asked.append(reply)
            self.handle_reload()
        elif what == "conns":
            self.collector.ask(self._live(), ("conns",), lambda query: reply(self._conns_text(query)))
        elif what == "stat":
            self.collector.ask(self._live(), ("snap",), lambda query: reply(self._stat_text()))
        else:
            self.collector.ask(self._live(), ("snap",), lambda query: reply(metrics.prometheus(self._snapshot())))

    def _snapshot(self) -> metrics.Snapshot:
        """The workers' sums plus the supervisor's own families."""
        snapshot = self.collector.totals(self._live())
        states = Counter(_proc_state(p) for p in self._live())
        snapshot = metrics.add(snapshot, {
            "epollmux_workers": {(s,): states[s] for s in ("ready", "starting", "draining")},
            "epollmux_draining_connections": {(): sum(p.open for p in self._live() if p.stopping)},
            "epollmux_worker_crashes_total": {(): self.crashes},
            "epollmux_reloads_total": {(r,): self.reloads[r] for r in ("ok", "refused", "abandoned")},
            "epollmux_start_time_seconds": {(): round(self.started_at, 3)},
            "epollmux_info": {(__version__,): 1},
            "epollmux_open_fds": {("supervisor",): stats.open_fds()},
            **procstats.families(os.getpid(), [p.pid for p in self._live()]),
        })
        return metrics.add(snapshot, self._zero_series())

    def _zero_series(self) -> metrics.Snapshot:
        """Every configured route and listener has its series, 0 before any traffic (rate() needs them)."""
        cfgs = [g.cfg for g in self._generations()]
        routes = {name for cfg in cfgs for name in cfg.routes}
        listeners = {lst.name for cfg in cfgs for lst in cfg.listeners}
        return {
            "epollmux_connections_accepted_total": {(name,): 0 for name in listeners},
            "epollmux_connections_routed_total": {(name,): 0 for name in routes},
            "epollmux_bytes_total": {(name, way): 0 for name in routes for way in ("up", "down")},
        }

    def _stat_text(self) -> str:
        up = time.time() - self.started_at
        head = [f"epollmux {__version__}: supervisor {os.getpid()}, {self.state.value}, up {up:.0f}s, "
                f"generation {self.current.number if self.current else 0}, reloads {self.reloads['ok']} ok "
                f"{self.reloads['refused']} refused {self.reloads['abandoned']} abandoned, "
                f"{self.crashes} worker crashes",
                f"status: {self._status_text()}"]
        for gen in self._generations():
            for proc in gen.workers.values():
                fds = proc.snapshot.get("epollmux_open_fds", {}).get(("workers",), "?")
                head.append(f"worker {proc.pid}: generation {gen.number}, {_proc_state(proc)}, "
                            f"accepted {proc.accepted}, open {proc.open}, fds {fds}")
        return metrics.stat_text(self._snapshot(), head)

    def _conns_text(self, query: collector.Query) -> str:
        rows = [[pid, *row] for pid in query.asked for row in query.rows.get(pid, [])]
        notes = [f"{plural(len(rows), 'connection')} listed"]
        for pid in query.asked:
            unlisted = query.open.get(pid, 0) - len(query.rows.get(pid, []))
            if unlisted > 0:
                notes.append(f"worker {pid}: {unlisted} more not listed")
        notes += [f"worker {pid}: no complete answer within {self.collector.timeout:g}s" for pid in query.incomplete()]
        return metrics.conns_text(rows, notes)

    # --- systemd -----------------------------------------------------------------------------
    def _status_text(self) -> str:
        workers = len(self.current.workers) if self.current else 0
        draining = [p for p in self._live() if p.stopping]
        connections = sum(p.open for p in self._live())
        text = f"{plural(workers, 'worker')}, {plural(connections, 'open connection')}, {self.rate:.1f} connections/s"
        if draining:
            text += f", {len(draining)} draining ({plural(sum(p.open for p in draining), 'connection')})"
        return text

    def _tick_status(self) -> None:
        now = time.monotonic()
        self.samples.append((now, self.accepted_gone + sum(p.accepted for p in self._live())))
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        self.rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
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


def _signal(pid: int, signum: int) -> bool:
    """Send a signal to a worker; a worker already gone or a refusal (EPERM: no CAP_KILL while workers
    run as another user) is logged, never raised: the supervisor carries on."""
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.error("cannot send %s to worker %d: permission denied (the supervisor needs CAP_KILL "
                  "when workers run as another user)", signal.Signals(signum).name, pid)
        return False


def _proc_state(proc: workerproc.WorkerProc) -> str:
    return "draining" if proc.stopping else "ready" if proc.ready else "starting"


def _log_missing(table: SocketTable) -> None:
    for missing in table.outcome.missing:
        log.warning("%s: not an address of this host, left out; serving on the others", missing)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _describe_socket(lst, sock) -> str:
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{where} ({lst.name})"
