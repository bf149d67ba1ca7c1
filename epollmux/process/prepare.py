"""What a configuration needs before workers can serve it, shared by the start and by a reload.

Owns: resolving and checking the worker credentials, binding the metrics endpoints (reusing the
running ones where unchanged) and assigning the listening sockets (kept, adopted from systemd or
newly bound), all or nothing: on failure `Refused` carries one line per problem and nothing new is
left open. `ReloadAsks`: who waits for a reload's outcome (the stats socket's `reload`).
Must not fork, touch the reactor or client connections.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from epollmux.observe import exporter
from epollmux.process import privileges
from epollmux.process.generation import log_missing
from epollmux.process.sockettable import SocketTable

log = logging.getLogger("epollmux.supervisor")


class Refused(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Prepared:
    cfg: object
    creds: object
    sockets: list
    keys: set
    endpoints: exporter.Endpoints


def prepare(cfg, table: SocketTable, running: exporter.Endpoints | None = None) -> Prepared:
    """Credentials, endpoints and sockets for cfg; raises Refused."""
    endpoints = None
    try:
        creds = privileges.resolve(cfg.settings.user, cfg.settings.group)
        privileges.check(creds)
        endpoints = exporter.bind(cfg.metrics.address, cfg.metrics.stats_socket, running)
        sockets, keys = table.assign(cfg)
    except privileges.PrivilegeError as exc:
        raise Refused([str(exc)]) from exc
    except OSError as exc:
        if endpoints is not None:       # bound for this configuration only: the running ones stay
            for sock in endpoints.sockets():
                if running is None or sock not in running.sockets():
                    sock.close()
        raise Refused([exc.strerror or str(exc)]) from exc
    log_missing(table)
    for inherited in table.unused_inherited(cfg):
        log.warning("inherited %s matches no listener: not served", inherited.describe())
    return Prepared(cfg, creds, sockets, keys, endpoints)


class ReloadAsks:
    """The stats-socket clients that asked for a reload, each told the outcome of the reload that runs
    after its question (asked during one: the next one)."""

    def __init__(self):
        self.asked: list = []           # before their reload runs
        self.waiting: list = []         # while it runs

    def ask(self, reply) -> None:
        self.asked.append(reply)

    def starting(self) -> None:
        """A reload begins: everyone who asked so far waits for its outcome."""
        self.waiting, self.asked = self.waiting + self.asked, []

    def tell(self, text: str) -> None:
        """The reload that was running is over: answer every client waiting for it."""
        waiting, self.waiting = self.waiting, []
        for reply in waiting:
            reply(text)
