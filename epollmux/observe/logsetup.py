"""Logging set-up: stderr (what journald reads) or syslog, at the configured level.

Owns: handlers and formats. Must not import anything of epollmux but the settings it is given.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Formatter(logging.Formatter):
    """The usual prefix, except on JSON access-log lines, which stay bare JSON objects."""

    converter = time.gmtime      # every timestamp in UTC with a Z, as the access lines (text and JSON)

    def __init__(self, fmt: str, datefmt: str | None, bare_access: bool):
        super().__init__(fmt, datefmt)
        self.bare_access = bare_access

    def format(self, record: logging.LogRecord) -> str:
        if self.bare_access and record.name == "epollmux.access":
            return record.getMessage()
        return super().format(record)


def setup(level: str = "info", target: str = "stderr", access_format: str = "text") -> logging.Handler:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if target == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(_Formatter("epollmux[%(process)d]: %(levelname)s %(name)s: %(message)s", None,
                                        access_format == "json"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(
            "%(asctime)s.%(msecs)03dZ epollmux[%(process)d] %(levelname)s %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%S", access_format == "json"))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    return handler
