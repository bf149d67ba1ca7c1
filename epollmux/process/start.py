"""The start sequence: what happens before the supervisor's loop runs, and what it leaves behind.

Owns: the order of the start: sockets adopted from systemd, then `prepare.py` (privileges checked,
metrics endpoints and listening sockets bound), RLIMIT_NOFILE raised, optional detach and the pid
file, then `Supervisor.run`; the exit code of a start that fails (2, runtime failure: cannot bind,
cannot drop privileges).
Must not touch client connections nor fork workers (the supervisor does, through workerproc).
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import logging
import os

from epollmux.observe import logsetup
from epollmux.process import daemonize, privileges, systemd
from epollmux.process.prepare import Refused, prepare
from epollmux.process.sockettable import SocketTable
from epollmux.process.supervisor import EXIT_RUNTIME, Supervisor

log = logging.getLogger("epollmux.supervisor")


def run(cfg, args) -> int:
    """Start the service and supervise it until stopped; returns the exit code (README "Command line")."""
    verbose = bool(getattr(args, "verbose", False))
    logsetup.setup("debug" if verbose else cfg.settings.log_level, cfg.settings.log_target, cfg.settings.log_format)
    path = None if getattr(args, "listen", None) else os.path.abspath(cfg.source)
    path = getattr(args, "config_path", path)      # the sslh command line names its own source
    try:
        table = SocketTable(systemd.listen_fds())
    except systemd.ActivationError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    try:
        ready = prepare(cfg, table)
    except Refused as exc:
        log.error("%s", exc)
        table.close_all()
        return EXIT_RUNTIME
    endpoints = ready.endpoints
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
                          getattr(args, "loader", None)).run(ready)
    finally:
        if pidfile is not None:
            pidfile.__exit__(None, None, None)
