"""Logging set-up: stderr (what journald reads) or syslog, at the configured level.

Owns: handlers and formats. Under systemd (JOURNAL_STREAM or INVOCATION_ID in the environment) each
stderr line starts with its sd-daemon priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so
`journalctl -p err` finds errors, and a multi-line record (SIGUSR1 stats, a traceback) becomes one line
(newlines written as " | "), so it stays one journal entry. `log_target = syslog` where /dev/log does not
answer (a container) falls back to stderr with one warning instead of a logging error per line.
Must not import anything of epollmux but the settings it is given.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
SYSLOG_SOCKET = "/dev/log"
JOURNAL_LINE_BREAK = " | "


def _priority(levelno: int) -> int:
    """sd-daemon(3) / syslog priority of a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def under_systemd(environ=os.environ) -> bool:
    """Started by systemd with stderr going to the journal (or at least as a service)."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


class _Formatter(logging.Formatter):
    """The usual prefix, except on JSON access-log lines, which stay bare JSON objects. With `journal`,
    a `<N>` priority prefix and one line per record."""

    converter = time.gmtime      # every timestamp in UTC with a Z, as the access lines (text and JSON)

    def __init__(self, fmt: str, datefmt: str | None, bare_access: bool, journal: bool = False):
        super().__init__(fmt, datefmt)
        self.bare_access = bare_access
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if self.bare_access and record.name == "epollmux.access":
            text = record.getMessage()
        else:
            text = super().format(record)
        if self.journal:
            text = f"<{_priority(record.levelno)}>" + JOURNAL_LINE_BREAK.join(text.splitlines())
        return text


def syslog_available(path: str = SYSLOG_SOCKET) -> bool:
    """Something answers datagrams on the syslog socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def setup(level: str = "info", target: str = "stderr", access_format: str = "text",
          syslog_path: str = SYSLOG_SOCKET) -> logging.Handler:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    fallback = target == "syslog" and not syslog_available(syslog_path)
    if target == "syslog" and not fallback:
        handler = logging.handlers.SysLogHandler(address=syslog_path,
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(_Formatter("epollmux[%(process)d]: %(levelname)s %(name)s: %(message)s", None,
                                        access_format == "json"))
    elif under_systemd():
        handler = logging.StreamHandler(sys.stderr)   # journald stamps time and PID itself
        handler.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s", None,
                                        access_format == "json", journal=True))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(
            "%(asctime)s.%(msecs)03dZ epollmux[%(process)d] %(levelname)s %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%S", access_format == "json"))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    if fallback:
        logging.getLogger("epollmux.log").warning(
            "log_target = syslog: nothing answers on %s; logging to stderr instead", syslog_path)
    return handler


def change(level: str, target: str, access_format: str, current_target: str) -> None:
    """On reload: a new target is set up anew; on the same target only the level changes."""
    if target != current_target:
        setup(level, target, access_format)
    else:
        logging.getLogger().setLevel(LEVELS[level])
