"""The text access log cannot be forged: client-controlled values (SNI, ALPN, Host) that hold CR, LF, a
tab, a terminal escape or any byte outside the plain set are written as JSON string literals, so every
connection is exactly one line and no field can be added or hidden."""

from __future__ import annotations

import json
import socket

from support.net import connect, free_port, recv_all
from support.hello_builder import build_client_hello
from test_accesslog import access_lines, config

from epollmux.observe.accesslog import text


FORGED = "\n2026-01-01T00:00:00.000 epollmux[1] INFO epollmux.access: client=203.0.113.9:1\troute=tls\treason=eof"
SNI = "a.example" + FORGED.replace("\n", "\r\n")
ALPN = ("h2\tx", "\x1b[2J\x1b[H")
HOST = "b.example\x1b]0;pwned\x07\nclient=198.51.100.7:2"


def _roundtrip(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    assert sock.recv(len(data), socket.MSG_WAITALL) == data
    sock.shutdown(socket.SHUT_WR)
    recv_all(sock)
    sock.close()


def _value(line: str, key: str) -> str:
    """The value of key= in a text line: a bare token or a JSON string literal."""
    start = line.index(f" {key}=") + len(key) + 2
    if line[start] == '"':
        return json.JSONDecoder().raw_decode(line, start)[0]
    return line[start:].split(" ")[0]


def test_injected_control_bytes_are_quoted_through_a_real_daemon(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(config(port, backend.port, "text"), wait=port)
    _roundtrip(connect(port), build_client_hello(sni=SNI, alpn=ALPN))
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    _roundtrip(connect(port), request)
    lines = access_lines(d, 2)
    log = d.log_text()
    assert len(lines) == 2, log
    assert "\x1b" not in log and "\t" not in log and "\r" not in log
    assert "203.0.113.9" not in "".join(line.split(" sni=")[0] for line in lines)
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())
    tls = next(line for line in lines if " route=tls " in line)
    web = next(line for line in lines if " route=web " in line)
    assert _value(tls, "sni") == SNI.lower()
    assert _value(tls, "alpn") == ",".join(ALPN)
    assert _value(web, "host") == HOST.lower().rpartition(":")[0]     # the Host's ":2" read as a port
    assert _value(tls, "client").startswith("127.0.0.1:")


def test_every_non_plain_value_is_a_json_literal():
    record = {"client": "[::1]:5", "route": "a>b", "alpn": "h2,http/1.1", "sni": "é", "host": "x=y z",
              "detail": "", "n": 3}
    line = text(record)
    assert line == 'client=[::1]:5 route=a>b alpn=h2,http/1.1 sni="\\u00e9" host="x=y z" detail="" n=3'
    for ch in map(chr, range(0x80)):
        if not (ch.isalnum() or ch in "._:/-[]>,@+"):
            value = text({"v": f"a{ch}b"})
            assert value == f"v={json.dumps(f'a{ch}b')}" and "\n" not in value and "\r" not in value
