"""Starts the service: logging, listening sockets, then the worker loop.

Owns: binding before anything else can fail, and the exit code of a start that fails (2).
"""

from __future__ import annotations

import logging

from epollmux import listener, logsetup
from epollmux.worker import Worker

log = logging.getLogger("epollmux")

EXIT_RUNTIME = 2


def bind_all(cfg) -> list:
    sockets = []
    try:
        for lst in cfg.listeners:
            for address in lst.addresses:
                sockets.append((lst, listener.bind(address)))
    except OSError:
        for _, sock in sockets:
            sock.close()
        raise
    return sockets


def run(cfg, args) -> int:
    logsetup.setup("debug" if args.verbose else cfg.settings.log_level, cfg.settings.log_target)
    try:
        sockets = bind_all(cfg)
    except OSError as exc:
        log.error("%s", exc.strerror)
        return EXIT_RUNTIME
    log.info("listening on %s", ", ".join(str(a) for lst in cfg.listeners for a in lst.addresses))
    return Worker(cfg, sockets).run()
