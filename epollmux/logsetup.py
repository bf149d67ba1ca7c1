"""Logging set-up: stderr (what journald reads) or syslog, at the configured level.

Owns: handlers and formats. Must not import anything of epollmux but the settings it is given.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: str = "info", target: str = "stderr") -> logging.Handler:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if target == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("epollmux[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d epollmux[%(process)d] %(levelname)s %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    return handler
