"""The supervisor's reload: SIGHUP (or the stats socket's `reload`) reads the file again; if it is good, a
new generation of workers takes over once every one of them accepts, and the old one drains; if it
is bad, or the new workers cannot start, nothing changes.

Owns: queueing a reload asked for while starting or reloading, checking and preparing the new
configuration (`prepare.py`), switching generations or abandoning the new one, and what a refused
reload logs and tells systemd and the stats-socket clients. `Reloading` is a base class of
`supervisor.Supervisor` and works on its fields.
Must not touch client connections nor fork by hand.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import logging

from epollmux import checks, config
from epollmux.observe import logsetup
from epollmux.observe.words import plural
from epollmux.process import workerproc
from epollmux.process.generation import Generation, terminate
from epollmux.process.prepare import Refused, prepare
from epollmux.process.states import State

CLOSE_WAIT = 5.0        # seconds a reload waits for the old workers to say they stopped accepting

log = logging.getLogger("epollmux.supervisor")


class Reloading:
    def handle_reload(self) -> None:
        """SIGHUP: validate the file; if good, a new generation takes over; if bad, nothing changes."""
        if self.state is State.STOPPING or self.leaving:
            return
        if self.state is not State.RUNNING:
            log.info("reload queued: %s", self.state)
            self.reload_queued = True
            return
        self._reload()

    def _run_queued_reload(self) -> None:
        if self.reload_queued:
            self.reload_queued = False
            self.reactor.call_soon(self.handle_reload)

    def _reload(self) -> None:
        self.reload_asks.starting()
        self.notifier.reloading()
        if self.path is None:
            log.warning("reload is not possible: started from command-line flags, there is no file")
            self.reloads["refused"] += 1
            self.reload_asks.tell("refused: started from command-line flags, there is no file\n")
            self.notifier.ready(self._status_text())
            return
        log.info("reloading %s", self.path)
        try:
            cfg = self.loader(self.path)
            found = checks.run(cfg, starting=True)
            if found.errors:
                raise config.ConfigError(found.errors)
            for warning in found.warnings:
                log.warning("%s", warning)
            ready = prepare(cfg, self.table, self.exporter.endpoints)
        except config.ConfigError as exc:
            self._refuse(exc.problems)
            return
        except Refused as exc:
            self._refuse(exc.problems)
            return
        self.exporter.replace(ready.endpoints)
        if self.table.outcome.fresh:
            log.info("now also listening on %s", ", ".join(self.table.outcome.fresh))
        settings = ready.cfg.settings
        logsetup.change("debug" if self.verbose else settings.log_level, settings.log_target,
                        settings.log_format, self.log_target)
        self.log_target = settings.log_target
        self.pending = self._new_generation(ready)
        self._set_state(State.RELOADING)
        self._fill(self.pending)

    def _refuse(self, problems: list[str]) -> None:
        for problem in problems:
            log.error("reload refused: %s", problem)
        log.error("reload refused (%s): the running configuration stays", plural(len(problems), "problem"))
        self.reloads["refused"] += 1
        self.reload_asks.tell("".join(f"refused: {p}\n" for p in problems))
        self.notifier.ready(self._status_text() + "; last reload refused")

    def _switch(self, gen: Generation) -> None:
        """The reload's generation accepts on every worker: the old one is told to stop accepting and
        drain. The reload is announced once every old worker has said it closed its listeners (or is
        gone): a client that connects after "ok" never meets the old configuration."""
        old, self.current, self.pending = self.current, gen, None
        if old is not None:
            self.retired.append(old)
            for proc in old.workers.values():
                terminate(proc, workerproc.RETIRE)
        self.switching = (gen, old)
        self.switch_timer = self.reactor.call_later(CLOSE_WAIT, self._announce_switch, True)
        self._old_worker_closed()

    def _old_worker_closed(self) -> None:
        """A worker said it closed its listeners, or exited: announce a switch waiting for that."""
        if self.switching is None:
            return
        old = self.switching[1]
        if old is None or all(proc.closed for proc in old.workers.values()):
            self._announce_switch(False)

    def _announce_switch(self, late: bool) -> None:
        if self.switching is None:
            return
        gen, old = self.switching
        self.switching = None
        self.switch_timer.cancel()
        if late and old is not None:
            log.warning("reload: generation %d's workers did not confirm within %.0f s that they stopped "
                        "accepting", old.number, CLOSE_WAIT)
        if self.state is State.RELOADING:       # (a stop may have come meanwhile: it keeps its state)
            self._set_state(State.RUNNING)
        log.info("reloaded: generation %d accepting, generation %d draining",
                 gen.number, old.number if old else 0)
        self.reloads["ok"] += 1
        self.reload_asks.tell(f"ok: generation {gen.number} accepting\n")
        self.notifier.ready(self._status_text())
        self._forget_idle_generations()
        self._run_queued_reload()

    def _abandon(self, gen: Generation, why: str) -> None:
        log.error("reload abandoned: %s; the running configuration stays", why)
        self.reloads["abandoned"] += 1
        self.reload_asks.tell(f"abandoned: {why}\n")
        self.pending = None
        self.retired.append(gen)
        for proc in gen.workers.values():
            terminate(proc, workerproc.RETIRE)
        self._set_state(State.RUNNING)
        self.notifier.ready(self._status_text() + "; last reload abandoned")
        self._forget_idle_generations()
        self._run_queued_reload()
