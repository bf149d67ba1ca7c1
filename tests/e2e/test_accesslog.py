"""The access log: one record per connection, in text and in JSON, with what was learnt while sniffing."""

from __future__ import annotations

import json
import socket
import ssl
import time

from support.daemon import make_config
from support.net import connect, free_port, recv_all


def config(port: int, backend: int, fmt: str, **global_) -> str:
    """One listener, a tls and an http route to the same backend, the access log in fmt."""
    return make_config(port, {"tls": {"probe": "tls", "backend": f"127.0.0.1:{backend}"},
                              "web": {"probe": "http", "backend": f"127.0.0.1:{backend}"}},
                       workers=1, log_format=fmt, **global_)


def access_lines(d, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in d.log_text().splitlines() if "epollmux.access" in line or line.startswith("{")]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(d.log_text())


def test_json_records_carry_sni_alpn_host_and_bytes(daemon, server):
    backend = server()
    port = free_port()
    # relay = splice: every relayed byte goes through a pipe, so "spliced" is exact (adaptive would copy this
    # small exchange and log spliced=0)
    d = daemon().start(config(port, backend.port, "json", probe_timeout=0.3, on_timeout="web", relay="splice"),
                       wait=port)
    c = connect(port)
    request = b"GET / HTTP/1.1\r\nHost: Example.ORG:8080\r\n\r\n"
    c.sendall(request)
    assert c.recv(len(request)) == request
    c.shutdown(socket.SHUT_WR)
    recv_all(c)
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="A.example")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    raw = connect(port)                 # passthrough: the echo backend sends the hello back
    raw.sendall(hello)
    assert raw.recv(len(hello), socket.MSG_WAITALL) == hello
    raw.shutdown(socket.SHUT_WR)
    recv_all(raw)
    records = [json.loads(line) for line in access_lines(d, 2) if line.startswith("{")]
    web = next(r for r in records if r["route"] == "web")
    assert web["host"] == "example.org"
    assert web["up"] == len(request) and web["down"] == len(request)
    assert web["spliced"] == 2 * len(request)
    assert web["reason"] == "eof" and web["verdict"] == "match"
    assert web["listener"] == "main" and web["client"].startswith("127.0.0.1:")
    assert web["time"].endswith("Z") and isinstance(web["duration"], float)
    tls = next(r for r in records if r["route"] == "tls")
    assert tls["sni"] == "a.example" and tls["alpn"] == "h2,http/1.1"
    assert tls["up"] == len(hello) and "host" not in tls


def test_text_records_and_timeout_verdict(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(config(port, backend.port, "text", probe_timeout=0.3, on_timeout="web"), wait=port)
    c = connect(port)                   # silent: on_timeout takes it to web
    time.sleep(0.5)
    c.sendall(b"late")
    assert c.recv(4) == b"late"
    c.close()
    (line,) = access_lines(d, 1)
    assert " route=web " in line and " verdict=timeout" in line and " up=4 down=4 " in line


def test_client_field_of_relayed_connections_reset_or_not_is_the_accepted_address(daemon, server):
    """A relayed connection holds no address object (idle memory): its line reads the client's address back
    from the socket, which must give exactly what accept() gave, also after a reset, and in IPv6 form."""
    import struct
    backend = server()
    port = free_port()
    v6 = True
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", port))
    except OSError:
        v6 = False
    listeners = {"main": "127.0.0.1:%d, [::1]:%d" % (port, port) if v6 else f"127.0.0.1:{port}"}
    d = daemon().start(make_config(listeners, f"127.0.0.1:{backend.port}", workers=1, relay="adaptive"), wait=port)
    expected = []
    for host in ["127.0.0.1", "::1"] if v6 else ["127.0.0.1"]:
        for reset in (False, True):
            c = socket.create_connection((host, port))
            c.sendall(b"ping")
            assert c.recv(4, socket.MSG_WAITALL) == b"ping"
            local = c.getsockname()
            expected.append((f"[{local[0]}]:{local[1]}" if ":" in host else f"{local[0]}:{local[1]}",
                             "reset" if reset else "eof"))
            if reset:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                c.shutdown(socket.SHUT_WR)
                recv_all(c)
            c.close()
            access_lines(d, len(expected))     # one at a time: the lines come in this order
    lines = access_lines(d, len(expected))
    for line, (client, reason) in zip(lines, expected):
        assert f" client={client} " in line and f" reason={reason} " in line, line
