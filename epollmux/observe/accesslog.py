"""The access log: one record per connection at close, written as text (key=value) or JSON.

Owns: the record's fields and their order, and the two formats (the names learnt from the peeked
bytes are `wire/sniff.py`'s `Names`). Must not import sockets or the reactor.

Fields: time (JSON only; the text line carries the logger's timestamp), worker (pid), client (after a
PROXY header), listener, route (outer>inner when chosen inside TLS), backend (once a connect was tried),
up and down (bytes client->backend, backend->client), spliced (bytes of those that went through pipes;
the rest was copied), duration (seconds), reason, verdict (match, timeout or none), sni, alpn, host
(from the peeked bytes; alpn is the negotiated one on terminated connections), tls, cipher, client_cn
(terminated connections), detail (what TLS or a PROXY parser said about an error).
Fields with no value are left out. In the text format every value that is not plain (letters, digits and
`._:/-[]>,@+`) is a JSON string literal: no client-controlled byte can forge or split a line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

from epollmux.observe import logsetup

log = logging.getLogger("epollmux.access")


def record(conn, route: str, reason: str, up: int, down: int, spliced: int) -> dict:
    """The record of a closing connection (serve/connection.py's), `route` as logs name it."""
    connected = conn.backend is not None
    setup = conn.setup        # serve/setupstate.py: the verdict, names, TLS facts and detail of the connection
    out = {"client": conn.peer, "listener": conn.listener.name, "route": route,
           "backend": conn.route.backend.text if connected else None, "up": up, "down": down,
           "spliced": spliced, "duration": round(conn.ctx.reactor.clock() - conn.started, 6),
           "reason": reason, "verdict": setup.verdict}
    if setup.names:
        out.update(setup.names.fields())
    if setup.tls:
        out.update(setup.tls)
    out["detail"] = setup.detail
    return out


def text(record: dict) -> str:
    parts = []
    for key, value in record.items():
        if value is None:
            continue
        kind = value.__class__
        if kind is int:
            parts.append(f"{key}={value}")
        elif kind is float:
            parts.append(f"{key}={value:.3f}s")
        else:
            parts.append(f"{key}={_text_value(str(value))}")
    return " ".join(parts)


# A text value is written bare only when it is made of these characters; anything else (a space, a quote,
# a tab, CR/LF, a terminal escape, any non-ASCII character) is written as a JSON string literal, so a
# client-controlled value (SNI, ALPN, Host, a client certificate's CN, a PROXY header's reason) can never
# end a line early, add a field or hide one: one record is always one line of key=value pairs.
_PLAIN = re.compile(r"[A-Za-z0-9._:/\-\[\]>,@+]+")


def _text_value(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else json.dumps(value)


def as_json(record: dict, stamp: str) -> str:
    return json.dumps({"time": stamp, **{k: v for k, v in record.items() if v is not None}},
                      separators=(",", ":"))


class Writer:
    """Collects access lines and writes them to stderr once per loop turn, in one write.

    The logging module costs ~15 µs a line, a quarter of what a connection costs; stderr lines keep
    its format ("TIME epollmux[PID] INFO epollmux.access: ...", or bare JSON objects). To syslog,
    lines go through logging as before.
    """

    def __init__(self, fmt: str, target: str, fd: int = 2):
        self.json = fmt == "json"
        self.direct = target == "stderr"
        self.fd = fd
        self.lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self.pid = os.getpid()
        self._prefix = f" epollmux[{self.pid}] INFO epollmux.access: worker={self.pid} "
        self.journal = logsetup.under_systemd()    # "<6>" first, no time stamp: journald adds both

    def enabled(self) -> bool:
        return log.isEnabledFor(logging.INFO)

    def write(self, record: dict) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))     # UTC, as logsetup's lines
        millis = f".{int(now % 1 * 1000):03d}Z"
        if self.json:
            line = as_json({"worker": self.pid, **record}, self._stamp + millis)
            if self.direct:
                self.lines.append(("<6>" if self.journal else "") + line + "\n")
                return
        elif self.direct and self.journal:
            self.lines.append(f"<6>INFO epollmux.access: worker={self.pid} {text(record)}\n")
            return
        elif self.direct:
            self.lines.append(f"{self._stamp}{millis}{self._prefix}{text(record)}\n")
            return
        else:
            line = f"worker={self.pid} {text(record)}"
        log.info("%s", line)

    def flush(self) -> None:
        if not self.lines:
            return
        data = "".join(self.lines).encode()
        self.lines.clear()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:      # a full non-blocking stderr: drop the rest rather than block the loop
                return
            except OSError:
                return
