"""The access log: one record per connection at close, written as text (key=value) or JSON.

Owns: the record's fields and their order, what is learnt from the peeked bytes for it (SNI, ALPN,
Host), and the two formats. Must not import sockets or the reactor.

Fields: time (JSON only; the text line carries the logger's timestamp), worker (pid), client (after a
PROXY header), listener, route (outer>inner when chosen inside TLS), backend (once a connect was tried),
up and down (bytes client->backend, backend->client), spliced (bytes of those that went through pipes;
the rest was copied), duration (seconds), reason, verdict (match, timeout or none), sni, alpn, host
(from the peeked bytes; alpn is the negotiated one on terminated connections), tls, cipher, client_cn
(terminated connections), detail (what TLS or a PROXY parser said about an error).
Fields with no value are left out.
"""

from __future__ import annotations

import json
import logging
import os
import time

from epollmux import clienthello, probes

log = logging.getLogger("epollmux.access")


def peeked_names(data: bytes) -> dict:
    """SNI and ALPN of a ClientHello, or the Host of an HTTP request, found in the peeked bytes."""
    if data[:1] == b"\x16":
        hello = clienthello.parse_client_hello(data)
        if hello.status is clienthello.HelloStatus.OK:
            return {"sni": hello.sni, "alpn": ",".join(hello.alpn) or None}
        return {}
    host = probes.request_host(data)
    return {"host": host} if host else {}


def text(record: dict) -> str:
    return " ".join(f"{key}={_text_value(value)}" for key, value in record.items() if value is not None)


def _text_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}s"
    value = str(value)
    return value if value and " " not in value and '"' not in value else json.dumps(value)


def as_json(record: dict) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json.dumps({"time": stamp, **{k: v for k, v in record.items() if v is not None}},
                      separators=(",", ":"))


def write(record: dict, fmt: str) -> None:
    record = {"worker": os.getpid(), **record}
    log.info("%s", as_json(record) if fmt == "json" else text(record))
